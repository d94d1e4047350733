//! Transposed conv2d bench (`kernels/conv_transpose.cu`): the decoder of the sepsis
//! microcirculation autoencoder (3 transposed convs, k3 stride 2 padding 1 output_padding 1,
//! ReLU, ReLU, sigmoid), batch 1 and 64. The paper gives the 1152-d bottleneck only; the shapes
//! assumed here are a 96×96×3 frame encoded to 12×12×8 (= 1152) and decoded back:
//! 12×12×8 → 24×24×32 → 48×48×16 → 96×96×3. Bytes/s counts input read, output written and
//! weights, `(N·H·W·C_in + N·OH·OW·C_out + 9·C_in·C_out)·size`, the work `scripts/peer_bench.py`
//! gives PyTorch's `F.conv_transpose2d` + activation at the same ids.

mod common;
use common::*;
use criterion::{Throughput, criterion_group, criterion_main};
use medkern::ops::{self, Activation, ConvTranspose};
use medkern::{DType, Device, Tensor};

/// Decoder layers: (input H = W, C_in, C_out, activation).
const SEPSIS_DECODER: [(usize, usize, usize, Activation); 3] = [
    (12, 8, 32, Activation::Relu),
    (24, 32, 16, Activation::Relu),
    (48, 16, 3, Activation::Sigmoid),
];

fn bench(c: &mut criterion::Criterion) {
    let ct = ConvTranspose {
        stride: (2, 2),
        padding: (1, 1),
        output_padding: (1, 1),
        ..Default::default()
    };
    let Some(gpu) = gpu_or_skip("bench conv_transpose") else {
        let cpu = Device::Cpu;
        let x = Tensor::new(&cpu, &[1, 12, 12, 8], vec![half::f16::ONE; 12 * 12 * 8]).unwrap();
        let w = Tensor::new(&cpu, &[3, 3, 8, 32], vec![half::f16::ONE; 9 * 8 * 32]).unwrap();
        c.bench_function("conv_transpose/cpu-reference/f16/b1/12x12x8-32k3s2", |b| {
            b.iter(|| ops::conv_transpose2d(&x, &w, &ct).unwrap())
        });
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group("conv_transpose");
    let mut rng = SeedRng::new(23);
    for (hw, ci, co, act) in SEPSIS_DECODER {
        for batch in [1, 64] {
            for dt in [DType::F16, DType::F32] {
                let x = upload(
                    &dev,
                    &[batch, hw, hw, ci],
                    &random_values(&mut rng, batch * hw * hw * ci, 1.0, dt),
                    dt,
                );
                let w = upload(
                    &dev,
                    &[3, 3, ci, co],
                    &random_values(&mut rng, 9 * ci * co, 0.2, dt),
                    dt,
                );
                let bias = upload(&dev, &[co], &vec![0.05; co], DType::F32);
                let ct = ConvTranspose {
                    bias: Some(&bias),
                    act,
                    ..ct
                };
                let mut out = ops::conv_transpose2d(&x, &w, &ct).unwrap();
                let bytes = (x.len() + out.len() + w.len()) * dt.size();
                g.throughput(Throughput::Bytes(bytes as u64));
                g.bench_function(
                    format!("{}/{dt}/b{batch}/{hw}x{hw}x{ci}-{co}k3s2", act.name()),
                    |b| {
                        b.iter(|| {
                            ops::conv_transpose2d_into(&x, &w, &ct, &mut out).unwrap();
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
