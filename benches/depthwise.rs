//! Depthwise conv2d bench (`kernels/depthwise.cu`): every depthwise layer of EfficientNet-B0
//! at 224×224 (PyTorch padding k/2), batch 1 and 32, with the BatchNorm folded into the fused
//! per-channel scale/bias and SiLU, as the MBConv block runs it. Bytes/s counts the input read,
//! the output written and the weights: `(N·H·W·C + N·OH·OW·C + k²·C)·size`, the work
//! `scripts/peer_bench.py` gives PyTorch's `F.silu(F.conv2d(..., groups=C))` at the same ids.

mod common;
use common::*;
use criterion::{Throughput, criterion_group, criterion_main};
use medkern::ops::{self, Activation, Depthwise, Padding};
use medkern::{DType, Device, Tensor};

/// EfficientNet-B0's depthwise layers (input side, kernel, stride), in network order:
/// MBConv1 k3 (32 ch), then the expanded (×6) inputs of each stage's first and repeated blocks.
const B0_DEPTHWISE: [(usize, usize, usize, usize); 12] = [
    (112, 32, 3, 1),
    (112, 96, 3, 2),
    (56, 144, 3, 1),
    (56, 144, 5, 2),
    (28, 240, 5, 1),
    (28, 240, 3, 2),
    (14, 480, 3, 1),
    (14, 480, 5, 1),
    (14, 672, 5, 1),
    (14, 672, 5, 2),
    (7, 1152, 5, 1),
    (7, 1152, 3, 1),
];

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench depthwise") else {
        let cpu = Device::Cpu;
        let x = Tensor::new(&cpu, &[1, 14, 14, 32], vec![half::f16::ONE; 14 * 14 * 32]).unwrap();
        let w = Tensor::new(&cpu, &[3, 3, 32], vec![half::f16::ONE; 9 * 32]).unwrap();
        let d = Depthwise {
            padding: Padding::symmetric(1, 1),
            ..Default::default()
        };
        c.bench_function("depthwise/cpu-reference/f16/1x14x14x32k3s1", |b| {
            b.iter(|| ops::depthwise(&x, &w, &d).unwrap())
        });
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group("depthwise");
    let mut rng = SeedRng::new(17);
    for (hw, ch, k, s) in B0_DEPTHWISE {
        for batch in [1, 32] {
            let dts: &[DType] = if (hw, ch, batch) == (112, 96, 32) {
                &[DType::F16, DType::BF16, DType::F32]
            } else {
                &[DType::F16]
            };
            for &dt in dts {
                let x = upload(
                    &dev,
                    &[batch, hw, hw, ch],
                    &random_values(&mut rng, batch * hw * hw * ch, 1.0, dt),
                    dt,
                );
                let w = upload(
                    &dev,
                    &[k, k, ch],
                    &random_values(&mut rng, k * k * ch, 0.3, dt),
                    dt,
                );
                let scale = upload(&dev, &[ch], &vec![0.9; ch], DType::F32);
                let bias = upload(&dev, &[ch], &vec![0.1; ch], DType::F32);
                let d = Depthwise {
                    stride: (s, s),
                    padding: Padding::symmetric(k / 2, k / 2),
                    scale: Some(&scale),
                    bias: Some(&bias),
                    act: Activation::Silu,
                    ..Default::default()
                };
                let mut out = ops::depthwise(&x, &w, &d).unwrap();
                let o = out.len();
                g.throughput(Throughput::Bytes(
                    ((batch * hw * hw * ch + o + k * k * ch) * dt.size()) as u64,
                ));
                g.bench_function(
                    format!("bn_silu/{dt}/b{batch}/{hw}x{hw}x{ch}k{k}s{s}"),
                    |b| {
                        b.iter(|| {
                            ops::depthwise_into(&x, &w, &d, &mut out).unwrap();
                            gpu.synchronize().unwrap();
                        })
                    },
                );
            }
        }
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
