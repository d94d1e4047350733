//! LayerNorm bench (`kernels/layernorm.cu`): post-LN BERT shape with the fused residual,
//! bytes/s against the device's copy bandwidth.

mod common;
use common::*;
use criterion::{Throughput, criterion_group, criterion_main};
use medkern::ops;
use medkern::{DType, Device, Tensor};

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench layernorm") else {
        let x = Tensor::new(
            &Device::Cpu,
            &[64, 768],
            vec![half::f16::from_f32(0.5); 64 * 768],
        )
        .unwrap();
        let g1 = Tensor::new(&Device::Cpu, &[768], vec![half::f16::ONE; 768]).unwrap();
        c.bench_function("layernorm/cpu-reference/f16/64x768", |b| {
            b.iter(|| ops::layernorm(&x, None, &g1, &g1, 1e-5).unwrap())
        });
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group("layernorm");
    let mut rng = SeedRng::new(13);
    for (rows, n) in BERT_ROWS_COLS.into_iter().chain([(4096, 4096)]) {
        for dt in DType::FLOATS {
            let len = rows * n;
            let x = upload(&dev, &[rows, n], &random_values(&mut rng, len, 1.0, dt), dt);
            let r = upload(&dev, &[rows, n], &random_values(&mut rng, len, 1.0, dt), dt);
            let gamma = upload(&dev, &[n], &random_values(&mut rng, n, 1.0, dt), dt);
            let beta = upload(&dev, &[n], &random_values(&mut rng, n, 1.0, dt), dt);
            let mut y = poisoned(&dev, &[rows, n], dt);
            g.throughput(Throughput::Bytes((3 * len * dt.size()) as u64));
            g.bench_function(format!("residual/{dt}/{rows}x{n}"), |b| {
                b.iter(|| {
                    ops::layernorm_into(&x, Some(&r), &gamma, &beta, 1e-12, &mut y, None).unwrap();
                    gpu.synchronize().unwrap();
                })
            });
        }
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
