//! NCHW ↔ NHWC bench (`kernels/layout.cu`): a 3×224×224 image batch (the small-dimension path)
//! and a 64×56×56 ResNet activation (the tiled path), batch 1 and 32. Bytes/s counts one read
//! and one write of the tensor, the work `scripts/peer_bench.py` gives PyTorch's
//! `.contiguous(memory_format=...)` at the same ids.

mod common;
use common::*;
use criterion::{Throughput, criterion_group, criterion_main};
use medkern::ops;
use medkern::{DType, Device, Tensor};

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench layout") else {
        let x = Tensor::new(&Device::Cpu, &[1, 3, 64, 64], vec![0.5f32; 3 * 64 * 64]).unwrap();
        c.bench_function("layout/cpu-reference/nchw_to_nhwc/f32/b1/3x64x64", |b| {
            b.iter(|| ops::nchw_to_nhwc(&x).unwrap())
        });
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group("layout");
    let mut rng = SeedRng::new(31);
    for (ch, hw) in [(3, 224), (64, 56)] {
        for batch in [1, 32] {
            for dt in [DType::F16, DType::F32] {
                let len = batch * ch * hw * hw;
                let vals = random_values(&mut rng, len, 1.0, dt);
                let nchw = upload(&dev, &[batch, ch, hw, hw], &vals, dt);
                let nhwc = upload(&dev, &[batch, hw, hw, ch], &vals, dt);
                let mut to_nhwc = ops::nchw_to_nhwc(&nchw).unwrap();
                let mut to_nchw = ops::nhwc_to_nchw(&nhwc).unwrap();
                g.throughput(Throughput::Bytes((2 * len * dt.size()) as u64));
                g.bench_function(format!("nchw_to_nhwc/{dt}/b{batch}/{ch}x{hw}x{hw}"), |b| {
                    b.iter(|| {
                        ops::nchw_to_nhwc_into(&nchw, &mut to_nhwc).unwrap();
                        gpu.synchronize().unwrap();
                    })
                });
                g.bench_function(format!("nhwc_to_nchw/{dt}/b{batch}/{ch}x{hw}x{hw}"), |b| {
                    b.iter(|| {
                        ops::nhwc_to_nchw_into(&nhwc, &mut to_nchw).unwrap();
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
