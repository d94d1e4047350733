//! 2:4-sparse GEMM bench (`kernels/gemm_sparse.cu`): FLOP/s counted as the dense problem
//! (2·M·N·K, as cuSPARSELt reports it), next to our dense kernel on the same pruned weight, at
//! BERT Linear shapes and 8192³. `scripts/peer_bench.py` adds PyTorch's semi-structured path.

mod common;
use common::*;
use criterion::{Throughput, criterion_group, criterion_main};
use medkern::ops::{self, Gemm, SparseWeight};
use medkern::sparse::{compress, prune_2_4};
use medkern::{DType, Device, HostTensor, Tensor};

const SHAPES: [(usize, usize, usize); 6] = [
    (128, 3072, 768),
    (2048, 3072, 768),
    (16384, 768, 768),
    (16384, 3072, 768),
    (16384, 768, 3072),
    (8192, 8192, 8192),
];

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench gemm_sparse") else {
        let w = HostTensor::from_f64(&[64, 64], &vec![1.0; 64 * 64], DType::F16).unwrap();
        let (sw, _) = SparseWeight::prune(&w, &Device::Cpu).unwrap();
        let x = Tensor::new(&Device::Cpu, &[16, 64], vec![half::f16::ONE; 16 * 64]).unwrap();
        c.bench_function("gemm_sp/cpu-reference/f16/16x64x64", |b| {
            b.iter(|| ops::gemm_sparse(&x, &sw, &Gemm::default()).unwrap())
        });
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group("gemm_sp");
    let mut rng = SeedRng::new(29);
    for (m, n, k) in SHAPES {
        let dt = DType::F16;
        let x = upload(&dev, &[m, k], &random_values(&mut rng, m * k, 1.0, dt), dt);
        let wd =
            HostTensor::from_f64(&[n, k], &random_values(&mut rng, n * k, 0.05, dt), dt).unwrap();
        let (sw, _) = SparseWeight::prune(&wd, &dev).unwrap();
        let wp = prune_2_4(&wd).unwrap().0.to_device(&dev).unwrap();
        let mut y = poisoned(&dev, &[m, n], dt);
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(format!("sparse/{dt}/{m}x{n}x{k}"), |b| {
            b.iter(|| {
                ops::gemm_sparse_into(&x, &sw, &Gemm::default(), &mut y).unwrap();
                gpu.synchronize().unwrap();
            })
        });
        g.bench_function(format!("dense_same_weight/{dt}/{m}x{n}x{k}"), |b| {
            b.iter(|| {
                ops::gemm_into(&x, &wp, &Gemm::default(), &mut y).unwrap();
                gpu.synchronize().unwrap();
            })
        });
        // int8: 2:4 sparse vs dense on the same pruned int8 weight (raw s32 output).
        let xi = HostTensor::new(&[m, k], random_i8(&mut rng, m * k))
            .unwrap()
            .to_device(&dev)
            .unwrap();
        let wi: Vec<f64> = random_i8(&mut rng, n * k)
            .into_iter()
            .map(f64::from)
            .collect();
        let wi = prune_2_4(&HostTensor::from_f64(&[n, k], &wi, DType::I8).unwrap())
            .unwrap()
            .0;
        let swi = SparseWeight::new(&compress(&wi).unwrap(), &dev).unwrap();
        let wid = wi.to_device(&dev).unwrap();
        let mut acc = poisoned(&dev, &[m, n], DType::I32);
        g.bench_function(format!("sparse_i8_raw/{m}x{n}x{k}"), |b| {
            b.iter(|| {
                ops::gemm_sparse_i8_into(&xi, &swi, None, &mut acc).unwrap();
                gpu.synchronize().unwrap();
            })
        });
        g.bench_function(format!("dense_i8_raw_same_weight/{m}x{n}x{k}"), |b| {
            b.iter(|| {
                ops::gemm_i8_raw_into(&xi, &wid, &mut acc, None).unwrap();
                gpu.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
