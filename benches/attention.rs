//! Fused attention bench (`kernels/attention.cu`): FLOP/s (criterion "elem/s" = FLOP/s, the
//! gemm benches' convention). Work per call = 4·heads·head_dim·Σ_b q_len_b·k_len_b
//! ([`SeqBatch::pairs`]), halved when causal; padding tokens are not counted, so the three
//! variants of one BERT batch share the same work and their rates compare directly.
//! `scripts/peer_bench.py` times PyTorch's `scaled_dot_product_attention` under the same ids.
//!
//! - BERT-base (12 heads, head_dim 64, f16, QKV projection output read in place,
//!   `Qkv::Packed`) at seq 128/384/512 × batch 1/8/32/128/256 with ragged lengths: sequence
//!   lengths are uniform integers in [seq/4, seq], drawn from `SeedRng::new(1000·seq + batch)`
//!   (`common::ragged_lens`, shared with benches/bert.rs; peer_bench.py replays the same
//!   generator). Three ids per shape:
//!   `packed` (fused, varlen: no padding tokens at all), `padded` (fused, each sequence owns
//!   `seq` rows, key padding masked) and `unfused` (GEMM → masked softmax → GEMM on the same
//!   padded batch, `UnfusedPlan` built outside the timed loop; its key-padding mask is one row
//!   per sequence, but it materialises the batch·heads·seq² scores and probabilities).
//! - Long sequences, no padding (every length = seq), FlashAttention-3's benchmark setting:
//!   batch·seq = 16k tokens, heads·head_dim = 2048 (32 heads at head_dim 64, 16 at 128), seq
//!   1k..16k, non-causal (`full`) and `causal`, f16; bf16 for one shape (head_dim 128, seq 4k,
//!   non-causal). Separate Q/K/V `[tokens, heads, head_dim]` tensors.
//!
//! Ids: `attention/{packed,padded,unfused}/f16/b{batch}h12d64s{seq}` and
//! `attention/{full,causal}/{dtype}/b{batch}h{heads}d{head_dim}s{seq}`.
//!
//! Run time: 66 benches, so this bench uses a shorter criterion setting than
//! `common::criterion()` ([`group_config`]; the long shapes use flat sampling) to stay near a
//! minute on an H100. Inputs are a seeded random pool (with `random_values`' outliers) repeated
//! over the tensors: generating hundreds of millions of normals on the host would dominate the
//! setup, and the values do not change the timing.

mod common;
use common::*;
use criterion::{BenchmarkGroup, SamplingMode, Throughput, criterion_group, criterion_main};
use medkern::ops::{self, Attention, Qkv, SeqBatch, UnfusedPlan};
use medkern::tensor::IntoHostData;
use medkern::{DType, Device, HostTensor, Tensor};
use std::time::Duration;

pub const BERT_HEADS: usize = 12;
pub const BERT_HEAD_DIM: usize = 64;
pub const BERT_SEQS: [usize; 3] = [128, 384, 512];
pub const BERT_BATCHES: [usize; 5] = [1, 8, 32, 128, 256];
pub const LONG_SEQS: [usize; 5] = [1024, 2048, 4096, 8192, 16384];
/// batch·seq of the long shapes.
pub const LONG_TOKENS: usize = 16384;
/// heads·head_dim of the long shapes.
pub const LONG_HIDDEN: usize = 2048;
/// Values in the random pool the inputs repeat.
const POOL: usize = 1 << 20;

/// Attention FLOPs: 4·heads·head_dim·pairs (Q·Kᵀ and P·V, 2 FLOPs per multiply-add), halved
/// when causal (the FlashAttention convention).
pub fn flops(heads: usize, head_dim: usize, pairs: usize, causal: bool) -> u64 {
    let f = 4 * heads * head_dim * pairs;
    (if causal { f / 2 } else { f }) as u64
}

/// Cumulative offsets of consecutive sequences.
fn cu_seqlens(lens: &[usize]) -> Vec<usize> {
    std::iter::once(0)
        .chain(lens.iter().scan(0, |s, &l| {
            *s += l;
            Some(*s)
        }))
        .collect()
}

/// A tensor of `shape` on `dev` filled by repeating `pool` from `offset` on.
fn tiled(dev: &Device, shape: &[usize], pool: &HostTensor, offset: usize) -> Tensor {
    fn cycle<T: IntoHostData>(pool: &HostTensor, n: usize, offset: usize) -> Vec<T> {
        let p = pool.as_slice::<T>().expect("pool dtype");
        let mut v = Vec::with_capacity(n);
        let head = &p[offset % p.len()..];
        v.extend_from_slice(&head[..head.len().min(n)]);
        while v.len() < n {
            let take = (n - v.len()).min(p.len());
            v.extend_from_slice(&p[..take]);
        }
        v
    }
    let n = shape.iter().product();
    match pool.dtype() {
        DType::F16 => Tensor::new(dev, shape, cycle::<half::f16>(pool, n, offset)),
        DType::BF16 => Tensor::new(dev, shape, cycle::<half::bf16>(pool, n, offset)),
        dt => panic!("no {dt} attention bench"),
    }
    .expect("upload")
}

/// The attention group's criterion setting: fewer, shorter samples than `common::criterion()`.
fn group_config(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(500));
}

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench attention") else {
        // Two ragged sequences (32 and 17 tokens), 2 heads of 64: the f64 reference path.
        let (heads, d, lens) = (2, 64, [32, 17]);
        let cpu = Device::Cpu;
        let batch = SeqBatch::packed(&cpu, &cu_seqlens(&lens)).unwrap();
        let mut rng = SeedRng::new(5);
        let n = batch.q_tokens() * 3 * heads * d;
        let qkv = upload(
            &cpu,
            &[batch.q_tokens(), 3, heads, d],
            &random_values(&mut rng, n, 1.0, DType::F16),
            DType::F16,
        );
        c.bench_function("attention/cpu-reference/f16/b2h2d64s32", |b| {
            b.iter(|| ops::attention(Qkv::Packed(&qkv), &batch, &Attention::default()).unwrap())
        });
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group("attention");
    group_config(&mut g);
    let mut rng = SeedRng::new(23);
    let pool = |rng: &mut SeedRng, dt| {
        HostTensor::from_f64(&[POOL], &random_values(rng, POOL, 1.0, dt), dt).unwrap()
    };
    let pool16 = pool(&mut rng, DType::F16);
    let plain = Attention::default();

    let (h, d) = (BERT_HEADS, BERT_HEAD_DIM);
    for seq in BERT_SEQS {
        for batch in BERT_BATCHES {
            let lens = ragged_lens(batch, seq);
            let padded = SeqBatch::padded(&dev, &lens, seq).unwrap();
            let packed = SeqBatch::packed(&dev, &cu_seqlens(&lens)).unwrap();
            g.throughput(Throughput::Elements(flops(h, d, padded.pairs(), false)));
            let id = |v: &str| format!("{v}/f16/b{batch}h{h}d{d}s{seq}");
            {
                let t = packed.q_tokens();
                let qkv = tiled(&dev, &[t, 3, h, d], &pool16, 0);
                let mut out = poisoned(&dev, &[t, h, d], DType::F16);
                g.bench_function(id("packed"), |b| {
                    b.iter(|| {
                        ops::attention_into(Qkv::Packed(&qkv), &packed, &plain, &mut out).unwrap();
                        gpu.synchronize().unwrap();
                    })
                });
            }
            let t = padded.q_tokens();
            let qkv = tiled(&dev, &[t, 3, h, d], &pool16, 0);
            let mut out = poisoned(&dev, &[t, h, d], DType::F16);
            g.bench_function(id("padded"), |b| {
                b.iter(|| {
                    ops::attention_into(Qkv::Packed(&qkv), &padded, &plain, &mut out).unwrap();
                    gpu.synchronize().unwrap();
                })
            });
            let plan = UnfusedPlan::new(Qkv::Packed(&qkv), &padded, &plain).unwrap();
            g.bench_function(id("unfused"), |b| {
                b.iter(|| {
                    plan.run_into(Qkv::Packed(&qkv), &padded, &plain, &mut out)
                        .unwrap();
                    gpu.synchronize().unwrap();
                })
            });
        }
    }

    // Long sequences: flat sampling (a few to tens of ms per call).
    g.sampling_mode(SamplingMode::Flat);
    let pool_bf16 = pool(&mut rng, DType::BF16);
    for d in [64, 128] {
        let h = LONG_HIDDEN / d;
        for seq in LONG_SEQS {
            let batch = LONG_TOKENS / seq;
            let sb = SeqBatch::packed(&dev, &cu_seqlens(&vec![seq; batch])).unwrap();
            let dts: &[(DType, &HostTensor)] = if d == 128 && seq == 4096 {
                &[(DType::F16, &pool16), (DType::BF16, &pool_bf16)]
            } else {
                &[(DType::F16, &pool16)]
            };
            for &(dt, p) in dts {
                let shape = [LONG_TOKENS, h, d];
                // Different offsets into the pool: q, k and v do not repeat each other.
                let (q, k, v) = (
                    tiled(&dev, &shape, p, 0),
                    tiled(&dev, &shape, p, POOL / 3),
                    tiled(&dev, &shape, p, 2 * POOL / 3),
                );
                let qkv = Qkv::Separate {
                    q: &q,
                    k: &k,
                    v: &v,
                };
                let mut out = poisoned(&dev, &shape, dt);
                for causal in [false, true] {
                    if dt == DType::BF16 && causal {
                        continue;
                    }
                    let a = Attention {
                        causal,
                        ..Default::default()
                    };
                    g.throughput(Throughput::Elements(flops(h, d, sb.pairs(), causal)));
                    let kind = if causal { "causal" } else { "full" };
                    g.bench_function(format!("{kind}/{dt}/b{batch}h{h}d{d}s{seq}"), |b| {
                        b.iter(|| {
                            ops::attention_into(qkv, &sb, &a, &mut out).unwrap();
                            gpu.synchronize().unwrap();
                        })
                    });
                }
            }
        }
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
