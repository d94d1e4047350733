//! Squeeze-and-excitation bench (`kernels/squeeze_excite.cu`): the SE blocks of EfficientNet-B0
//! at 224×224 (the depthwise output of one block per stage: side, channels, hidden width),
//! batch 1 and 32, f16 activations and weights. Bytes/s counts what an SE block must move: x
//! read twice (squeeze, then scale), y written, both weights and biases read:
//! `(3·N·H·W·C + 2·C·Cse + C + Cse)·size`, the work `scripts/peer_bench.py` gives the same
//! block as PyTorch ops (`mean`, `linear`, `silu`, `linear`, `sigmoid`, `mul`).

mod common;
use common::*;
use criterion::{Throughput, criterion_group, criterion_main};
use medkern::ops::{self, SqueezeExcite};
use medkern::{DType, Device};

/// EfficientNet-B0's SE inputs (side, C, Cse): Cse = max(1, block input channels / 4).
const B0_SE: [(usize, usize, usize); 5] = [
    (112, 32, 8),
    (56, 144, 6),
    (28, 240, 10),
    (14, 672, 28),
    (7, 1152, 48),
];

fn bench(c: &mut criterion::Criterion) {
    let gpu = gpu_or_skip("bench squeeze_excite");
    let dev = gpu.clone().map_or(Device::Cpu, Device::Gpu);
    let mut g = c.benchmark_group("se");
    let mut rng = SeedRng::new(29);
    let shapes: &[(usize, usize, usize)] = if gpu.is_some() { &B0_SE } else { &B0_SE[4..] };
    let batches: &[usize] = if gpu.is_some() { &[1, 32] } else { &[1] };
    for &(hw, ch, cse) in shapes {
        for &batch in batches {
            let dt = DType::F16;
            let x = upload(
                &dev,
                &[batch, hw, hw, ch],
                &random_values(&mut rng, batch * hw * hw * ch, 1.0, dt),
                dt,
            );
            let w1 = upload(
                &dev,
                &[cse, ch],
                &random_values(&mut rng, cse * ch, 0.05, dt),
                dt,
            );
            let b1 = upload(&dev, &[cse], &random_values(&mut rng, cse, 0.1, dt), dt);
            let w2 = upload(
                &dev,
                &[ch, cse],
                &random_values(&mut rng, ch * cse, 0.2, dt),
                dt,
            );
            let b2 = upload(&dev, &[ch], &random_values(&mut rng, ch, 0.1, dt), dt);
            let se = SqueezeExcite::new(&w1, &b1, &w2, &b2);
            let mut y = ops::squeeze_excite(&x, &se).unwrap();
            let mut s = ops::se_scale_vector(&x, &se).unwrap();
            let bytes = (3 * x.len() + 2 * ch * cse + ch + cse) * dt.size();
            g.throughput(Throughput::Bytes(bytes as u64));
            let id = if gpu.is_some() {
                format!("{dt}/b{batch}/{hw}x{hw}x{ch}se{cse}")
            } else {
                format!("cpu-reference/{dt}/b{batch}/{hw}x{hw}x{ch}se{cse}")
            };
            g.bench_function(id, |b| {
                b.iter(|| {
                    ops::squeeze_excite_into(&x, &se, &mut y, Some(&mut s)).unwrap();
                    if let Some(gpu) = &gpu {
                        gpu.synchronize().unwrap();
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
