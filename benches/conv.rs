//! conv2d bench (`kernels/conv.cu`, implicit GEMM on tensor cores): f16, channels-last (NHWC),
//! every distinct dense conv layer of ResNet-18 at 224×224 and of EfficientNet-B0 at 224 / B7 at
//! 600 (depthwise layers are in `benches/depthwise.rs`), each with its network's epilogue fused:
//! BatchNorm folded into the per-channel f32 scale/bias, then the activation, and the block's
//! residual where the network adds one to that conv's output.
//!
//! - ResNet-18 ([`RESNET18`]): the stem (7×7 s2 p3, 3→64, BN+ReLU); per stage the 3×3 s1 conv
//!   in its residual form (the second conv of a block: BN + identity + ReLU; the block's first
//!   conv has the same shape without the residual read); from layer2 on, the first block's 3×3
//!   s2 conv (BN+ReLU) and its 1×1 s2 downsample (BN, no activation).
//! - EfficientNet ([`efficientnet`], the B0 stage table scaled by width/depth): the stem (3×3
//!   s2, TF "SAME" padding, BN+SiLU), every distinct 1×1 expand conv (BN+SiLU), 1×1 project
//!   conv (BN, plus the block input as residual in the repeated blocks) and the 1×1 head conv
//!   (BN+SiLU). B7 is width 2.0 / depth 3.1 at 600×600.
//!
//! Batches: 1, 32 and 128 for ResNet-18 and B0; 1 and 32 for B7 (b128 at 600×600 needs several
//! GB per activation and minutes of run time). That is the full cross product: 11 + 20 + 23
//! layers, 139 benches.
//!
//! Ids: `conv/{resnet18,effnet_b0,effnet_b7}/{k}x{k}s{stride}_{c}-{oc}_{input side}/f16/b{batch}`,
//! e.g. `conv/resnet18/3x3s1_64-64_56/f16/b32`; `scripts/peer_bench.py` times cuDNN
//! (`F.conv2d`, channels_last, cudnn.benchmark) plus PyTorch's separate epilogue ops under the
//! same ids. Throughput is `ElementsAndBytes`: elements = FLOPs `2·N·OH·OW·OC·KH·KW·C/groups`
//! (criterion's "elem/s" is FLOP/s, the gemm/attention convention), bytes = input + weight +
//! output (+ residual) read or written once, f16 (the per-channel scale/bias are not counted);
//! `scripts/bench_report.py` shows both TFLOP/s and GB/s.
//!
//! Run time: a shorter criterion setting than `common::criterion()` ([`group_config`]) keeps the
//! 139 benches near 1.5 minutes on an H100. Inputs and residuals repeat a seeded random pool
//! (generating a few hundred million normals on the host would dominate the setup; the values
//! do not change the timing); weights are drawn in full (He-scaled), outputs are poisoned.

mod common;
use Activation::{Identity, Relu, Silu};
use common::*;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Throughput, criterion_group, criterion_main};
use medkern::ops::{self, Activation, Conv2d, ConvWeight, Padding, Window};
use medkern::{DType, Device, HostTensor, Tensor};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

/// Values in the random pool the activations repeat.
const POOL: usize = 1 << 20;

/// One conv layer (square input and kernel, dense: groups 1) and its fused epilogue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Layer {
    /// Input height = width.
    pub hw: usize,
    pub c: usize,
    pub oc: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: Padding,
    pub act: Activation,
    /// Adds a residual of the output's shape before the activation.
    pub residual: bool,
}

impl Layer {
    /// PyTorch-style symmetric padding k/2.
    const fn torch(
        hw: usize,
        c: usize,
        oc: usize,
        k: usize,
        stride: usize,
        act: Activation,
        residual: bool,
    ) -> Layer {
        let p = k / 2;
        Layer {
            hw,
            c,
            oc,
            k,
            stride,
            padding: Padding::Explicit {
                top: p,
                bottom: p,
                left: p,
                right: p,
            },
            act,
            residual,
        }
    }

    /// The layer part of the bench id: `{k}x{k}s{stride}_{c}-{oc}_{hw}`.
    pub fn name(&self) -> String {
        let (k, s, c, oc, hw) = (self.k, self.stride, self.c, self.oc, self.hw);
        format!("{k}x{k}s{s}_{c}-{oc}_{hw}")
    }

    pub fn window(&self) -> Window {
        let (hw, k, s) = (self.hw, self.k, self.stride);
        Window::new("conv", (hw, hw), (k, k), (s, s), (1, 1), self.padding).expect("window")
    }

    /// FLOPs at `batch`: 2·N·OH·OW·OC·KH·KW·C (groups 1).
    pub fn flops(&self, batch: usize) -> u64 {
        let w = self.window();
        (2 * batch * w.out_h * w.out_w * self.oc * self.k * self.k * self.c) as u64
    }

    /// Bytes read or written once at `batch`, f16: input + weight + output (+ residual).
    pub fn bytes(&self, batch: usize) -> u64 {
        let w = self.window();
        let out = batch * w.out_h * w.out_w * self.oc;
        let elems = batch * self.hw * self.hw * self.c
            + self.oc * self.k * self.k * self.c
            + out * if self.residual { 2 } else { 1 };
        (elems * DType::F16.size()) as u64
    }
}

/// ResNet-18 at 224×224: its distinct conv shapes (see the module doc for which epilogue each
/// is benched with).
pub const RESNET18: [Layer; 11] = [
    Layer::torch(224, 3, 64, 7, 2, Relu, false),
    Layer::torch(56, 64, 64, 3, 1, Relu, true),
    Layer::torch(56, 64, 128, 3, 2, Relu, false),
    Layer::torch(56, 64, 128, 1, 2, Identity, false),
    Layer::torch(28, 128, 128, 3, 1, Relu, true),
    Layer::torch(28, 128, 256, 3, 2, Relu, false),
    Layer::torch(28, 128, 256, 1, 2, Identity, false),
    Layer::torch(14, 256, 256, 3, 1, Relu, true),
    Layer::torch(14, 256, 512, 3, 2, Relu, false),
    Layer::torch(14, 256, 512, 1, 2, Identity, false),
    Layer::torch(7, 512, 512, 3, 1, Relu, true),
];

/// EfficientNet-B0's MBConv stages: (expand ratio, depthwise kernel, stride, out channels,
/// repeats). The depthwise kernel only matters to `benches/depthwise.rs`.
const B0_STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
];

/// The dense (non-depthwise) convs of EfficientNet at input side `res`, width and depth
/// multipliers (B0: 224, 1.0, 1.0; B7: 600, 2.0, 3.1), distinct, in network order: the TF-SAME
/// stem, then per block the 1×1 expand (BN+SiLU, absent at expand ratio 1) and the 1×1 project
/// at the depthwise output's side (BN, + the block input when stride 1 and channels in == out),
/// then the 1×1 head (BN+SiLU).
pub fn efficientnet(res: usize, width: f64, depth: f64) -> Vec<Layer> {
    // EfficientNet's round_filters: nearest multiple of 8, never below 90% of the scaled count.
    let filters = |f: usize| {
        let f = f as f64 * width;
        let mut n = (((f + 4.0) as usize) / 8 * 8).max(8);
        if (n as f64) < 0.9 * f {
            n += 8;
        }
        n
    };
    let one = |hw, c, oc, act, residual| Layer::torch(hw, c, oc, 1, 1, act, residual);
    let mut layers = vec![Layer {
        padding: Padding::Same,
        ..Layer::torch(res, 3, filters(32), 3, 2, Silu, false)
    }];
    let (mut hw, mut cin) = (res.div_ceil(2), filters(32));
    for (expand, _k, stride, out, repeats) in B0_STAGES {
        let cout = filters(out);
        for i in 0..(depth * repeats as f64).ceil() as usize {
            let s = if i == 0 { stride } else { 1 };
            let mid = cin * expand;
            if expand != 1 {
                layers.push(one(hw, cin, mid, Silu, false));
            }
            // Depthwise k/2 padding (or TF SAME): ceil(hw / stride) either way.
            hw = hw.div_ceil(s);
            layers.push(one(hw, mid, cout, Identity, s == 1 && cin == cout));
            cin = cout;
        }
    }
    layers.push(one(hw, cin, filters(1280), Silu, false));
    // Distinct shapes; a repeated shape always comes with the same epilogue.
    let mut seen = HashMap::new();
    layers.retain(|l| match seen.entry(l.name()) {
        Entry::Occupied(first) => {
            assert_eq!(first.get(), l, "one conv shape with two epilogues");
            false
        }
        Entry::Vacant(e) => {
            e.insert(*l);
            true
        }
    });
    layers
}

/// The benched networks: (id part, layers, batches).
pub fn networks() -> Vec<(&'static str, Vec<Layer>, Vec<usize>)> {
    vec![
        ("resnet18", RESNET18.to_vec(), vec![1, 32, 128]),
        ("effnet_b0", efficientnet(224, 1.0, 1.0), vec![1, 32, 128]),
        ("effnet_b7", efficientnet(600, 2.0, 3.1), vec![1, 32]),
    ]
}

/// A tensor of `shape` on `dev` filled by repeating the f16 `pool` from `offset` on.
fn tiled(dev: &Device, shape: &[usize], pool: &[half::f16], offset: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let mut v = Vec::with_capacity(n);
    let head = &pool[offset % pool.len()..];
    v.extend_from_slice(&head[..head.len().min(n)]);
    while v.len() < n {
        let take = (n - v.len()).min(pool.len());
        v.extend_from_slice(&pool[..take]);
    }
    Tensor::new(dev, shape, v).expect("upload")
}

/// The conv group's criterion setting: fewer, shorter samples than `common::criterion()`.
fn group_config(g: &mut BenchmarkGroup<'_, WallTime>) {
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(150))
        .measurement_time(Duration::from_millis(300));
}

/// Weight (He-scaled, OHWI), folded-BN scale around 1 and bias of one layer on `dev`.
fn params(dev: &Device, l: &Layer, rng: &mut SeedRng) -> (ConvWeight, Tensor, Tensor) {
    let k = l.k * l.k * l.c;
    let w = HostTensor::from_f64(
        &[l.oc, l.k, l.k, l.c],
        &random_values(rng, l.oc * k, (2.0 / k as f64).sqrt(), DType::F16),
        DType::F16,
    )
    .expect("weight");
    let w = ConvWeight::new(&w, 1, dev).expect("conv weight");
    let scale: Vec<f64> = (0..l.oc).map(|_| 0.5 + rng.uniform()).collect();
    let scale = upload(dev, &[l.oc], &scale, DType::F32);
    let bias = upload(
        dev,
        &[l.oc],
        &random_values(rng, l.oc, 0.1, DType::F32),
        DType::F32,
    );
    (w, scale, bias)
}

fn bench(c: &mut criterion::Criterion) {
    let Some(gpu) = gpu_or_skip("bench conv") else {
        // One small ResNet-style layer (3×3 s1, BN + residual + ReLU) on the f64 reference path.
        let cpu = Device::Cpu;
        let l = Layer::torch(8, 16, 16, 3, 1, Relu, true);
        let mut rng = SeedRng::new(3);
        let (w, scale, bias) = params(&cpu, &l, &mut rng);
        let x = upload(
            &cpu,
            &[1, 8, 8, 16],
            &random_values(&mut rng, 8 * 8 * 16, 1.0, DType::F16),
            DType::F16,
        );
        let r = upload(
            &cpu,
            &[1, 8, 8, 16],
            &random_values(&mut rng, 8 * 8 * 16, 1.0, DType::F16),
            DType::F16,
        );
        let spec = Conv2d {
            padding: l.padding,
            scale: Some(&scale),
            bias: Some(&bias),
            residual: Some(&r),
            act: l.act,
            ..Default::default()
        };
        c.bench_function("conv/cpu-reference/f16/1x8x8x16k3s1", |b| {
            b.iter(|| ops::conv2d(&x, &w, &spec).unwrap())
        });
        return;
    };
    let dev = Device::Gpu(gpu.clone());
    let mut g = c.benchmark_group("conv");
    group_config(&mut g);
    let mut rng = SeedRng::new(29);
    let pool: Vec<half::f16> = random_values(&mut rng, POOL, 1.0, DType::F16)
        .into_iter()
        .map(half::f16::from_f64)
        .collect();
    for (net, layers, batches) in networks() {
        for l in &layers {
            let (w, scale, bias) = params(&dev, l, &mut rng);
            let win = l.window();
            for &batch in &batches {
                let x = tiled(&dev, &[batch, l.hw, l.hw, l.c], &pool, 0);
                let ys = [batch, win.out_h, win.out_w, l.oc];
                // A different offset into the pool: the residual does not repeat x.
                let r = l.residual.then(|| tiled(&dev, &ys, &pool, POOL / 3));
                let spec = Conv2d {
                    stride: (l.stride, l.stride),
                    padding: l.padding,
                    scale: Some(&scale),
                    bias: Some(&bias),
                    residual: r.as_ref(),
                    act: l.act,
                    ..Default::default()
                };
                let mut out = poisoned(&dev, &ys, DType::F16);
                g.throughput(Throughput::ElementsAndBytes {
                    elements: l.flops(batch),
                    bytes: l.bytes(batch),
                });
                g.bench_function(format!("{net}/{}/f16/b{batch}", l.name()), |b| {
                    b.iter(|| {
                        ops::conv2d_into(&x, &w, &spec, &mut out).unwrap();
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
