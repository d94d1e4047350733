//! Fused softmax attention `O = softmax(Q·Kᵀ·scale + bias + mask)·V`: kernel
//! `kernels/attention.cu`, reference `src/reference/attention.rs`, tests `tests/attention.rs`,
//! bench `benches/attention.rs`.
//!
//! A [`SeqBatch`] says where each sequence's query and key rows sit in the token-major tensors:
//! padded (every sequence owns `max` rows, the first `len` real) or packed (cumulative offsets,
//! no padding tokens at all). Q/K/V come as separate `[tokens, heads, head_dim]` tensors or as
//! one QKV projection output viewed `[tokens, 3, heads, head_dim]` ([`Qkv`]), read in place. The
//! output is `[tokens, heads, head_dim]` (= `[tokens, heads·head_dim]`, what the output
//! projection reads); padding rows of a padded batch are written as zeros. Any head count works
//! (pruned layers keep whatever heads are left). [`attention_unfused`] runs the same math as
//! GEMM → softmax → GEMM with the library's other kernels, for comparison.

use super::{Backend, Gemm, backend, consts, dev, dev_mut, host, kernel_name, softmax_into};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::reference::attention::{self as refattn, AttnProblem, SeqRows, Strides};
use crate::tensor::{Device, HostTensor, Tensor};
use cudarc::driver::LaunchConfig;
use std::sync::Arc;

const OP: &str = "attention";

/// Head dimensions the fused kernel is instantiated for (common/consts.cuh `ATTN_HEAD_DIMS`).
pub const HEAD_DIMS: [usize; consts::ATTN_HEAD_DIMS.len()] = consts::ATTN_HEAD_DIMS;
/// Query rows per CTA the kernel is instantiated for (kernels/attention.cu `AttnCfg::BR`,
/// common/consts.cuh `ATTN_BLOCK_ROWS`), in increasing order.
pub const BLOCK_ROWS: [usize; consts::ATTN_BLOCK_ROWS.len()] = consts::ATTN_BLOCK_ROWS;

fn invalid(arg: &'static str, detail: String) -> Error {
    Error::Invalid {
        op: OP,
        arg,
        detail,
    }
}

/// Where the sequences of a batch sit in the token-major Q/K/V/O tensors, validated once and
/// uploaded once (a BERT forward reuses it in every layer).
#[derive(Debug)]
pub struct SeqBatch {
    rows: Vec<SeqRows>,
    /// Rows per sequence in the q and k tensors of a padded batch; None when packed.
    padded: Option<(usize, usize)>,
    q_tokens: usize,
    k_tokens: usize,
    /// i32 `[batch, 4]` (q_start, q_len, k_start, k_len) on the device the batch was built for.
    seqs: Tensor,
}

impl SeqBatch {
    /// Self-attention over a padded batch: sequence `b` owns rows `b·max_seq ..` of Q, K and V,
    /// its first `lens[b]` real.
    pub fn padded(device: &Device, lens: &[usize], max_seq: usize) -> Result<Self> {
        Self::padded_cross(device, lens, max_seq, lens, max_seq)
    }

    /// Padded queries and keys of different lengths (`q_lens[b] <= max_q`, `k_lens[b] <= max_k`).
    pub fn padded_cross(
        device: &Device,
        q_lens: &[usize],
        max_q: usize,
        k_lens: &[usize],
        max_k: usize,
    ) -> Result<Self> {
        if q_lens.len() != k_lens.len() || q_lens.is_empty() {
            return Err(invalid(
                "lens",
                format!(
                    "{} query and {} key lengths; expected one of each per sequence (batch >= 1)",
                    q_lens.len(),
                    k_lens.len()
                ),
            ));
        }
        for (arg, lens, max) in [("q_lens", q_lens, max_q), ("k_lens", k_lens, max_k)] {
            if let Some((b, &l)) = lens.iter().enumerate().find(|(_, l)| **l > max) {
                return Err(invalid(
                    arg,
                    format!("sequence {b} has length {l}, longer than the buffer's {max} rows"),
                ));
            }
        }
        let rows = q_lens
            .iter()
            .zip(k_lens)
            .enumerate()
            .map(|(b, (&ql, &kl))| SeqRows {
                q_start: b * max_q,
                q_len: ql,
                k_start: b * max_k,
                k_len: kl,
            })
            .collect();
        let n = q_lens.len();
        Self::build(device, rows, Some((max_q, max_k)), n * max_q, n * max_k)
    }

    /// Self-attention over a packed batch: sequence `b` is rows `cu_seqlens[b]..cu_seqlens[b+1]`.
    pub fn packed(device: &Device, cu_seqlens: &[usize]) -> Result<Self> {
        Self::packed_cross(device, cu_seqlens, cu_seqlens)
    }

    /// Packed queries and keys with their own cumulative offsets.
    pub fn packed_cross(device: &Device, cu_q: &[usize], cu_k: &[usize]) -> Result<Self> {
        for (arg, cu) in [("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)] {
            if cu.len() < 2 || cu[0] != 0 {
                return Err(invalid(
                    arg,
                    format!("{cu:?}: expected batch + 1 >= 2 offsets starting at 0"),
                ));
            }
            if let Some(b) = cu.windows(2).position(|w| w[1] < w[0]) {
                return Err(invalid(
                    arg,
                    format!(
                        "offsets not increasing: offset {} = {} follows {}",
                        b + 1,
                        cu[b + 1],
                        cu[b]
                    ),
                ));
            }
        }
        if cu_q.len() != cu_k.len() {
            return Err(invalid(
                "cu_seqlens_k",
                format!(
                    "{} offsets for keys, {} for queries: expected the same batch",
                    cu_k.len(),
                    cu_q.len()
                ),
            ));
        }
        let rows = cu_q
            .windows(2)
            .zip(cu_k.windows(2))
            .map(|(q, k)| SeqRows {
                q_start: q[0],
                q_len: q[1] - q[0],
                k_start: k[0],
                k_len: k[1] - k[0],
            })
            .collect();
        let (tq, tk) = (cu_q[cu_q.len() - 1], cu_k[cu_k.len() - 1]);
        Self::build(device, rows, None, tq, tk)
    }

    fn build(
        device: &Device,
        rows: Vec<SeqRows>,
        padded: Option<(usize, usize)>,
        q_tokens: usize,
        k_tokens: usize,
    ) -> Result<Self> {
        if rows.len() > 65_535 {
            return Err(invalid(
                "lens",
                format!("{} sequences exceed the grid limit 65535", rows.len()),
            ));
        }
        let mut flat = Vec::with_capacity(rows.len() * 4);
        for r in &rows {
            for v in [r.q_start, r.q_len, r.k_start, r.k_len] {
                flat.push(i32::try_from(v).map_err(|_| {
                    invalid("lens", format!("token offset {v} exceeds {}", i32::MAX))
                })?);
            }
        }
        for t in [q_tokens, k_tokens] {
            if i32::try_from(t).is_err() {
                return Err(invalid("lens", format!("{t} tokens exceed {}", i32::MAX)));
            }
        }
        let seqs = HostTensor::new(&[rows.len(), 4], flat)?.to_device(device)?;
        Ok(SeqBatch {
            rows,
            padded,
            q_tokens,
            k_tokens,
            seqs,
        })
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.rows.len()
    }
    /// The per-sequence rows (starts and lengths).
    pub fn rows(&self) -> &[SeqRows] {
        &self.rows
    }
    pub fn is_packed(&self) -> bool {
        self.padded.is_none()
    }
    /// Token rows the query (and output) tensor must have.
    pub fn q_tokens(&self) -> usize {
        self.q_tokens
    }
    /// Token rows the key and value tensors must have.
    pub fn k_tokens(&self) -> usize {
        self.k_tokens
    }
    pub fn max_q_len(&self) -> usize {
        self.rows.iter().map(|r| r.q_len).max().unwrap_or(0)
    }
    pub fn max_k_len(&self) -> usize {
        self.rows.iter().map(|r| r.k_len).max().unwrap_or(0)
    }
    /// Query-key pairs attended (before causal masking): the FLOP count is 4·heads·d times this.
    pub fn pairs(&self) -> usize {
        self.rows.iter().map(|r| r.q_len * r.k_len).sum()
    }
    pub fn device(&self) -> Device {
        self.seqs.device()
    }
    /// Rows per sequence in a padded output (0 when packed).
    fn out_rows(&self) -> usize {
        self.padded.map_or(0, |(q, _)| q)
    }
}

/// The Q, K and V operands.
#[derive(Clone, Copy, Debug)]
pub enum Qkv<'a> {
    /// Separate tensors `[..., heads, head_dim]` (leading dims are token rows); K and V share
    /// their shape, Q may differ in its token count (cross attention).
    Separate {
        q: &'a Tensor,
        k: &'a Tensor,
        v: &'a Tensor,
    },
    /// A fused QKV projection output `[tokens, 3, heads, head_dim]` (q | k | v per token, the
    /// layout of one Linear with concatenated weights; [`Tensor::reshape`] a `[tokens, 3·h·d]`
    /// GEMM output), read in place.
    Packed(&'a Tensor),
}

/// Options of one attention call.
#[derive(Clone, Copy, Debug, Default)]
pub struct Attention<'a> {
    /// Softmax scale; None = `1/√head_dim`.
    pub scale: Option<f32>,
    /// Key `j` is visible to query `i` only if `j <= i + k_len - q_len` (bottom-right aligned).
    pub causal: bool,
    /// f32 `[heads]`: ALiBi slopes, adding `-slope·|i + k_len - q_len - j|`.
    pub alibi: Option<&'a Tensor>,
    /// f32 `[1 or batch, heads, >= max q_len, >= max k_len]`: additive bias in each
    /// sequence's own (query, key) coordinates (`-inf` drops a key).
    pub bias: Option<&'a Tensor>,
    /// Query rows per CTA, 64 or 128 ([`BLOCK_ROWS`]); None picks by shape (tests force each).
    pub block_rows: Option<usize>,
}

/// Resolved geometry of one call: element offsets and strides of q/k/v inside their tensors.
#[derive(Clone, Copy, Debug)]
struct Geo {
    heads: usize,
    d: usize,
    dtype: DType,
    q_tokens: usize,
    k_tokens: usize,
    q: (usize, Strides),
    k: (usize, Strides),
    v: (usize, Strides),
}

impl Qkv<'_> {
    fn tensors(&self) -> [&Tensor; 3] {
        match *self {
            Qkv::Separate { q, k, v } => [q, k, v],
            Qkv::Packed(t) => [t, t, t],
        }
    }

    fn geometry(&self) -> Result<Geo> {
        let shape_err = |arg: &'static str, t: &Tensor, expected: String| Error::Shape {
            op: OP,
            arg,
            got: t.shape().to_vec(),
            expected,
        };
        match *self {
            Qkv::Separate { q, k, v } => {
                let split = |arg: &'static str, t: &Tensor| -> Result<(usize, usize, usize)> {
                    let s = t.shape();
                    if s.len() < 3 {
                        return Err(shape_err(arg, t, "[..., heads, head_dim]".into()));
                    }
                    let (h, d) = (s[s.len() - 2], s[s.len() - 1]);
                    Ok((s[..s.len() - 2].iter().product(), h, d))
                };
                let (tq, h, d) = split("q", q)?;
                let (tk, hk, dk) = split("k", k)?;
                if (hk, dk) != (h, d) {
                    return Err(shape_err(
                        "k",
                        k,
                        format!("[..., {h}, {d}] (heads and head_dim of q)"),
                    ));
                }
                if v.shape() != k.shape() {
                    return Err(shape_err(
                        "v",
                        v,
                        format!("{:?} (the shape of k)", k.shape()),
                    ));
                }
                for (arg, t) in [("k", k), ("v", v)] {
                    if t.dtype() != q.dtype() {
                        return Err(Error::DType {
                            op: OP,
                            arg,
                            got: t.dtype(),
                            expected: format!("{} (the dtype of q)", q.dtype()),
                        });
                    }
                }
                let st = Strides {
                    tok: h * d,
                    head: d,
                };
                Ok(Geo {
                    heads: h,
                    d,
                    dtype: q.dtype(),
                    q_tokens: tq,
                    k_tokens: tk,
                    q: (0, st),
                    k: (0, st),
                    v: (0, st),
                })
            }
            Qkv::Packed(t) => {
                let s = t.shape();
                if s.len() != 4 || s[1] != 3 {
                    return Err(shape_err(
                        "qkv",
                        t,
                        "[tokens, 3, heads, head_dim] (a QKV projection output)".into(),
                    ));
                }
                let (h, d) = (s[2], s[3]);
                let st = Strides {
                    tok: 3 * h * d,
                    head: d,
                };
                Ok(Geo {
                    heads: h,
                    d,
                    dtype: t.dtype(),
                    q_tokens: s[0],
                    k_tokens: s[0],
                    q: (0, st),
                    k: (h * d, st),
                    v: (2 * h * d, st),
                })
            }
        }
    }
}

/// Checks everything but the output; returns the geometry and the softmax scale.
fn check(qkv: &Qkv, batch: &SeqBatch, a: &Attention) -> Result<(Geo, f32)> {
    let g = qkv.geometry()?;
    if !g.dtype.is_float() {
        return Err(Error::DType {
            op: OP,
            arg: "q",
            got: g.dtype,
            expected: "f16 or bf16 (f32 too on the CPU)".into(),
        });
    }
    if !HEAD_DIMS.contains(&g.d) {
        return Err(invalid(
            "head_dim",
            format!("{} is not supported; expected one of {HEAD_DIMS:?}", g.d),
        ));
    }
    if g.heads == 0 || g.heads > 65_535 {
        return Err(invalid("heads", format!("{}; expected 1..=65535", g.heads)));
    }
    let [q, k, _] = qkv.tensors();
    let packed = matches!(qkv, Qkv::Packed(_));
    for (arg, t, got, want, what) in [
        ("q", q, g.q_tokens, batch.q_tokens(), "queries"),
        ("k", k, g.k_tokens, batch.k_tokens(), "keys"),
    ] {
        if got != want {
            return Err(Error::Shape {
                op: OP,
                arg: if packed { "qkv" } else { arg },
                got: t.shape().to_vec(),
                expected: format!("{want} token rows (the batch's {what})"),
            });
        }
    }
    if let Some(br) = a.block_rows
        && !BLOCK_ROWS.contains(&br)
    {
        return Err(invalid(
            "block_rows",
            format!("{br}; expected one of {BLOCK_ROWS:?}"),
        ));
    }
    let scale = a.scale.unwrap_or(1.0 / (g.d as f32).sqrt());
    if !scale.is_finite() {
        return Err(invalid("scale", format!("{scale} is not finite")));
    }
    if let Some(t) = a.alibi {
        if t.dtype() != DType::F32 || t.shape() != [g.heads] {
            return Err(Error::Shape {
                op: OP,
                arg: "alibi",
                got: t.shape().to_vec(),
                expected: format!("f32 [{}] (one slope per head), got {}", g.heads, t.dtype()),
            });
        }
    }
    if let Some(t) = a.bias {
        let s = t.shape();
        let ok = t.dtype() == DType::F32
            && s.len() == 4
            && (s[0] == 1 || s[0] == batch.batch())
            && s[1] == g.heads
            && s[2] >= batch.max_q_len()
            && s[3] >= batch.max_k_len();
        if !ok {
            return Err(Error::Shape {
                op: OP,
                arg: "bias",
                got: s.to_vec(),
                expected: format!(
                    "f32 [1 or {}, {}, >= {}, >= {}] (batch, heads, query and key lengths), got {}",
                    batch.batch(),
                    g.heads,
                    batch.max_q_len(),
                    batch.max_k_len(),
                    t.dtype()
                ),
            });
        }
    }
    Ok((g, scale))
}

fn bias_strides(t: &Tensor) -> [usize; 3] {
    let s = t.shape();
    let (h, q, k) = (s[1], s[2], s[3]);
    [if s[0] == 1 { 0 } else { h * q * k }, q * k, k]
}

fn check_out(g: &Geo, out: &Tensor, want: &[usize]) -> Result<()> {
    let flat = [g.q_tokens, g.heads * g.d];
    if out.dtype() != g.dtype {
        return Err(Error::DType {
            op: OP,
            arg: "out",
            got: out.dtype(),
            expected: format!("{} (the dtype of q)", g.dtype),
        });
    }
    if out.shape() != want && out.shape() != flat {
        return Err(Error::Shape {
            op: OP,
            arg: "out",
            got: out.shape().to_vec(),
            expected: format!("{want:?} or {flat:?}"),
        });
    }
    Ok(())
}

fn out_shape(qkv: &Qkv, g: &Geo) -> Vec<usize> {
    match qkv {
        Qkv::Separate { q, .. } => q.shape().to_vec(),
        Qkv::Packed(_) => vec![g.q_tokens, g.heads, g.d],
    }
}

/// Fused attention into a new tensor (`[tokens, heads, head_dim]`, or q's shape).
pub fn attention(qkv: Qkv, batch: &SeqBatch, a: &Attention) -> Result<Tensor> {
    let (g, _) = check(&qkv, batch, a)?;
    let shape = out_shape(&qkv, &g);
    let mut out = Tensor::empty(&qkv.tensors()[0].device(), &shape, g.dtype)?;
    attention_into(qkv, batch, a, &mut out)?;
    Ok(out)
}

/// Host f64 copy of an optional operand.
type HostCopy = Option<Vec<f64>>;

/// Host copies of the ALiBi slopes and the bias, for the reference and the unfused mask.
fn host_extras(a: &Attention) -> Result<(HostCopy, HostCopy)> {
    let h = |t: Option<&Tensor>| t.map(|t| t.to_host().map(|h| h.to_f64())).transpose();
    Ok((h(a.alibi)?, h(a.bias)?))
}

/// The reference's view of one call.
fn problem<'a>(
    batch: &'a SeqBatch,
    g: &Geo,
    scale: f32,
    a: &Attention,
    alibi: &'a HostCopy,
    bias: &'a HostCopy,
) -> AttnProblem<'a> {
    AttnProblem {
        seqs: batch.rows(),
        heads: g.heads,
        head_dim: g.d,
        q: g.q.1,
        k: g.k.1,
        v: g.v.1,
        out_tokens: g.q_tokens,
        scale: f64::from(scale),
        causal: a.causal,
        alibi: alibi.as_deref(),
        bias: bias.as_deref().zip(a.bias.map(bias_strides)),
    }
}

/// The CPU path (reference in f64) shared by the fused and unfused entry points.
fn cpu(
    qkv: &Qkv,
    batch: &SeqBatch,
    a: &Attention,
    g: &Geo,
    scale: f32,
    out: &mut Tensor,
) -> Result<()> {
    let [q, k, v] = qkv.tensors();
    let (q, k, v) = (
        host(OP, "q", q)?.to_f64(),
        host(OP, "k", k)?.to_f64(),
        host(OP, "v", v)?.to_f64(),
    );
    let (alibi, bias) = host_extras(a)?;
    let p = problem(batch, g, scale, a, &alibi, &bias);
    let y = refattn::attention(&q[g.q.0..], &k[g.k.0..], &v[g.v.0..], &p);
    *out = Tensor::Host(HostTensor::from_f64(out.shape(), &y, g.dtype)?);
    Ok(())
}

/// Fused attention into `out` (`[tokens, heads, head_dim]` or `[tokens, heads·head_dim]`, q's
/// dtype and device).
pub fn attention_into(qkv: Qkv, batch: &SeqBatch, a: &Attention, out: &mut Tensor) -> Result<()> {
    let (g, scale) = check(&qkv, batch, a)?;
    check_out(&g, out, &out_shape(&qkv, &g))?;
    let [q, k, v] = qkv.tensors();
    let others = [
        ("k", Some(k)),
        ("v", Some(v)),
        ("seqs", Some(&batch.seqs)),
        ("alibi", a.alibi),
        ("bias", a.bias),
        ("out", Some(&*out)),
    ];
    match backend(OP, q, &others)? {
        Backend::Cpu => cpu(&qkv, batch, a, &g, scale, out),
        Backend::Gpu(gpu) => {
            let gpu = gpu.clone();
            launch_fused(&gpu, &qkv, batch, a, &g, scale, out)
        }
    }
}

/// Mirrors `mk::AttnParams` (kernels/attention.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AttnParams {
    pub(crate) q: u64,
    pub(crate) k: u64,
    pub(crate) v: u64,
    pub(crate) o: u64,
    pub(crate) seqs: u64,
    pub(crate) bias: u64,
    pub(crate) alibi: u64,
    pub(crate) pad0: u64,
    pub(crate) q_tok: i64,
    pub(crate) q_head: i64,
    pub(crate) k_tok: i64,
    pub(crate) k_head: i64,
    pub(crate) v_tok: i64,
    pub(crate) v_head: i64,
    pub(crate) o_tok: i64,
    pub(crate) o_head: i64,
    pub(crate) bias_b: i64,
    pub(crate) bias_h: i64,
    pub(crate) bias_q: i64,
    pub(crate) heads: i32,
    pub(crate) max_q: i32,
    pub(crate) causal: i32,
    pub(crate) scale_log2: f32,
}
// SAFETY: plain-old-data with the exact C layout of mk::AttnParams (8-byte fields, then four
// 4-byte ones; 168 bytes, asserted below).
crate::device::struct_param!(AttnParams);
const _: () = assert!(std::mem::size_of::<AttnParams>() == 168);

fn launch_fused(
    gpu: &Arc<Gpu>,
    qkv: &Qkv,
    batch: &SeqBatch,
    a: &Attention,
    g: &Geo,
    scale: f32,
    out: &mut Tensor,
) -> Result<()> {
    if g.dtype == DType::F32 {
        return Err(Error::DType {
            op: OP,
            arg: "q",
            got: g.dtype,
            expected: "f16 or bf16 (the fused kernel's inputs)".into(),
        });
    }
    let rows = batch.out_rows().max(batch.max_q_len());
    if rows == 0 {
        return Ok(());
    }
    let br = match a.block_rows {
        Some(br) => br,
        // 128 rows share each K/V block between 8 warps (half the K/V traffic per query) when
        // sequences are long enough to fill them and there are still CTAs for every SM.
        None => {
            let [small, large] = BLOCK_ROWS;
            let ctas = rows.div_ceil(large) * g.heads * batch.batch();
            if batch.max_q_len() > small && ctas >= gpu.sm_count() as usize {
                large
            } else {
                small
            }
        }
    };
    let kernel = kernel_name(OP, format!("attention_{}_d{}_m{br}", g.dtype, g.d))?;
    let smem = consts::ATTN_SMEM(br, g.d) as u32;
    let [q, k, v] = qkv.tensors();
    let es = g.dtype.size() as u64;
    let pq = dev(OP, "q", q)?.addr();
    let pk = dev(OP, "k", k)?.addr();
    let pv = dev(OP, "v", v)?.addr();
    let ps = dev(OP, "seqs", &batch.seqs)?.addr();
    let gb = a
        .bias
        .map(|t| dev(OP, "bias", t).map(|d| d.addr()))
        .transpose()?;
    let ga = a
        .alibi
        .map(|t| dev(OP, "alibi", t).map(|d| d.addr()))
        .transpose()?;
    let [bias_b, bias_h, bias_q] = a.bias.map(bias_strides).unwrap_or([0; 3]);
    let po = dev_mut(OP, "out", out)?.addr();
    let p = AttnParams {
        q: pq + g.q.0 as u64 * es,
        k: pk + g.k.0 as u64 * es,
        v: pv + g.v.0 as u64 * es,
        o: po,
        seqs: ps,
        bias: gb.unwrap_or(0),
        alibi: ga.unwrap_or(0),
        pad0: 0,
        q_tok: g.q.1.tok as i64,
        q_head: g.q.1.head as i64,
        k_tok: g.k.1.tok as i64,
        k_head: g.k.1.head as i64,
        v_tok: g.v.1.tok as i64,
        v_head: g.v.1.head as i64,
        o_tok: (g.heads * g.d) as i64,
        o_head: g.d as i64,
        bias_b: bias_b as i64,
        bias_h: bias_h as i64,
        bias_q: bias_q as i64,
        heads: g.heads as i32,
        max_q: batch.out_rows() as i32,
        causal: i32::from(a.causal),
        scale_log2: scale * std::f32::consts::LOG2_E,
    };
    // 16-byte cp.async rows: every base and stride must keep rows 16-byte aligned.
    let misaligned = [p.q, p.k, p.v, p.o].iter().any(|x| x % 16 != 0)
        || [p.q_tok, p.q_head, p.k_tok, p.k_head, p.v_tok, p.v_head]
            .iter()
            .any(|s| s % 8 != 0);
    if misaligned {
        return Err(invalid(
            "q/k/v",
            "the fused kernel needs 16-byte aligned rows".into(),
        ));
    }
    let grid_x = u32::try_from(rows.div_ceil(br))
        .map_err(|_| invalid("lens", format!("{rows} query rows exceed the grid limit")))?;
    let cfg = LaunchConfig {
        grid_dim: (grid_x, g.heads as u32, batch.batch() as u32),
        block_dim: ((br / consts::ATTN_WARP_ROWS * 32) as u32, 1, 1),
        shared_mem_bytes: smem,
    };
    let mut b = gpu.launcher(kernel);
    b.arg(&p);
    // SAFETY: `p` matches mk::AttnParams. Every sequence's rows were validated against the
    // token counts of q/k/v/out (check, check_out; SeqBatch validates offsets and lengths), the
    // bias covers [batch or 1, heads, max q_len, max k_len], alibi holds `heads` slopes, and the
    // kernel touches only rows inside its sequences (plus the padding rows of a padded output).
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// The unfused comparison path: gather heads → `S = scale·Q·Kᵀ` (tensor-core GEMM, input
/// precision) → masked row softmax → `P·V` (GEMM) → scatter. Same semantics as [`attention`];
/// its additive f32 mask (`[batch, max_k]` for key padding alone; `[batch·heads·max_q, max_k]`
/// with causal, ALiBi or a bias) is built on the host once per [`UnfusedPlan`], and the seq×seq
/// scores and probabilities are materialised: it is for comparison and testing, not serving.
pub fn attention_unfused(qkv: Qkv, batch: &SeqBatch, a: &Attention) -> Result<Tensor> {
    let plan = UnfusedPlan::new(qkv, batch, a)?;
    let (g, _) = check(&qkv, batch, a)?;
    let mut out = Tensor::empty(&qkv.tensors()[0].device(), &out_shape(&qkv, &g), g.dtype)?;
    plan.run_into(qkv, batch, a, &mut out)?;
    Ok(out)
}

/// The mask and sizes of the unfused path for one (batch, options) pair.
pub struct UnfusedPlan {
    mask: Tensor,
    /// Query rows per (sequence, head) block and keys rounded up to 8 (GEMM K alignment).
    sq: usize,
    skp: usize,
}

impl UnfusedPlan {
    /// Validates the call and builds the additive mask on the host (uploaded to q's device).
    pub fn new(qkv: Qkv, batch: &SeqBatch, a: &Attention) -> Result<Self> {
        let (g, scale) = check(&qkv, batch, a)?;
        let sq = batch.out_rows().max(batch.max_q_len());
        let skp = batch.max_k_len().div_ceil(8).max(1) * 8;
        let dev0 = qkv.tensors()[0].device();
        let (alibi, bias) = host_extras(a)?;
        let p = problem(batch, &g, scale, a, &alibi, &bias);
        // Key padding alone is one mask row per sequence, broadcast over its heads and query
        // rows (padding query rows are zeroed by the scatter); anything per row needs a row each.
        let per_seq = !a.causal && a.alibi.is_none() && a.bias.is_none();
        let rows = if per_seq {
            batch.batch()
        } else {
            batch.batch() * g.heads * sq
        };
        let mut m = vec![f64::NEG_INFINITY; rows * skp];
        for (b, s) in batch.rows().iter().enumerate() {
            if per_seq {
                m[b * skp..][..s.k_len].fill(0.0);
                continue;
            }
            for h in 0..g.heads {
                for i in 0..s.q_len {
                    let row = &mut m[((b * g.heads + h) * sq + i) * skp..][..skp];
                    for (j, x) in row.iter_mut().enumerate().take(s.k_len) {
                        *x = refattn::mask_term(&p, b, h, i, j);
                    }
                }
            }
        }
        let mask = HostTensor::from_f64(&[rows, skp], &m, DType::F32)?.to_device(&dev0)?;
        Ok(UnfusedPlan { mask, sq, skp })
    }

    /// Runs the unfused path into `out` (as [`attention_into`]).
    pub fn run_into(
        &self,
        qkv: Qkv,
        batch: &SeqBatch,
        a: &Attention,
        out: &mut Tensor,
    ) -> Result<()> {
        let (g, scale) = check(&qkv, batch, a)?;
        check_out(&g, out, &out_shape(&qkv, &g))?;
        let [q, k, v] = qkv.tensors();
        let others = [
            ("k", Some(k)),
            ("v", Some(v)),
            ("seqs", Some(&batch.seqs)),
            ("alibi", a.alibi),
            ("bias", a.bias),
            ("out", Some(&*out)),
        ];
        let be = backend(OP, q, &others)?;
        let mask = &self.mask;
        let rows = [batch.batch(), batch.batch() * g.heads * self.sq];
        if !rows.contains(&mask.shape()[0]) || mask.shape()[1] != self.skp {
            return Err(invalid(
                "plan",
                format!(
                    "mask {:?} was built for another batch or head count",
                    mask.shape()
                ),
            ));
        }
        let (bh, sq, skp, d) = (batch.batch() * g.heads, self.sq, self.skp, g.d);
        if sq == 0 {
            return Ok(());
        }
        let (qg, kg, vt) = match &be {
            Backend::Cpu => {
                let hv = |t: &Tensor| host(OP, "q/k/v", t).map(HostTensor::to_f64);
                let (qh, kh, vh) = (hv(q)?, hv(k)?, hv(v)?);
                let rows = batch.rows();
                let mk = |vals: Vec<f64>, shape: &[usize]| -> Result<Tensor> {
                    Ok(Tensor::Host(HostTensor::from_f64(shape, &vals, g.dtype)?))
                };
                (
                    mk(
                        gather_host(&qh, g.q, rows, false, &g, sq, false),
                        &[bh, sq, d],
                    )?,
                    mk(
                        gather_host(&kh, g.k, rows, true, &g, skp, false),
                        &[bh, skp, d],
                    )?,
                    mk(
                        gather_host(&vh, g.v, rows, true, &g, skp, true),
                        &[bh, d, skp],
                    )?,
                )
            }
            Backend::Gpu(gpu) => {
                let dv = Device::Gpu((*gpu).clone());
                let mut qg = Tensor::empty(&dv, &[bh, sq, d], g.dtype)?;
                let mut kg = Tensor::empty(&dv, &[bh, skp, d], g.dtype)?;
                let mut vt = Tensor::empty(&dv, &[bh, d, skp], g.dtype)?;
                let m = (batch.batch() as i32, g.heads as i32, d as i32);
                let s = &batch.seqs;
                gather(gpu, &g, q, g.q, s, 0, sq, m, false, &mut qg)?;
                gather(gpu, &g, k, g.k, s, 1, skp, m, false, &mut kg)?;
                gather(gpu, &g, v, g.v, s, 1, skp, m, true, &mut vt)?;
                (qg, kg, vt)
            }
        };
        let scores = super::gemm(
            &qg,
            &kg,
            &Gemm {
                alpha: scale,
                ..Default::default()
            },
        )?
        .reshape(&[bh * sq, skp])?;
        let mut probs = Tensor::empty(&scores.device(), &[bh * sq, skp], g.dtype)?;
        softmax_into(&scores, Some(mask), 1.0, &mut probs)?;
        let probs = probs.reshape(&[bh, sq, skp])?;
        let o = super::gemm(&probs, &vt, &Gemm::default())?;
        match &be {
            Backend::Cpu => {
                let y = scatter_host(&host(OP, "o", &o)?.to_f64(), batch, &g, sq);
                *out = Tensor::Host(HostTensor::from_f64(out.shape(), &y, g.dtype)?);
                Ok(())
            }
            Backend::Gpu(gpu) => {
                let m = (batch.batch() as i32, g.heads as i32, d as i32);
                scatter(gpu, &g, &o, &batch.seqs, sq, batch.out_rows(), m, out)
            }
        }
    }
}

/// Host twin of `attention_gather_*`: head h of each sequence into `[batch·heads, rows, d]`
/// (`[batch·heads, d, rows]` transposed), zero past the sequence's length.
fn gather_host(
    src: &[f64],
    (off, st): (usize, Strides),
    seqs: &[SeqRows],
    keys: bool,
    g: &Geo,
    rows: usize,
    transpose: bool,
) -> Vec<f64> {
    let d = g.d;
    let mut out = vec![0.0; seqs.len() * g.heads * rows * d];
    for (b, s) in seqs.iter().enumerate() {
        let (start, len) = if keys {
            (s.k_start, s.k_len)
        } else {
            (s.q_start, s.q_len)
        };
        for h in 0..g.heads {
            let bh = b * g.heads + h;
            for r in 0..len {
                let row = &src[off + (start + r) * st.tok + h * st.head..][..d];
                for (c, &x) in row.iter().enumerate() {
                    let at = if transpose {
                        (bh * d + c) * rows + r
                    } else {
                        (bh * rows + r) * d + c
                    };
                    out[at] = x;
                }
            }
        }
    }
    out
}

/// Host twin of `attention_scatter_*`: `[batch·heads, sq, d]` back to `[tokens, heads, d]`,
/// padding rows zero.
fn scatter_host(o: &[f64], batch: &SeqBatch, g: &Geo, sq: usize) -> Vec<f64> {
    let (h, d) = (g.heads, g.d);
    let mut out = vec![0.0; g.q_tokens * h * d];
    for (b, s) in batch.rows().iter().enumerate() {
        for hh in 0..h {
            for r in 0..s.q_len {
                let src = &o[(((b * h + hh) * sq) + r) * d..][..d];
                out[((s.q_start + r) * h + hh) * d..][..d].copy_from_slice(src);
            }
        }
    }
    out
}

fn move_grid(gpu: &Gpu, total: usize) -> LaunchConfig {
    let threads = consts::ATTN_MOVE_THREADS;
    let blocks = total
        .div_ceil(threads)
        .clamp(1, gpu.sm_count() as usize * 32) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One head-gather launch (`attention_gather_*`) of q (`which` 0) or k/v (1) into `dst`.
#[allow(clippy::too_many_arguments)]
fn gather(
    gpu: &Arc<Gpu>,
    g: &Geo,
    src: &Tensor,
    (off, st): (usize, Strides),
    seqs: &Tensor,
    which: i32,
    rows: usize,
    (nb, nh, d): (i32, i32, i32),
    transpose: bool,
    dst: &mut Tensor,
) -> Result<()> {
    let kernel = kernel_name(OP, format!("attention_gather_{}", g.dtype))?;
    let ps = dev(OP, "src", src)?.addr();
    let src_ptr = ps + (off * g.dtype.size()) as u64;
    let (tok, head, rows_i, tr) = (
        st.tok as i64,
        st.head as i64,
        rows as i32,
        i32::from(transpose),
    );
    let total = dst.len();
    let sd = dev(OP, "seqs", seqs)?;
    let dd = dev_mut(OP, "dst", dst)?;
    let mut b = gpu.launcher(kernel);
    b.arg(dd.buffer_mut())
        .arg(&src_ptr)
        .arg(sd.buffer())
        .arg(&which)
        .arg(&tok)
        .arg(&head)
        .arg(&nb)
        .arg(&nh)
        .arg(&rows_i)
        .arg(&d)
        .arg(&tr);
    // SAFETY: matches attention_gather_*(dst, src, seqs, which, tok, head, batch, heads, S, D,
    // transpose); dst holds batch·heads·S·D elements; src rows are those of validated sequences.
    unsafe { b.launch(move_grid(gpu, total)) }?;
    Ok(())
}

/// The head-scatter launch (`attention_scatter_*`) of `[batch·heads, sq, d]` into `out`.
#[allow(clippy::too_many_arguments)]
fn scatter(
    gpu: &Arc<Gpu>,
    g: &Geo,
    src: &Tensor,
    seqs: &Tensor,
    sq: usize,
    max_q: usize,
    (nb, nh, d): (i32, i32, i32),
    out: &mut Tensor,
) -> Result<()> {
    let kernel = kernel_name(OP, format!("attention_scatter_{}", g.dtype))?;
    let (tok, head, sq_i, mq) = ((g.heads * g.d) as i64, g.d as i64, sq as i32, max_q as i32);
    let total = src.len();
    let sd = dev(OP, "seqs", seqs)?;
    let s = dev(OP, "src", src)?;
    let od = dev_mut(OP, "out", out)?;
    let mut b = gpu.launcher(kernel);
    b.arg(od.buffer_mut())
        .arg(s.buffer())
        .arg(sd.buffer())
        .arg(&tok)
        .arg(&head)
        .arg(&nb)
        .arg(&nh)
        .arg(&sq_i)
        .arg(&d)
        .arg(&mq);
    // SAFETY: matches attention_scatter_*(out, src, seqs, tok, head, batch, heads, S, D, max_q);
    // writes only rows of validated sequences (or their padding rows) of the checked output.
    unsafe { b.launch(move_grid(gpu, total)) }?;
    Ok(())
}
