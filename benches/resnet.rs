//! End-to-end CNN bench (`src/model/resnet.rs`, `src/model/sepsis.rs`): the latency of one
//! `forward` (a normalised NHWC f16 batch already on the GPU → logits, probabilities and pooled
//! features on the GPU, stream synced) on random-weight models loaded through safetensors
//! (`random_resnet` / `random_sepsis`, the path a trained checkpoint takes). Criterion
//! "elem/s" = images/s (Throughput::Elements = batch).
//!
//! Models, 224×224×3 frames, batch 1, 32, 128, f16:
//! - `resnet18_224`: torchvision ResNet-18, 1000 classes (logits + 512-d feature);
//! - `sepsis_224`: the sepsis classifier (ResNet-18 stem + layer1 + layer2 → GAP → 128-d →
//!   FC 2 → softmax).
//!
//! Ids: `resnet/{model}/f16/b{batch}`. scripts/peer_bench.py `resnet_peers` times torchvision's
//! eager models (f16, channels_last, cudnn.benchmark, inference_mode) under the same ids.
//!
//! GPU only: without a GPU the bench prints a counted SKIP and times nothing.

mod common;
use common::*;
use criterion::{SamplingMode, Throughput, criterion_group, criterion_main};
use medkern::model::resnet::{ResNet, ResNetConfig, random_resnet};
use medkern::model::sepsis::{SepsisNet, random_sepsis};
use medkern::{DType, Device};
use std::time::Duration;

pub const BATCHES: [usize; 3] = [1, 32, 128];
const SIZE: usize = 224;

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench resnet") else {
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let dt = DType::F16;
    let mut g = c.benchmark_group("resnet");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sampling_mode(SamplingMode::Flat);
    let cfg = ResNetConfig::resnet18(1000);
    let r18 = random_resnet(&cfg, 11)
        .to_safetensors()
        .and_then(|b| ResNet::from_safetensors(&b, cfg, &dev, dt))
        .expect("resnet18");
    let sepsis = random_sepsis(12)
        .to_safetensors()
        .and_then(|b| SepsisNet::from_safetensors(&b, &dev, dt))
        .expect("sepsis");
    for batch in BATCHES {
        let shape = [batch, SIZE, SIZE, 3];
        let mut rng = SeedRng::new(batch as u64);
        let x = upload(
            &dev,
            &shape,
            &random_values(&mut rng, shape.iter().product(), 1.0, dt),
            dt,
        );
        g.throughput(Throughput::Elements(batch as u64));
        report_forward(
            &gpu,
            &format!("resnet/resnet18_{SIZE}/f16/b{batch}"),
            || r18.forward(&x),
        );
        report_forward(&gpu, &format!("resnet/sepsis_{SIZE}/f16/b{batch}"), || {
            sepsis.forward(&x)
        });
        g.bench_function(format!("resnet18_{SIZE}/f16/b{batch}"), |b| {
            b.iter(|| {
                r18.forward(&x).unwrap();
                gpu.synchronize().unwrap();
            })
        });
        g.bench_function(format!("sepsis_{SIZE}/f16/b{batch}"), |b| {
            b.iter(|| {
                sepsis.forward(&x).unwrap();
                gpu.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
