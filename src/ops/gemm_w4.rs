//! W4A16 GEMM `Y = act(alpha·X·Wᵀ + bias) + residual`: kernel `kernels/gemm_w4.cu`, reference
//! `src/reference/gemm_w4.rs`, tests `tests/gemm_w4.rs`, bench `benches/gemm_w4.rs`.
//!
//! X is f16/bf16 `[..., K]` (the CPU backend also takes f32) and W an int4 weight from
//! `quant::quantize_weight_int4`, packed once by [`W4Weight::new`] into the tensor-core
//! fragment order the kernel loads 16 bytes per lane at a time (layout in [`pack_w4`]).
//! Limits: K a multiple of the group size (64 or 128), N a multiple of 32, N and K at most
//! `GEMM_W4_MAX_DIM` (65536).

use super::gemm::{Gemm, GemmParams, Geometry, Operands, Tile, check_epilogue, launch_gemm};
use super::{Backend, backend, consts, dev, dev_mut, float_dtype, host, host_f64, kernel_name};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::quant::QuantizedWeight;
use crate::reference;
use crate::tensor::{Device, HostTensor, Tensor};

const OP: &str = "gemm_w4";
const NEW: &str = "W4Weight::new";
/// Values of K per k-tile and columns per packed block (common/consts.cuh GEMM_W4_KT / _NB).
const KT: usize = consts::GEMM_W4_KT;
const NB: usize = consts::GEMM_W4_NB;

/// An int4 weight `[N, K]` packed for the W4A16 GEMM, with its f16 group scales, on the CPU or
/// a GPU (where `W4Weight::new` put it).
#[derive(Debug)]
pub struct W4Weight {
    n: usize,
    k: usize,
    group_size: usize,
    /// `N·K/2` bytes in [`pack_w4`]'s order (u8).
    packed: Tensor,
    /// f16 `[K / group_size, N]`: transposed, so a lane reads two adjacent columns at once.
    scales: Tensor,
}

impl W4Weight {
    /// Checks and packs a 4-bit `QuantizedWeight` and puts it on `device`. Refuses bits ≠ 4, a
    /// group other than 64 or 128, K not a positive multiple of the group, N not a positive
    /// multiple of 32, N or K above 65536, values outside -8..=7, and scales that are not
    /// finite f16 values, all before allocating. A scale may be zero or negative: a norm
    /// folded into the weight (MobileBERT's NoNorm γ) scales rows by any value.
    pub fn new(q: &QuantizedWeight, device: &Device) -> Result<W4Weight> {
        let (n, k, gs) = (q.n, q.k, q.group_size);
        if q.bits != 4 {
            return Err(Error::Invalid {
                op: NEW,
                arg: "bits",
                detail: format!("{}; expected 4 (quantize_weight_int4)", q.bits),
            });
        }
        if gs != 64 && gs != 128 {
            return Err(Error::Invalid {
                op: NEW,
                arg: "group_size",
                detail: format!("{gs}; expected 64 or 128"),
            });
        }
        let max = consts::GEMM_W4_MAX_DIM;
        if k == 0 || k % gs != 0 || k > max {
            return Err(Error::Shape {
                op: NEW,
                arg: "w",
                got: vec![n, k],
                expected: format!("K a positive multiple of the group size {gs}, at most {max}"),
            });
        }
        if n == 0 || n % NB != 0 || n > max {
            return Err(Error::Shape {
                op: NEW,
                arg: "w",
                got: vec![n, k],
                expected: format!("N a positive multiple of {NB}, at most {max}"),
            });
        }
        let groups = k / gs;
        if q.q.len() != n * k || q.scales.len() != n * groups {
            return Err(Error::Shape {
                op: NEW,
                arg: "q/scales",
                got: vec![q.q.len(), q.scales.len()],
                expected: format!("[{}, {}] (N·K values, N·K/group scales)", n * k, n * groups),
            });
        }
        if let Some(i) = q.q.iter().position(|v| !(-8..=7).contains(v)) {
            return Err(Error::Invalid {
                op: NEW,
                arg: "q",
                detail: format!("value {} at {i}; expected -8..=7", q.q[i]),
            });
        }
        if let Some(&s) = q.scales.iter().find(|&&s| {
            let s = f64::from(s);
            !(s.is_finite() && DType::F16.round(s) == s)
        }) {
            return Err(Error::Invalid {
                op: NEW,
                arg: "scales",
                detail: format!("{s}; expected finite values exact in f16"),
            });
        }
        let packed = pack_w4(&q.q, n, k)?;
        let st: Vec<f64> = (0..groups * n)
            .map(|i| f64::from(q.scales[(i % n) * groups + i / n]))
            .collect();
        Ok(W4Weight {
            n,
            k,
            group_size: gs,
            packed: HostTensor::new(&[n * k / 2], packed)?.to_device(device)?,
            scales: HostTensor::from_f64(&[groups, n], &st, DType::F16)?.to_device(device)?,
        })
    }
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn group_size(&self) -> usize {
        self.group_size
    }
    /// Packed weight plus scale bytes (what the GEMM streams; the same on the CPU).
    pub fn bytes(&self) -> usize {
        self.n * self.k / 2 + 2 * self.n * (self.k / self.group_size)
    }
    /// The device the weight lives on.
    pub fn device(&self) -> Device {
        self.packed.device()
    }
}

/// Byte offset and nibble shift of W\[n\]\[k\] in the packed layout.
///
/// Layout: `[K/64 k-tiles][N/32 column blocks][j: 2][lane: 32][16 bytes]`, i.e. one uint4 per
/// lane per 32 values of K per 32 columns. Inside it, 32-bit word t is n8 tile t (column
/// `nb·32 + t·8 + lane/4`) and nibble p (bits 4p..4p+3) holds, for i = p % 4 and h = p / 4,
/// the k16 step `s = 2j + i/2`, mma B register `r = i % 2` and half h: K index
/// `kt·64 + s·16 + (lane%4)·2 + r·8 + h` — the m16n8k16 B fragment (b0 = k 0..1, b1 = k 8..9
/// of the lane's pair), with the two halves of a register 16 bits apart so one mask/OR makes
/// a half2.
fn nibble_at(n: usize, row: usize, col: usize) -> (usize, u32) {
    let (kt, kk) = (col / KT, col % KT);
    let (s, kin) = (kk / 16, kk % 16);
    let (j, r, pair, h) = (s / 2, kin / 8, (kin % 8) / 2, kin % 2);
    let (nb, t, lane) = (row / NB, (row % NB) / 8, (row % 8) * 4 + pair);
    let i = (s % 2) * 2 + r;
    let p = i + 4 * h;
    let byte = (((kt * (n / NB) + nb) * 2 + j) * 32 + lane) * 16 + t * 4 + p / 2;
    (byte, 4 * (p as u32 % 2))
}

fn check_pack_dims(op: &'static str, n: usize, k: usize, len: usize, want: usize) -> Result<()> {
    if n % NB != 0 || k % KT != 0 || n * k == 0 || len != want {
        return Err(Error::Shape {
            op,
            arg: "w",
            got: vec![n, k, len],
            expected: format!("[N, K, len]: N a positive multiple of {NB}, K of {KT}, len {want}"),
        });
    }
    Ok(())
}

/// Packs int4 values `q` (`[N, K]` row-major, -8..=7) into the kernel's fragment order (see
/// `nibble_at` in the source), two per byte as `q + 8`.
pub fn pack_w4(q: &[i8], n: usize, k: usize) -> Result<Vec<u8>> {
    check_pack_dims("pack_w4", n, k, q.len(), n.saturating_mul(k))?;
    let mut out = vec![0u8; n * k / 2];
    for row in 0..n {
        for col in 0..k {
            let v = q[row * k + col];
            if !(-8..=7).contains(&v) {
                return Err(Error::Invalid {
                    op: "pack_w4",
                    arg: "q",
                    detail: format!("value {v} at [{row}, {col}]; expected -8..=7"),
                });
            }
            let (byte, shift) = nibble_at(n, row, col);
            out[byte] |= ((v + 8) as u8) << shift;
        }
    }
    Ok(out)
}

/// The inverse of [`pack_w4`]: `[N, K]` values in -8..=7.
pub fn unpack_w4(packed: &[u8], n: usize, k: usize) -> Result<Vec<i8>> {
    check_pack_dims(
        "unpack_w4",
        n,
        k,
        packed.len().saturating_mul(2),
        n.saturating_mul(k),
    )?;
    let mut q = vec![0i8; n * k];
    for row in 0..n {
        for col in 0..k {
            let (byte, shift) = nibble_at(n, row, col);
            q[row * k + col] = ((packed[byte] >> shift) & 0xF) as i8 - 8;
        }
    }
    Ok(q)
}

/// The GPU tile shapes: (16 or 64 rows of X) x 128 columns, common/consts.cuh GEMM_W4_*.
fn geometry(tile: Tile) -> Result<Geometry> {
    let (bm, threads, smem) = match tile {
        Tile::S => (
            consts::GEMM_W4_S_BM,
            consts::GEMM_W4_S_THREADS,
            consts::GEMM_W4_S_SMEM,
        ),
        Tile::M => (
            consts::GEMM_W4_M_BM,
            consts::GEMM_W4_M_THREADS,
            consts::GEMM_W4_M_SMEM,
        ),
        Tile::L => {
            return Err(Error::Invalid {
                op: OP,
                arg: "tile",
                detail: "L; gemm_w4 has tiles S (16 rows) and M (64 rows)".into(),
            });
        }
    };
    Ok(Geometry {
        bm,
        bn: consts::GEMM_W4_BN,
        threads: threads as u32,
        smem: smem as u32,
    })
}

/// M, N and Y's shape of `x · wᵀ`.
fn dims(x: &Tensor, w: &W4Weight) -> Result<(usize, Vec<usize>)> {
    let xs = x.shape();
    match xs.split_last() {
        Some((&kx, lead)) if kx == w.k && !lead.is_empty() => {
            let mut ys = lead.to_vec();
            ys.push(w.n);
            Ok((lead.iter().product(), ys))
        }
        _ => Err(Error::Shape {
            op: OP,
            arg: "x",
            got: xs.to_vec(),
            expected: format!("[..., {}] (K of the W4 weight)", w.k),
        }),
    }
}

/// Runs the W4A16 GEMM into a new tensor on x's device (`g.out_dtype`: x's dtype or f32).
pub fn gemm_w4(x: &Tensor, w: &W4Weight, g: &Gemm) -> Result<Tensor> {
    let (_, ys) = dims(x, w)?;
    let mut out = Tensor::empty(&x.device(), &ys, g.out_dtype.unwrap_or(x.dtype()))?;
    gemm_w4_into(x, w, g, &mut out)?;
    Ok(out)
}

/// Runs the W4A16 GEMM into `out` (Y's shape, the output dtype, x's device). `g.tile`: S or
/// M (None picks S for M ≤ 16); L is an error.
pub fn gemm_w4_into(x: &Tensor, w: &W4Weight, g: &Gemm, out: &mut Tensor) -> Result<()> {
    let dt = x.dtype();
    float_dtype(OP, "x", dt)?;
    let (m, ys) = dims(x, w)?;
    let odt = check_epilogue(OP, dt, w.n, &ys, g, out)?;
    match backend(
        OP,
        x,
        &[
            ("w", Some(&w.packed)),
            ("bias", g.bias),
            ("residual", g.residual),
            ("out", Some(out)),
        ],
    )? {
        Backend::Cpu => {
            let q = unpack_w4(host(OP, "w", &w.packed)?.as_slice::<u8>()?, w.n, w.k)?;
            let groups = w.k / w.group_size;
            let st = host(OP, "w", &w.scales)?.to_f64();
            let scales: Vec<f64> = (0..w.n * groups)
                .map(|i| st[(i % groups) * w.n + i / groups])
                .collect();
            let (b, r) = (
                host_f64(OP, "bias", g.bias)?,
                host_f64(OP, "residual", g.residual)?,
            );
            let y = reference::gemm_w4::gemm_w4(
                &host(OP, "x", x)?.to_f64(),
                &q,
                &scales,
                (m, w.n, w.k, w.group_size),
                f64::from(g.alpha),
                b.as_deref(),
                g.act,
                r.as_deref(),
            );
            *out = Tensor::Host(HostTensor::from_f64(&ys, &y, odt)?);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            if dt == DType::F32 {
                return Err(Error::DType {
                    op: OP,
                    arg: "x",
                    got: dt,
                    expected: "f16 or bf16 on a GPU".into(),
                });
            }
            if m == 0 {
                return Ok(());
            }
            let gpu = gpu.clone();
            let tile = g.tile.unwrap_or(if m <= consts::GEMM_W4_S_BM {
                Tile::S
            } else {
                Tile::M
            });
            let geo = geometry(tile)?;
            let kernel = kernel_name(OP, format!("gemm_w4_{dt}_{odt}_{}", tile.suffix()))?;
            let p = GemmParams {
                alpha: g.alpha,
                act: g.act.code(),
                group_size: w.group_size as i32,
                out_scale: 1.0,
                ..Default::default()
            };
            let ops = Operands {
                sw: Some(dev(OP, "w", &w.scales)?),
                ..Operands::new(OP, x, &w.packed, g.bias, g.residual)?
            };
            let d = reference::gemm::GemmDims {
                batch: 1,
                m,
                n: w.n,
                k: w.k,
                shared_w: true,
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
