//! Dense GEMM bench (`kernels/gemm.cu`): FLOP/s (criterion "elem/s" = FLOP/s, 2·M·N·K per
//! call) at BERT Linear shapes with and without the fused bias+GELU epilogue, and at 4096³ /
//! 8192³. `scripts/peer_bench.py` times the same ids with PyTorch for the ratio table. On
//! compute capability 9.0 the group `gemm_hopper` repeats them with the sm_90a kernels on
//! (kernels/gemm_hopper.cu; f16/bf16 only: f32 stays on the SIMT kernel).

mod common;
use common::*;
use criterion::{Throughput, criterion_group, criterion_main};
use medkern::ops::{self, Activation, Gemm};
use medkern::{DType, Device, Tensor};

/// (M, N, K): BERT-base Linear layers at batch·seq 128 .. 16384, then square problems.
pub const SHAPES: [(usize, usize, usize); 11] = [
    (128, 768, 768),
    (128, 3072, 768),
    (2048, 768, 768),
    (2048, 3072, 768),
    (2048, 768, 3072),
    (16384, 768, 768),
    (16384, 3072, 768),
    (16384, 768, 3072),
    (1, 768, 768),
    (4096, 4096, 4096),
    (8192, 8192, 8192),
];

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench gemm") else {
        let x = Tensor::new(&Device::Cpu, &[16, 64], vec![half::f16::ONE; 16 * 64]).unwrap();
        let w = Tensor::new(&Device::Cpu, &[64, 64], vec![half::f16::ONE; 64 * 64]).unwrap();
        c.bench_function("gemm/cpu-reference/f16/16x64x64", |b| {
            b.iter(|| ops::gemm(&x, &w, &Gemm::default()).unwrap())
        });
        return;
    };
    // The sm_90a kernels (kernels/gemm_hopper.cu) on compute capability 9.0, as a second group
    // `gemm_hopper` on a device with them switched on; the same ids otherwise.
    let hopper = (gpu.arch() == medkern::device::Arch::new(9, 0))
        .then(|| medkern::device::Gpu::new(gpu.ordinal()).ok())
        .flatten()
        .filter(|h| h.set_hopper_kernels(true).is_ok());
    for (group, gpu) in
        std::iter::once(("gemm", gpu.clone())).chain(hopper.map(|h| ("gemm_hopper", h)))
    {
        run_group(c, group, &gpu);
    }
}

fn run_group(
    c: &mut criterion::Criterion,
    group: &str,
    gpu: &std::sync::Arc<medkern::device::Gpu>,
) {
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group(group);
    let mut rng = SeedRng::new(17);
    for (m, n, k) in SHAPES {
        let dts: &[DType] = if m == 4096 {
            &[DType::F16, DType::BF16, DType::F32]
        } else {
            &[DType::F16]
        };
        for &dt in dts {
            if group == "gemm_hopper" && dt == DType::F32 {
                continue;
            }
            let x = upload(&dev, &[m, k], &random_values(&mut rng, m * k, 1.0, dt), dt);
            let w = upload(&dev, &[n, k], &random_values(&mut rng, n * k, 0.05, dt), dt);
            let bias = upload(&dev, &[n], &random_values(&mut rng, n, 0.1, dt), dt);
            let mut y = poisoned(&dev, &[m, n], dt);
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            let epis: &[(&str, Gemm)] = &[
                ("plain", Gemm::default()),
                (
                    "bias_gelu",
                    Gemm {
                        bias: Some(&bias),
                        act: Activation::GeluErf,
                        ..Default::default()
                    },
                ),
            ];
            for (name, spec) in epis {
                if *name == "bias_gelu" && (m >= 4096 && n == 4096 || dt == DType::F32) {
                    continue;
                }
                g.bench_function(format!("{name}/{dt}/{m}x{n}x{k}"), |b| {
                    b.iter(|| {
                        ops::gemm_into(&x, &w, spec, &mut y).unwrap();
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
