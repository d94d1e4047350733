//! End-to-end EfficientNet forward (`src/model/efficientnet.rs`) on the GPU in f16: images/s
//! (criterion Throughput::Elements = batch) of one `EfficientNet::forward` (a normalised NHWC
//! batch already on the GPU → f32 logits on the GPU, stream synced), random weights from
//! `random_weights` loaded through the safetensors path a checkpoint takes (BN folded on load).
//!
//! - `efficientnet/b0/f16/b{1,32,128}` at 224×224 (torchvision B0: symmetric padding);
//! - `efficientnet/b7/f16/b{1,32}` at 600×600 (B7, the chest X-ray triage backbone).
//!
//! scripts/peer_bench.py `efficientnet_peers` times torchvision's `efficientnet_b0` /
//! `efficientnet_b7` (eager, f16, channels_last, inference_mode) under the same ids. GPU only:
//! without a GPU the bench prints a counted SKIP and times nothing.

mod common;
use common::*;
use criterion::{SamplingMode, Throughput, criterion_group, criterion_main};
use medkern::model::efficientnet::{
    EfficientNet, EfficientNetConfig, random_weights, to_safetensors,
};
use medkern::{DType, Device, HostTensor};
use std::time::Duration;

/// (model, resolution, batches): what is timed, in id order.
const PLAN: [(usize, usize, &[usize]); 2] = [(0, 224, &[1, 32, 128]), (7, 600, &[1, 32])];

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench efficientnet") else {
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group("efficientnet");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sampling_mode(SamplingMode::Flat);
    for (b, res, batches) in PLAN {
        let cfg = EfficientNetConfig::b(b).expect("config");
        let bytes = to_safetensors(&random_weights(&cfg, 31).expect("weights")).expect("bytes");
        let m = EfficientNet::from_bytes(&bytes, cfg, &dev, DType::F16).expect("load");
        drop(bytes);
        for &batch in batches {
            let mut rng = SeedRng::new((res * 1000 + batch) as u64);
            let x = random_values(&mut rng, batch * res * res * 3, 1.0, DType::F16);
            let x = HostTensor::from_f64(&[batch, res, res, 3], &x, DType::F16)
                .expect("x")
                .to_device(&dev)
                .expect("upload");
            g.throughput(Throughput::Elements(batch as u64));
            report_forward(&gpu, &format!("efficientnet/b{b}/f16/b{batch}"), || {
                m.forward(&x)
            });
            g.bench_function(format!("b{b}/f16/b{batch}"), |bch| {
                bch.iter(|| {
                    m.forward(&x).expect("forward");
                    gpu.synchronize().expect("sync");
                })
            });
        }
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
