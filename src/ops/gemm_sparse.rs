//! 2:4-sparse GEMM `Y = act(alpha·X·Wᵀ + bias) + residual`: kernel `kernels/gemm_sparse.cu`,
//! format `src/sparse.rs`, reference = decompress then `src/reference/gemm.rs`, tests
//! `tests/gemm_sparse.rs`, bench `benches/gemm_sparse.rs`.

use super::gemm::{Gemm, GemmParams, Geometry, Operands, check_epilogue, launch_gemm};
use super::gemm_int8::GemmI8;
use super::host_f64;
use super::{Backend, backend, consts, dev, dev_mut, float_dtype, host, kernel_name, same_dtype};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::reference;
use crate::reference::gemm::GemmDims;
use crate::sparse::{PruneReport, Sparse24, compress, prune_2_4};
use crate::tensor::{Device, HostTensor, Tensor};

const OP: &str = "gemm_sparse";

/// A compressed 2:4 weight on a device: kept values and mma.sp metadata (see `src/sparse.rs`).
#[derive(Debug)]
pub struct SparseWeight {
    n: usize,
    k: usize,
    values: Tensor,
    /// u32 metadata words stored as i32.
    meta: Tensor,
}

impl SparseWeight {
    /// Uploads a compressed weight to `device`.
    pub fn new(s: &Sparse24, device: &Device) -> Result<Self> {
        s.validate("SparseWeight::new")?;
        let meta: Vec<i32> = s.meta.iter().map(|&w| w as i32).collect();
        let len = meta.len();
        Ok(SparseWeight {
            n: s.n,
            k: s.k,
            values: s.values.to_device(device)?,
            meta: HostTensor::new(&[len], meta)?.to_device(device)?,
        })
    }
    /// Magnitude-prunes a dense `[N, K]` weight to 2:4, compresses it and uploads it.
    pub fn prune(w: &HostTensor, device: &Device) -> Result<(Self, PruneReport)> {
        let (pruned, report) = prune_2_4(w)?;
        Ok((Self::new(&compress(&pruned)?, device)?, report))
    }
    pub fn shape(&self) -> [usize; 2] {
        [self.n, self.k]
    }
    pub fn dtype(&self) -> DType {
        self.values.dtype()
    }
    /// The compressed weight back on the host.
    pub fn to_host(&self) -> Result<Sparse24> {
        let meta = self.meta.to_host()?;
        Ok(Sparse24 {
            n: self.n,
            k: self.k,
            values: self.values.to_host()?,
            meta: meta.as_slice::<i32>()?.iter().map(|&w| w as u32).collect(),
        })
    }
}

/// Sparse tile shapes (block: rows of X × rows of W, threads, smem) — SpS / SpL in the kernel,
/// common/consts.cuh GEMM_SP_* (the shared memory differs by the metadata of f16/bf16 and int8).
pub(crate) fn geometry(large: bool, int8: bool) -> (Geometry, &'static str) {
    if large {
        (
            Geometry {
                bm: consts::GEMM_SP_L_BM,
                bn: consts::GEMM_SP_L_BN,
                threads: consts::GEMM_SP_L_THREADS as u32,
                smem: if int8 {
                    consts::GEMM_SP_L_SMEM_I8
                } else {
                    consts::GEMM_SP_L_SMEM_F16
                } as u32,
            },
            "l",
        )
    } else {
        (
            Geometry {
                bm: consts::GEMM_SP_S_BM,
                bn: consts::GEMM_SP_S_BN,
                threads: consts::GEMM_SP_S_THREADS as u32,
                smem: if int8 {
                    consts::GEMM_SP_S_SMEM_I8
                } else {
                    consts::GEMM_SP_S_SMEM_F16
                } as u32,
            },
            "s",
        )
    }
}

/// The large tile when it still gives every SM a block.
fn large_tile(m: usize, n: usize, sm_count: u32) -> bool {
    m.div_ceil(consts::GEMM_SP_L_BM) * n.div_ceil(consts::GEMM_SP_L_BN) >= sm_count as usize
}

/// `act(alpha·x·Wᵀ + bias) + residual` with a 2:4-sparse W; `g.tile` is ignored (the sparse
/// kernel has its own two tiles, chosen by size).
pub fn gemm_sparse(x: &Tensor, w: &SparseWeight, g: &Gemm) -> Result<Tensor> {
    let ys = out_shape(x, w)?;
    let mut out = Tensor::empty(&x.device(), &ys, g.out_dtype.unwrap_or(x.dtype()))?;
    gemm_sparse_into(x, w, g, &mut out)?;
    Ok(out)
}

fn out_shape(x: &Tensor, w: &SparseWeight) -> Result<Vec<usize>> {
    match x.shape().split_last() {
        Some((&k, lead)) if k == w.k && !lead.is_empty() => {
            let mut ys = lead.to_vec();
            ys.push(w.n);
            Ok(ys)
        }
        _ => Err(Error::Shape {
            op: OP,
            arg: "x",
            got: x.shape().to_vec(),
            expected: format!("[..., {}] (K of the sparse weight [{}, {}])", w.k, w.n, w.k),
        }),
    }
}

/// [`gemm_sparse`] into `out`.
pub fn gemm_sparse_into(x: &Tensor, w: &SparseWeight, g: &Gemm, out: &mut Tensor) -> Result<()> {
    let dt = x.dtype();
    float_dtype(OP, "x", dt)?;
    if dt == DType::F32 {
        return Err(Error::DType {
            op: OP,
            arg: "x",
            got: dt,
            expected: "f16 or bf16 (sparse tensor cores)".into(),
        });
    }
    same_dtype(OP, "w", &w.values, dt)?;
    let ys = out_shape(x, w)?;
    let (n, k) = (w.n, w.k);
    let m = x.len() / k.max(1);
    if k % 8 != 0 {
        return Err(Error::Shape {
            op: OP,
            arg: "x",
            got: x.shape().to_vec(),
            expected: format!("K a multiple of 8 (K = {k})"),
        });
    }
    let odt = check_epilogue(OP, dt, n, &ys, g, out)?;
    let be = backend(
        OP,
        x,
        &[
            ("w", Some(&w.values)),
            ("meta", Some(&w.meta)),
            ("bias", g.bias),
            ("residual", g.residual),
            ("out", Some(out)),
        ],
    )?;
    let d = GemmDims {
        batch: 1,
        m,
        n,
        k,
        shared_w: true,
    };
    match be {
        Backend::Cpu => {
            let dense = w.to_host()?.decompress()?;
            let (b, r) = (
                host_f64(OP, "bias", g.bias)?,
                host_f64(OP, "residual", g.residual)?,
            );
            let y = reference::gemm::gemm(
                &host(OP, "x", x)?.to_f64(),
                &dense.to_f64(),
                d,
                f64::from(g.alpha),
                b.as_deref(),
                g.act,
                r.as_deref(),
            );
            *out = Tensor::Host(HostTensor::from_f64(&ys, &y, odt)?);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            if m == 0 || n == 0 {
                return Ok(());
            }
            let gpu = gpu.clone();
            let large = large_tile(m, n, gpu.sm_count());
            let (geo, suffix) = geometry(large, false);
            let kernel = kernel_name(OP, format!("gemm_sp_{dt}_{odt}_{suffix}"))?;
            let p = GemmParams {
                stride_y: (m * n) as i64,
                stride_r: (m * n) as i64,
                alpha: g.alpha,
                act: g.act.code(),
                out_scale: 1.0,
                ..Default::default()
            };
            let ops = Operands {
                meta: Some(dev(OP, "meta", &w.meta)?),
                ..Operands::new(OP, x, &w.values, g.bias, g.residual)?
            };
            launch_gemm(
                &gpu,
                OP,
                kernel,
                Some(geo),
                d,
                p,
                ops,
                dev_mut(OP, "out", out)?,
            )
        }
    }
}

const OP8: &str = "gemm_sparse_i8";

/// Checks an int8 sparse product and returns (dims, Y's shape).
fn check_i8(x: &Tensor, w: &SparseWeight) -> Result<(GemmDims, Vec<usize>)> {
    for (arg, dt) in [("x", x.dtype()), ("w", w.dtype())] {
        if dt != DType::I8 {
            return Err(Error::DType {
                op: OP8,
                arg,
                got: dt,
                expected: "i8".into(),
            });
        }
    }
    let ys = out_shape(x, w).map_err(|_| Error::Shape {
        op: OP8,
        arg: "x",
        got: x.shape().to_vec(),
        expected: format!("[..., {}] (K of the sparse weight [{}, {}])", w.k, w.n, w.k),
    })?;
    let k = w.k;
    if k == 0 || k % 16 != 0 || k >= 1 << 17 {
        return Err(Error::Shape {
            op: OP8,
            arg: "x",
            got: x.shape().to_vec(),
            expected: format!("K a positive multiple of 16 below 131072 (K = {k})"),
        });
    }
    Ok((
        GemmDims {
            batch: 1,
            m: x.len() / k,
            n: w.n,
            k,
            shared_w: true,
        },
        ys,
    ))
}

/// Exact int32 accumulators of `x·Wᵀ` with a 2:4-sparse int8 W.
pub fn gemm_sparse_i8_raw(x: &Tensor, w: &SparseWeight) -> Result<Tensor> {
    let (_, ys) = check_i8(x, w)?;
    let mut out = Tensor::empty(&x.device(), &ys, DType::I32)?;
    sparse_i8_into(x, w, None, &mut out)?;
    Ok(out)
}

/// Int8 2:4-sparse GEMM with the dequantising / requantising epilogue of [`super::gemm_i8`]
/// (per-channel weight scales only: `e.group_size` must be 0).
pub fn gemm_sparse_i8(x: &Tensor, w: &SparseWeight, e: &GemmI8) -> Result<Tensor> {
    let (_, ys) = check_i8(x, w)?;
    let mut out = Tensor::empty(&x.device(), &ys, e.out_dtype)?;
    sparse_i8_into(x, w, Some(e), &mut out)?;
    Ok(out)
}

/// The `_into` form of both int8 sparse products: `e` None gives the raw i32 accumulators.
pub fn gemm_sparse_i8_into(
    x: &Tensor,
    w: &SparseWeight,
    e: Option<&GemmI8>,
    out: &mut Tensor,
) -> Result<()> {
    sparse_i8_into(x, w, e, out)
}

fn sparse_i8_into(
    x: &Tensor,
    w: &SparseWeight,
    e: Option<&GemmI8>,
    out: &mut Tensor,
) -> Result<()> {
    let (d, ys) = check_i8(x, w)?;
    let odt = e.map_or(DType::I32, |e| e.out_dtype);
    if out.dtype() != odt || out.shape() != ys {
        return Err(Error::Shape {
            op: OP8,
            arg: "out",
            got: out.shape().to_vec(),
            expected: format!("{ys:?} {odt} (got {})", out.dtype()),
        });
    }
    let mut per_row = false;
    if let Some(e) = e {
        if e.group_size != 0 {
            return Err(Error::Invalid {
                op: OP8,
                arg: "group_size",
                detail: format!(
                    "{}: the sparse int8 GEMM takes per-channel weight scales (0)",
                    e.group_size
                ),
            });
        }
        super::gemm_int8::check_epilogue(OP8, d, &ys, e)?;
        per_row = e.x_scale.len() != 1;
    }
    let mut others = vec![
        ("w", Some(&w.values)),
        ("meta", Some(&w.meta)),
        ("out", Some(&*out)),
    ];
    if let Some(e) = e {
        others.extend([
            ("x_scale", Some(e.x_scale)),
            ("w_scale", Some(e.w_scale)),
            ("bias", e.bias),
            ("residual", e.residual),
        ]);
    }
    match backend(OP8, x, &others)? {
        Backend::Cpu => {
            let dense = w.to_host()?.decompress()?;
            let (xv, wv): (&[i8], &[i8]) = (host(OP8, "x", x)?.as_slice()?, dense.as_slice()?);
            let y = match e {
                None => {
                    let acc = reference::gemm_int8::gemm_i8_acc(xv, wv, d);
                    HostTensor::new(&ys, acc.into_iter().map(|v| v as i32).collect::<Vec<i32>>())?
                }
                Some(e) => super::gemm_int8::cpu_gemm_i8(OP8, xv, wv, d, e, &ys)?,
            };
            *out = Tensor::Host(y);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            if d.m == 0 || d.n == 0 {
                return Ok(());
            }
            let gpu = gpu.clone();
            let large = large_tile(d.m, d.n, gpu.sm_count());
            let (geo, suffix) = geometry(large, true);
            let kernel = kernel_name(OP8, format!("gemm_sp_i8_{odt}_{suffix}"))?;
            let p = GemmParams {
                stride_y: (d.m * d.n) as i64,
                stride_r: (d.m * d.n) as i64,
                alpha: e.map_or(1.0, |e| e.alpha),
                act: e.map_or(0, |e| e.act.code()),
                sx_per_row: i32::from(per_row),
                out_scale: e.map_or(1.0, |e| e.out_scale),
                ..Default::default()
            };
            let ops = Operands {
                sx: e.map(|e| dev(OP8, "x_scale", e.x_scale)).transpose()?,
                sw: e.map(|e| dev(OP8, "w_scale", e.w_scale)).transpose()?,
                meta: Some(dev(OP8, "meta", &w.meta)?),
                ..Operands::new(
                    OP8,
                    x,
                    &w.values,
                    e.and_then(|e| e.bias),
                    e.and_then(|e| e.residual),
                )?
            };
            launch_gemm(
                &gpu,
                OP8,
                kernel,
                Some(geo),
                d,
                p,
                ops,
                dev_mut(OP8, "out", out)?,
            )
        }
    }
}
