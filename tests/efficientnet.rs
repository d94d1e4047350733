//! EfficientNet B0–B7 / Lite0–Lite4 (`src/model/efficientnet.rs`).
//!
//! - CPU f32 forward against candle-transformers' `models::efficientnet` (TF SAME padding on
//!   every conv, BN eps 1e-3, torchvision names) on random weights: B0 and B2 (width 1.1).
//! - Against an independent candle-nn assembly written here (its own stage table): Lite0 (TF
//!   SAME, ReLU6, no SE), Lite3 (width 1.2, depth 1.4 with the first and last stage unscaled) and
//!   B0 with torchvision's symmetric padding. Symmetric and SAME outputs are checked to differ
//!   (each test would catch the other padding).
//! - Real model: the converted EfficientNet-Lite0 (`.models/efficientnet-lite0`, from
//!   scripts/setup-models) classifies scikit-image photographs (`.models/images`): a cat, a cup
//!   of coffee, a space shuttle; top-5 must hold the right ImageNet class. Missing files fail the
//!   test unless `MEDKERN_SKIP_MODELS=1` (counted SKIP); `MEDKERN_MODELS_DIR` moves the folder.
//! - Bad inputs: missing / misshapen / unexpected / non-finite tensors, corrupt files, wrong
//!   input shapes and dtypes are errors naming what is wrong.
//! - GPU f16 / bf16 against the CPU f32 forward (counted SKIP without a GPU).
// This file needs the `image` feature (PNG/JPEG inputs).
#![cfg(feature = "image")]

mod common;
use candle_core::{D, DType as CDType, Device as CDevice, Module, Tensor as CTensor};
use candle_nn::VarBuilder;
use candle_transformers::models::efficientnet as ceff;
use common::*;
use medkern::model::efficientnet::{
    EfficientNet, EfficientNetConfig, Family, Head, PaddingMode, random_weights, to_safetensors,
    top_k,
};
use medkern::model::imagenet;
use medkern::ops::{Preprocess, preprocess};
use medkern::{DType, Device, HostTensor, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Random NHWC images `[n, h, w, 3]` with normalised-image statistics, rounded to f32: per image
/// a contrast, per channel an offset, a smooth pattern of random frequency and phase, and N(0, ½²)
/// noise with planted outliers. (Plain i.i.d. noise would not do: global pooling averages it to
/// nearly the same features for every image.)
fn random_images(n: usize, h: usize, w: usize, seed: u64) -> Vec<f64> {
    let mut rng = SeedRng::new(seed);
    let noise = random_values(&mut rng, n * h * w * 3, 0.5, DType::F32);
    let mut out = Vec::with_capacity(noise.len());
    let mut params = Vec::new();
    for _ in 0..n {
        let contrast = 0.5 + rng.uniform();
        let offs: Vec<f64> = (0..3).map(|_| 0.7 * rng.normal()).collect();
        let (fy, fx, ph) = (
            0.05 + 0.4 * rng.uniform(),
            0.05 + 0.4 * rng.uniform(),
            6.0 * rng.uniform(),
        );
        params.push((contrast, offs, fy, fx, ph));
    }
    for (i, v) in noise.iter().enumerate() {
        let (b, y, x, c) = (i / (h * w * 3), (i / (w * 3)) % h, (i / 3) % w, i % 3);
        let (contrast, offs, fy, fx, ph) = &params[b];
        let pattern = (fy * y as f64 + fx * x as f64 + ph + c as f64).sin();
        out.push(DType::F32.round(contrast * pattern + offs[c] + v));
    }
    out
}

fn nhwc_to_nchw(x: &[f64], n: usize, h: usize, w: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for b in 0..n {
        for y in 0..h {
            for xx in 0..w {
                for ch in 0..c {
                    out[((b * c + ch) * h + y) * w + xx] =
                        x[((b * h + y) * w + xx) * c + ch] as f32;
                }
            }
        }
    }
    out
}

fn bytes_of(cfg: &EfficientNetConfig, seed: u64) -> Vec<u8> {
    to_safetensors(&random_weights(cfg, seed).expect("random weights")).expect("serialize")
}

fn medkern_logits(
    cfg: &EfficientNetConfig,
    bytes: &[u8],
    x: &[f64],
    shape: [usize; 4],
) -> Vec<f64> {
    let m = EfficientNet::from_bytes(bytes, cfg.clone(), &Device::Cpu, DType::F32).expect("load");
    let t = Tensor::Host(HostTensor::from_f64(&shape, x, DType::F32).expect("x"));
    m.forward(&t)
        .expect("forward")
        .to_host()
        .expect("host")
        .to_f64()
}

fn candle_input(x: &[f64], [n, h, w, c]: [usize; 4]) -> CTensor {
    CTensor::from_vec(nhwc_to_nchw(x, n, h, w, c), (n, c, h, w), &CDevice::Cpu).expect("candle x")
}

fn to_f64(t: &CTensor) -> Vec<f64> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("candle out")
        .into_iter()
        .map(f64::from)
        .collect()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn std_dev(v: &[f64]) -> f64 {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt()
}

/// Every logit within `rel·max|want|`; returns the worst error relative to max|want|. The
/// logits must not be degenerate (their spread is checked, so a test on near-zero outputs fails).
fn check_logits(what: &str, got: &[f64], want: &[f64], rows: usize, rel: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: logit count");
    let scale = max_abs(want);
    assert!(
        std_dev(want) > 0.05 && scale < 1e4,
        "{what}: degenerate reference logits (std {}, max {scale})",
        std_dev(want)
    );
    // Input sensitivity: with several images, their logits differ clearly (weights whose
    // output ignores the image would make every comparison weak).
    let n = want.len() / rows;
    if rows > 1 {
        let d = (0..n)
            .map(|j| (want[j] - want[n + j]).abs())
            .fold(0.0, f64::max);
        assert!(
            d > 0.1 * scale,
            "{what}: images 0 and 1 give nearly the same logits ({d:e} of {scale:e})"
        );
    }
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(
            0.0f64,
            |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
        );
    assert!(
        worst <= rel * scale,
        "{what}: worst |got − want| {worst:e} > {rel:e}·{scale:e}\n got[..6] {:?}\nwant[..6] {:?}",
        &got[..6.min(got.len())],
        &want[..6.min(want.len())]
    );
    worst / scale
}

/// f32 CPU forward against f32 candle: rounding differences only.
const F32_REL: f64 = 2e-4;

fn candle_transformers_case(
    name: &str,
    cfg: EfficientNetConfig,
    cc: Vec<ceff::MBConvConfig>,
    shape: [usize; 4],
    seed: u64,
) {
    let cfg = cfg.with_padding(PaddingMode::TfSame).with_bn_eps(1e-3);
    let bytes = bytes_of(&cfg, seed);
    let x = random_images(shape[0], shape[1], shape[2], seed + 100);
    let vb = VarBuilder::from_buffered_safetensors(bytes.clone(), CDType::F32, &CDevice::Cpu)
        .expect("candle vb");
    let cm = ceff::EfficientNet::new(vb, cc, 1000).expect("candle EfficientNet");
    let want = to_f64(
        &cm.forward(&candle_input(&x, shape))
            .expect("candle forward"),
    );
    let got = medkern_logits(&cfg, &bytes, &x, shape);
    let r = check_logits(name, &got, &want, shape[0], F32_REL);
    println!(
        "{name} {shape:?}: worst error {r:.2e} of max|logit| {:.3}",
        max_abs(&want)
    );
    // The same weights with symmetric padding must not match: the comparison sees padding.
    let sym = medkern_logits(
        &cfg.clone().with_padding(PaddingMode::Symmetric),
        &bytes,
        &x,
        shape,
    );
    let d = sym
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        d > 20.0 * F32_REL * max_abs(&want),
        "{name}: symmetric padding gives the SAME result ({d:e})"
    );
}

#[test]
fn b0_matches_candle_transformers() {
    // Odd size: every stride-2 SAME conv pads asymmetrically (57 → 29 → 15 → 8 → 4 → 2).
    candle_transformers_case(
        "B0",
        EfficientNetConfig::b(0).unwrap(),
        ceff::MBConvConfig::b0(),
        [2, 57, 57, 3],
        1,
    );
}

#[test]
fn b2_matches_candle_transformers() {
    candle_transformers_case(
        "B2",
        EfficientNetConfig::b(2).unwrap(),
        ceff::MBConvConfig::b2(),
        [1, 48, 40, 3],
        2,
    );
}

// ---------------------------------------------------------------------------------------------
// An independent candle-nn EfficientNet (B with SE + SiLU, or Lite with ReLU6 and no SE), with
// either padding, written from the papers' tables rather than from src/model/efficientnet.rs.

struct RefCfg {
    lite: bool,
    width: f64,
    depth: f64,
    same: bool,
    eps: f64,
}

fn round_filters(c: f64) -> usize {
    let mut n = ((c + 4.0) as usize / 8 * 8).max(8);
    if (n as f64) < 0.9 * c {
        n += 8;
    }
    n
}

/// Conv (no bias) + BN (+ act), NCHW, padding symmetric `k/2` or TF SAME.
#[allow(clippy::too_many_arguments)]
fn ref_conv_bn(
    vb: &VarBuilder,
    x: &CTensor,
    ic: usize,
    oc: usize,
    k: usize,
    s: usize,
    groups: usize,
    r: &RefCfg,
    act: Option<bool>,
) -> CTensor {
    let w = vb
        .pp("0")
        .get((oc, ic / groups, k, k), "weight")
        .expect("w");
    let x = if r.same {
        let (_, _, h, wd) = x.dims4().unwrap();
        let pad = |n: usize| (n.div_ceil(s) - 1) * s + k - n.min((n.div_ceil(s) - 1) * s + k);
        let (ph, pw) = (pad(h), pad(wd));
        x.pad_with_zeros(2, ph / 2, ph - ph / 2)
            .and_then(|x| x.pad_with_zeros(3, pw / 2, pw - pw / 2))
            .unwrap()
    } else {
        x.pad_with_zeros(2, k / 2, k / 2)
            .and_then(|x| x.pad_with_zeros(3, k / 2, k / 2))
            .unwrap()
    };
    let y = x.conv2d(&w, 0, s, 1, groups).expect("conv");
    let bn = vb.pp("1");
    let g = bn
        .get(oc, "weight")
        .unwrap()
        .reshape((1, oc, 1, 1))
        .unwrap();
    let b = bn.get(oc, "bias").unwrap().reshape((1, oc, 1, 1)).unwrap();
    let m = bn
        .get(oc, "running_mean")
        .unwrap()
        .reshape((1, oc, 1, 1))
        .unwrap();
    let v = bn
        .get(oc, "running_var")
        .unwrap()
        .reshape((1, oc, 1, 1))
        .unwrap();
    let y = y
        .broadcast_sub(&m)
        .and_then(|y| y.broadcast_div(&(v + r.eps).unwrap().sqrt().unwrap()))
        .and_then(|y| y.broadcast_mul(&g))
        .and_then(|y| y.broadcast_add(&b))
        .unwrap();
    match act {
        None => y,
        Some(true) => y.clamp(0f32, 6f32).unwrap(),
        Some(false) => candle_nn::ops::silu(&y).unwrap(),
    }
}

fn ref_forward(vb: VarBuilder, r: &RefCfg, x: &CTensor) -> CTensor {
    // (expand, kernel, stride, out, repeats) of EfficientNet-B0.
    let table = [
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 2),
        (6, 5, 2, 40, 2),
        (6, 3, 2, 80, 3),
        (6, 5, 1, 112, 3),
        (6, 5, 2, 192, 4),
        (6, 3, 1, 320, 1),
    ];
    let act = Some(r.lite);
    let f = vb.pp("features");
    let stem = if r.lite {
        32
    } else {
        round_filters(32.0 * r.width)
    };
    let mut h = ref_conv_bn(&f.pp("0"), x, 3, stem, 3, 2, 1, r, act);
    let mut cin = stem;
    for (si, &(e, k, s, o, n)) in table.iter().enumerate() {
        let cout = round_filters(o as f64 * r.width);
        let reps = if r.lite && (si == 0 || si == 6) {
            n
        } else {
            (n as f64 * r.depth).ceil() as usize
        };
        for b in 0..reps {
            let vb = f.pp(si + 1).pp(b).pp("block");
            let stride = if b == 0 { s } else { 1 };
            let mid = cin * e;
            let mut i = 0;
            let mut y = h.clone();
            if e != 1 {
                y = ref_conv_bn(&vb.pp(i), &y, cin, mid, 1, 1, 1, r, act);
                i += 1;
            }
            y = ref_conv_bn(&vb.pp(i), &y, mid, mid, k, stride, mid, r, act);
            i += 1;
            if !r.lite {
                let sq = (cin / 4).max(1);
                let se = vb.pp(i);
                let w1 = se
                    .get((sq, mid, 1, 1), "fc1.weight")
                    .unwrap()
                    .reshape((sq, mid))
                    .unwrap();
                let b1 = se.get(sq, "fc1.bias").unwrap();
                let w2 = se
                    .get((mid, sq, 1, 1), "fc2.weight")
                    .unwrap()
                    .reshape((mid, sq))
                    .unwrap();
                let b2 = se.get(mid, "fc2.bias").unwrap();
                let p = y.mean(D::Minus1).and_then(|p| p.mean(D::Minus1)).unwrap(); // [N, mid]
                let z = candle_nn::ops::silu(
                    &p.matmul(&w1.t().unwrap())
                        .unwrap()
                        .broadcast_add(&b1)
                        .unwrap(),
                )
                .unwrap();
                let s = candle_nn::ops::sigmoid(
                    &z.matmul(&w2.t().unwrap())
                        .unwrap()
                        .broadcast_add(&b2)
                        .unwrap(),
                )
                .unwrap();
                y = y
                    .broadcast_mul(&s.unsqueeze(2).unwrap().unsqueeze(3).unwrap())
                    .unwrap();
                i += 1;
            }
            y = ref_conv_bn(&vb.pp(i), &y, mid, cout, 1, 1, 1, r, None);
            h = if stride == 1 && cin == cout {
                (y + &h).unwrap()
            } else {
                y
            };
            cin = cout;
        }
    }
    let head = if r.lite { 1280 } else { 4 * cin };
    let h = ref_conv_bn(&f.pp("8"), &h, cin, head, 1, 1, 1, r, act);
    let p = h.mean(D::Minus1).and_then(|p| p.mean(D::Minus1)).unwrap();
    let lin = candle_nn::linear(head, 1000, vb.pp("classifier.1")).unwrap();
    lin.forward(&p).unwrap()
}

fn ref_case(
    name: &str,
    cfg: EfficientNetConfig,
    r: RefCfg,
    shape: [usize; 4],
    seed: u64,
) -> Vec<f64> {
    let bytes = bytes_of(&cfg, seed);
    let x = random_images(shape[0], shape[1], shape[2], seed + 100);
    let vb = VarBuilder::from_buffered_safetensors(bytes.clone(), CDType::F32, &CDevice::Cpu)
        .expect("vb");
    let want = to_f64(&ref_forward(vb, &r, &candle_input(&x, shape)));
    let got = medkern_logits(&cfg, &bytes, &x, shape);
    let e = check_logits(name, &got, &want, shape[0], F32_REL);
    println!(
        "{name} {shape:?}: worst error {e:.2e} of max|logit| {:.3}",
        max_abs(&want)
    );
    want
}

#[test]
fn lite_models_match_candle_nn_assembly() {
    let lite0 = EfficientNetConfig::lite(0).unwrap();
    assert_eq!(
        (lite0.padding, lite0.bn_eps, lite0.family),
        (PaddingMode::TfSame, 1e-3, Family::Lite)
    );
    let same = ref_case(
        "Lite0 SAME",
        lite0.clone(),
        RefCfg {
            lite: true,
            width: 1.0,
            depth: 1.0,
            same: true,
            eps: 1e-3,
        },
        [2, 45, 51, 3],
        3,
    );
    // Lite3: width 1.2, depth 1.4, but stage 1 and 7 keep one block, stem 32, head 1280.
    let lite3 = EfficientNetConfig::lite(3)
        .unwrap()
        .with_padding(PaddingMode::Symmetric);
    ref_case(
        "Lite3 symmetric",
        lite3,
        RefCfg {
            lite: true,
            width: 1.2,
            depth: 1.4,
            same: false,
            eps: 1e-3,
        },
        [1, 40, 40, 3],
        4,
    );
    // The Lite0 reference with symmetric padding differs from the SAME one on the same input.
    let bytes = bytes_of(&lite0, 3);
    let x = random_images(2, 45, 51, 103);
    let sym = medkern_logits(
        &lite0.clone().with_padding(PaddingMode::Symmetric),
        &bytes,
        &x,
        [2, 45, 51, 3],
    );
    let d = sym
        .iter()
        .zip(&same)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        d > 20.0 * F32_REL * max_abs(&same),
        "Lite0: padding modes agree ({d:e})"
    );
}

#[test]
fn b0_symmetric_matches_candle_nn_assembly() {
    let b0 = EfficientNetConfig::b(0).unwrap();
    assert_eq!((b0.padding, b0.bn_eps), (PaddingMode::Symmetric, 1e-5));
    ref_case(
        "B0 symmetric",
        b0,
        RefCfg {
            lite: false,
            width: 1.0,
            depth: 1.0,
            same: false,
            eps: 1e-5,
        },
        [2, 50, 50, 3],
        5,
    );
}

// ---------------------------------------------------------------------------------------------
// Configurations

fn param_count(cfg: &EfficientNetConfig) -> usize {
    cfg.tensor_shapes()
        .iter()
        .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

#[test]
fn configurations_match_torchvision() {
    // torchvision's parameter counts (its model docs) and block counts.
    let b0 = EfficientNetConfig::by_name("efficientnet_b0").unwrap();
    assert_eq!(param_count(&b0), 5_288_548);
    assert_eq!(b0.blocks().len(), 16);
    let b7 = EfficientNetConfig::by_name("b7").unwrap();
    assert_eq!(param_count(&b7), 66_347_960);
    assert_eq!(b7.blocks().len(), 55);
    assert_eq!(
        (b7.head_channels(), b7.resolution, b7.bn_eps),
        (2560, 600, 1e-3)
    );
    assert_eq!(EfficientNetConfig::b(4).unwrap().bn_eps, 1e-5);
    let l4 = EfficientNetConfig::by_name("efficientnet-lite4").unwrap();
    assert_eq!((l4.stem_channels(), l4.head_channels()), (32, 1280));
    let per_stage: Vec<usize> = (1..=7)
        .map(|s| l4.blocks().iter().filter(|b| b.stage == s).count())
        .collect();
    assert_eq!(per_stage, [1, 4, 4, 6, 6, 8, 1]);
    assert!(l4.blocks().iter().all(|b| b.se.is_none()));
    assert!(EfficientNetConfig::b(8).is_err());
    assert!(EfficientNetConfig::lite(5).is_err());
    assert!(EfficientNetConfig::by_name("resnet18").is_err());
    let chest = b7.with_head(Head::ChestXray);
    assert_eq!(
        chest.tensor_shapes().last().unwrap(),
        &("classifier.1.bias".to_string(), vec![1])
    );
}

#[test]
fn random_weights_are_deterministic_and_realistic() {
    let cfg = EfficientNetConfig::b(0).unwrap();
    let a = random_weights(&cfg, 7).unwrap();
    let b = random_weights(&cfg, 7).unwrap();
    let c = random_weights(&cfg, 8).unwrap();
    assert_eq!(a.len(), cfg.tensor_shapes().len());
    let key = "features.3.1.block.1.1.running_var";
    assert_eq!(a[key], b[key]);
    assert_ne!(a[key], c[key]);
    let var = a[key].to_f64();
    assert!(var.iter().all(|&v| (0.5..=2.0).contains(&v)) && std_dev(&var) > 0.1);
    let mean = a["features.0.1.running_mean"].to_f64();
    assert!(std_dev(&mean) > 0.05);
    assert_eq!(to_safetensors(&a).unwrap(), to_safetensors(&b).unwrap());
}

// ---------------------------------------------------------------------------------------------
// Heads and bad inputs

#[test]
fn chest_xray_head_gives_a_sigmoid_probability() {
    let cfg = EfficientNetConfig::b(0).unwrap().with_head(Head::ChestXray);
    let bytes = bytes_of(&cfg, 9);
    let m = EfficientNet::from_bytes(&bytes, cfg.clone(), &Device::Cpu, DType::F32).unwrap();
    let x = random_images(3, 32, 32, 10);
    let t = Tensor::Host(HostTensor::from_f64(&[3, 32, 32, 3], &x, DType::F32).unwrap());
    let out = m.abnormal_probability(&t).unwrap();
    let logits = m.logits(&t).unwrap();
    assert_eq!(out.len(), 3);
    for ((z, p), l) in out.iter().zip(&logits) {
        assert_eq!(l.len(), 1);
        assert_eq!(*z, l[0]);
        let want = 1.0 / (1.0 + (-f64::from(*z)).exp());
        assert!(
            (f64::from(*p) - want).abs() < 1e-6 && *p > 0.0 && *p < 1.0,
            "{z} {p}"
        );
    }
    // Different images, different logits (the head sees the image).
    assert!(out[0].0 != out[1].0 && out[1].0 != out[2].0);
    let imagenet = EfficientNetConfig::b(0).unwrap();
    let m = EfficientNet::from_bytes(&bytes_of(&imagenet, 9), imagenet, &Device::Cpu, DType::F32)
        .unwrap();
    let e = m.abnormal_probability(&t).unwrap_err().to_string();
    assert!(e.contains("ChestXray"), "{e}");
    // Loading ImageNet-head weights as a chest model fails on the classifier shape.
    let e = EfficientNet::from_bytes(
        &bytes_of(&EfficientNetConfig::b(0).unwrap(), 9),
        cfg,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("classifier.1.weight") && e.contains("[1000, 1280]") && e.contains("[1, 1280]"),
        "{e}"
    );
}

fn load_err(tensors: &BTreeMap<String, HostTensor>, cfg: &EfficientNetConfig) -> String {
    let bytes = to_safetensors(tensors).expect("serialize");
    EfficientNet::from_bytes(&bytes, cfg.clone(), &Device::Cpu, DType::F32)
        .expect_err("loading must fail")
        .to_string()
}

#[test]
fn bad_weights_are_errors_naming_the_tensor() {
    let cfg = EfficientNetConfig::lite(0).unwrap();
    let good = random_weights(&cfg, 11).unwrap();
    // Missing tensor.
    let mut t = good.clone();
    t.remove("features.4.2.block.1.1.running_var");
    let e = load_err(&t, &cfg);
    assert!(
        e.contains("missing tensor features.4.2.block.1.1.running_var"),
        "{e}"
    );
    // Wrong shape: given and expected.
    let mut t = good.clone();
    t.insert(
        "features.2.0.block.1.0.weight".into(),
        HostTensor::new(&[96, 1, 5, 5], vec![0.1f32; 96 * 25]).unwrap(),
    );
    let e = load_err(&t, &cfg);
    assert!(
        e.contains("features.2.0.block.1.0.weight")
            && e.contains("[96, 1, 5, 5]")
            && e.contains("[96, 1, 3, 3]"),
        "{e}"
    );
    // An unexpected tensor (e.g. a B checkpoint's SE loaded as Lite).
    let mut t = good.clone();
    t.insert(
        "features.1.0.block.1.fc1.weight".into(),
        HostTensor::new(&[8, 32, 1, 1], vec![0.1f32; 256]).unwrap(),
    );
    let e = load_err(&t, &cfg);
    assert!(
        e.contains("unexpected tensor features.1.0.block.1.fc1.weight"),
        "{e}"
    );
    // num_batches_tracked (torchvision state dicts) is accepted.
    let mut t = good.clone();
    t.insert(
        "features.0.1.num_batches_tracked".into(),
        HostTensor::new(&[1], vec![0f32]).unwrap(),
    );
    let bytes = to_safetensors(&t).unwrap();
    assert!(EfficientNet::from_bytes(&bytes, cfg.clone(), &Device::Cpu, DType::F32).is_ok());
    // Non-finite weight.
    let mut t = good.clone();
    let mut v = t["classifier.1.bias"].to_f64();
    v[5] = f64::NAN;
    t.insert(
        "classifier.1.bias".into(),
        HostTensor::from_f64(&[1000], &v, DType::F32).unwrap(),
    );
    let e = load_err(&t, &cfg);
    assert!(
        e.contains("classifier.1.bias") && e.contains("non-finite"),
        "{e}"
    );
    // Negative running variance: the fold names the BatchNorm.
    let mut t = good.clone();
    t.insert(
        "features.8.1.running_var".into(),
        HostTensor::new(&[1280], vec![-1f32; 1280]).unwrap(),
    );
    let e = load_err(&t, &cfg);
    assert!(
        e.contains("features.8.1") && e.contains("running_var"),
        "{e}"
    );
    // B0 weights are not a Lite0 checkpoint.
    let b0 = random_weights(&EfficientNetConfig::b(0).unwrap(), 1).unwrap();
    assert!(!load_err(&b0, &cfg).is_empty());
}

#[test]
fn corrupt_files_and_bad_inputs_are_errors() {
    let cfg = EfficientNetConfig::lite(0).unwrap();
    let bytes = to_safetensors(&random_weights(&cfg, 12).unwrap()).unwrap();
    for (what, b) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("garbage header", {
            let mut b = bytes.clone();
            b[8..40].copy_from_slice(&[b'#'; 32]);
            b
        }),
        ("empty", vec![]),
        ("huge header length", {
            let mut b = bytes.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
    ] {
        let e = EfficientNet::from_bytes(&b, cfg.clone(), &Device::Cpu, DType::F32);
        assert!(e.is_err(), "{what}: loaded");
        println!("{what}: {}", e.unwrap_err());
    }
    let missing = std::env::temp_dir().join("medkern-no-such-efficientnet.safetensors");
    let e = EfficientNet::load(&missing, cfg.clone(), &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("medkern-no-such-efficientnet"), "{e}");
    assert!(EfficientNet::from_bytes(&bytes, cfg.clone(), &Device::Cpu, DType::U8).is_err());
    let m = EfficientNet::from_bytes(&bytes, cfg, &Device::Cpu, DType::F32).unwrap();
    let img = |shape: &[usize], dt: DType| {
        let n: usize = shape.iter().product();
        Tensor::Host(HostTensor::from_f64(shape, &vec![0.5; n], dt).unwrap())
    };
    for (shape, dt, needle) in [
        (vec![1, 32, 32, 4], DType::F32, "[N, H, W, 3]"),
        (vec![32, 32, 3], DType::F32, "[N, H, W, 3]"),
        (vec![1, 32, 32, 3], DType::F16, "model's dtype"),
    ] {
        let e = m.forward(&img(&shape, dt)).unwrap_err().to_string();
        assert!(e.contains(needle), "{shape:?} {dt}: {e}");
    }
    assert_eq!(top_k(&[0.1, 3.0, -1.0, 3.0, 2.0], 3), vec![1, 3, 4]);
}

/// scripts/convert-lite0's self-test: a synthetic legacy torch checkpoint (lukemelas names, a
/// non-contiguous and an offset tensor, Long counters) converted and read back, every name,
/// shape and value checked. Needs python3 (as scripts/setup-models does); counted SKIP without.
#[test]
fn lite0_converter_self_test() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/convert-lite0");
    match std::process::Command::new("python3")
        .arg(&script)
        .arg("--self-test")
        .output()
    {
        Err(e) => skip("lite0_converter_self_test", &format!("no python3 ({e})")),
        Ok(o) => assert!(
            o.status.success(),
            "convert-lite0 --self-test failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The real EfficientNet-Lite0

fn models_dir() -> PathBuf {
    std::env::var_os("MEDKERN_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".models"))
}

/// (weights file, images folder), or None after a counted SKIP when `MEDKERN_SKIP_MODELS=1`.
fn lite0_or_skip(test: &str) -> Option<(PathBuf, PathBuf)> {
    let w = models_dir().join("efficientnet-lite0/model.safetensors");
    let imgs = models_dir().join("images");
    let present = w.is_file()
        && ["chelsea.png", "coffee.png", "rocket.jpg"]
            .iter()
            .all(|f| imgs.join(f).is_file());
    if present {
        return Some((w, imgs));
    }
    if std::env::var("MEDKERN_SKIP_MODELS").is_ok_and(|v| v == "1") {
        skip(
            test,
            &format!(
                "no EfficientNet-Lite0 / images in {} (MEDKERN_SKIP_MODELS=1)",
                models_dir().display()
            ),
        );
        return None;
    }
    panic!(
        "{test}: EfficientNet-Lite0 or the test images are not installed in {}: run scripts/setup-models \
         (or set MEDKERN_SKIP_MODELS=1 to skip the real-model tests)",
        models_dir().display()
    );
}

/// The photograph, centre-cropped to a square, as u8 RGB `[1, s, s, 3]`.
fn load_photo(path: &std::path::Path) -> HostTensor {
    let img = image::open(path).expect("decode image").to_rgb8();
    let s = img.width().min(img.height());
    let crop = image::imageops::crop_imm(&img, (img.width() - s) / 2, (img.height() - s) / 2, s, s)
        .to_image();
    HostTensor::new(&[1, s as usize, s as usize, 3], crop.into_raw()).expect("u8 image")
}

/// The photographs and the ImageNet classes that count as right for each.
const PHOTOS: [(&str, &[usize]); 3] = [
    // tabby, tiger cat, Persian, Siamese, Egyptian cat
    ("chelsea.png", &[281, 282, 283, 284, 285]),
    // coffee mug, espresso, cup
    ("coffee.png", &[504, 967, 968]),
    // missile, projectile, space shuttle
    ("rocket.jpg", &[657, 744, 812]),
];

/// The same photographs by class name (the names file in `assets/`): one of these must be
/// among the top-5 names.
const PHOTO_NAMES: [(&str, &[&str]); 3] = [
    (
        "chelsea.png",
        &[
            "tabby",
            "tiger cat",
            "Persian cat",
            "Siamese cat",
            "Egyptian cat",
        ],
    ),
    ("coffee.png", &["coffee mug", "espresso", "cup"]),
    ("rocket.jpg", &["missile", "projectile", "space shuttle"]),
];

fn classify(m: &EfficientNet, p: &Preprocess, img: &HostTensor, dev: &Device) -> Vec<f32> {
    let x = preprocess(&img.to_device(dev).expect("upload"), p, m.dtype()).expect("preprocess");
    m.logits(&x).expect("forward").remove(0)
}

#[test]
fn lite0_classifies_real_photographs() {
    let Some((w, imgs)) = lite0_or_skip("lite0_classifies_real_photographs") else {
        return;
    };
    let cfg = EfficientNetConfig::lite(0).unwrap();
    let m = EfficientNet::load(&w, cfg.clone(), &Device::Cpu, DType::F32).expect("load Lite0");
    let p = cfg.preprocess();
    for (file, classes) in PHOTOS {
        let logits = classify(&m, &p, &load_photo(&imgs.join(file)), &Device::Cpu);
        let top = top_k(&logits, 5);
        println!(
            "{file}: top-5 {top:?} logits {:?}",
            top.iter().map(|&i| logits[i]).collect::<Vec<_>>()
        );
        assert!(
            top.iter().any(|c| classes.contains(c)),
            "{file}: top-5 {top:?} holds none of {classes:?}"
        );
        let names: Vec<&str> = top
            .iter()
            .map(|&i| imagenet::class_name(i).expect("name"))
            .collect();
        let (_, want) = PHOTO_NAMES.iter().find(|(f, _)| *f == file).expect("names");
        println!("{file}: top-5 names {names:?}");
        assert!(
            names.iter().any(|n| want.contains(n)),
            "{file}: top-5 names {names:?} hold none of {want:?}"
        );
        // In f32 the right class is first for all three (Egyptian cat, espresso, missile).
        assert!(
            classes.contains(&top[0]),
            "{file}: top-1 {} is not one of {classes:?}",
            top[0]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// GPU

/// Relative error bounds of the f16 / bf16 forward against the CPU f32 one (max |Δlogit| over
/// max |logit|): ~20 rounded layers, each with relative error u (2⁻¹¹ / 2⁻⁸), grow like √layers.
fn low_precision_rel(dt: DType) -> f64 {
    if dt == DType::F16 { 0.02 } else { 0.12 }
}

#[test]
fn gpu_matches_cpu_f32() {
    let Some(dev) = test_device("gpu_matches_cpu_f32") else {
        return;
    };
    for (cfg, shape) in [
        (EfficientNetConfig::b(0).unwrap(), [2, 64, 64, 3]),
        (EfficientNetConfig::lite(0).unwrap(), [2, 57, 57, 3]),
        (
            EfficientNetConfig::b(1)
                .unwrap()
                .with_head(Head::ChestXray)
                .with_padding(PaddingMode::TfSame),
            [3, 45, 45, 3],
        ),
    ] {
        let bytes = bytes_of(&cfg, 21);
        let x = random_images(shape[0], shape[1], shape[2], 22);
        let want = medkern_logits(&cfg, &bytes, &x, shape);
        for dt in [DType::F16, DType::BF16] {
            let m = EfficientNet::from_bytes(&bytes, cfg.clone(), &dev, dt).expect("load");
            let t = HostTensor::from_f64(&shape, &x, dt)
                .unwrap()
                .to_device(&dev)
                .unwrap();
            let got = m.forward(&t).unwrap().to_host().unwrap().to_f64();
            let e = check_logits(
                &format!("{} {dt}", cfg.name),
                &got,
                &want,
                shape[0],
                low_precision_rel(dt),
            );
            println!(
                "{} {dt} on {}: worst error {e:.2e} of max|logit|",
                cfg.name,
                dev.describe()
            );
        }
    }
}

#[test]
fn gpu_lite0_classifies_like_cpu() {
    let Some(dev) = test_device("gpu_lite0_classifies_like_cpu") else {
        return;
    };
    let Some((w, imgs)) = lite0_or_skip("gpu_lite0_classifies_like_cpu") else {
        return;
    };
    let cfg = EfficientNetConfig::lite(0).unwrap();
    let cpu = EfficientNet::load(&w, cfg.clone(), &Device::Cpu, DType::F32).unwrap();
    let p = cfg.preprocess();
    for dt in [DType::F16, DType::BF16] {
        let m = EfficientNet::load(&w, cfg.clone(), &dev, dt).unwrap();
        for (file, classes) in PHOTOS {
            let img = load_photo(&imgs.join(file));
            let want: Vec<f64> = classify(&cpu, &p, &img, &Device::Cpu)
                .into_iter()
                .map(f64::from)
                .collect();
            let got: Vec<f64> = classify(&m, &p, &img, &dev)
                .into_iter()
                .map(f64::from)
                .collect();
            let e = check_logits(
                &format!("Lite0 {file} {dt}"),
                &got,
                &want,
                1,
                low_precision_rel(dt),
            );
            let g32: Vec<f32> = got.iter().map(|&v| v as f32).collect();
            let top = top_k(&g32, 5);
            println!("Lite0 {file} {dt}: top-5 {top:?}, worst error {e:.2e}");
            assert!(
                top.iter().any(|c| classes.contains(c)),
                "{file} {dt}: top-5 {top:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Class activation maps

/// PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` of one-channel maps
/// `[n, h, w]` to `[n, oh, ow]`, in f64 (source `(dst + ½)·in/out − ½`, clamped at 0).
fn ref_bilinear(v: &[f64], n: usize, (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f64> {
    let src = |dst: usize, inn: usize, out: usize| {
        let s = ((dst as f64 + 0.5) * inn as f64 / out as f64 - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(inn - 1);
        let i1 = if i0 + 1 < inn { i0 + 1 } else { i0 };
        (i0, i1, s - i0 as f64)
    };
    let mut out = Vec::with_capacity(n * oh * ow);
    for b in 0..n {
        let at = |y: usize, x: usize| v[(b * h + y) * w + x];
        for oy in 0..oh {
            let (y0, y1, ly) = src(oy, h, oh);
            for ox in 0..ow {
                let (x0, x1, lx) = src(ox, w, ow);
                let top = at(y0, x0) * (1.0 - lx) + at(y0, x1) * lx;
                let bot = at(y1, x0) * (1.0 - lx) + at(y1, x1) * lx;
                out.push(top * (1.0 - ly) + bot * ly);
            }
        }
    }
    out
}

/// The unit roundoff of a dtype (f32, f16, bf16).
fn unit(dt: DType) -> f64 {
    match dt {
        DType::F16 => 2f64.powi(-11),
        DType::BF16 => 2f64.powi(-8),
        _ => 2f64.powi(-24),
    }
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len())
        .max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a)))
        .unwrap()
}

/// Checks `m.class_activation_map(x, class)` against the f64 CAM computed here from its feature
/// map and the checkpoint's classifier (rounded to the model dtype): the low-resolution map
/// (f32 GEMM accumulation), `mean(cam) + b = logit` (the head is a global average pool then a
/// Linear), the bilinear upsample, the argmax, and the logits against the plain forward.
fn check_cam(
    what: &str,
    m: &EfficientNet,
    tensors: &BTreeMap<String, HostTensor>,
    x: &Tensor,
    class: Option<usize>,
) -> Vec<usize> {
    let dt = m.dtype();
    let round = |name: &str| {
        let t = &tensors[name];
        HostTensor::from_f64(t.shape(), &t.to_f64(), dt)
            .unwrap()
            .to_f64()
    };
    let (wt, bias) = (round("classifier.1.weight"), round("classifier.1.bias"));
    let ca = m
        .class_activation_map(x, class)
        .expect("class_activation_map");
    let fs = ca.feature_map.shape().to_vec();
    let (n, h, w, c) = (fs[0], fs[1], fs[2], fs[3]);
    let (ih, iw) = (x.shape()[1], x.shape()[2]);
    assert_eq!(ca.low_res.shape(), [n, h, w, 1], "{what}");
    assert_eq!(ca.map.shape(), [n, ih, iw, 1], "{what}");
    assert_eq!(ca.low_res.dtype(), DType::F32, "{what}");
    assert_eq!(ca.map.dtype(), DType::F32, "{what}");
    // The logits are the plain forward's (same ops, deterministic).
    let plain = m.logits(x).expect("logits");
    assert_eq!(
        ca.logits, plain,
        "{what}: forward_with_map changed the logits"
    );
    let outputs = plain[0].len();
    for (i, &k) in ca.classes.iter().enumerate() {
        let want = class.unwrap_or_else(|| top_k(&plain[i], 1)[0]);
        assert_eq!(k, want, "{what}: image {i}");
    }
    let f = ca.feature_map.to_host().unwrap().to_f64();
    let low = ca.low_res.to_host().unwrap().to_f64();
    let map = ca.map.to_host().unwrap().to_f64();
    let mut want = vec![0.0; n * h * w];
    let mut bound = vec![0.0; n * h * w];
    for b in 0..n {
        let row = &wt[ca.classes[b] * c..(ca.classes[b] + 1) * c];
        for p in 0..h * w {
            let fp = &f[(b * h * w + p) * c..(b * h * w + p + 1) * c];
            want[b * h * w + p] = row.iter().zip(fp).map(|(a, v)| a * v).sum();
            bound[b * h * w + p] = row.iter().zip(fp).map(|(a, v)| (a * v).abs()).sum();
        }
    }
    for (i, ((g, r), s)) in low.iter().zip(&want).zip(&bound).enumerate() {
        // f32 accumulation of C products, then one f32 rounding.
        let tol = (c as f64 + 2.0) * 2f64.powi(-24) * s + 1e-6;
        assert!(
            (g - r).abs() <= tol,
            "{what}: low-res cam[{i}] = {g}, reference {r} (tol {tol:.2e})"
        );
    }
    for b in 0..n {
        let k = ca.classes[b];
        assert!(k < outputs);
        let hw = (h * w) as f64;
        let mean: f64 = want[b * h * w..(b + 1) * h * w].iter().sum::<f64>() / hw;
        // The pooled features are rounded to the model dtype before the classifier GEMM.
        let pooled_abs: f64 = (0..c)
            .map(|ch| {
                let s: f64 = (0..h * w).map(|p| f[(b * h * w + p) * c + ch]).sum::<f64>() / hw;
                (wt[k * c + ch] * s).abs()
            })
            .sum();
        let tol = 4.0 * unit(dt) * pooled_abs + 1e-5;
        let logit = f64::from(plain[b][k]);
        assert!(
            (mean + bias[k] - logit).abs() <= tol,
            "{what}: image {b}: mean(cam) + b = {} but logit {logit} (tol {tol:.2e})",
            mean + bias[k]
        );
    }
    // The upsample of the device's own low-res map (isolates the resize), and of the f64 map.
    let peak = low.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let up_got = ref_bilinear(&low, n, (h, w), (ih, iw));
    let up_ref = ref_bilinear(&want, n, (h, w), (ih, iw));
    let low_tol = want
        .iter()
        .zip(&bound)
        .map(|(_, s)| (c as f64 + 2.0) * 2f64.powi(-24) * s + 1e-6)
        .fold(0.0f64, f64::max);
    for (i, (g, r)) in map.iter().zip(&up_got).enumerate() {
        let tol = 1e-5 * peak + 1e-6;
        assert!(
            (g - r).abs() <= tol,
            "{what}: map[{i}] = {g}, bilinear of the low-res map {r}"
        );
    }
    for b in 0..n {
        let (g, r) = (
            &map[b * ih * iw..(b + 1) * ih * iw],
            &up_ref[b * ih * iw..(b + 1) * ih * iw],
        );
        // Not blank: the map varies over the image.
        let (lo, hi) = g
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, z), &v| {
                (a.min(v), z.max(v))
            });
        assert!(
            hi - lo > 1e-3 * peak.max(1e-30),
            "{what}: image {b}: flat map {lo}..{hi}"
        );
        // The hottest pixel is the reference's (or ties with it within the tolerance).
        let (ga, ra) = (argmax(g), argmax(r));
        assert!(
            r[ga] >= r[ra] - 2.0 * (low_tol + 1e-5 * peak),
            "{what}: image {b}: hottest pixel {ga} (ref {}), reference hottest {ra} ({})",
            r[ga],
            r[ra]
        );
    }
    ca.classes
}

#[test]
fn cam_matches_f64_reference_on_cpu() {
    for (cfg, shape, seed) in [
        (EfficientNetConfig::lite(0).unwrap(), [2, 37, 37, 3], 31),
        (
            EfficientNetConfig::b(7).unwrap().with_head(Head::ChestXray),
            [1, 33, 33, 3],
            32,
        ),
    ] {
        let tensors = random_weights(&cfg, seed).expect("random weights");
        let m = EfficientNet::from_bytes(
            &to_safetensors(&tensors).unwrap(),
            cfg.clone(),
            &Device::Cpu,
            DType::F32,
        )
        .expect("load");
        let x = random_images(shape[0], shape[1], shape[2], seed + 100);
        let t = Tensor::Host(HostTensor::from_f64(&shape, &x, DType::F32).unwrap());
        let top = check_cam(&format!("{} top class", cfg.name), &m, &tensors, &t, None);
        let k = cfg.num_outputs() - 1;
        check_cam(
            &format!("{} class {k}", cfg.name),
            &m,
            &tensors,
            &t,
            Some(k),
        );
        if cfg.num_outputs() > 1 {
            // Another class gives another map.
            let other = (top[0] + 1) % cfg.num_outputs();
            let a = m.class_activation_map(&t, Some(top[0])).unwrap().low_res;
            let b = m.class_activation_map(&t, Some(other)).unwrap().low_res;
            assert_ne!(a.to_host().unwrap().to_f64(), b.to_host().unwrap().to_f64());
        }
        let e = m
            .class_activation_map(&t, Some(cfg.num_outputs()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("class") && e.contains(&cfg.num_outputs().to_string()),
            "{e}"
        );
    }
}

/// A planted feature: a bright square in the top-left or bottom-right corner of a dark image,
/// and a head that weighs one channel only, one whose response peaks at the square's cell in
/// both images: the hottest point of the upsampled map follows the square (catches a
/// transposed or flipped map between the GEMM, the reshape and the upsample).
#[test]
fn cam_follows_a_planted_region() {
    let cfg = EfficientNetConfig::lite(0)
        .unwrap()
        .with_head(Head::ChestXray);
    let mut tensors = random_weights(&cfg, 41).expect("random weights");
    let c = cfg.head_channels();
    let m0 = EfficientNet::from_bytes(
        &to_safetensors(&tensors).unwrap(),
        cfg.clone(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let side = 64;
    let square = |top: usize, left: usize| {
        let mut v = vec![-1.0f64; side * side * 3];
        for y in top..top + 16 {
            for x in left..left + 16 {
                for ch in 0..3 {
                    v[(y * side + x) * 3 + ch] = 2.5;
                }
            }
        }
        Tensor::Host(HostTensor::from_f64(&[1, side, side, 3], &v, DType::F32).unwrap())
    };
    let (a, b) = (square(4, 4), square(44, 44));
    // The channel whose response moves most with the square, weighted alone by the head.
    let fa = m0.feature_map(&a).unwrap().to_host().unwrap().to_f64();
    let fb = m0.feature_map(&b).unwrap().to_host().unwrap().to_f64();
    let hw = fa.len() / c;
    // How far above every other position the channel peaks at the square's cell, in both
    // images (the lesser of the two margins).
    let contrast = |ch: usize| {
        let margin = |f: &[f64], at: usize| {
            let rest = (0..hw)
                .filter(|&p| p != at)
                .map(|p| f[p * c + ch])
                .fold(f64::NEG_INFINITY, f64::max);
            f[at * c + ch] - rest
        };
        margin(&fa, 0).min(margin(&fb, hw - 1))
    };
    let best = (0..c)
        .max_by(|&x, &y| contrast(x).total_cmp(&contrast(y)))
        .unwrap();
    assert!(contrast(best) > 0.0);
    let mut wv = vec![0f32; c];
    wv[best] = 1.0;
    tensors.insert(
        "classifier.1.weight".into(),
        HostTensor::new(&[1, c], wv).unwrap(),
    );
    let m = EfficientNet::from_bytes(
        &to_safetensors(&tensors).unwrap(),
        cfg,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    for (img, corner) in [(&a, (10usize, 10usize)), (&b, (50, 50))] {
        let map = m
            .class_activation_map(img, None)
            .unwrap()
            .map
            .to_host()
            .unwrap()
            .to_f64();
        let p = argmax(&map);
        let (y, x) = (p / side, p % side);
        let d = (y.abs_diff(corner.0)).max(x.abs_diff(corner.1));
        assert!(
            d <= 24,
            "hottest pixel ({y}, {x}), square around {corner:?}"
        );
    }
}

#[test]
fn gpu_cam_matches_reference() {
    let Some(dev) = test_device("gpu_cam_matches_reference") else {
        return;
    };
    for (cfg, shape, dt, class) in [
        (
            EfficientNetConfig::lite(0).unwrap(),
            [2, 33, 33, 3],
            DType::F16,
            None,
        ),
        (
            EfficientNetConfig::lite(0).unwrap(),
            [1, 41, 29, 3],
            DType::BF16,
            Some(7),
        ),
        (
            EfficientNetConfig::b(1)
                .unwrap()
                .with_head(Head::ChestXray)
                .with_padding(PaddingMode::TfSame),
            [1, 45, 45, 3],
            DType::F16,
            None,
        ),
    ] {
        let tensors = random_weights(&cfg, 51).expect("random weights");
        let m = EfficientNet::from_bytes(&to_safetensors(&tensors).unwrap(), cfg.clone(), &dev, dt)
            .expect("load");
        let x = random_images(shape[0], shape[1], shape[2], 52);
        let t = HostTensor::from_f64(&shape, &x, dt)
            .unwrap()
            .to_device(&dev)
            .unwrap();
        let classes = check_cam(
            &format!("{} {dt} on {}", cfg.name, dev.describe()),
            &m,
            &tensors,
            &t,
            class,
        );
        println!(
            "{} {dt} on {}: CAM classes {classes:?}",
            cfg.name,
            dev.describe()
        );
    }
}
