//! Row softmax bench (`kernels/softmax.cu`): attention-score rows (seq 128/512/2048) with a
//! broadcast padding mask, bytes/s against the device's copy bandwidth.

mod common;
use common::*;
use criterion::{Throughput, criterion_group, criterion_main};
use medkern::ops;
use medkern::{DType, Device, Tensor};

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench softmax") else {
        let x = Tensor::new(
            &Device::Cpu,
            &[96, 128],
            vec![half::f16::from_f32(0.5); 96 * 128],
        )
        .unwrap();
        c.bench_function("softmax/cpu-reference/f16/96x128", |b| {
            b.iter(|| ops::softmax(&x, None, 0.125).unwrap())
        });
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group("softmax");
    let mut rng = SeedRng::new(11);
    // (batch, heads, seq): scores are [batch·heads·seq, seq], the mask is [batch, seq].
    for (batch, heads, seq) in [(32, 12, 128), (8, 12, 512), (1, 12, 2048), (2, 16, 4096)] {
        for dt in [DType::F16, DType::BF16, DType::F32] {
            let rows = batch * heads * seq;
            let x = upload(
                &dev,
                &[rows, seq],
                &random_values(&mut rng, rows * seq, 2.0, dt),
                dt,
            );
            let mask: Vec<f64> = (0..batch)
                .flat_map(|b| {
                    (0..seq).map(move |c| {
                        if c < seq - (b * 7) % seq.max(1) {
                            0.0
                        } else {
                            f64::NEG_INFINITY
                        }
                    })
                })
                .collect();
            let m = upload(&dev, &[batch, seq], &mask, DType::F32);
            let mut out = poisoned(&dev, &[rows, seq], dt);
            g.throughput(Throughput::Bytes((2 * rows * seq * dt.size()) as u64));
            g.bench_function(format!("masked/{dt}/b{batch}h{heads}s{seq}"), |b| {
                b.iter(|| {
                    ops::softmax_into(&x, Some(&m), 0.125, &mut out).unwrap();
                    gpu.synchronize().unwrap();
                })
            });
        }
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
