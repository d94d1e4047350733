//! Elementwise family bench (`kernels/elementwise.cu`): bytes/s of the fused bias+GELU+residual
//! epilogue and of casts at BERT shapes. Memory bound: compare with the device's copy bandwidth.

mod common;
use common::*;
use criterion::{Throughput, criterion_group, criterion_main};
use medkern::ops::{self, Activation, Eltwise};
use medkern::{DType, Device, Tensor};

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench elementwise") else {
        // No GPU: time the CPU reference backend on one small shape so the bench still runs.
        let x = Tensor::new(
            &Device::Cpu,
            &[64, 768],
            vec![half::f16::from_f32(0.5); 64 * 768],
        )
        .unwrap();
        c.bench_function("eltwise/cpu-reference/gelu_erf/f16/64x768", |b| {
            b.iter(|| ops::activation(&x, Activation::GeluErf).unwrap())
        });
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group("eltwise");
    let mut rng = SeedRng::new(7);
    for (rows, n) in BERT_ROWS_COLS {
        for dt in DType::FLOATS {
            let len = rows * n;
            let x = upload(&dev, &[rows, n], &random_values(&mut rng, len, 1.0, dt), dt);
            let r = upload(&dev, &[rows, n], &random_values(&mut rng, len, 1.0, dt), dt);
            let bias = upload(&dev, &[n], &random_values(&mut rng, n, 1.0, dt), dt);
            let mut out = poisoned(&dev, &[rows, n], dt);
            let spec = Eltwise {
                bias: Some(&bias),
                act: Activation::GeluErf,
                residual: Some(&r),
                ..Default::default()
            };
            g.throughput(Throughput::Bytes(((3 * len + n) * dt.size()) as u64));
            g.bench_function(format!("bias_gelu_erf_residual/{dt}/{rows}x{n}"), |b| {
                b.iter(|| {
                    ops::eltwise_into(&x, &spec, &mut out).unwrap();
                    gpu.synchronize().unwrap();
                })
            });
            if dt != DType::F32 {
                let mut out32 = poisoned(&dev, &[rows, n], DType::F32);
                g.throughput(Throughput::Bytes((len * (dt.size() + 4)) as u64));
                g.bench_function(format!("cast/{dt}->f32/{rows}x{n}"), |b| {
                    b.iter(|| {
                        ops::cast_into(&x, &mut out32).unwrap();
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
