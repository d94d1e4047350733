//! Quantisation bench (`kernels/quantize.cu`): bytes/s of per-token int8 quantisation and of
//! the LayerNorm-fused variant at BERT shapes.

mod common;
use common::*;
use criterion::{Throughput, criterion_group, criterion_main};
use medkern::ops::{self, LnParams};
use medkern::{DType, Device, Tensor};

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench quantize") else {
        let x = Tensor::new(
            &Device::Cpu,
            &[64, 768],
            vec![half::f16::from_f32(0.3); 64 * 768],
        )
        .unwrap();
        c.bench_function("quantize/cpu-reference/rows/f16/64x768", |b| {
            b.iter(|| ops::quantize_rows(&x).unwrap())
        });
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group("quantize");
    let mut rng = SeedRng::new(23);
    for (rows, n) in BERT_ROWS_COLS {
        let dt = DType::F16;
        let x = upload(
            &dev,
            &[rows, n],
            &random_values(&mut rng, rows * n, 1.0, dt),
            dt,
        );
        let r = upload(
            &dev,
            &[rows, n],
            &random_values(&mut rng, rows * n, 1.0, dt),
            dt,
        );
        let gm = upload(&dev, &[n], &random_values(&mut rng, n, 1.0, dt), dt);
        let bt = upload(&dev, &[n], &random_values(&mut rng, n, 0.1, dt), dt);
        g.throughput(Throughput::Bytes((rows * n * (dt.size() + 1)) as u64));
        g.bench_function(format!("rows/{dt}/{rows}x{n}"), |b| {
            b.iter(|| {
                let out = ops::quantize_rows(&x).unwrap();
                gpu.synchronize().unwrap();
                out
            })
        });
        g.throughput(Throughput::Bytes((rows * n * (2 * dt.size() + 1)) as u64));
        let ln = LnParams {
            residual: Some(&r),
            gamma: &gm,
            beta: &bt,
            eps: 1e-12,
        };
        g.bench_function(format!("layernorm_residual/{dt}/{rows}x{n}"), |b| {
            b.iter(|| {
                let out = ops::layernorm_quantize(&x, &ln).unwrap();
                gpu.synchronize().unwrap();
                out
            })
        });
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
