//! Dense GEMM `Y = act(alpha·X·Wᵀ + bias) + residual`: kernel `kernels/gemm.cu`, reference
//! `src/reference/gemm.rs`, tests `tests/gemm.rs`, bench `benches/gemm.rs`.
//!
//! X is `[..., K]` (all leading dims are rows) with W `[N, K]` (a Linear layer), or X
//! `[B, M, K]` with W `[B, N, K]` (strided-batched, e.g. per-head Q·Kᵀ). f16/bf16 run on tensor
//! cores and need K % 8 == 0; f32 runs on a SIMT kernel with any K.

use super::consts;
use super::host_f64;
use super::{
    Activation, Backend, as_i32, backend, dev, dev_mut, float_dtype, host, kernel_name, same_dtype,
};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::reference;
use crate::reference::gemm::GemmDims;
use crate::tensor::{DeviceTensor, HostTensor, Tensor};
use cudarc::driver::LaunchConfig;
use std::sync::Arc;

/// Tensor-core tile configurations (block tile M×N), chosen by shape unless forced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tile {
    /// 32×64, 4 warps: M ≤ 32 (batch-1 inference).
    S,
    /// 64×128, 8 warps.
    M,
    /// 128×128, 8 warps: large problems.
    L,
}

impl Tile {
    pub const ALL: [Tile; 3] = [Tile::S, Tile::M, Tile::L];
    /// Block tile rows (M) and columns (N) and threads: common/consts.cuh GEMM_{S,M,L}_*.
    pub(crate) fn dims(self) -> (usize, usize, u32) {
        let (bm, bn, threads) = match self {
            Tile::S => (consts::GEMM_S_BM, consts::GEMM_S_BN, consts::GEMM_S_THREADS),
            Tile::M => (consts::GEMM_M_BM, consts::GEMM_M_BN, consts::GEMM_M_THREADS),
            Tile::L => (consts::GEMM_L_BM, consts::GEMM_L_BN, consts::GEMM_L_THREADS),
        };
        (bm, bn, threads as u32)
    }
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Tile::S => "s",
            Tile::M => "m",
            Tile::L => "l",
        }
    }
    /// Dynamic shared memory: GEMM_STAGES stages of (BM + BN) padded rows (common/consts.cuh).
    pub(crate) fn smem(self) -> u32 {
        let smem = match self {
            Tile::S => consts::GEMM_S_SMEM,
            Tile::M => consts::GEMM_M_SMEM,
            Tile::L => consts::GEMM_L_SMEM,
        };
        smem as u32
    }
    pub(crate) fn geometry(self) -> Geometry {
        let (bm, bn, threads) = self.dims();
        Geometry {
            bm,
            bn,
            threads,
            smem: self.smem(),
        }
    }
    /// Picks the largest tile that still gives every SM a block.
    pub fn choose(m: usize, n: usize, batch: usize, sm_count: u32) -> Tile {
        let blocks = |t: Tile| {
            let (bm, bn, _) = t.dims();
            m.div_ceil(bm) * n.div_ceil(bn) * batch
        };
        let sms = sm_count as usize;
        if m <= consts::GEMM_S_BM {
            Tile::S
        } else if blocks(Tile::L) >= sms {
            Tile::L
        } else if blocks(Tile::M) >= sms / 2 {
            Tile::M
        } else {
            Tile::S
        }
    }
}

/// Epilogue and options of a dense GEMM.
#[derive(Clone, Copy, Debug)]
pub struct Gemm<'a> {
    pub alpha: f32,
    /// `[N]`, x's dtype.
    pub bias: Option<&'a Tensor>,
    pub act: Activation,
    /// Y's shape and dtype.
    pub residual: Option<&'a Tensor>,
    /// f32, or x's dtype (the default).
    pub out_dtype: Option<DType>,
    /// Force a tile configuration (tests cover each); None picks by shape.
    pub tile: Option<Tile>,
}

impl Default for Gemm<'_> {
    fn default() -> Self {
        Gemm {
            alpha: 1.0,
            bias: None,
            act: Activation::Identity,
            residual: None,
            out_dtype: None,
            tile: None,
        }
    }
}

/// The parameter block every GEMM kernel takes; mirrors `mk::GemmParams` (kernels/common/gemm.cuh).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct GemmParams {
    pub x: u64,
    pub w: u64,
    pub y: u64,
    pub bias: u64,
    pub residual: u64,
    pub sx: u64,
    pub sw: u64,
    pub meta: u64,
    pub stride_x: i64,
    pub stride_w: i64,
    pub stride_y: i64,
    pub stride_r: i64,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub alpha: f32,
    pub act: i32,
    pub group_size: i32,
    pub sx_per_row: i32,
    pub out_scale: f32,
}
// SAFETY: plain-old-data with the exact C layout of mk::GemmParams (8-byte fields first, then
// 4-byte ones, no padding: 128 bytes, asserted below).
crate::device::struct_param!(GemmParams);
const _: () = assert!(std::mem::size_of::<GemmParams>() == 128);

/// Shapes of `gemm(x, w)`: the problem dims and Y's shape.
pub(crate) fn gemm_dims(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
) -> Result<(GemmDims, Vec<usize>)> {
    let xs = x.shape();
    let ws = w.shape();
    let bad_w = || Error::Shape {
        op,
        arg: "w",
        got: ws.to_vec(),
        expected: "[N, K] or [B, N, K]".into(),
    };
    match ws.len() {
        2 => {
            let (n, k) = (ws[0], ws[1]);
            let Some((&kx, lead)) = xs.split_last() else {
                return Err(Error::Shape {
                    op,
                    arg: "x",
                    got: xs.to_vec(),
                    expected: format!("[..., {k}]"),
                });
            };
            if kx != k || lead.is_empty() {
                return Err(Error::Shape {
                    op,
                    arg: "x",
                    got: xs.to_vec(),
                    expected: format!("[..., {k}] (K of w {ws:?})"),
                });
            }
            let m = lead.iter().product();
            let mut ys = lead.to_vec();
            ys.push(n);
            Ok((
                GemmDims {
                    batch: 1,
                    m,
                    n,
                    k,
                    shared_w: true,
                },
                ys,
            ))
        }
        3 => {
            let (b, n, k) = (ws[0], ws[1], ws[2]);
            if xs.len() != 3 || xs[0] != b || xs[2] != k {
                return Err(Error::Shape {
                    op,
                    arg: "x",
                    got: xs.to_vec(),
                    expected: format!("[{b}, M, {k}] (batch and K of w {ws:?})"),
                });
            }
            Ok((
                GemmDims {
                    batch: b,
                    m: xs[1],
                    n,
                    k,
                    shared_w: false,
                },
                vec![b, xs[1], n],
            ))
        }
        _ => Err(bad_w()),
    }
}

/// Runs a dense GEMM into a new tensor on x's device.
pub fn gemm(x: &Tensor, w: &Tensor, g: &Gemm) -> Result<Tensor> {
    let (_, ys) = gemm_dims(OP, x, w)?;
    let mut out = Tensor::empty(&x.device(), &ys, g.out_dtype.unwrap_or(x.dtype()))?;
    gemm_into(x, w, g, &mut out)?;
    Ok(out)
}

const OP: &str = "gemm";

/// Runs a dense GEMM into `out` (Y's shape, the output dtype, x's device).
pub fn gemm_into(x: &Tensor, w: &Tensor, g: &Gemm, out: &mut Tensor) -> Result<()> {
    let dt = x.dtype();
    float_dtype(OP, "x", dt)?;
    same_dtype(OP, "w", w, dt)?;
    let (d, ys) = gemm_dims(OP, x, w)?;
    let odt = check_epilogue(OP, dt, d.n, &ys, g, out)?;
    if dt != DType::F32 && d.k % 8 != 0 {
        return Err(Error::Shape {
            op: OP,
            arg: "x",
            got: x.shape().to_vec(),
            expected: format!("K a multiple of 8 for {dt} tensor cores (K = {})", d.k),
        });
    }
    match backend(
        OP,
        x,
        &[
            ("w", Some(w)),
            ("bias", g.bias),
            ("residual", g.residual),
            ("out", Some(out)),
        ],
    )? {
        Backend::Cpu => {
            let (b, r) = (
                host_f64(OP, "bias", g.bias)?,
                host_f64(OP, "residual", g.residual)?,
            );
            let y = reference::gemm::gemm(
                &host(OP, "x", x)?.to_f64(),
                &host(OP, "w", w)?.to_f64(),
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
            if d.m == 0 || d.n == 0 || d.batch == 0 {
                return Ok(());
            }
            let gpu = gpu.clone();
            let p = GemmParams {
                stride_x: if d.batch > 1 { (d.m * d.k) as i64 } else { 0 },
                stride_w: if d.shared_w { 0 } else { (d.n * d.k) as i64 },
                stride_y: (d.m * d.n) as i64,
                stride_r: (d.m * d.n) as i64,
                alpha: g.alpha,
                act: g.act.code(),
                out_scale: 1.0,
                ..Default::default()
            };
            // K = 0 (a zero product) stays on the sm_80 kernels: a TMA map has no empty dims.
            if dt != DType::F32 && d.k > 0 && g.tile.is_none() && gpu.hopper_kernels() {
                let ops = Operands::new(OP, x, w, g.bias, g.residual)?;
                return super::gemm_hopper::launch(
                    &gpu,
                    dt,
                    odt,
                    d,
                    p,
                    ops,
                    dev_mut(OP, "out", out)?,
                );
            }
            let (kernel, tile) = if dt == DType::F32 {
                ("gemm_f32_f32".to_string(), None)
            } else {
                let t = g
                    .tile
                    .unwrap_or_else(|| Tile::choose(d.m, d.n, d.batch, gpu.sm_count()));
                (format!("gemm_{dt}_{odt}_{}", t.suffix()), Some(t))
            };
            let kernel = kernel_name(OP, kernel)?;
            let ops = Operands::new(OP, x, w, g.bias, g.residual)?;
            launch_gemm(
                &gpu,
                OP,
                kernel,
                tile.map(Tile::geometry),
                d,
                p,
                ops,
                dev_mut(OP, "out", out)?,
            )
        }
    }
}

/// Launch shape of a tensor-core GEMM kernel: block tile (M rows, N columns), threads,
/// dynamic shared memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub bm: usize,
    pub bn: usize,
    pub threads: u32,
    pub smem: u32,
}

/// Validates a dense-style GEMM epilogue (`Gemm`) for inputs of dtype `dt`, N columns and output
/// shape `ys`, and returns the output dtype.
pub(crate) fn check_epilogue(
    op: &'static str,
    dt: DType,
    n: usize,
    ys: &[usize],
    g: &Gemm,
    out: &Tensor,
) -> Result<DType> {
    let odt = g.out_dtype.unwrap_or(dt);
    if odt != dt && odt != DType::F32 {
        return Err(Error::DType {
            op,
            arg: "out_dtype",
            got: odt,
            expected: format!("{dt} or f32"),
        });
    }
    if out.dtype() != odt {
        return Err(Error::DType {
            op,
            arg: "out",
            got: out.dtype(),
            expected: odt.to_string(),
        });
    }
    if out.shape() != ys {
        return Err(Error::Shape {
            op,
            arg: "out",
            got: out.shape().to_vec(),
            expected: format!("{ys:?}"),
        });
    }
    if let Some(b) = g.bias {
        same_dtype(op, "bias", b, dt)?;
        if b.shape() != [n] {
            return Err(Error::Shape {
                op,
                arg: "bias",
                got: b.shape().to_vec(),
                expected: format!("[{n}] (N)"),
            });
        }
    }
    if let Some(r) = g.residual {
        if r.dtype() != odt {
            return Err(Error::DType {
                op,
                arg: "residual",
                got: r.dtype(),
                expected: format!("{odt} (the output dtype)"),
            });
        }
        if r.shape() != ys {
            return Err(Error::Shape {
                op,
                arg: "residual",
                got: r.shape().to_vec(),
                expected: format!("{ys:?} (the output shape)"),
            });
        }
    }
    if !g.alpha.is_finite() {
        return Err(Error::Invalid {
            op,
            arg: "alpha",
            detail: format!("{} is not finite", g.alpha),
        });
    }
    Ok(odt)
}

/// The device operands of one GEMM launch.
pub(crate) struct Operands<'a> {
    pub x: &'a DeviceTensor,
    pub w: &'a DeviceTensor,
    pub bias: Option<&'a DeviceTensor>,
    pub residual: Option<&'a DeviceTensor>,
    pub sx: Option<&'a DeviceTensor>,
    pub sw: Option<&'a DeviceTensor>,
    pub meta: Option<&'a DeviceTensor>,
}

impl<'a> Operands<'a> {
    /// X, W and the optional bias/residual of `op`, as device buffers; no scales or metadata.
    pub(crate) fn new(
        op: &'static str,
        x: &'a Tensor,
        w: &'a Tensor,
        bias: Option<&'a Tensor>,
        residual: Option<&'a Tensor>,
    ) -> Result<Self> {
        Ok(Operands {
            x: dev(op, "x", x)?,
            w: dev(op, "w", w)?,
            bias: bias.map(|b| dev(op, "bias", b)).transpose()?,
            residual: residual.map(|r| dev(op, "residual", r)).transpose()?,
            sx: None,
            sw: None,
            meta: None,
        })
    }
}

/// Fills the pointers and sizes of `p` and makes the one launch. `geo` None = the SIMT kernel
/// (`gemm_f32_f32`, its tile and block from common/consts.cuh GEMM_SIMT_*).
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_gemm(
    gpu: &Arc<Gpu>,
    op: &'static str,
    kernel: &'static str,
    geo: Option<Geometry>,
    d: GemmDims,
    mut p: GemmParams,
    o: Operands,
    y: &mut DeviceTensor,
) -> Result<()> {
    let Geometry {
        bm,
        bn,
        threads,
        smem,
    } = geo.unwrap_or(Geometry {
        bm: consts::GEMM_SIMT_BM,
        bn: consts::GEMM_SIMT_BN,
        threads: consts::GEMM_SIMT_THREADS as u32,
        smem: 0,
    });
    let grid_y = u32::try_from(d.m.div_ceil(bm))
        .ok()
        .filter(|&g| g <= 65_535);
    let grid_z = u32::try_from(d.batch).ok().filter(|&g| g <= 65_535);
    let (Some(grid_y), Some(grid_z)) = (grid_y, grid_z) else {
        return Err(Error::Invalid {
            op,
            arg: "shape",
            detail: format!(
                "M = {} (tile {bm}) or batch = {} exceeds the grid limit",
                d.m, d.batch
            ),
        });
    };
    let grid_x = u32::try_from(d.n.div_ceil(bn)).map_err(|_| Error::Invalid {
        op,
        arg: "N",
        detail: format!("{} exceeds the grid limit", d.n),
    })?;
    p.m = as_i32(op, "M", d.m)?;
    p.n = as_i32(op, "N", d.n)?;
    p.k = as_i32(op, "K", d.k)?;
    // Raw device addresses for the parameter block; the guards keep cudarc's stream-order
    // bookkeeping alive until the launch is queued.
    let px = o.x.addr();
    let pw = o.w.addr();
    let py = y.addr();
    p.x = px;
    p.w = pw;
    p.y = py;
    fn opt(t: Option<&DeviceTensor>) -> Option<u64> {
        t.map(DeviceTensor::addr)
    }
    let (gb, gr, gsx, gsw) = (opt(o.bias), opt(o.residual), opt(o.sx), opt(o.sw));
    p.bias = gb.unwrap_or(0);
    p.residual = gr.unwrap_or(0);
    p.sx = gsx.unwrap_or(0);
    p.sw = gsw.unwrap_or(0);
    let gm = opt(o.meta);
    p.meta = gm.unwrap_or(0);
    if geo.is_some() && [p.x, p.w, p.meta].iter().any(|a| a % 16 != 0) {
        return Err(Error::Invalid {
            op,
            arg: "x/w",
            detail: "tensor-core GEMM needs 16-byte aligned operands".into(),
        });
    }
    let cfg = LaunchConfig {
        grid_dim: (grid_x, grid_y, grid_z),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem,
    };
    let mut b = gpu.launcher(kernel);
    b.arg(&p);
    // SAFETY: `p` matches mk::GemmParams; every pointer is a live allocation on this GPU whose
    // size was checked against (batch, M, N, K) by the caller; the kernel reads X/W rows only
    // below M/N and K, and writes Y only inside [batch, M, N].
    unsafe { b.launch(cfg) }?;
    Ok(())
}
