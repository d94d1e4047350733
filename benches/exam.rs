//! End-to-end EXAM bench (`src/model/exam.rs`): the latency of one `ExamModel::forward` on
//! random weights loaded through the checkpoint path (`ExamModel::random_checkpoint`): a
//! normalised NHWC f16 chest X-ray batch and the f32 EMR vectors already on the GPU →
//! ResNet-34 (f16) → 512-d features → Deep & Cross EMR branch + fusion + heads (f32) → the
//! 24 h / 72 h scores and ordinal probabilities on the host (the download syncs the stream).
//! Criterion "elem/s" = images/s (Throughput::Elements = batch).
//!
//! Ids: `exam/resnet34_224/f16/b{batch}` for batch 1, 32, 128; `exam/head/f32/b{batch}` the head
//! alone (features given). scripts/peer_bench.py `exam_peers` times eager torchvision ResNet-34
//! (f16, channels_last) + the same head in PyTorch (f32) under the same ids.
//!
//! GPU only: without a GPU the bench prints a counted SKIP and times nothing.

mod common;
use common::*;
use criterion::{SamplingMode, Throughput, criterion_group, criterion_main};
use medkern::model::exam::{ExamConfig, ExamModel};
use medkern::{DType, Device};
use std::time::Duration;

pub const BATCHES: [usize; 3] = [1, 32, 128];
const SIZE: usize = 224;

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench exam") else {
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let dt = DType::F16;
    let cfg = ExamConfig::default();
    let model = ExamModel::random(&cfg, 7, &dev, dt).expect("exam");
    let d = cfg.emr.dim();
    let mut g = c.benchmark_group("exam");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sampling_mode(SamplingMode::Flat);
    for batch in BATCHES {
        let shape = [batch, SIZE, SIZE, 3];
        let mut rng = SeedRng::new(batch as u64);
        let x = upload(
            &dev,
            &shape,
            &random_values(&mut rng, shape.iter().product(), 1.0, dt),
            dt,
        );
        let emr = upload(
            &dev,
            &[batch, d],
            &random_values(&mut rng, batch * d, 1.0, DType::F32),
            DType::F32,
        );
        let feats = upload(
            &dev,
            &[batch, cfg.image_features],
            &random_values(&mut rng, batch * cfg.image_features, 1.0, DType::F32),
            DType::F32,
        );
        g.throughput(Throughput::Elements(batch as u64));
        report_forward(&gpu, &format!("exam/resnet34_{SIZE}/f16/b{batch}"), || {
            model.forward(&x, &emr)
        });
        g.bench_function(format!("resnet34_{SIZE}/f16/b{batch}"), |b| {
            b.iter(|| model.forward(&x, &emr).unwrap())
        });
        g.bench_function(format!("head/f32/b{batch}"), |b| {
            b.iter(|| model.head.forward(&feats, &emr).unwrap())
        });
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
