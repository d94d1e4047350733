//! ResNet-18/34 (`src/model/resnet.rs`) and the sepsis models (`src/model/sepsis.rs`).
//!
//! - CPU f32 forward of ResNet-18/34 against candle-transformers' `models::resnet` (CPU, f32)
//!   over the same safetensors file of random torchvision-named weights (`random_resnet`: BN
//!   statistics away from the identity), random inputs with planted outliers, odd batches, 64×64,
//!   a non-square size and one 224×224 case: logits and the 512-d pooled feature.
//! - The sepsis classifier and the autoencoder against an independent assembly written here
//!   with candle-core / candle-nn ops (conv2d, batch_norm, max pool, conv_transpose2d, sigmoid,
//!   softmax) over the same weights: logits, probabilities, features, reconstructions, codes,
//!   per-image MSE.
//! - k-means on planted well-separated clusters (recovered exactly), determinism, error cases.
//! - Bad weights (missing tensor, wrong shape, corrupt file, non-finite values) and bad inputs
//!   (shape, dtype) are errors naming the tensor or argument.
//! - GPU (f16, bf16) against the CPU f32 forward; counted SKIP without a GPU.

mod common;
use candle_core::{D, DType as CDType, Device as CDevice, Module, Tensor as CTensor};
use candle_nn::VarBuilder;
use candle_transformers::models::resnet as cresnet;
use common::*;
use medkern::model::resnet::{NamedTensors, ResNet, ResNetConfig, ResNetDepth, random_resnet};
use medkern::model::sepsis::{
    AE_CODE_DIM, AE_SIZE, Autoencoder, KMeansOptions, SepsisNet, kmeans, kmeans_codes,
    random_autoencoder, random_sepsis,
};
use medkern::{DType, Device, Tensor};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Seeded NHWC values ~ N(0, 1) with planted outliers (never zeros), f32-exact.
fn image_values(seed: u64, shape: [usize; 4]) -> Vec<f64> {
    let mut rng = SeedRng::new(seed);
    random_values(&mut rng, shape.iter().product(), 1.0, DType::F32)
}

/// Seeded values uniform in (0.02, 0.98), f32-exact (autoencoder frames).
fn frame_values(seed: u64, len: usize) -> Vec<f64> {
    let mut rng = SeedRng::new(seed);
    (0..len)
        .map(|_| f64::from((0.02 + 0.96 * rng.uniform()) as f32))
        .collect()
}

/// NHWC values as a candle NCHW f32 tensor.
fn candle_nchw(v: &[f64], [n, h, w, c]: [usize; 4]) -> CTensor {
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    CTensor::from_vec(f, (n, h, w, c), &CDevice::Cpu)
        .and_then(|t| t.permute((0, 3, 1, 2)))
        .and_then(|t| t.contiguous())
        .expect("candle input")
}

/// A candle tensor's values, flattened in its own order.
fn flat(t: &CTensor) -> Vec<f64> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("candle values")
        .into_iter()
        .map(f64::from)
        .collect()
}

/// A candle NCHW tensor's values in NHWC order.
fn flat_nhwc(t: &CTensor) -> Vec<f64> {
    flat(&t.permute((0, 2, 3, 1)).expect("permute"))
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_host().expect("to_host").to_f64()
}

fn vb(bytes: Vec<u8>) -> VarBuilder<'static> {
    VarBuilder::from_buffered_safetensors(bytes, CDType::F32, &CDevice::Cpu)
        .expect("candle safetensors")
}

fn rms(v: &[f64]) -> f64 {
    (v.iter().map(|x| x * x).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

/// `|got − want| ≤ rel·(rms(want) + |want|)` elementwise, per row of `width` values (so
/// every image is held to its own scale); panics naming `what`. Returns the worst
/// `|got − want| / (rms + |want|)`.
fn check_rows(what: &str, got: &[f64], want: &[f64], width: usize, rel: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: element count");
    assert!(
        want.iter().any(|&v| v != 0.0),
        "{what}: reference is all zeros"
    );
    let mut worst = 0.0f64;
    for (r, (g, w)) in got.chunks(width).zip(want.chunks(width)).enumerate() {
        let s = rms(w);
        if let Err(e) = check_close(&format!("{what}: row {r}"), g, w, &|_| rel * s, rel) {
            panic!("{e}");
        }
        for (a, b) in g.iter().zip(w) {
            worst = worst.max((a - b).abs() / (s + b.abs()));
        }
    }
    worst
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    d / (rms(a) * rms(b) * a.len() as f64)
}

fn err_string<T>(r: medkern::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// Tolerance of the CPU f32 forward against candle's f32: both store f32 activations (medkern
/// accumulates in f64, candle in f32 through im2col GEMMs), so they differ by a few f32
/// roundings per layer, ~1e-6 relative each over ≤ 37 layers; 1e-4 leaves a wide margin while a
/// wrong BN ε (1e-5 vs 1e-3) or a dropped residual is orders of magnitude above it.
const F32_REL: f64 = 1e-4;

// ---------------------------------------------------------------------------------------------
// ResNet-18/34 against candle-transformers

struct Case {
    depth: ResNetDepth,
    classes: usize,
    shape: [usize; 4],
    seed: u64,
}

fn resnet_case(c: &Case) {
    let cfg = ResNetConfig {
        depth: c.depth,
        num_classes: c.classes,
    };
    let weights = random_resnet(&cfg, c.seed);
    let bytes = weights.to_safetensors().expect("safetensors");
    let x = image_values(c.seed + 100, c.shape);
    let what = format!("{} {:?}", c.depth.name(), c.shape);

    let m = ResNet::from_safetensors(&bytes, cfg, &Device::Cpu, DType::F32).expect("model");
    let xt = upload(&Device::Cpu, &c.shape, &x, DType::F32);
    let out = m.forward(&xt).expect("forward");
    assert_eq!(out.logits.shape(), [c.shape[0], c.classes]);
    assert_eq!(out.logits.dtype(), DType::F32);
    assert_eq!(out.features.shape(), [c.shape[0], 512]);

    let cx = candle_nchw(&x, c.shape);
    let (cl, cf) = match c.depth {
        ResNetDepth::ResNet18 => (
            cresnet::resnet18(c.classes, vb(bytes.clone())),
            cresnet::resnet18_no_final_layer(vb(bytes)),
        ),
        ResNetDepth::ResNet34 => (
            cresnet::resnet34(c.classes, vb(bytes.clone())),
            cresnet::resnet34_no_final_layer(vb(bytes)),
        ),
    };
    let want_logits = flat(&cl.expect("candle model").forward(&cx).expect("candle"));
    let want_feat = flat(&cf.expect("candle model").forward(&cx).expect("candle"));
    let wl = check_rows(
        &format!("{what} logits"),
        &values(&out.logits),
        &want_logits,
        c.classes,
        F32_REL,
    );
    let wf = check_rows(
        &format!("{what} features"),
        &values(&out.features),
        &want_feat,
        512,
        F32_REL,
    );
    println!("{what}: worst relative error logits {wl:.2e}, features {wf:.2e}");
}

#[test]
fn resnet18_matches_candle() {
    for c in [
        Case {
            depth: ResNetDepth::ResNet18,
            classes: 10,
            shape: [3, 64, 64, 3],
            seed: 1,
        },
        Case {
            depth: ResNetDepth::ResNet18,
            classes: 1000,
            shape: [1, 224, 224, 3],
            seed: 2,
        },
    ] {
        resnet_case(&c);
    }
}

#[test]
fn resnet34_matches_candle() {
    for c in [
        Case {
            depth: ResNetDepth::ResNet34,
            classes: 7,
            shape: [1, 64, 64, 3],
            seed: 3,
        },
        // Non-square, odd sides: 75×53 → 38×27 → 19×14 → 10×7 → 5×4 → 3×2.
        Case {
            depth: ResNetDepth::ResNet34,
            classes: 3,
            shape: [3, 75, 53, 3],
            seed: 4,
        },
    ] {
        resnet_case(&c);
    }
}

#[test]
fn random_weights_are_deterministic_and_realistic() {
    let cfg = ResNetConfig::resnet18(5);
    let a = random_resnet(&cfg, 9);
    assert_eq!(a, random_resnet(&cfg, 9));
    assert_ne!(a, random_resnet(&cfg, 10));
    let t = &a.tensors;
    // torchvision's names and shapes (a few, plus the count).
    assert_eq!(t["conv1.weight"].0, [64, 3, 7, 7]);
    assert_eq!(t["layer2.0.downsample.0.weight"].0, [128, 64, 1, 1]);
    assert_eq!(t["layer4.1.bn2.running_var"].0, [512]);
    assert_eq!(t["fc.weight"].0, [5, 512]);
    assert!(!t.contains_key("layer1.0.downsample.0.weight"));
    let convs = t.values().filter(|(s, _)| s.len() == 4).count();
    assert_eq!(convs, 17 + 3, "17 convs + 3 downsample convs in ResNet-18");
    let bns = t
        .keys()
        .filter(|k| k.ends_with("num_batches_tracked"))
        .count();
    assert_eq!(bns, 17 + 3);
    // BN statistics are not the identity: means spread around 0, variances spread around 1.
    let (_, mean) = &t["layer3.1.bn1.running_mean"];
    let (_, var) = &t["layer3.1.bn1.running_var"];
    let spread = |v: &[f32]| {
        let m = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        (v.iter().map(|&x| (f64::from(x) - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    };
    assert!(spread(mean) > 0.2 && spread(var) > 0.3);
    assert!(var.iter().all(|&v| v > 0.3));
}

// ---------------------------------------------------------------------------------------------
// The sepsis classifier against an independent candle assembly

/// conv (no bias) + BatchNorm (inference, ε 1e-5), from the named tensors.
fn c_conv_bn(
    vb: &VarBuilder,
    conv: &str,
    bn: &str,
    x: &CTensor,
    stride: usize,
    pad: usize,
) -> CTensor {
    let w = vb
        .get_unchecked(&format!("{conv}.weight"))
        .expect("conv weight");
    let oc = w.dims()[0];
    let y = x.conv2d(&w, pad, stride, 1, 1).expect("conv2d");
    let bn = candle_nn::batch_norm(oc, 1e-5, vb.pp(bn)).expect("batch_norm");
    y.apply_t(&bn, false).expect("bn")
}

/// Stem + layer1 + layer2 + GAP + fc, written from torchvision's BasicBlock definition.
fn candle_sepsis(bytes: Vec<u8>, x: &CTensor) -> (CTensor, CTensor, CTensor) {
    let vb = vb(bytes);
    let mut h = c_conv_bn(&vb, "conv1", "bn1", x, 2, 3)
        .relu()
        .expect("relu");
    // Max pool 3×3/2 with padding 1: zero padding is exact after the ReLU (values >= 0).
    h = h
        .pad_with_zeros(D::Minus1, 1, 1)
        .and_then(|t| t.pad_with_zeros(D::Minus2, 1, 1))
        .and_then(|t| t.max_pool2d_with_stride(3, 2))
        .expect("max pool");
    for (l, stride0) in [(1, 1), (2, 2)] {
        for i in 0..2 {
            let p = format!("layer{l}.{i}");
            let s = if i == 0 { stride0 } else { 1 };
            let a = c_conv_bn(&vb, &format!("{p}.conv1"), &format!("{p}.bn1"), &h, s, 1)
                .relu()
                .expect("relu");
            let b = c_conv_bn(&vb, &format!("{p}.conv2"), &format!("{p}.bn2"), &a, 1, 1);
            let id = if vb.contains_tensor(&format!("{p}.downsample.0.weight")) {
                c_conv_bn(
                    &vb,
                    &format!("{p}.downsample.0"),
                    &format!("{p}.downsample.1"),
                    &h,
                    s,
                    0,
                )
            } else {
                h.clone()
            };
            h = (b + id).and_then(|t| t.relu()).expect("residual");
        }
    }
    let feat = h
        .mean(D::Minus1)
        .and_then(|t| t.mean(D::Minus1))
        .expect("gap");
    let fc = candle_nn::linear(128, 2, vb.pp("fc")).expect("fc");
    let logits = fc.forward(&feat).expect("fc forward");
    let probs = candle_nn::ops::softmax_last_dim(&logits).expect("softmax");
    (logits, probs, feat)
}

#[test]
fn sepsis_net_matches_candle_assembly() {
    let bytes = random_sepsis(5).to_safetensors().expect("safetensors");
    let m = SepsisNet::from_safetensors(&bytes, &Device::Cpu, DType::F32).expect("model");
    for (shape, seed) in [([3, 64, 64, 3], 50), ([1, 224, 224, 3], 51)] {
        let x = image_values(seed, shape);
        let out = m
            .forward(&upload(&Device::Cpu, &shape, &x, DType::F32))
            .expect("forward");
        let n = shape[0];
        assert_eq!(out.logits.shape(), [n, 2]);
        assert_eq!(out.probs.shape(), [n, 2]);
        assert_eq!(out.features.shape(), [n, 128]);
        let (cl, cp, cf) = candle_sepsis(bytes.clone(), &candle_nchw(&x, shape));
        let what = format!("sepsis {shape:?}");
        check_rows(
            &format!("{what} logits"),
            &values(&out.logits),
            &flat(&cl),
            2,
            F32_REL,
        );
        check_rows(
            &format!("{what} features"),
            &values(&out.features),
            &flat(&cf),
            128,
            F32_REL,
        );
        let p = values(&out.probs);
        check_close(&format!("{what} probs"), &p, &flat(&cp), &|_| 1e-5, 1e-5)
            .unwrap_or_else(|e| panic!("{e}"));
        for r in p.chunks(2) {
            assert!((r[0] + r[1] - 1.0).abs() < 1e-6, "{what}: probs {r:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The autoencoder against an independent candle assembly

/// Reconstruction (NCHW) and bottleneck (NCHW) from candle-nn's Conv2d / ConvTranspose2d.
fn candle_autoencoder(bytes: Vec<u8>, x: &CTensor) -> (CTensor, CTensor) {
    let vb = vb(bytes);
    let ccfg = candle_nn::Conv2dConfig {
        padding: 1,
        stride: 2,
        ..Default::default()
    };
    let tcfg = candle_nn::ConvTranspose2dConfig {
        padding: 1,
        output_padding: 1,
        stride: 2,
        dilation: 1,
    };
    let mut h = x.clone();
    for (i, (ci, co)) in [(3, 16), (16, 32), (32, 8)].into_iter().enumerate() {
        let conv =
            candle_nn::conv2d(ci, co, 3, ccfg, vb.pp(format!("encoder.{}", 2 * i))).expect("conv");
        h = conv.forward(&h).and_then(|t| t.relu()).expect("encoder");
    }
    let z = h.clone();
    for (i, (ci, co)) in [(8, 32), (32, 16), (16, 3)].into_iter().enumerate() {
        let ct = candle_nn::conv_transpose2d(ci, co, 3, tcfg, vb.pp(format!("decoder.{}", 2 * i)))
            .expect("conv_transpose");
        let y = ct.forward(&h).expect("decoder");
        h = if i == 2 {
            candle_nn::ops::sigmoid(&y).expect("sigmoid")
        } else {
            y.relu().expect("relu")
        };
    }
    (h, z)
}

#[test]
fn autoencoder_matches_candle_assembly() {
    let bytes = random_autoencoder(6).to_safetensors().expect("safetensors");
    let m = Autoencoder::from_safetensors(&bytes, &Device::Cpu, DType::F32).expect("model");
    for (shape, seed) in [([3, AE_SIZE, AE_SIZE, 3], 60), ([1, 40, 64, 3], 61)] {
        let x = frame_values(seed, shape.iter().product());
        let out = m
            .forward(&upload(&Device::Cpu, &shape, &x, DType::F32))
            .expect("forward");
        let n = shape[0];
        let code_dim = 8 * (shape[1] / 8) * (shape[2] / 8);
        assert_eq!(out.reconstruction.shape(), shape);
        assert_eq!(out.codes.shape(), [n, code_dim]);
        if shape[1] == AE_SIZE {
            assert_eq!(code_dim, AE_CODE_DIM);
        }
        let (cr, cz) = candle_autoencoder(bytes.clone(), &candle_nchw(&x, shape));
        let what = format!("autoencoder {shape:?}");
        let want_r = flat_nhwc(&cr);
        let got_r = values(&out.reconstruction);
        check_rows(
            &format!("{what} reconstruction"),
            &got_r,
            &want_r,
            shape[1] * shape[2] * 3,
            F32_REL,
        );
        let want_z = flat_nhwc(&cz);
        // ReLU codes: some are exactly 0; the rest must match.
        assert!(
            want_z.iter().filter(|&&v| v > 0.0).count() > want_z.len() / 4,
            "{what}: dead codes"
        );
        check_rows(
            &format!("{what} codes"),
            &values(&out.codes),
            &want_z,
            code_dim,
            F32_REL,
        );
        assert!(
            got_r.iter().all(|&v| v > 0.0 && v < 1.0),
            "{what}: sigmoid range"
        );
        let enc = m
            .encode(&upload(&Device::Cpu, &shape, &x, DType::F32))
            .expect("encode");
        assert_eq!(values(&enc), values(&out.codes), "{what}: encode");
        let per = shape[1] * shape[2] * 3;
        assert_eq!(out.mse.len(), n);
        for i in 0..n {
            let want: f64 = want_r[i * per..(i + 1) * per]
                .iter()
                .zip(&x[i * per..(i + 1) * per])
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
                / per as f64;
            assert!(
                (out.mse[i] - want).abs() <= 1e-4 * want,
                "{what}: image {i} mse {} want {want}",
                out.mse[i]
            );
        }
    }
}

#[test]
fn autoencoder_codes_cluster_by_frame_type() {
    // Two kinds of frames (smooth bright vs dark striped), 6 of each, interleaved: k-means on the
    // codes must separate them.
    let bytes = random_autoencoder(7).to_safetensors().expect("safetensors");
    let m = Autoencoder::from_safetensors(&bytes, &Device::Cpu, DType::F32).expect("model");
    let (n, s) = (12, 32);
    let mut rng = SeedRng::new(70);
    let mut x = Vec::with_capacity(n * s * s * 3);
    for i in 0..n {
        for h in 0..s {
            for _w in 0..s {
                for c in 0..3 {
                    let v = if i % 2 == 0 {
                        0.8 + 0.05 * c as f64
                    } else if h % 4 < 2 {
                        0.1
                    } else {
                        0.5
                    };
                    x.push(f64::from((v + 0.03 * rng.uniform()) as f32));
                }
            }
        }
    }
    let out = m
        .forward(&upload(&Device::Cpu, &[n, s, s, 3], &x, DType::F32))
        .expect("forward");
    let km = kmeans_codes(&out.codes, &opts(2, 50, 1, 1)).expect("kmeans");
    for i in 0..n {
        assert_eq!(
            km.assignments[i] == km.assignments[0],
            i % 2 == 0,
            "frame {i}: {:?}",
            km.assignments
        );
    }
}

// ---------------------------------------------------------------------------------------------
// k-means

/// `k` planted clusters of `per` points in `dim` dimensions: centres 20 apart on distinct
/// axes (plus a shared offset), noise N(0, 0.5²); points shuffled. Returns the points and
/// each point's true cluster.
fn planted(k: usize, per: usize, dim: usize, seed: u64) -> (Vec<Vec<f64>>, Vec<usize>) {
    let mut rng = SeedRng::new(seed);
    let mut pts: Vec<(Vec<f64>, usize)> = Vec::new();
    for c in 0..k {
        for _ in 0..per {
            let p = (0..dim)
                .map(|d| {
                    let centre = if d == c % dim {
                        20.0 * (1 + c / dim) as f64
                    } else {
                        0.0
                    };
                    3.0 + centre + 0.5 * rng.normal()
                })
                .collect();
            pts.push((p, c));
        }
    }
    for i in (1..pts.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        pts.swap(i, j);
    }
    pts.into_iter().unzip()
}

fn opts(k: usize, max_iter: usize, n_init: usize, seed: u64) -> KMeansOptions {
    KMeansOptions {
        k,
        max_iter,
        n_init,
        seed,
    }
}

#[test]
fn kmeans_recovers_planted_clusters() {
    // (k, points per cluster, dim, seed, n_init): one seeding for the low-dimensional sets; the
    // 1152-d set (the autoencoder's code size) has within-cluster distances of the order of the
    // centre spacing, where a single seeding can settle in a local minimum.
    for (k, per, dim, seed, n_init) in [
        (4, 30, 16, 1, 1),
        (3, 7, 2, 2, 1),
        (6, 20, 1152, 3, 10),
        (1, 5, 3, 4, 1),
    ] {
        let (pts, truth) = planted(k, per, dim, seed);
        let r = kmeans(&pts, &opts(k, 100, n_init, seed)).expect("kmeans");
        assert!(
            r.converged,
            "k={k}: not converged in {} iterations",
            r.iterations
        );
        assert_eq!(r.centroids.len(), k);
        // The partition is the planted one: a bijection between labels and true clusters.
        let mut map = vec![usize::MAX; k];
        for (a, &t) in r.assignments.iter().zip(&truth) {
            if map[t] == usize::MAX {
                map[t] = *a;
            }
            assert_eq!(map[t], *a, "k={k} dim={dim}: cluster {t} split");
        }
        let mut labels = map.clone();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), k, "k={k}: clusters merged: {map:?}");
        // Centroids are the cluster means; inertia their sum of squared distances.
        let mut inertia = 0.0;
        for (t, &lab) in map.iter().enumerate() {
            let members: Vec<&Vec<f64>> = pts
                .iter()
                .zip(&truth)
                .filter(|(_, tt)| **tt == t)
                .map(|(p, _)| p)
                .collect();
            for d in 0..dim {
                let mean = members.iter().map(|p| p[d]).sum::<f64>() / members.len() as f64;
                assert!((r.centroids[lab][d] - mean).abs() < 1e-9);
            }
            for p in members {
                inertia += p
                    .iter()
                    .zip(&r.centroids[lab])
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f64>();
            }
        }
        assert!((r.inertia - inertia).abs() <= 1e-9 * inertia.max(1.0));
        // Noise only: about dim·0.25 per point.
        let expect = (k * per * dim) as f64 * 0.25;
        assert!(
            r.inertia < 1.5 * expect,
            "k={k}: inertia {} vs noise {expect}",
            r.inertia
        );
        // Deterministic in the seed.
        assert_eq!(
            kmeans(&pts, &opts(k, 100, n_init, seed)).expect("kmeans"),
            r
        );
    }
}

#[test]
fn kmeans_bad_inputs_are_errors() {
    let e = err_string(kmeans(&[vec![1.0], vec![2.0]], &opts(1, 10, 0, 1)));
    assert!(e.contains("n_init"), "{e}");
    let pts = vec![vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 7.0]];
    let e = err_string(kmeans(&pts, &opts(0, 10, 1, 1)));
    assert!(e.contains("k") && e.contains('0'), "{e}");
    let e = err_string(kmeans(&pts, &opts(4, 10, 1, 1)));
    assert!(e.contains("k") && e.contains("<= 3"), "{e}");
    let e = err_string(kmeans(&[], &opts(1, 10, 1, 1)));
    assert!(e.contains("points"), "{e}");
    let ragged = vec![vec![1.0, 2.0], vec![3.0]];
    let e = err_string(kmeans(&ragged, &opts(1, 10, 1, 1)));
    assert!(e.contains("point 1") && e.contains("ragged"), "{e}");
    let e = err_string(kmeans(&[vec![1.0, f64::NAN]], &opts(1, 10, 1, 1)));
    assert!(e.contains("non-finite"), "{e}");
    let e = err_string(kmeans(&pts, &opts(2, 0, 1, 1)));
    assert!(e.contains("max_iter"), "{e}");
    // k = n and duplicate points are fine.
    let r = kmeans(&pts, &opts(3, 10, 1, 1)).expect("k = n");
    assert!(r.inertia == 0.0);
    let dup = vec![vec![1.0]; 4];
    let r = kmeans(&dup, &opts(2, 10, 1, 1)).expect("duplicates");
    assert_eq!(r.inertia, 0.0);
}

/// Issue 15, defect 16: identical frames (fewer distinct points than k) gave
/// `"converged": false` with inertia 0 after max_iter: an empty cluster took a point that sat
/// on its centroid, which moved back at the next assignment, forever. Now converged, with
/// the extra clusters empty.
#[test]
fn kmeans_on_identical_or_too_few_distinct_points_converges() {
    for (pts, k, distinct) in [
        (vec![vec![0.5, -2.0]; 12], 3, 1),
        (vec![vec![1.0]; 4], 2, 1),
        ([vec![vec![0.0]; 5], vec![vec![5.0]; 5]].concat(), 4, 2),
    ] {
        for seed in 1..4 {
            let r = kmeans(&pts, &opts(k, 300, 2, seed)).expect("kmeans");
            assert!(
                r.converged,
                "k={k}: not converged after {} iterations",
                r.iterations
            );
            assert!(r.iterations < 10, "{} iterations", r.iterations);
            assert_eq!(r.inertia, 0.0);
            assert_eq!(r.centroids.len(), k);
            let mut used = r.assignments.clone();
            used.sort_unstable();
            used.dedup();
            assert_eq!(used.len(), distinct, "{:?}", r.assignments);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bad weights and inputs

fn r18_bytes(w: &NamedTensors) -> Vec<u8> {
    w.to_safetensors().expect("safetensors")
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let cfg = ResNetConfig::resnet18(4);
    for name in [
        "layer3.1.bn2.running_var",
        "layer2.0.downsample.1.weight",
        "conv1.weight",
        "fc.bias",
    ] {
        let mut w = random_resnet(&cfg, 1);
        assert!(w.tensors.remove(name).is_some());
        let e = err_string(ResNet::from_safetensors(
            &r18_bytes(&w),
            cfg,
            &Device::Cpu,
            DType::F32,
        ));
        assert!(e.contains(name) && e.contains("missing"), "{e}");
    }
    // A ResNet-18 file loaded as ResNet-34 lacks layer1.2.
    let e = err_string(ResNet::from_safetensors(
        &r18_bytes(&random_resnet(&cfg, 1)),
        ResNetConfig::resnet34(4),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(e.contains("layer1.2.conv1.weight"), "{e}");
    let mut w = random_sepsis(1);
    w.tensors.remove("layer2.1.conv2.weight");
    let e = err_string(SepsisNet::from_safetensors(
        &r18_bytes(&w),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(e.contains("layer2.1.conv2.weight"), "{e}");
    let mut w = random_autoencoder(1);
    w.tensors.remove("decoder.2.bias");
    let e = err_string(Autoencoder::from_safetensors(
        &r18_bytes(&w),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(e.contains("decoder.2.bias") && e.contains("missing"), "{e}");
}

#[test]
fn wrong_shape_is_an_error_naming_tensor_and_shapes() {
    let cfg = ResNetConfig::resnet18(4);
    let mut w = random_resnet(&cfg, 1);
    w.tensors.insert(
        "layer2.0.conv1.weight".into(),
        (vec![128, 128, 3, 3], vec![0.01; 128 * 128 * 9]),
    );
    let e = err_string(ResNet::from_safetensors(
        &r18_bytes(&w),
        cfg,
        &Device::Cpu,
        DType::F32,
    ));
    assert!(
        e.contains("layer2.0.conv1.weight")
            && e.contains("[128, 128, 3, 3]")
            && e.contains("[128, 64, 3, 3]"),
        "{e}"
    );
    // The configured number of classes must match fc.
    let e = err_string(ResNet::from_safetensors(
        &r18_bytes(&random_resnet(&cfg, 1)),
        ResNetConfig::resnet18(5),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(
        e.contains("fc.weight") && e.contains("[4, 512]") && e.contains("[5, 512]"),
        "{e}"
    );
    // A full ResNet-18 head on the sepsis trunk.
    let mut w = random_sepsis(1);
    w.tensors
        .insert("fc.weight".into(), (vec![2, 512], vec![0.5; 1024]));
    let e = err_string(SepsisNet::from_safetensors(
        &r18_bytes(&w),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(
        e.contains("fc.weight") && e.contains("[2, 512]") && e.contains("[2, 128]"),
        "{e}"
    );
    // A Conv2d-layout decoder weight ([C_out, C_in, k, k]) instead of ConvTranspose2d's.
    let mut w = random_autoencoder(1);
    w.tensors.get_mut("decoder.0.weight").expect("tensor").0 = vec![32, 8, 3, 3];
    let e = err_string(Autoencoder::from_safetensors(
        &r18_bytes(&w),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(
        e.contains("decoder.0.weight") && e.contains("[8, 32, 3, 3]"),
        "{e}"
    );
    // Bad BN statistics: a negative variance.
    let mut w = random_resnet(&cfg, 1);
    w.tensors
        .get_mut("layer1.1.bn1.running_var")
        .expect("tensor")
        .1[3] = -2.0;
    let e = err_string(ResNet::from_safetensors(
        &r18_bytes(&w),
        cfg,
        &Device::Cpu,
        DType::F32,
    ));
    assert!(
        e.contains("layer1.1.bn1") && e.contains("running_var"),
        "{e}"
    );
    // Non-finite weights.
    let mut w = random_resnet(&cfg, 1);
    w.tensors
        .get_mut("layer4.0.conv2.weight")
        .expect("tensor")
        .1[7] = f32::NAN;
    let e = err_string(ResNet::from_safetensors(
        &r18_bytes(&w),
        cfg,
        &Device::Cpu,
        DType::F32,
    ));
    assert!(
        e.contains("layer4.0.conv2.weight") && e.contains("non-finite"),
        "{e}"
    );
}

#[test]
fn corrupt_files_are_errors() {
    let cfg = ResNetConfig::resnet18(4);
    let good = r18_bytes(&random_resnet(&cfg, 1));
    for (what, bytes) in [
        ("empty", vec![]),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("garbage", b"not a safetensors file at all".to_vec()),
        ("huge header", {
            let mut b = good.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
    ] {
        let e = err_string(ResNet::from_safetensors(
            &bytes,
            cfg,
            &Device::Cpu,
            DType::F32,
        ));
        assert!(e.contains("safetensors"), "{what}: {e}");
        let e = err_string(SepsisNet::from_safetensors(
            &bytes,
            &Device::Cpu,
            DType::F32,
        ));
        assert!(e.contains("safetensors"), "{what}: {e}");
        let e = err_string(Autoencoder::from_safetensors(
            &bytes,
            &Device::Cpu,
            DType::F32,
        ));
        assert!(e.contains("safetensors"), "{what}: {e}");
    }
    let missing = std::path::Path::new("/nonexistent/medkern/resnet18.safetensors");
    let e = err_string(ResNet::load(missing, cfg, &Device::Cpu, DType::F32));
    assert!(
        e.contains("/nonexistent/medkern/resnet18.safetensors"),
        "{e}"
    );
    // An integer compute dtype and zero classes.
    let e = err_string(ResNet::from_safetensors(
        &good,
        cfg,
        &Device::Cpu,
        DType::I8,
    ));
    assert!(e.contains("dtype"), "{e}");
    let e = err_string(ResNet::from_safetensors(
        &good,
        ResNetConfig::resnet18(0),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(e.contains("num_classes"), "{e}");
}

#[test]
fn bad_inputs_are_errors_naming_the_argument() {
    let cfg = ResNetConfig::resnet18(4);
    let m = ResNet::from_safetensors(
        &r18_bytes(&random_resnet(&cfg, 1)),
        cfg,
        &Device::Cpu,
        DType::F32,
    )
    .expect("model");
    let cpu = Device::Cpu;
    let t = |shape: &[usize], dt: DType| {
        let n: usize = shape.iter().product();
        upload(&cpu, shape, &vec![0.25; n], dt)
    };
    for (shape, dt, want) in [
        (vec![1, 32, 32, 4], DType::F32, "[1, 32, 32, 4]"),
        (vec![1, 3, 32, 32], DType::F32, "[1, 3, 32, 32]"),
        (vec![32, 32, 3], DType::F32, "[32, 32, 3]"),
        (vec![0, 32, 32, 3], DType::F32, "[0, 32, 32, 3]"),
        (vec![1, 32, 32, 3], DType::F16, "f16"),
    ] {
        let e = err_string(m.forward(&t(&shape, dt)));
        assert!(
            e.contains("resnet") && e.contains(" x ") && e.contains(want),
            "{e}"
        );
    }
    let s = SepsisNet::from_safetensors(&r18_bytes(&random_sepsis(1)), &cpu, DType::F32)
        .expect("model");
    let e = err_string(s.forward(&t(&[2, 64, 64, 1], DType::F32)));
    assert!(e.contains("sepsis") && e.contains(" x "), "{e}");
    let e = err_string(s.classify_u8(&t(&[2, 64, 64, 3], DType::F32), (64, 64)));
    assert!(e.contains("images"), "{e}");
    let a = Autoencoder::from_safetensors(&r18_bytes(&random_autoencoder(1)), &cpu, DType::F32)
        .expect("model");
    let e = err_string(a.forward(&t(&[1, 36, 96, 3], DType::F32)));
    assert!(
        e.contains("autoencoder") && e.contains("[1, 36, 96, 3]") && e.contains("multiples of 8"),
        "{e}"
    );
    let e = err_string(kmeans_codes(
        &t(&[4, 2, 2], DType::F32),
        &KMeansOptions::new(2),
    ));
    assert!(e.contains("codes"), "{e}");
}

#[test]
fn u8_helpers_match_preprocess_then_forward() {
    let cpu = Device::Cpu;
    let mut rng = SeedRng::new(80);
    let (n, h, w) = (2, 50, 70);
    let px: Vec<u8> = (0..n * h * w * 3).map(|_| rng.below(256) as u8).collect();
    let img = Tensor::new(&cpu, &[n, h, w, 3], px.clone()).expect("u8 images");
    let s = SepsisNet::from_safetensors(&r18_bytes(&random_sepsis(2)), &cpu, DType::F32)
        .expect("model");
    let out = s.classify_u8(&img, (64, 64)).expect("classify");
    let x = medkern::ops::preprocess(
        &img,
        &medkern::ops::Preprocess::imagenet((64, 64)),
        DType::F32,
    )
    .expect("preprocess");
    assert_eq!(
        values(&out.probs),
        values(&s.forward(&x).expect("forward").probs)
    );
    let cfg = ResNetConfig::resnet18(3);
    let r = ResNet::from_safetensors(&r18_bytes(&random_resnet(&cfg, 2)), cfg, &cpu, DType::F32)
        .expect("model");
    let got = r.classify_u8(&img, (64, 64)).expect("classify");
    assert_eq!(
        values(&got.logits),
        values(&r.forward(&x).expect("forward").logits)
    );
    let e = err_string(r.classify_u8(&x, (64, 64)));
    assert!(e.contains("resnet") && e.contains("images"), "{e}");
    let a = Autoencoder::from_safetensors(&r18_bytes(&random_autoencoder(2)), &cpu, DType::F32)
        .expect("model");
    let out = a.autoencode_u8(&img, (48, 48)).expect("autoencode");
    assert_eq!(out.codes.shape(), [n, 8 * 6 * 6]);
    // Same size: the map is v/255 exactly (up to f32 rounding).
    let img2 = Tensor::new(&cpu, &[n, 48, 48, 3], px[..n * 48 * 48 * 3].to_vec()).expect("u8");
    let out2 = a.autoencode_u8(&img2, (48, 48)).expect("autoencode");
    let x2: Vec<f64> = px[..n * 48 * 48 * 3]
        .iter()
        .map(|&v| f64::from(v) / 255.0)
        .collect();
    let direct = a
        .forward(&upload(&cpu, &[n, 48, 48, 3], &x2, DType::F32))
        .expect("forward");
    check_close("autoencode_u8 mse", &out2.mse, &direct.mse, &|_| 1e-6, 1e-4)
        .unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------------------------
// GPU f16 / bf16 against the CPU f32 forward

/// Bound on `|gpu − cpu f32| / (rms + |ref|)` for a net of `layers` sequential roundings:
/// every layer's f16/bf16 output carries ~u relative error and they add up like a random walk,
/// ×4 margin for the folded-weight rounding and the accumulation order (the CPU backend's
/// emulation of the roundings, MEDKERN_TEST_BACKEND=cpu, stays 4-6× below: ResNet-18/34
/// features 2.1e-3 (f16) and 1.6e-2 (bf16)).
fn low_precision_rel(dt: DType, layers: usize) -> f64 {
    4.0 * dt.unit_roundoff() * (layers as f64).sqrt()
}

#[test]
fn gpu_resnet_sepsis_autoencoder_match_cpu_f32() {
    let Some(dev) = test_device("gpu_resnet_sepsis_autoencoder_match_cpu_f32") else {
        return;
    };
    let cpu = Device::Cpu;
    // ResNet-18 and ResNet-34, batch 3 at 64×64, and ResNet-18 batch 1 at 224×224.
    for (cfg, shape, seed, layers) in [
        (ResNetConfig::resnet18(10), [3, 64, 64, 3], 1, 18),
        (ResNetConfig::resnet34(10), [3, 64, 64, 3], 3, 34),
        (ResNetConfig::resnet18(1000), [1, 224, 224, 3], 2, 18),
    ] {
        let bytes = random_resnet(&cfg, seed)
            .to_safetensors()
            .expect("safetensors");
        let x = image_values(seed + 100, shape);
        let reference = ResNet::from_safetensors(&bytes, cfg, &cpu, DType::F32)
            .and_then(|m| m.forward(&upload(&cpu, &shape, &x, DType::F32)))
            .expect("cpu");
        let (wl, wf) = (values(&reference.logits), values(&reference.features));
        for dt in [DType::F16, DType::BF16] {
            let m = ResNet::from_safetensors(&bytes, cfg, &dev, dt).expect("model");
            let out = m.forward(&upload(&dev, &shape, &x, dt)).expect("forward");
            let what = format!("{} {shape:?} {dt}", cfg.depth.name());
            let rel = low_precision_rel(dt, layers);
            let el = check_rows(
                &format!("{what} logits"),
                &values(&out.logits),
                &wl,
                cfg.num_classes,
                rel,
            );
            let ef = check_rows(
                &format!("{what} features"),
                &values(&out.features),
                &wf,
                512,
                rel,
            );
            println!(
                "{what} on {}: worst logits {el:.2e}, features {ef:.2e} (bound {rel:.2e})",
                dev.describe()
            );
        }
    }
    // Sepsis net, batch 3 at 64×64 and batch 1 at 224.
    let bytes = random_sepsis(5).to_safetensors().expect("safetensors");
    let cpu_m = SepsisNet::from_safetensors(&bytes, &cpu, DType::F32).expect("cpu model");
    for (shape, seed) in [([3, 64, 64, 3], 50), ([1, 224, 224, 3], 51)] {
        let x = image_values(seed, shape);
        let r = cpu_m
            .forward(&upload(&cpu, &shape, &x, DType::F32))
            .expect("cpu");
        for dt in [DType::F16, DType::BF16] {
            let m = SepsisNet::from_safetensors(&bytes, &dev, dt).expect("model");
            let out = m.forward(&upload(&dev, &shape, &x, dt)).expect("forward");
            let what = format!("sepsis {shape:?} {dt}");
            let rel = low_precision_rel(dt, 10);
            let el = check_rows(
                &format!("{what} logits"),
                &values(&out.logits),
                &values(&r.logits),
                2,
                rel,
            );
            let ef = check_rows(
                &format!("{what} features"),
                &values(&out.features),
                &values(&r.features),
                128,
                rel,
            );
            check_close(
                &format!("{what} probs"),
                &values(&out.probs),
                &values(&r.probs),
                &|_| 2.0 * rel,
                0.0,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            println!(
                "{what} on {}: worst logits {el:.2e}, features {ef:.2e} (bound {rel:.2e})",
                dev.describe()
            );
        }
    }
    // Autoencoder, batch 3 at 96×96.
    let bytes = random_autoencoder(6).to_safetensors().expect("safetensors");
    let shape = [3, AE_SIZE, AE_SIZE, 3];
    let x = frame_values(60, shape.iter().product());
    let r = Autoencoder::from_safetensors(&bytes, &cpu, DType::F32)
        .and_then(|m| m.forward(&upload(&cpu, &shape, &x, DType::F32)))
        .expect("cpu");
    for dt in [DType::F16, DType::BF16] {
        let xr: Vec<f64> = x.iter().map(|&v| dt.round(v)).collect();
        let m = Autoencoder::from_safetensors(&bytes, &dev, dt).expect("model");
        let out = m.forward(&upload(&dev, &shape, &xr, dt)).expect("forward");
        let what = format!("autoencoder {dt}");
        let rel = low_precision_rel(dt, 6);
        let wr = values(&r.reconstruction);
        let er = check_rows(
            &format!("{what} reconstruction"),
            &values(&out.reconstruction),
            &wr,
            96 * 96 * 3,
            rel,
        );
        let wz = values(&r.codes);
        let ez = check_rows(
            &format!("{what} codes"),
            &values(&out.codes),
            &wz,
            AE_CODE_DIM,
            rel,
        );
        assert!(
            cosine(&values(&out.codes), &wz) > 0.999,
            "{what}: codes cosine"
        );
        println!(
            "{what} on {}: worst reconstruction {er:.2e}, codes {ez:.2e} (bound {rel:.2e})",
            dev.describe()
        );
        for (g, w) in out.mse.iter().zip(&r.mse) {
            assert!(
                (g - w).abs() <= 4.0 * rel * w + 1e-6,
                "{what}: mse {g} vs {w}"
            );
        }
    }
}
