//! W4A16 GEMM bench (`kernels/gemm_w4.cu`): GB/s of packed weight + scale bytes (criterion
//! "B/s" = `W4Weight::bytes` per call: the small-batch limit, where the weight stream is the
//! cost) at M = 1, 16, 64 rows by BERT-base and MiniLM Linear shapes, next to the dense f16
//! GEMM on the same shapes.

mod common;
use common::*;
use criterion::{Throughput, criterion_group, criterion_main};
use medkern::ops::{self, Gemm, W4Weight};
use medkern::quant::{Clip, quantize_weight_int4};
use medkern::{DType, Device, HostTensor};

/// (N, K) of the Linear layers: BERT-base QKV/out, FFN up, FFN down; MiniLM-L12-H384 likewise.
const LINEARS: [(usize, usize); 6] = [
    (768, 768),
    (3072, 768),
    (768, 3072),
    (384, 384),
    (1536, 384),
    (384, 1536),
];
const ROWS: [usize; 3] = [1, 16, 64];

fn weight(rng: &mut SeedRng, n: usize, k: usize) -> HostTensor {
    HostTensor::from_f64(
        &[n, k],
        &random_values(rng, n * k, 0.02, DType::F32),
        DType::F32,
    )
    .unwrap()
}

fn bench(c: &mut criterion::Criterion) {
    let mut rng = SeedRng::new(23);
    let Some(gpu) = gpu_or_skip("bench gemm_w4") else {
        let q = quantize_weight_int4(&weight(&mut rng, 64, 128), 64, Clip::AbsMax).unwrap();
        let w = W4Weight::new(&q, &Device::Cpu).unwrap();
        let x = upload(
            &Device::Cpu,
            &[4, 128],
            &random_values(&mut rng, 512, 1.0, DType::F32),
            DType::F32,
        );
        c.bench_function("gemm_w4/cpu-reference/4x64x128", |b| {
            b.iter(|| ops::gemm_w4(&x, &w, &Gemm::default()).unwrap())
        });
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group("gemm_w4");
    for (n, k) in LINEARS {
        let wf = weight(&mut rng, n, k);
        let q = quantize_weight_int4(&wf, 128, Clip::AbsMax).unwrap();
        let w4 = W4Weight::new(&q, &dev).unwrap();
        let wd = upload(&dev, &[n, k], &wf.to_f64(), DType::F16);
        for m in ROWS {
            let x = upload(
                &dev,
                &[m, k],
                &random_values(&mut rng, m * k, 1.0, DType::F16),
                DType::F16,
            );
            let mut y = poisoned(&dev, &[m, n], DType::F16);
            g.throughput(Throughput::Bytes(w4.bytes() as u64));
            g.bench_function(format!("w4a16_f16/{m}x{n}x{k}"), |b| {
                b.iter(|| {
                    ops::gemm_w4_into(&x, &w4, &Gemm::default(), &mut y).unwrap();
                    gpu.synchronize().unwrap();
                })
            });
            // The dense f16 weight on the same shape (its own weight bytes, 2·N·K).
            g.throughput(Throughput::Bytes((2 * n * k) as u64));
            g.bench_function(format!("dense_f16/{m}x{n}x{k}"), |b| {
                b.iter(|| {
                    ops::gemm_into(&x, &wd, &Gemm::default(), &mut y).unwrap();
                    gpu.synchronize().unwrap();
                })
            });
        }
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
