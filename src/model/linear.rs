//! A Linear layer in any of the compressed forms the encoders run: dense, 2:4 sparse, int8 W8A8
//! (per-channel weights, per-token dynamic activations: Q8BERT), 2:4 + int8, or low rank
//! (`W ≈ U·V`), or int4 W4A16 (group-wise f16 scales). Each forward is one or two medkern GEMMs
//! with bias / activation / residual fused.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{self, Activation, Gemm, GemmI8, SparseWeight};
use crate::tensor::{Device, HostTensor, Tensor};

/// How a Linear's weight is stored; also the tag written in the safetensors metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearKind {
    Dense,
    Sparse24,
    Int8,
    Sparse24Int8,
    LowRank,
    /// Int4 weights in groups along K with f16 scales (W4A16).
    Int4,
}

impl LinearKind {
    pub fn tag(self) -> &'static str {
        match self {
            LinearKind::Dense => "dense",
            LinearKind::Sparse24 => "sparse24",
            LinearKind::Int8 => "int8",
            LinearKind::Sparse24Int8 => "sparse24+int8",
            LinearKind::LowRank => "lowrank",
            LinearKind::Int4 => "int4",
        }
    }
    pub fn from_tag(tag: &str) -> Option<Self> {
        [
            LinearKind::Dense,
            LinearKind::Sparse24,
            LinearKind::Int8,
            LinearKind::Sparse24Int8,
            LinearKind::LowRank,
            LinearKind::Int4,
        ]
        .into_iter()
        .find(|k| k.tag() == tag)
    }
}

/// A Linear layer `y = act(x·Wᵀ + b) + residual` on one device.
pub enum Linear {
    Dense {
        w: Tensor,
        b: Tensor,
    },
    /// f16/bf16 2:4 weight on the sparse tensor cores.
    Sparse {
        w: SparseWeight,
        b: Tensor,
    },
    /// int8 `[n, k]` with f32 per-channel scales; f32 bias.
    Int8 {
        w: Tensor,
        scale: Tensor,
        b: Tensor,
    },
    /// int8 2:4 weight with f32 per-channel scales; f32 bias.
    SparseInt8 {
        w: SparseWeight,
        scale: Tensor,
        b: Tensor,
    },
    /// int4 W4A16: packed int4 weight with f16 group scales; bias in x's dtype.
    Int4 {
        w: ops::W4Weight,
        b: Tensor,
    },
    /// `y = (x·Vᵀ)·Uᵀ + b`, V `[r, k]`, U `[n, r]`.
    LowRank {
        u: Tensor,
        v: Tensor,
        b: Tensor,
    },
}

/// Host weights of one Linear as loaded from a file (f64 values, already in their final form).
pub struct LinearHost {
    pub kind: LinearKind,
    /// `[n, k]` dense values (Dense, Sparse24: the pruned weight), int8 values (Int8 kinds),
    /// int4 values (Int4), or U `[n, r]` (LowRank).
    pub w: Vec<f64>,
    pub w_shape: [usize; 2],
    /// Per-channel scales (Int8 kinds), group scales `[n, k / group]` (Int4) or V `[r, k]`
    /// (LowRank).
    pub extra: Vec<f64>,
    pub extra_shape: Vec<usize>,
    pub b: Vec<f64>,
}

impl LinearHost {
    /// The int4 weight of an Int4 Linear, checked: values in -8..=7, f16 group scales.
    fn int4(&self) -> Result<crate::quant::QuantizedWeight> {
        let [n, k] = self.w_shape;
        let groups = self.extra_shape.get(1).copied().unwrap_or(0);
        let bad = |detail: String| Error::Invalid {
            op: "linear",
            arg: "int4 weight",
            detail,
        };
        if self.extra_shape.len() != 2
            || self.extra_shape[0] != n
            || groups == 0
            || k % groups != 0
            || self.w.len() != n * k
            || self.extra.len() != n * groups
        {
            return Err(bad(format!(
                "w {:?} ({} values), scales {:?} ({} values); expected [n, k] and [n, k / group]",
                self.w_shape,
                self.w.len(),
                self.extra_shape,
                self.extra.len()
            )));
        }
        if let Some(i) = self
            .w
            .iter()
            .position(|&v| !(-8.0..=7.0).contains(&v) || v.fract() != 0.0)
        {
            return Err(bad(format!(
                "value {} at {i}; expected integers in -8..=7",
                self.w[i]
            )));
        }
        // Any finite scale: a folded norm (MobileBERT's NoNorm) may make one zero or negative.
        if let Some(i) = self.extra.iter().position(|&s| !s.is_finite()) {
            return Err(bad(format!(
                "scale {} at {i}; expected finite",
                self.extra[i]
            )));
        }
        Ok(crate::quant::QuantizedWeight {
            q: self.w.iter().map(|&v| v as i8).collect(),
            scales: self.extra.iter().map(|&s| s as f32).collect(),
            n,
            k,
            group_size: k / groups,
            bits: 4,
            sqnr_db: f64::NAN,
        })
    }
}

impl Linear {
    /// Uploads host weights in compute dtype `dt` (int8 values stay int8).
    pub fn build(h: LinearHost, dt: DType, device: &Device) -> Result<Linear> {
        let n = h.w_shape[0];
        let up = |v: &[f64], shape: &[usize], dt: DType| -> Result<Tensor> {
            HostTensor::from_f64(shape, v, dt)?.to_device(device)
        };
        // 2:4 on tensor cores needs f16/bf16 (or int8); the f32 CPU model runs the pruned
        // weight densely, which is the same math.
        let sparse_ok = dt != DType::F32;
        Ok(match h.kind {
            LinearKind::Dense => Linear::Dense {
                w: up(&h.w, &h.w_shape, dt)?,
                b: up(&h.b, &[n], dt)?,
            },
            LinearKind::Sparse24 if !sparse_ok => Linear::Dense {
                w: up(&h.w, &h.w_shape, dt)?,
                b: up(&h.b, &[n], dt)?,
            },
            LinearKind::Sparse24 => {
                let host = HostTensor::from_f64(&h.w_shape, &h.w, dt)?;
                Linear::Sparse {
                    w: SparseWeight::new(&crate::sparse::compress(&host)?, device)?,
                    b: up(&h.b, &[n], dt)?,
                }
            }
            LinearKind::Int8 => Linear::Int8 {
                w: up(&h.w, &h.w_shape, DType::I8)?,
                scale: up(&h.extra, &[n], DType::F32)?,
                b: up(&h.b, &[n], DType::F32)?,
            },
            LinearKind::Sparse24Int8 => {
                let host = HostTensor::from_f64(&h.w_shape, &h.w, DType::I8)?;
                Linear::SparseInt8 {
                    w: SparseWeight::new(&crate::sparse::compress(&host)?, device)?,
                    scale: up(&h.extra, &[n], DType::F32)?,
                    b: up(&h.b, &[n], DType::F32)?,
                }
            }
            LinearKind::Int4 => {
                let mut q = h.int4()?;
                // Scales exactly in f16, as the W4A16 GEMM holds them (a folded norm may have
                // moved them off the f16 grid).
                for s in &mut q.scales {
                    *s = DType::F16.round(f64::from(*s)) as f32;
                }
                // The W4A16 GEMM takes f16/bf16 activations on a GPU (f32 too on the CPU) and
                // N a multiple of 32; elsewhere the same dequantised values run densely.
                let on_gpu = matches!(device, Device::Gpu(_));
                if (on_gpu && dt == DType::F32) || n % 32 != 0 {
                    Linear::Dense {
                        w: up(&q.dequantize(), &h.w_shape, dt)?,
                        b: up(&h.b, &[n], dt)?,
                    }
                } else {
                    Linear::Int4 {
                        w: ops::W4Weight::new(&q, device)?,
                        b: up(&h.b, &[n], dt)?,
                    }
                }
            }
            LinearKind::LowRank => {
                if h.extra_shape.len() != 2 || h.extra_shape[0] != h.w_shape[1] {
                    return Err(Error::Shape {
                        op: "linear",
                        arg: "lowrank v",
                        got: h.extra_shape.clone(),
                        expected: format!("[{}, k] (the rank of u)", h.w_shape[1]),
                    });
                }
                Linear::LowRank {
                    u: up(&h.w, &h.w_shape, dt)?,
                    v: up(&h.extra, &h.extra_shape, dt)?,
                    b: up(&h.b, &[n], dt)?,
                }
            }
        })
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        match self {
            Linear::Dense { w, .. } | Linear::Int8 { w, .. } | Linear::LowRank { u: w, .. } => {
                w.shape()[0]
            }
            Linear::Sparse { w, .. } | Linear::SparseInt8 { w, .. } => w.shape()[0],
            Linear::Int4 { w, .. } => w.n(),
        }
    }

    /// `act(x·Wᵀ + b) + residual` (residual added after the activation, as the GEMMs do).
    pub fn forward(
        &self,
        x: &Tensor,
        act: Activation,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        match self {
            Linear::Dense { w, b } => ops::gemm(
                x,
                w,
                &Gemm {
                    bias: Some(b),
                    act,
                    residual,
                    ..Default::default()
                },
            ),
            Linear::Sparse { w, b } => ops::gemm_sparse(
                x,
                w,
                &Gemm {
                    bias: Some(b),
                    act,
                    residual,
                    ..Default::default()
                },
            ),
            Linear::Int8 { w, scale, b } => {
                let (q, sx) = ops::quantize_rows(x)?;
                let e = GemmI8 {
                    bias: Some(b),
                    act,
                    residual,
                    ..GemmI8::new(&sx, scale, x.dtype())
                };
                ops::gemm_i8(&q, w, &e)
            }
            Linear::SparseInt8 { w, scale, b } => {
                let (q, sx) = ops::quantize_rows(x)?;
                let e = GemmI8 {
                    bias: Some(b),
                    act,
                    residual,
                    ..GemmI8::new(&sx, scale, x.dtype())
                };
                ops::gemm_sparse_i8(&q, w, &e)
            }
            Linear::Int4 { w, b } => ops::gemm_w4(
                x,
                w,
                &Gemm {
                    bias: Some(b),
                    act,
                    residual,
                    ..Default::default()
                },
            ),
            Linear::LowRank { u, v, b } => {
                let t = ops::gemm(x, v, &Gemm::default())?;
                ops::gemm(
                    &t,
                    u,
                    &Gemm {
                        bias: Some(b),
                        act,
                        residual,
                        ..Default::default()
                    },
                )
            }
        }
    }
}
