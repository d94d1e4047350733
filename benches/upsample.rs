//! Upsampling bench (`kernels/upsample.cu`): 2× nearest and bilinear upsampling of the sepsis
//! autoencoder decoder's feature maps (the resize-then-conv alternative to transposed convs,
//! shapes as benches/conv_transpose.rs assumes them) at batch 1 and 64, a 2× FPN-style upsample
//! (32×28×28×256), and a fractional bilinear image resize (8×512×512×3 → 224×224). Bytes/s
//! counts input read + output written, the work `scripts/peer_bench.py` gives PyTorch's
//! `F.interpolate` at the same ids.

mod common;
use common::*;
use criterion::{Throughput, criterion_group, criterion_main};
use medkern::ops::{self, UpsampleMode};
use medkern::{DType, Device, Tensor};

/// (batch, H = W, C, output H = W).
const SHAPES: [(usize, usize, usize, usize); 9] = [
    (1, 12, 8, 24),
    (1, 24, 32, 48),
    (1, 48, 16, 96),
    (64, 12, 8, 24),
    (64, 24, 32, 48),
    (64, 48, 16, 96),
    (32, 28, 256, 56),
    (8, 512, 3, 224),
    (1, 512, 3, 224),
];

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench upsample") else {
        let x = Tensor::new(&Device::Cpu, &[1, 12, 12, 8], vec![half::f16::ONE; 1152]).unwrap();
        c.bench_function("upsample/cpu-reference/bilinear/f16/b1/12x12x8-24", |b| {
            b.iter(|| {
                ops::upsample(
                    &x,
                    (24, 24),
                    UpsampleMode::Bilinear {
                        align_corners: false,
                    },
                )
                .unwrap()
            })
        });
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group("upsample");
    let mut rng = SeedRng::new(29);
    for (batch, hw, ch, out_hw) in SHAPES {
        let modes: &[(&str, UpsampleMode)] = if out_hw < hw {
            &[(
                "bilinear",
                UpsampleMode::Bilinear {
                    align_corners: false,
                },
            )]
        } else {
            &[
                ("nearest", UpsampleMode::Nearest),
                (
                    "bilinear",
                    UpsampleMode::Bilinear {
                        align_corners: false,
                    },
                ),
            ]
        };
        for dt in [DType::F16, DType::F32] {
            let x = upload(
                &dev,
                &[batch, hw, hw, ch],
                &random_values(&mut rng, batch * hw * hw * ch, 1.0, dt),
                dt,
            );
            let mut out = poisoned(&dev, &[batch, out_hw, out_hw, ch], dt);
            for &(name, mode) in modes {
                g.throughput(Throughput::Bytes(
                    ((x.len() + out.len()) * dt.size()) as u64,
                ));
                g.bench_function(
                    format!("{name}/{dt}/b{batch}/{hw}x{hw}x{ch}-{out_hw}"),
                    |b| {
                        b.iter(|| {
                            ops::upsample_into(&x, mode, &mut out).unwrap();
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
