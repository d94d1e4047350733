//! 2:4 structured sparsity: magnitude pruning, validation, and the compressed format the
//! sparse tensor cores read (kernel `kernels/gemm_sparse.cu`, launcher `src/ops/gemm_sparse.rs`).
//!
//! A weight W `[N, K]` keeps two values in every group of four along K. Compressed, it is
//! `values [N16, KP/2]` (the kept values, in K order; N16 is N rounded up to 16 and KP is K
//! rounded up to one pipeline stage, 64 for f16/bf16 and 128 for int8; padding is zero) and
//! `meta`, the metadata registers of `mma.sp::ordered_metadata` (PTX ISA 9.7.14.6, "Sparse
//! matrix storage" and the metadata figures of m16n8k32 .f16/.bf16 and m16n8k64 .s8), in
//! register order. One mma step covers S = 32 (f16/bf16) or 64 (int8) values of K; for each
//! (16-row tile t, step s) there are Q·8 words, each holding 8 nibbles; a nibble holds the two
//! kept positions (2 bits each, ascending, first in the low bits) of one 4-group.
//! - f16/bf16 (m16n8k32, Q = 2, sparsity selector 0: lanes with `lane % 4 < 2`): word `2g + h`,
//!   nibbles 0..3 = row `16t + g`, nibbles 4..7 = row `16t + g + 8`, both K `32s + 16h .. + 16`.
//! - int8 (m16n8k64, Q = 4, every lane; CuTe's SM120_SPARSE_16x8x64 / SM90 GMMA ELayout): word
//!   `4g + h` holds one row, `16t + g + 8·(h & 1)`, K `64s + 32·(h >> 1) .. + 32`.
//!
//! `meta` is `[N16/16][KP/S][Q·8]`.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::HostTensor;

/// A 2:4-compressed weight, on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Sparse24 {
    pub n: usize,
    pub k: usize,
    /// `[N16, KP/2]` kept values in W's dtype.
    pub values: HostTensor,
    /// `[N16/16 · KP/S · Q·8]` metadata words in mma.sp register order (module docs).
    pub meta: Vec<u32>,
}

/// What magnitude pruning kept.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PruneReport {
    /// Σ kept w² / Σ w² (1.0 when W already was 2:4).
    pub energy_kept: f64,
}

fn dims(op: &'static str, w: &HostTensor) -> Result<(usize, usize)> {
    if !w.dtype().is_float() && w.dtype() != DType::I8 {
        return Err(Error::DType {
            op,
            arg: "w",
            got: w.dtype(),
            expected: "f32, f16, bf16 or i8".into(),
        });
    }
    match *w.shape() {
        [n, k] if k % 4 == 0 => Ok((n, k)),
        _ => Err(Error::Shape {
            op,
            arg: "w",
            got: w.shape().to_vec(),
            expected: "[N, K] with K a multiple of the 2:4 group size 4".into(),
        }),
    }
}

/// Keeps the two largest |w| of every group of four along K (ties keep the lower index) and
/// zeroes the others. Returns the pruned weight and the fraction of energy kept.
pub fn prune_2_4(w: &HostTensor) -> Result<(HostTensor, PruneReport)> {
    let (n, k) = dims("prune_2_4", w)?;
    let mut v = w.to_f64();
    let (mut total, mut kept) = (0.0, 0.0);
    for g in v.chunks_mut(4) {
        let mut idx = [0usize, 1, 2, 3];
        // Stable sort by descending magnitude: equal magnitudes keep the lower index.
        idx.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        for (r, &i) in idx.iter().enumerate() {
            total += g[i] * g[i];
            if r < 2 {
                kept += g[i] * g[i];
            } else {
                g[i] = 0.0;
            }
        }
    }
    let energy_kept = if total > 0.0 { kept / total } else { 1.0 };
    Ok((
        HostTensor::from_f64(&[n, k], &v, w.dtype())?,
        PruneReport { energy_kept },
    ))
}

/// Checks that every group of four along K has at most two non-zeros; the error names the
/// first offending group.
pub fn validate_2_4(w: &HostTensor) -> Result<()> {
    let (_, k) = dims("validate_2_4", w)?;
    let v = w.to_f64();
    for (gi, g) in v.chunks(4).enumerate() {
        let nz = g.iter().filter(|x| **x != 0.0).count();
        if nz > 2 {
            let (row, col) = (gi * 4 / k, gi * 4 % k);
            return Err(Error::Invalid {
                op: "validate_2_4",
                arg: "w",
                detail: format!(
                    "row {row}, columns {col}..{} hold {nz} non-zeros {g:?}; 2:4 allows 2",
                    col + 3
                ),
            });
        }
    }
    Ok(())
}

/// The format constants of a dtype: (K padding, K per mma step, metadata lanes per quad).
fn layout(op: &'static str, dt: DType) -> Result<(usize, usize, usize)> {
    match dt {
        DType::F16 | DType::BF16 => Ok((64, 32, 2)),
        DType::I8 => Ok((128, 64, 4)),
        _ => Err(Error::DType {
            op,
            arg: "w",
            got: dt,
            expected: "f16, bf16 or i8 (the sparse tensor-core types)".into(),
        }),
    }
}

/// The (row, 4-group) that nibble `j` (bits 4j..4j+4) of metadata word `lane` of (16-row tile
/// `t`, mma step `s`) describes. f16/bf16 (m16n8k32, Q = 2): lane 2g+h, nibbles 0..3 = row g,
/// 4..7 = row g+8, both K 32s+16h..+16. int8 (m16n8k64, Q = 4; CuTe SM120_SPARSE_16x8x64 ELayout,
/// SM90 GMMA ELayout_64x64): lane 4g+h holds one row, g + 8·(h&1), K 64s + 32·(h>>1) .. +32.
fn cell(q: usize, step: usize, t: usize, s: usize, lane: usize, j: usize) -> (usize, usize) {
    let (g, h) = (lane / q, lane % q);
    if q == 4 {
        (16 * t + g + 8 * (h & 1), s * step / 4 + 8 * (h >> 1) + j)
    } else {
        (16 * t + g + 8 * (j / 4), s * step / 4 + 4 * h + j % 4)
    }
}

/// Compresses a 2:4-sparse f16, bf16 or int8 weight (validated first).
pub fn compress(w: &HostTensor) -> Result<Sparse24> {
    validate_2_4(w)?;
    let (n, k) = dims("compress", w)?;
    let (kp, step, q) = layout("compress", w.dtype())?;
    let (n16, k32) = (n.div_ceil(16) * 16, k.div_ceil(kp) * kp);
    let v = w.to_f64();
    let at = |r: usize, c: usize| if r < n && c < k { v[r * k + c] } else { 0.0 };
    let mut vals = vec![0.0; n16 * k32 / 2];
    // nib[r][g]: the 4-bit metadata of group g in row r.
    let mut nib = vec![0u8; n16 * k32 / 4];
    for r in 0..n16 {
        for g in 0..k32 / 4 {
            let mut pos: Vec<usize> = (0..4).filter(|&i| at(r, 4 * g + i) != 0.0).collect();
            // Fewer than two non-zeros: pad with the lowest unused positions (kept as zeros).
            for i in 0..4 {
                if pos.len() < 2 && !pos.contains(&i) {
                    pos.push(i);
                }
            }
            pos.sort_unstable();
            vals[r * k32 / 2 + 2 * g] = at(r, 4 * g + pos[0]);
            vals[r * k32 / 2 + 2 * g + 1] = at(r, 4 * g + pos[1]);
            nib[r * k32 / 4 + g] = (pos[0] | (pos[1] << 2)) as u8;
        }
    }
    let mut meta = Vec::with_capacity(n16 * k32 / 32);
    for t in 0..n16 / 16 {
        for s in 0..k32 / step {
            for lane in 0..8 * q {
                meta.push(
                    (0..8)
                        .map(|j| {
                            let (row, grp) = cell(q, step, t, s, lane, j);
                            u32::from(nib[row * k32 / 4 + grp]) << (4 * j)
                        })
                        .sum(),
                );
            }
        }
    }
    Ok(Sparse24 {
        n,
        k,
        values: HostTensor::from_f64(&[n16, k32 / 2], &vals, w.dtype())?,
        meta,
    })
}

impl Sparse24 {
    pub fn dtype(&self) -> DType {
        self.values.dtype()
    }
    /// Rows and K padded to the kernel tiles (16 rows; 64 K for f16/bf16, 128 for int8).
    pub fn padded(&self) -> (usize, usize) {
        let kp = if self.dtype() == DType::I8 { 128 } else { 64 };
        (self.n.div_ceil(16) * 16, self.k.div_ceil(kp) * kp)
    }

    /// Checks that the public fields agree: a dtype the kernels take, values of `[N16, KP/2]`
    /// and `N16·KP/32` metadata words for N and K (padded to 16 rows and KP = 64 or 128), every
    /// nibble two ascending positions. The kernels index by N and K alone, so a mismatch would
    /// read out of bounds; hand-made or deserialised weights go through this before use.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        let (kp, _, _) = layout(op, self.dtype())?;
        let n16 = self.n.checked_next_multiple_of(16);
        let k32 = self.k.checked_next_multiple_of(kp);
        let sizes = n16
            .zip(k32)
            .and_then(|(n16, k32)| Some((n16, k32 / 2, n16.checked_mul(k32)? / 32)));
        if sizes.is_none_or(|(rows, cols, words)| {
            self.values.shape() != [rows, cols] || self.meta.len() != words
        }) {
            return Err(Error::Shape {
                op,
                arg: "sparse weight",
                got: self.values.shape().to_vec(),
                expected: match sizes {
                    Some((rows, cols, words)) => format!(
                        "for N {} K {}: values [{rows}, {cols}] and {words} metadata words (got {})",
                        self.n,
                        self.k,
                        self.meta.len()
                    ),
                    None => format!("N {} and K {} small enough to pad", self.n, self.k),
                },
            });
        }
        for (i, &w) in self.meta.iter().enumerate() {
            for j in 0..8 {
                let nb = (w >> (4 * j)) & 0xf;
                if nb & 3 >= nb >> 2 {
                    return Err(Error::Invalid {
                        op,
                        arg: "meta",
                        detail: format!(
                            "word {i} nibble {j} = {nb:#x}: the two kept positions must ascend \
                             (ordered metadata)"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The dense `[N, K]` weight back, exactly (the inverse of [`compress`]).
    pub fn decompress(&self) -> Result<HostTensor> {
        self.validate("decompress")?;
        let (n16, k32) = self.padded();
        let (_, step, q) = layout("decompress", self.dtype())?;
        let v = self.values.to_f64();
        let mut d = vec![0.0; self.n * self.k];
        for t in 0..n16 / 16 {
            for s in 0..k32 / step {
                for lane in 0..8 * q {
                    let word = self.meta[(t * (k32 / step) + s) * 8 * q + lane];
                    {
                        for j in 0..8 {
                            let (row, grp) = cell(q, step, t, s, lane, j);
                            let nb = (word >> (4 * j)) & 0xf;
                            // Ascending, checked by validate.
                            let (p0, p1) = ((nb & 3) as usize, (nb >> 2) as usize);
                            for (slot, p) in [(0, p0), (1, p1)] {
                                let c = 4 * grp + p;
                                if row < self.n && c < self.k {
                                    d[row * self.k + c] = v[row * (k32 / 2) + 2 * grp + slot];
                                }
                            }
                        }
                    }
                }
            }
        }
        HostTensor::from_f64(&[self.n, self.k], &d, self.dtype())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod cute_layouts {
    //! The metadata layout of `cell` (what `compress` writes and the kernels hand to `mma.sp`)
    //! against an independent source: CUTLASS CuTe's metadata layouts (ELayout), copied from
    //! NVIDIA/cutlass 7107b05535f8977f5ecb9d01ee203205b1fd9bc4 and evaluated here as CuTe does.
    use super::cell;

    /// A CuTe layout `((thread modes), (value modes)) : ((strides), (strides))` evaluated at
    /// (thread, value): each index split colexicographically over its modes, then Σ coord·stride.
    fn eval(
        t_shape: &[usize],
        t_stride: &[usize],
        v_shape: &[usize],
        v_stride: &[usize],
        t: usize,
        v: usize,
    ) -> usize {
        let part = |mut i: usize, shape: &[usize], stride: &[usize]| {
            let mut off = 0;
            for (&n, &d) in shape.iter().zip(stride) {
                off += (i % n) * d;
                i /= n;
            }
            off
        };
        part(t, t_shape, t_stride) + part(v, v_shape, v_stride)
    }

    /// For every lane that supplies metadata and every nibble: the (row, 4-group) CuTe gives
    /// (all four bits of the nibble must name one row and one aligned 4-group of K) must be
    /// `cell`'s.
    fn check(
        q: usize,
        step: usize,
        lanes: impl Iterator<Item = usize>,
        m: usize,
        layout: &dyn Fn(usize, usize) -> usize,
    ) {
        for lane in lanes {
            let (g, h) = (lane / 4, lane % 4);
            for j in 0..8 {
                let at = |bit: usize| {
                    let idx = layout(lane, 4 * j + bit);
                    (idx % m, idx / m)
                };
                let (row, k) = at(0);
                assert_eq!(
                    k % 4,
                    0,
                    "lane {lane} nibble {j}: K {k} not at a 4-group start"
                );
                for bit in 1..4 {
                    assert_eq!(at(bit), (row, k + bit), "lane {lane} nibble {j} bit {bit}");
                }
                let ours = cell(q, step, 0, 0, g * q + h, j);
                assert_eq!(
                    ours,
                    (row, k / 4),
                    "lane {lane} (g {g}, h {h}) nibble {j}: cell vs CuTe"
                );
            }
        }
    }

    #[test]
    fn f16_metadata_matches_cute_sm90_elayout_64x32() {
        // GMMA::ELayout_64x32 = ((2,2,8,4),(16,2)) : ((1024,0,1,16),(64,8)) over (M64, K32),
        // 128 threads; warp 0 is m16n8k32. Sparsity selector 0: lanes with (lane % 4) < 2.
        let layout =
            |t: usize, v: usize| eval(&[2, 2, 8, 4], &[1024, 0, 1, 16], &[16, 2], &[64, 8], t, v);
        check(2, 32, (0..32).filter(|l| l % 4 < 2), 64, &layout);
    }

    #[test]
    fn int8_metadata_matches_cute_sm120_sparse_16x8x64() {
        // SM120_SPARSE_16x8x64_TN ELayout = ((2,2,8),32) : ((8,512,1),16) over (M16, K64);
        // every lane supplies metadata.
        let layout = |t: usize, v: usize| eval(&[2, 2, 8], &[8, 512, 1], &[32], &[16], t, v);
        check(4, 64, 0..32, 16, &layout);
    }
}
