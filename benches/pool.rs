//! Pooling bench (`kernels/pool.cu`): ResNet-18's stem max pool (3×3 s2 p1 on 112×112×64) and
//! the global average pools before the classifier heads (ResNet-18 7×7×512, EfficientNet-B0
//! 7×7×1280), batch 1 and 32. Bytes/s counts the input read once and the output written:
//! `(N·H·W·C + N·OH·OW·C)·size`, the work `scripts/peer_bench.py` gives PyTorch's
//! `F.max_pool2d` / `F.adaptive_avg_pool2d` on channels_last tensors at the same ids.

mod common;
use common::*;
use criterion::{Throughput, criterion_group, criterion_main};
use medkern::ops::{self, Pool2d};
use medkern::{DType, Device, Tensor};

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench pool") else {
        let x = Tensor::new(
            &Device::Cpu,
            &[1, 28, 28, 64],
            vec![half::f16::from_f32(0.5); 28 * 28 * 64],
        )
        .unwrap();
        c.bench_function("pool/cpu-reference/max3x3s2/f16/b1/28x28x64", |b| {
            b.iter(|| ops::max_pool2d(&x, &Pool2d::resnet_stem()).unwrap())
        });
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group("pool");
    let mut rng = SeedRng::new(23);
    let stem = Pool2d::resnet_stem();
    for batch in [1, 32] {
        let dts: &[DType] = if batch == 32 {
            &[DType::F16, DType::BF16, DType::F32]
        } else {
            &[DType::F16]
        };
        for &dt in dts {
            let (hw, ch) = (112, 64);
            let x = upload(
                &dev,
                &[batch, hw, hw, ch],
                &random_values(&mut rng, batch * hw * hw * ch, 1.0, dt),
                dt,
            );
            let mut out = ops::max_pool2d(&x, &stem).unwrap();
            g.throughput(Throughput::Bytes(
                ((x.len() + out.len()) * dt.size()) as u64,
            ));
            g.bench_function(format!("max3x3s2/{dt}/b{batch}/{hw}x{hw}x{ch}"), |b| {
                b.iter(|| {
                    ops::max_pool2d_into(&x, &stem, &mut out).unwrap();
                    gpu.synchronize().unwrap();
                })
            });
        }
        for ch in [512, 1280] {
            let (dt, hw) = (DType::F16, 7);
            let x = upload(
                &dev,
                &[batch, hw, hw, ch],
                &random_values(&mut rng, batch * hw * hw * ch, 1.0, dt),
                dt,
            );
            let mut out = ops::global_avg_pool(&x).unwrap();
            g.throughput(Throughput::Bytes(
                ((x.len() + out.len()) * dt.size()) as u64,
            ));
            g.bench_function(format!("gap/{dt}/b{batch}/{hw}x{hw}x{ch}"), |b| {
                b.iter(|| {
                    ops::global_avg_pool_into(&x, &mut out).unwrap();
                    gpu.synchronize().unwrap();
                })
            });
        }
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
