//! Int8 GEMM bench (`kernels/gemm_int8.cu`): TOPS (criterion "elem/s" = ops/s, 2·M·N·K) of the
//! raw s32 output (peer: `torch._int_mm`) and of the per-token/per-channel dequantising epilogue
//! to f16, at BERT shapes and 4096³ / 8192³.

mod common;
use common::*;
use criterion::{Throughput, criterion_group, criterion_main};
use medkern::ops::{self, GemmI8};
use medkern::{DType, Device, HostTensor, Tensor};

const SHAPES: [(usize, usize, usize); 8] = [
    (128, 3072, 768),
    (2048, 768, 768),
    (2048, 3072, 768),
    (16384, 768, 768),
    (16384, 3072, 768),
    (16384, 768, 3072),
    (4096, 4096, 4096),
    (8192, 8192, 8192),
];

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench gemm_int8") else {
        let x = Tensor::new(&Device::Cpu, &[16, 64], vec![3i8; 16 * 64]).unwrap();
        let w = Tensor::new(&Device::Cpu, &[64, 64], vec![-2i8; 64 * 64]).unwrap();
        c.bench_function("gemm_i8/cpu-reference/raw/16x64x64", |b| {
            b.iter(|| ops::gemm_i8_raw(&x, &w).unwrap())
        });
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group("gemm_i8");
    let mut rng = SeedRng::new(19);
    for (m, n, k) in SHAPES {
        let x = HostTensor::new(&[m, k], random_i8(&mut rng, m * k))
            .unwrap()
            .to_device(&dev)
            .unwrap();
        let w = HostTensor::new(&[n, k], random_i8(&mut rng, n * k))
            .unwrap()
            .to_device(&dev)
            .unwrap();
        let sx = upload(&dev, &[m], &vec![0.02; m], DType::F32);
        let sw = upload(&dev, &[n], &vec![0.003; n], DType::F32);
        let mut acc = poisoned(&dev, &[m, n], DType::I32);
        let mut y = poisoned(&dev, &[m, n], DType::F16);
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(format!("raw/{m}x{n}x{k}"), |b| {
            b.iter(|| {
                ops::gemm_i8_raw_into(&x, &w, &mut acc, None).unwrap();
                gpu.synchronize().unwrap();
            })
        });
        let spec = GemmI8::new(&sx, &sw, DType::F16);
        g.bench_function(format!("dequant_f16/{m}x{n}x{k}"), |b| {
            b.iter(|| {
                ops::gemm_i8_into(&x, &w, &spec, &mut y).unwrap();
                gpu.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
