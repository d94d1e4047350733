//! Preprocessing bench (`kernels/preprocess.cu`): torchvision's ImageNet pipeline from 256×256
//! u8 RGB to a normalised 224×224×3 tensor, and a 12-bit 512×512 u16 grey image (chest X-ray)
//! windowed, resized to 224×224 and replicated to 3 channels; batch 1 and 32, f16 and f32
//! outputs. Bytes/s counts the input read once and the output written, the work
//! `scripts/peer_bench.py` gives the torchvision-style `F.interpolate` + normalise pipeline.

mod common;
use common::*;
use criterion::{Throughput, criterion_group, criterion_main};
use medkern::ops::{self, PixelRange, Preprocess};
use medkern::{DType, Device};

const GREY_MEAN: [f32; 3] = [0.5; 3];
const GREY_STD: [f32; 3] = [0.25; 3];

fn bench(c: &mut criterion::Criterion) {
    let gpu = gpu_or_skip("bench preprocess");
    let dev = gpu.clone().map_or(Device::Cpu, Device::Gpu);
    let mut g = c.benchmark_group("preprocess");
    let mut rng = SeedRng::new(37);
    let rgb = Preprocess::imagenet((224, 224));
    let grey = Preprocess {
        out_size: (224, 224),
        range: PixelRange::Window {
            lo: 0.0,
            hi: 4095.0,
        },
        mean: &GREY_MEAN,
        std: &GREY_STD,
        grey_to_rgb: true,
    };
    let batches: &[usize] = if gpu.is_some() { &[1, 32] } else { &[1] };
    let outs: &[DType] = if gpu.is_some() {
        &[DType::F16, DType::F32]
    } else {
        &[DType::F16]
    };
    for &batch in batches {
        for &od in outs {
            let cases = [
                ("u8_rgb_256-224", [batch, 256, 256, 3], DType::U8, 255, &rgb),
                (
                    "u16_grey_512-224x3",
                    [batch, 512, 512, 1],
                    DType::U16,
                    4096,
                    &grey,
                ),
            ];
            for (name, shape, sdt, levels, p) in cases {
                let len: usize = shape.iter().product();
                let vals: Vec<f64> = (0..len).map(|_| rng.below(levels) as f64).collect();
                let x = upload(&dev, &shape, &vals, sdt);
                let mut out = ops::preprocess(&x, p, od).unwrap();
                g.throughput(Throughput::Bytes(
                    (len * sdt.size() + out.len() * od.size()) as u64,
                ));
                let id = if gpu.is_some() {
                    format!("{name}/{od}/b{batch}")
                } else {
                    format!("cpu-reference/{name}/{od}/b{batch}")
                };
                g.bench_function(id, |b| {
                    b.iter(|| {
                        ops::preprocess_into(&x, p, &mut out).unwrap();
                        if let Some(gpu) = &gpu {
                            gpu.synchronize().unwrap();
                        }
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
