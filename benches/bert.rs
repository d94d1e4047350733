//! End-to-end BERT encoder bench (`src/model/bert.rs` + `src/model/compress.rs`): the latency of
//! one `BertModel::forward` (ids on the host → last hidden state on the GPU, stream synced) on
//! random-weight models in f16. Criterion "elem/s" = sequences/s (Throughput::Elements = batch).
//!
//! Models (HF BertModel shapes, vocab 30522, 512 positions, GELU-erf):
//! - `bert-base`: 12 layers, hidden 768, 12 heads, intermediate 3072;
//! - `minilm-l6`: 6 layers, hidden 384, 12 heads (head_dim 32), intermediate 1536.
//!
//! Configurations, each a [`Checkpoint`] built in memory, compressed, saved to a temp dir and
//! loaded back with [`BertModel::load`] (the path a user takes):
//! - `dense`;
//! - `int8`: `quantize_int8` (Q8BERT W8A8 on every encoder Linear);
//! - `sparse24`: `sparsify_24` (2:4 magnitude pruning of every encoder Linear);
//! - `sparse24_int8`: 2:4 then int8;
//! - `heads8`: `prune_heads`, 8 of 12 heads kept in every layer ([`kept_heads`]);
//! - `heads8_halflayers_sparse24_int8`, the most compressed: heads 8/12, then `drop_layers`
//!   keeping every other layer (0, 2, 4, ...), then 2:4, then int8.
//!
//! Batches: ragged lengths uniform in [seq/4, seq] from `common::ragged_lens` (the generator of
//! benches/attention.rs, `SeedRng::new(1000·seq + batch)`; scripts/peer_bench.py replays it),
//! token ids seeded random, packed (no padding tokens). Shapes: batch {1, 8, 32, 128} × seq
//! {128, 512}. To stay near two minutes on an H100 not every pair is timed ([`SUBSET`]): every
//! configuration at `bert-base` b32 s128 and b128 s512; `dense` and the most compressed at the
//! other six `bert-base` shapes and at all eight `minilm-l6` shapes (40 ids).
//!
//! Ids: `bert/{model}/{config}/f16/b{batch}s{seq}`. scripts/peer_bench.py times an eager
//! PyTorch BERT (f16, SDPA, padded batch with an attention mask) under the `dense` id and
//! records the same figure as the peer of every other configuration's id at that shape, so the
//! report's ratio is the speedup of each configuration over PyTorch dense f16.
//!
//! Setup stays fast: weights repeat a seeded pool of normals (scaled 1/√fan-in) instead of
//! drawing ~110M fresh ones; the values do not change the timing. No GPU: a tiny model (2
//! layers, hidden 64) on the CPU reference backend, dense and most compressed.

mod common;
use common::*;
use criterion::{BenchmarkGroup, SamplingMode, Throughput, criterion_group, criterion_main};
use medkern::model::bert::BertModel;
use medkern::model::compress::{Checkpoint, layer_linears};
use medkern::{DType, Device, HostTensor};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Values in the random weight pool.
const POOL: usize = 1 << 20;
const VOCAB: usize = 30522;
const POSITIONS: usize = 512;

/// A BERT shape.
#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    layers: usize,
    hidden: usize,
    heads: usize,
    inter: usize,
    vocab: usize,
    positions: usize,
}

const BERT_BASE: Shape = Shape {
    name: "bert-base",
    layers: 12,
    hidden: 768,
    heads: 12,
    inter: 3072,
    vocab: VOCAB,
    positions: POSITIONS,
};
const MINILM_L6: Shape = Shape {
    name: "minilm-l6",
    layers: 6,
    hidden: 384,
    heads: 12,
    inter: 1536,
    vocab: VOCAB,
    positions: POSITIONS,
};

pub const BATCHES: [usize; 4] = [1, 8, 32, 128];
pub const SEQS: [usize; 2] = [128, 512];

/// The configurations, in id order.
const CONFIGS: [&str; 6] = [
    "dense",
    "int8",
    "sparse24",
    "sparse24_int8",
    "heads8",
    "heads8_halflayers_sparse24_int8",
];
const MOST: &str = "heads8_halflayers_sparse24_int8";

/// The (model, batch, seq) pairs timed with every configuration; every other pair gets `dense`
/// and the most compressed only. scripts/peer_bench.py `BERT_ALL_CONFIGS` is the same list.
const SUBSET: [(&str, usize, usize); 2] = [("bert-base", 32, 128), ("bert-base", 128, 512)];

fn configs_at(model: &str, batch: usize, seq: usize) -> &'static [&'static str] {
    if SUBSET.contains(&(model, batch, seq)) {
        &CONFIGS
    } else {
        &["dense", MOST]
    }
}

/// The 8 heads of 12 kept in layer `l`: a different third dropped per layer (heads h with
/// (h + l) % 3 == 0 go), so pruned layers do not all keep the same indices.
fn kept_heads(l: usize, heads: usize) -> Vec<usize> {
    (0..heads).filter(|h| (h + l) % 3 != 0).collect()
}

/// Fills tensors from a seeded pool of standard normals, scaled per tensor.
struct PoolFill {
    pool: Vec<f32>,
    at: usize,
}

impl PoolFill {
    fn new(seed: u64) -> Self {
        let mut rng = SeedRng::new(seed);
        PoolFill {
            pool: (0..POOL).map(|_| rng.normal() as f32).collect(),
            at: 0,
        }
    }
    /// `shape` values: `mean + sigma·pool[..]`, continuing where the last tensor stopped (with an
    /// odd stride so consecutive tensors do not start aligned).
    fn tensor(&mut self, shape: &[usize], mean: f32, sigma: f32) -> HostTensor {
        let n: usize = shape.iter().product();
        let mut v = Vec::with_capacity(n);
        let mut i = self.at;
        while v.len() < n {
            let take = (n - v.len()).min(POOL - i);
            v.extend(self.pool[i..i + take].iter().map(|&x| mean + sigma * x));
            i = (i + take) % POOL;
        }
        self.at = (i + 7919) % POOL;
        HostTensor::new(shape, v).expect("host tensor")
    }
}

/// A random-weight checkpoint of `s` (HF BertModel names), f32.
fn random_checkpoint(s: &Shape, seed: u64) -> Checkpoint {
    let mut p = PoolFill::new(seed);
    let h = s.hidden;
    let mut t = BTreeMap::new();
    t.insert(
        "embeddings.word_embeddings.weight".to_string(),
        p.tensor(&[s.vocab, h], 0.0, 1.0),
    );
    t.insert(
        "embeddings.position_embeddings.weight".to_string(),
        p.tensor(&[s.positions, h], 0.0, 0.3),
    );
    t.insert(
        "embeddings.token_type_embeddings.weight".to_string(),
        p.tensor(&[2, h], 0.0, 0.3),
    );
    let ln = |name: String, t: &mut BTreeMap<String, HostTensor>, p: &mut PoolFill| {
        t.insert(format!("{name}.weight"), p.tensor(&[h], 1.0, 0.1));
        t.insert(format!("{name}.bias"), p.tensor(&[h], 0.0, 0.1));
    };
    ln("embeddings.LayerNorm".into(), &mut t, &mut p);
    for l in 0..s.layers {
        let [q, k, v, o, i, o2] = layer_linears(l);
        for (stem, n, kk) in [
            (q, h, h),
            (k, h, h),
            (v, h, h),
            (o, h, h),
            (i, s.inter, h),
            (o2, h, s.inter),
        ] {
            let sigma = 1.0 / (kk as f32).sqrt();
            t.insert(format!("{stem}.weight"), p.tensor(&[n, kk], 0.0, sigma));
            t.insert(format!("{stem}.bias"), p.tensor(&[n], 0.0, 0.05));
        }
        ln(
            format!("encoder.layer.{l}.attention.output.LayerNorm"),
            &mut t,
            &mut p,
        );
        ln(
            format!("encoder.layer.{l}.output.LayerNorm"),
            &mut t,
            &mut p,
        );
    }
    Checkpoint {
        config: serde_json::json!({
            "model_type": "bert", "vocab_size": s.vocab, "hidden_size": h,
            "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
            "intermediate_size": s.inter, "hidden_act": "gelu",
            "max_position_embeddings": s.positions, "type_vocab_size": 2,
            "layer_norm_eps": 1e-12
        }),
        tensors: t,
        metadata: BTreeMap::new(),
    }
}

/// Applies configuration `config` to a fresh checkpoint.
fn compress(ck: &mut Checkpoint, s: &Shape, config: &str) {
    let heads8 = |ck: &mut Checkpoint| {
        let keep: BTreeMap<usize, Vec<usize>> =
            (0..s.layers).map(|l| (l, kept_heads(l, s.heads))).collect();
        ck.prune_heads(&keep).expect("prune heads");
    };
    match config {
        "dense" => {}
        "int8" => {
            ck.quantize_int8().expect("int8");
        }
        "sparse24" => {
            ck.sparsify_24().expect("2:4");
        }
        "sparse24_int8" => {
            ck.sparsify_24().expect("2:4");
            ck.quantize_int8().expect("int8");
        }
        "heads8" => heads8(ck),
        MOST => {
            heads8(ck);
            let keep: Vec<usize> = (0..s.layers).step_by(2).collect();
            ck.drop_layers(&keep).expect("drop layers");
            ck.sparsify_24().expect("2:4");
            ck.quantize_int8().expect("int8");
        }
        other => panic!("no BERT bench configuration {other:?}"),
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medkern-bench-bert-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Builds, compresses, saves and reloads model `s` in `config` on `dev`.
fn model(s: &Shape, config: &str, dev: &Device, dt: DType) -> BertModel {
    let mut ck = random_checkpoint(s, 11);
    compress(&mut ck, s, config);
    let dir = tmpdir(&format!("{}-{config}", s.name));
    ck.save(&dir, None).expect("save checkpoint");
    drop(ck);
    let m = BertModel::load(&dir, dev, dt).expect("load model");
    let _ = std::fs::remove_dir_all(&dir);
    m
}

/// A ragged batch of seeded token ids (lengths from `ragged_lens`).
fn batch_ids(batch: usize, seq: usize, vocab: usize) -> Vec<Vec<u32>> {
    let mut rng = SeedRng::new((7 * seq + batch) as u64);
    ragged_lens(batch, seq)
        .into_iter()
        .map(|n| (0..n).map(|_| rng.below(vocab as u64) as u32).collect())
        .collect()
}

/// The group's criterion setting: fewer, shorter samples than `common::criterion()`, flat
/// sampling (calls take up to tens of ms).
fn group_config(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(500))
        .sampling_mode(SamplingMode::Flat);
}

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench bert") else {
        // A tiny model on the CPU reference backend (f32): dense and most compressed.
        let tiny = Shape {
            name: "tiny",
            layers: 2,
            hidden: 64,
            heads: 2,
            inter: 128,
            vocab: 100,
            positions: 32,
        };
        let ids = batch_ids(2, 32, tiny.vocab);
        for config in ["dense", MOST] {
            let m = model(&tiny, config, &Device::Cpu, DType::F32);
            c.bench_function(
                &format!("bert/cpu-reference-tiny/{config}/f32/b2s32"),
                |b| b.iter(|| m.forward(&ids, None).unwrap()),
            );
        }
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group("bert");
    group_config(&mut g);
    for s in [BERT_BASE, MINILM_L6] {
        // Which configurations run at which shapes, in id order.
        let mut plan: Vec<(&str, Vec<(usize, usize)>)> = Vec::new();
        for config in CONFIGS {
            let shapes: Vec<(usize, usize)> = SEQS
                .iter()
                .flat_map(|&seq| BATCHES.iter().map(move |&b| (b, seq)))
                .filter(|&(b, seq)| configs_at(s.name, b, seq).contains(&config))
                .collect();
            if !shapes.is_empty() {
                plan.push((config, shapes));
            }
        }
        for (config, shapes) in plan {
            let m = model(&s, config, &dev, DType::F16);
            for (batch, seq) in shapes {
                let ids = batch_ids(batch, seq, s.vocab);
                g.throughput(Throughput::Elements(batch as u64));
                report_forward(
                    &gpu,
                    &format!("bert/{}/{config}/f16/b{batch}s{seq}", s.name),
                    || m.forward(&ids, None),
                );
                g.bench_function(format!("{}/{config}/f16/b{batch}s{seq}", s.name), |b| {
                    b.iter(|| {
                        m.forward(&ids, None).unwrap();
                        gpu.synchronize().unwrap();
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
