//! The EXAM model: the CPU forward of the head (Deep & Cross EMR branch, fusion, 24 h / 72 h
//! oxygen scores, cumulative-logit ordinal head) against an independent assembly with
//! candle-core ops over the same safetensors bytes; the EMR encoding (missing values as
//! value 0 + presence bit 0, errors naming the key); bad weights and inputs; GPU against CPU
//! (counted SKIP without a GPU).
// This file runs the `medkern` binary (feature `cli`).
#![cfg(feature = "cli")]

mod common;

use candle_core::{D, Device as CDevice, Tensor as CTensor};
use medkern::model::emr::{EmrConfig, EmrFeature, FeatureKind};
use medkern::model::exam::{
    self, CONFIG_KEY, ExamConfig, ExamHead, ExamModel, ExamOutput, ImageTrunk, ORDINAL_CLASSES,
};
use medkern::ops::{self, Gemm};
use medkern::{DType, Device, HostTensor, Tensor};
use serde_json::{Value, json};
use std::collections::HashMap;

/// A stand-in image trunk made of medkern ops: global average pool of the image, then a
/// Linear 3 → F (the ResNet-34 trunk is checked in tests/resnet.rs; here the trunk's job is
/// only to hand the head `[N, F]` features).
struct PoolTrunk {
    w: Tensor,
    f: usize,
    w_host: Vec<f32>,
}

impl PoolTrunk {
    fn new(f: usize, seed: u64, device: &Device) -> PoolTrunk {
        let mut rng = common::SeedRng::new(seed);
        let w_host: Vec<f32> = (0..f * 3).map(|_| (rng.normal() * 0.5) as f32).collect();
        let w64: Vec<f64> = w_host.iter().map(|&v| f64::from(v)).collect();
        PoolTrunk {
            w: common::upload(device, &[f, 3], &w64, DType::F32),
            f,
            w_host,
        }
    }
}

impl ImageTrunk for PoolTrunk {
    fn features(&self, x: &Tensor) -> medkern::Result<Tensor> {
        // The pool in x's dtype, the Linear in f32 (K = 3 is below the tensor cores' K % 8).
        let g = ops::global_avg_pool(x)?;
        let p = if g.dtype() == DType::F32 {
            g
        } else {
            ops::cast(&g, DType::F32)?
        };
        ops::gemm(&p, &self.w, &Gemm::default())
    }
    fn feature_dim(&self) -> usize {
        self.f
    }
    fn input_size(&self) -> (usize, usize) {
        (16, 16)
    }
    fn describe(&self) -> String {
        "pool-linear test trunk".into()
    }
}

fn small_config() -> ExamConfig {
    ExamConfig {
        image_features: 24,
        cross_layers: 2,
        deep: vec![16, 8],
        fusion: 12,
        emr: EmrConfig {
            features: vec![
                EmrFeature {
                    key: "age".into(),
                    unit: "years".into(),
                    kind: FeatureKind::Numeric {
                        min: 0.0,
                        max: 120.0,
                        mean: 60.0,
                        std: 18.0,
                        log: false,
                    },
                },
                EmrFeature {
                    key: "crp".into(),
                    unit: "mg/L".into(),
                    kind: FeatureKind::Numeric {
                        min: 0.0,
                        max: 700.0,
                        mean: 3.6,
                        std: 1.3,
                        log: true,
                    },
                },
                EmrFeature {
                    key: "device".into(),
                    unit: "category".into(),
                    kind: FeatureKind::Categorical {
                        categories: vec!["room_air".into(), "nasal_cannula".into(), "niv".into()],
                    },
                },
            ],
        },
    }
}

fn records() -> Vec<Value> {
    vec![
        json!({"age": 71, "spo2": 88, "respiratory_rate": 28, "heart_rate": 110, "systolic_bp": 100,
               "diastolic_bp": 60, "temperature": 38.9, "crp": 180, "d_dimer": 2400, "ldh": 520,
               "troponin_t": 35, "procalcitonin": 0.8, "wbc": 12.1, "lymphocytes": 0.6,
               "neutrophils": 10.2, "creatinine": 1.6, "glucose": 190, "ferritin": 1900,
               "sodium": 133, "ed_oxygen_device": "non_rebreather"}),
        json!({"age": 34, "spo2": 98, "ed_oxygen_device": "room_air"}),
        json!({}),
        json!({"age": 55.5, "crp": null, "d_dimer": 0, "ldh": 240, "temperature": 36.6,
               "ed_oxygen_device": null}),
        json!({"spo2": 91, "respiratory_rate": 24, "crp": 60, "ed_oxygen_device": "high_flow_nasal_cannula"}),
    ]
}

fn emr_tensor(cfg: &EmrConfig, recs: &[Value]) -> HostTensor {
    let r: Vec<&Value> = recs.iter().collect();
    cfg.encode_batch(&r).expect("encode")
}

fn random_features(n: usize, f: usize, seed: u64) -> Vec<f64> {
    let mut rng = common::SeedRng::new(seed);
    (0..n * f)
        .map(|_| f64::from((rng.uniform() * 2.0) as f32))
        .collect()
}

fn head_bytes(cfg: &ExamConfig, seed: u64) -> Vec<u8> {
    let meta = HashMap::from([(
        CONFIG_KEY.to_string(),
        serde_json::to_string(cfg).expect("json"),
    )]);
    exam::to_safetensors(&exam::random_head_tensors(cfg, seed), meta).expect("bytes")
}

/// The EXAM head assembled independently with candle ops from the same safetensors bytes:
/// `[P(24h), P(72h)]`, ordinal score and the 5 class probabilities per row.
fn candle_head(
    bytes: &[u8],
    cfg: &ExamConfig,
    img: &[f64],
    emr: &HostTensor,
) -> Vec<([f64; 2], f64, Vec<f64>)> {
    let dev = CDevice::Cpu;
    let t = candle_core::safetensors::load_buffer(bytes, &dev).expect("candle load");
    let get = |n: &str| t.get(n).unwrap_or_else(|| panic!("{n}")).clone();
    let n = emr.shape()[0];
    let d = cfg.emr.dim();
    let x0v: Vec<f32> = emr.to_f64().iter().map(|&v| v as f32).collect();
    let x0 = CTensor::from_vec(x0v, (n, d), &dev).expect("x0");
    let linear = |x: &CTensor, name: &str, bias: bool| -> CTensor {
        let y = x
            .matmul(&get(&format!("{name}.weight")).t().expect("t"))
            .expect("matmul");
        if bias {
            y.broadcast_add(&get(&format!("{name}.bias")))
                .expect("bias")
        } else {
            y
        }
    };
    let mut x = x0.clone();
    for l in 0..cfg.cross_layers {
        let y = linear(&x, &format!("emr.cross.{l}"), true);
        x = ((&x0 * &y).expect("mul") + &x).expect("add");
    }
    let mut h = x0.clone();
    for i in 0..cfg.deep.len() {
        h = linear(&h, &format!("emr.deep.{i}"), true)
            .relu()
            .expect("relu");
    }
    let imgv: Vec<f32> = img.iter().map(|&v| v as f32).collect();
    let im = CTensor::from_vec(imgv, (n, cfg.image_features), &dev).expect("img");
    let cat = CTensor::cat(&[&im, &x, &h], D::Minus1).expect("cat");
    let z = linear(&cat, "fusion", true).relu().expect("relu");
    let oxy = candle_nn::ops::sigmoid(&linear(&z, "head.oxygen", true)).expect("sigmoid");
    let s = linear(&z, "head.ordinal", false);
    let th: Vec<f32> = get("head.ordinal.thresholds").to_vec1().expect("th");
    // P(Y > k) = sigmoid(s − θ_k) as a candle op, then the differences.
    let th_t = CTensor::from_vec(th.clone(), (1, th.len()), &dev).expect("th");
    let gt = candle_nn::ops::sigmoid(&s.broadcast_sub(&th_t).expect("sub")).expect("sig");
    let oxy: Vec<Vec<f32>> = oxy.to_vec2().expect("oxy");
    let s: Vec<Vec<f32>> = s.to_vec2().expect("s");
    let gt: Vec<Vec<f32>> = gt.to_vec2().expect("gt");
    (0..n)
        .map(|i| {
            let mut above = vec![1.0f64];
            above.extend(gt[i].iter().map(|&v| f64::from(v)));
            above.push(0.0);
            let probs = (0..5).map(|k| above[k] - above[k + 1]).collect();
            (
                [f64::from(oxy[i][0]), f64::from(oxy[i][1])],
                f64::from(s[i][0]),
                probs,
            )
        })
        .collect()
}

fn assert_matches(got: &[ExamOutput], want: &[([f64; 2], f64, Vec<f64>)], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, (oxy, s, probs))) in got.iter().zip(want).enumerate() {
        let close = |a: f32, b: f64| (f64::from(a) - b).abs() <= tol * (1.0 + b.abs());
        assert!(
            close(g.oxygen_24h, oxy[0]) && close(g.oxygen_72h, oxy[1]),
            "{what} row {i}: oxygen {:?} vs {oxy:?}",
            (g.oxygen_24h, g.oxygen_72h)
        );
        assert!(
            close(g.ordinal_score, *s),
            "{what} row {i}: score {} vs {s}",
            g.ordinal_score
        );
        for (k, (&gp, &wp)) in g.ordinal_probs.iter().zip(probs).enumerate() {
            assert!(close(gp, wp), "{what} row {i}: P(class {k}) {gp} vs {wp}");
        }
        let sum: f64 = g.ordinal_probs.iter().map(|&p| f64::from(p)).sum();
        assert!(
            (sum - 1.0).abs() < 1e-5,
            "{what} row {i}: probabilities sum to {sum}"
        );
        assert!(g.ordinal_probs.iter().all(|&p| p >= 0.0));
        assert!(ORDINAL_CLASSES.contains(&g.class_name()));
    }
}

#[test]
fn cpu_head_matches_candle_default_config() {
    let cfg = ExamConfig::default();
    assert_eq!(cfg.emr.dim(), 46);
    let bytes = head_bytes(&cfg, 11);
    let head = ExamHead::from_safetensors(&bytes, &Device::Cpu).expect("load");
    assert_eq!(head.config, cfg);
    let recs = records();
    let emr = emr_tensor(&cfg.emr, &recs);
    let img = random_features(recs.len(), 512, 3);
    let f = HostTensor::from_f64(&[recs.len(), 512], &img, DType::F32).expect("img");
    let got = head
        .forward(&Tensor::Host(f), &Tensor::Host(emr.clone()))
        .expect("forward");
    let want = candle_head(&bytes, &cfg, &img, &emr);
    assert_matches(&got, &want, 1e-4, "default config");
}

#[test]
fn cpu_head_matches_candle_small_configs() {
    for (k, cfg) in [
        small_config(),
        ExamConfig {
            cross_layers: 0,
            deep: vec![5],
            ..small_config()
        },
        ExamConfig {
            cross_layers: 4,
            ..small_config()
        },
    ]
    .into_iter()
    .enumerate()
    {
        let bytes = head_bytes(&cfg, 100 + k as u64);
        let head = ExamHead::from_safetensors(&bytes, &Device::Cpu).expect("load");
        let recs = vec![
            json!({"age": 80, "crp": 250, "device": "niv"}),
            json!({"age": 20}),
            json!({"crp": 0, "device": "room_air"}),
        ];
        let emr = emr_tensor(&cfg.emr, &recs);
        let img = random_features(3, cfg.image_features, 7 + k as u64);
        let f = HostTensor::from_f64(&[3, cfg.image_features], &img, DType::F32).expect("img");
        let got = head
            .forward(&Tensor::Host(f), &Tensor::Host(emr.clone()))
            .expect("forward");
        let want = candle_head(&bytes, &cfg, &img, &emr);
        assert_matches(&got, &want, 1e-4, &format!("config {k}"));
    }
}

#[test]
fn whole_model_with_trunk_matches_candle() {
    let cfg = small_config();
    let head = ExamHead::random(&cfg, 5, &Device::Cpu).expect("head");
    let trunk = PoolTrunk::new(cfg.image_features, 9, &Device::Cpu);
    let w_host = trunk.w_host.clone();
    let model = ExamModel::new(Box::new(trunk), head).expect("model");
    let (n, h, w) = (2, 5, 4);
    let mut rng = common::SeedRng::new(1);
    let px: Vec<f64> = (0..n * h * w * 3)
        .map(|_| f64::from(rng.normal() as f32))
        .collect();
    let images = HostTensor::from_f64(&[n, h, w, 3], &px, DType::F32).expect("img");
    let recs = vec![
        json!({"age": 44, "device": "nasal_cannula"}),
        json!({"crp": 12}),
    ];
    let emr = emr_tensor(&cfg.emr, &recs);
    let got = model
        .forward(&Tensor::Host(images), &Tensor::Host(emr.clone()))
        .expect("forward");
    // The trunk in candle: mean over H, W then x·Wᵀ.
    let dev = CDevice::Cpu;
    let x = CTensor::from_vec(
        px.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        (n, h, w, 3),
        &dev,
    )
    .expect("x");
    let pooled = x.mean(1).expect("mean").mean(1).expect("mean");
    let wt = CTensor::from_vec(w_host, (cfg.image_features, 3), &dev).expect("w");
    let feats: Vec<Vec<f32>> = pooled
        .matmul(&wt.t().expect("t"))
        .expect("mm")
        .to_vec2()
        .expect("vec");
    let feats: Vec<f64> = feats.iter().flatten().map(|&v| f64::from(v)).collect();
    let bytes = head_bytes(&cfg, 5);
    let want = candle_head(&bytes, &cfg, &feats, &emr);
    assert_matches(&got, &want, 1e-4, "whole model");
}

#[test]
fn random_head_is_deterministic_and_seed_dependent() {
    let cfg = small_config();
    assert_eq!(head_bytes(&cfg, 1), head_bytes(&cfg, 1));
    assert_ne!(head_bytes(&cfg, 1), head_bytes(&cfg, 2));
}

#[test]
fn emr_encoding_layout_and_missing_mask() {
    let cfg = EmrConfig::exam_default();
    assert_eq!(cfg.features.len(), 20);
    assert_eq!(cfg.value_slots(), 26);
    let names = cfg.slot_names();
    assert_eq!(names.len(), 46);
    assert_eq!(names[0], "age");
    assert_eq!(names[19], "ed_oxygen_device=room_air");
    assert_eq!(names[26], "age.present");
    let slot = |n: &str| names.iter().position(|s| s == n).expect(n);

    let v = cfg
        .encode(&json!({"age": 78, "crp": 100, "ed_oxygen_device": "niv", "spo2": null}))
        .expect("encode");
    // z-score and log transform by hand.
    assert!((f64::from(v[slot("age")]) - (78.0 - 60.0) / 18.0).abs() < 1e-6);
    assert!((f64::from(v[slot("crp")]) - (101f64.ln() - 3.6) / 1.3).abs() < 1e-6);
    assert_eq!(v[slot("ed_oxygen_device=niv")], 1.0);
    assert_eq!(v[slot("ed_oxygen_device=room_air")], 0.0);
    assert_eq!(v[slot("age.present")], 1.0);
    assert_eq!(v[slot("crp.present")], 1.0);
    assert_eq!(v[slot("ed_oxygen_device.present")], 1.0);
    // Missing (null and absent): value 0 and presence 0.
    assert_eq!(v[slot("spo2")], 0.0);
    assert_eq!(v[slot("spo2.present")], 0.0);
    assert_eq!(v[slot("ldh")], 0.0);
    assert_eq!(v[slot("ldh.present")], 0.0);
    let empty = cfg.encode(&json!({})).expect("empty record");
    assert!(empty.iter().all(|&x| x == 0.0));

    // Missing is not the same input as a value at the mean (z = 0): the mask differs, and so
    // does the model's output.
    let at_mean = cfg.encode(&json!({"age": 60})).expect("encode");
    let missing = cfg.encode(&json!({})).expect("encode");
    assert_eq!(at_mean[slot("age")], missing[slot("age")]);
    assert_ne!(at_mean[slot("age.present")], missing[slot("age.present")]);
    let ecfg = ExamConfig::default();
    let head = ExamHead::random(&ecfg, 3, &Device::Cpu).expect("head");
    let emr = cfg
        .encode_batch(&[&json!({"age": 60}), &json!({})])
        .expect("batch");
    let img = HostTensor::from_f64(&[2, 512], &[0.25; 1024], DType::F32).expect("img");
    let out = head
        .forward(&Tensor::Host(img), &Tensor::Host(emr))
        .expect("forward");
    assert_ne!(out[0], out[1], "missing age must not equal age at the mean");

    // Config round trip through JSON.
    let back = EmrConfig::from_json(&cfg.to_json()).expect("json");
    assert_eq!(back, cfg);
}

#[test]
fn emr_errors_name_the_key() {
    let cfg = EmrConfig::exam_default();
    let err = |v: Value| cfg.encode(&v).expect_err("error").to_string();
    let e = err(json!({"agee": 40}));
    assert!(e.contains("\"agee\"") && e.contains("unknown key"), "{e}");
    let e = err(json!({"spo2": 120}));
    assert!(
        e.contains("\"spo2\"") && e.contains("plausible range"),
        "{e}"
    );
    let e = err(json!({"crp": -1}));
    assert!(e.contains("\"crp\""), "{e}");
    let e = err(json!({"heart_rate": "90"}));
    assert!(
        e.contains("\"heart_rate\"") && e.contains("a string"),
        "{e}"
    );
    let e = err(json!({"age": true}));
    assert!(e.contains("\"age\"") && e.contains("boolean"), "{e}");
    let e = err(json!({"ed_oxygen_device": "helmet"}));
    assert!(
        e.contains("\"ed_oxygen_device\"") && e.contains("helmet"),
        "{e}"
    );
    let e = err(json!({"ed_oxygen_device": 3}));
    assert!(e.contains("\"ed_oxygen_device\""), "{e}");
    let e = err(json!([1, 2]));
    assert!(e.contains("expected a JSON object"), "{e}");
    let e = cfg.encode_json("{not json").expect_err("error").to_string();
    assert!(e.contains("not valid JSON"), "{e}");
    let e = cfg
        .encode_json(r#"[{"age": 40}, {"age": 400}]"#)
        .expect_err("error")
        .to_string();
    assert!(e.contains("record 1") && e.contains("\"age\""), "{e}");
    let ok = cfg
        .encode_json(r#"[{"age": 40}, {"age": 41}]"#)
        .expect("batch");
    assert_eq!(ok.shape(), [2, 46]);
    // Bad configs.
    for bad in [
        r#"{"features": []}"#,
        r#"{"features": [{"key": "a", "unit": "", "type": "numeric", "min": 0, "max": 1, "mean": 0, "std": 0}]}"#,
        r#"{"features": [{"key": "a", "unit": "", "type": "categorical", "categories": []}]}"#,
        r#"{"features": [{"key": "a", "unit": "", "type": "numeric", "min": 0, "max": 1, "mean": 0, "std": 1},
                         {"key": "a", "unit": "", "type": "numeric", "min": 0, "max": 1, "mean": 0, "std": 1}]}"#,
        r#"{"features": [{"key": "a", "unit": "", "type": "numeric", "min": -5, "max": 1, "mean": 0, "std": 1, "log": true}]}"#,
        // Scores that overflow f32 (the fuzzer's `emr` finding: a tiny std, a huge range).
        r#"{"features": [{"key": "a", "unit": "", "type": "numeric", "min": 0, "max": 1, "mean": 0, "std": 1e-300}]}"#,
        r#"{"features": [{"key": "a", "unit": "", "type": "numeric", "min": -1e300, "max": 1e300, "mean": 0, "std": 1}]}"#,
    ] {
        let e = EmrConfig::from_json(bad).expect_err(bad).to_string();
        assert!(e.contains("emr"), "{e}");
    }
    // A list built in code skips `validate`; encoding still refuses a non-finite score.
    let unchecked = EmrConfig {
        features: vec![EmrFeature {
            key: "a".into(),
            unit: "u".into(),
            kind: FeatureKind::Numeric {
                min: 0.0,
                max: 1.0,
                mean: 0.0,
                std: 1e-300,
                log: false,
            },
        }],
    };
    let e = unchecked
        .encode_json(r#"{"a": 1}"#)
        .expect_err("inf score")
        .to_string();
    assert!(e.contains("\"a\"") && e.contains("finite"), "{e}");
    assert!(unchecked.encode_json(r#"{"a": 0}"#).is_ok());
}

#[test]
fn bad_weights_are_errors() {
    let cfg = small_config();
    let meta = || {
        HashMap::from([(
            CONFIG_KEY.to_string(),
            serde_json::to_string(&cfg).expect("json"),
        )])
    };
    let base = exam::random_head_tensors(&cfg, 1);
    let load = |t: &[(String, Vec<usize>, Vec<f32>)]| {
        let bytes = exam::to_safetensors(t, meta()).expect("bytes");
        ExamHead::from_safetensors(&bytes, &Device::Cpu)
            .err()
            .map(|e| e.to_string())
    };
    assert_eq!(load(&base), None);
    // Missing tensor.
    let t: Vec<_> = base
        .iter()
        .filter(|(n, _, _)| n != "emr.deep.1.bias")
        .cloned()
        .collect();
    let e = load(&t).expect("missing");
    assert!(e.contains("missing tensor emr.deep.1.bias"), "{e}");
    // Wrong shape.
    let mut t = base.clone();
    let i = t
        .iter()
        .position(|(n, _, _)| n == "fusion.weight")
        .expect("fusion");
    t[i].1 = vec![12, 50];
    t[i].2 = vec![0.0; 12 * 50];
    let e = load(&t).expect("shape");
    assert!(
        e.contains("fusion.weight") && e.contains("expected [12, 40]"),
        "{e}"
    );
    // A cross layer the config does not have.
    let mut t = base.clone();
    t.push((
        "emr.cross.2.bias".into(),
        vec![cfg.emr.dim()],
        vec![0.0; cfg.emr.dim()],
    ));
    let e = load(&t).expect("extra");
    assert!(e.contains("unexpected tensor emr.cross.2.bias"), "{e}");
    // Cut points not increasing.
    let mut t = base.clone();
    let i = t
        .iter()
        .position(|(n, _, _)| n == "head.ordinal.thresholds")
        .expect("th");
    t[i].2 = vec![0.0, 1.0, 1.0, 2.0];
    let e = load(&t).expect("thresholds");
    assert!(e.contains("strictly increasing"), "{e}");
    // Not safetensors; bad metadata.
    let e = ExamHead::from_safetensors(b"garbage", &Device::Cpu)
        .err()
        .expect("garbage")
        .to_string();
    assert!(e.contains("not a safetensors file"), "{e}");
    let bytes = exam::to_safetensors(
        &base,
        HashMap::from([(CONFIG_KEY.to_string(), "{".to_string())]),
    )
    .expect("bytes");
    let e = ExamHead::from_safetensors(&bytes, &Device::Cpu)
        .err()
        .expect("meta")
        .to_string();
    assert!(e.contains(CONFIG_KEY), "{e}");
    // No metadata: the default config, so the small tensors do not fit.
    let bytes = exam::to_safetensors(&base, HashMap::new()).expect("bytes");
    assert!(ExamHead::from_safetensors(&bytes, &Device::Cpu).is_err());
}

#[test]
fn bad_inputs_are_errors() {
    let cfg = small_config();
    let head = ExamHead::random(&cfg, 1, &Device::Cpu).expect("head");
    let d = cfg.emr.dim();
    let t = |shape: &[usize], dt: DType| {
        let n: usize = shape.iter().product();
        Tensor::Host(HostTensor::from_f64(shape, &vec![0.5; n], dt).expect("t"))
    };
    // EMR width, dtype, rank.
    for emr in [
        t(&[2, d + 1], DType::F32),
        t(&[2, d], DType::F16),
        t(&[2, 1, d], DType::F32),
    ] {
        let e = head
            .forward(&t(&[2, 24], DType::F32), &emr)
            .expect_err("emr")
            .to_string();
        assert!(e.contains("emr"), "{e}");
    }
    // Image features: width and batch mismatch.
    for img in [t(&[2, 23], DType::F32), t(&[3, 24], DType::F32)] {
        let e = head
            .forward(&img, &t(&[2, d], DType::F32))
            .expect_err("img")
            .to_string();
        assert!(e.contains("image_features"), "{e}");
    }
    // A trunk of the wrong width.
    let trunk = PoolTrunk::new(20, 1, &Device::Cpu);
    let e = ExamModel::new(Box::new(trunk), head)
        .err()
        .expect("trunk")
        .to_string();
    assert!(e.contains("20-d") && e.contains("24"), "{e}");
}

#[test]
fn ordinal_probabilities_shift_with_the_score() {
    let th = [-1.5, -0.5, 0.5, 1.5];
    let lo = exam::ordinal_probs(-6.0, &th);
    let hi = exam::ordinal_probs(6.0, &th);
    assert!(lo[0] > 0.9 && hi[4] > 0.9);
    for s in [-3.0, -1.0, 0.0, 0.7, 2.0] {
        let p = exam::ordinal_probs(s, &th);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p.iter().all(|&x| x >= 0.0));
    }
}

#[test]
fn gpu_matches_cpu() {
    let Some(dev) = common::test_device("exam::gpu_matches_cpu") else {
        return;
    };
    let cfg = ExamConfig {
        image_features: 64,
        ..ExamConfig::default()
    };
    let recs = records();
    let n = recs.len();
    let emr = emr_tensor(&cfg.emr, &recs);
    let mut rng = common::SeedRng::new(4);
    let px: Vec<f64> = (0..n * 16 * 16 * 3).map(|_| rng.normal()).collect();
    let cpu = {
        let head = ExamHead::random(&cfg, 21, &Device::Cpu).expect("head");
        let trunk = PoolTrunk::new(64, 2, &Device::Cpu);
        let m = ExamModel::new(Box::new(trunk), head).expect("model");
        let x = common::upload(&Device::Cpu, &[n, 16, 16, 3], &px, DType::F32);
        m.forward(&x, &Tensor::Host(emr.clone())).expect("cpu")
    };
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let head = ExamHead::random(&cfg, 21, &dev).expect("head");
        let trunk = PoolTrunk::new(64, 2, &dev);
        let m = ExamModel::new(Box::new(trunk), head).expect("model");
        let x = common::upload(&dev, &[n, 16, 16, 3], &px, dt);
        let got = m
            .forward(&x, &emr.to_device(&dev).expect("emr"))
            .expect("gpu");
        // The trunk runs in dt (inputs and weights rounded to it); the head in f32.
        let tol = match dt {
            DType::F32 => 1e-4,
            DType::F16 => 2e-2,
            _ => 8e-2,
        };
        for (i, (g, c)) in got.iter().zip(&cpu).enumerate() {
            let pairs = [
                (g.oxygen_24h, c.oxygen_24h),
                (g.oxygen_72h, c.oxygen_72h),
                (g.ordinal_score, c.ordinal_score),
            ];
            for (a, b) in pairs
                .into_iter()
                .chain(g.ordinal_probs.into_iter().zip(c.ordinal_probs))
            {
                assert!(
                    (a - b).abs() as f64 <= tol * (1.0 + b.abs() as f64),
                    "{dt} row {i}: gpu {a} vs cpu {b}"
                );
            }
        }
    }
}

/// NHWC values as a candle NCHW f32 tensor.
fn candle_nchw(v: &[f64], [n, h, w, c]: [usize; 4]) -> CTensor {
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    CTensor::from_vec(f, (n, h, w, c), &CDevice::Cpu)
        .and_then(|t| t.permute((0, 3, 1, 2)))
        .expect("candle input")
}

#[test]
fn resnet34_exam_matches_candle() {
    use candle_core::Module;
    let cfg = ExamConfig::default();
    let bytes = ExamModel::random_checkpoint(&cfg, 17).expect("checkpoint");
    let model = ExamModel::from_safetensors(&bytes, &Device::Cpu, DType::F32).expect("model");
    assert!(model.trunk.describe().starts_with("resnet34"));
    let shape = [2, 48, 40, 3];
    let mut rng = common::SeedRng::new(8);
    let x: Vec<f64> = (0..shape.iter().product::<usize>())
        .map(|_| f64::from(rng.normal() as f32))
        .collect();
    let recs = vec![records()[0].clone(), records()[3].clone()];
    let emr = emr_tensor(&cfg.emr, &recs);
    let got = model
        .forward(
            &common::upload(&Device::Cpu, &shape, &x, DType::F32),
            &Tensor::Host(emr.clone()),
        )
        .expect("forward");
    // candle-transformers' ResNet-34 (no final layer) over the image.* tensors of the same
    // file, then the candle head.
    let vb = candle_nn::VarBuilder::from_buffered_safetensors(
        bytes.clone(),
        candle_core::DType::F32,
        &CDevice::Cpu,
    )
    .expect("vb");
    let net = candle_transformers::models::resnet::resnet34_no_final_layer(vb.pp("image"))
        .expect("candle resnet34");
    let feats: Vec<Vec<f32>> = net
        .forward(&candle_nchw(&x, shape))
        .expect("candle forward")
        .to_vec2()
        .expect("features");
    let feats: Vec<f64> = feats.iter().flatten().map(|&v| f64::from(v)).collect();
    let want = candle_head(&bytes, &cfg, &feats, &emr);
    assert_matches(&got, &want, 2e-4, "ResNet-34 EXAM");
}

#[test]
fn checkpoint_without_trunk_is_an_error() {
    let cfg = ExamConfig::default();
    let e = ExamModel::from_safetensors(&head_bytes(&cfg, 1), &Device::Cpu, DType::F32)
        .err()
        .expect("no trunk")
        .to_string();
    assert!(e.contains("image."), "{e}");
}

#[test]
fn gpu_resnet34_exam_matches_cpu() {
    let Some(dev) = common::test_device("exam::gpu_resnet34_exam_matches_cpu") else {
        return;
    };
    let cfg = ExamConfig::default();
    let bytes = ExamModel::random_checkpoint(&cfg, 5).expect("checkpoint");
    let shape = [3, 64, 64, 3];
    let mut rng = common::SeedRng::new(9);
    let x: Vec<f64> = (0..shape.iter().product::<usize>())
        .map(|_| rng.normal())
        .collect();
    let recs = records()[..3].to_vec();
    let emr = emr_tensor(&cfg.emr, &recs);
    let cpu = ExamModel::from_safetensors(&bytes, &Device::Cpu, DType::F32)
        .expect("cpu model")
        .forward(
            &common::upload(&Device::Cpu, &shape, &x, DType::F32),
            &Tensor::Host(emr.clone()),
        )
        .expect("cpu");
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let m = ExamModel::from_safetensors(&bytes, &dev, dt).expect("gpu model");
        let got = m
            .forward(
                &common::upload(&dev, &shape, &x, dt),
                &emr.to_device(&dev).expect("emr"),
            )
            .expect("gpu");
        // 36 convolutions in dt: bf16 carries ~3 significant digits per layer.
        let tol = match dt {
            DType::F32 => 1e-3,
            DType::F16 => 5e-2,
            _ => 1.5e-1,
        };
        for (i, (g, c)) in got.iter().zip(&cpu).enumerate() {
            for (a, b) in [
                (g.oxygen_24h, c.oxygen_24h),
                (g.oxygen_72h, c.oxygen_72h),
                (g.ordinal_score, c.ordinal_score),
            ] {
                assert!(
                    f64::from((a - b).abs()) <= tol * (1.0 + f64::from(b.abs())),
                    "{dt} row {i}: gpu {a} vs cpu {b}"
                );
            }
        }
    }
}

/// `medkern exam` on the CPU: JSON with the scores; with `--weights` pointing at the random
/// checkpoint of seed 0, the same numbers as without `--weights` (which says it used random
/// weights); bad EMR values are a failure naming the key.
#[test]
fn cli_exam_prints_json() {
    let tmp = common::TempDir::new("exam-cli");
    let dir = tmp.path().to_path_buf();
    std::fs::create_dir_all(&dir).expect("dir");
    let png = dir.join("cxr.png");
    image::GrayImage::from_fn(40, 32, |x, y| image::Luma([(x * 5 + y * 3) as u8]))
        .save(&png)
        .expect("png");
    let emr = dir.join("emr.json");
    std::fs::write(
        &emr,
        r#"{"age": 71, "spo2": 89, "crp": 120, "ed_oxygen_device": "nasal_cannula"}"#,
    )
    .expect("emr");
    let weights = dir.join("exam.safetensors");
    std::fs::write(
        &weights,
        ExamModel::random_checkpoint(&ExamConfig::default(), 0).expect("checkpoint"),
    )
    .expect("weights");
    let run = |extra: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_medkern"))
            .args(["exam", "--device", "cpu", "--image"])
            .arg(&png)
            .arg("--emr")
            .arg(&emr)
            .args(extra)
            .output()
            .expect("run medkern");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = run(&[]);
    assert!(ok, "{stderr}");
    let a: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(a["random_weights"], json!(true));
    assert!(a["note"].as_str().expect("note").contains("random weights"));
    assert_eq!(
        a["ordinal"]["probabilities"].as_array().expect("p").len(),
        5
    );
    // The class names: each probability under its class's name, the class one of them.
    let by_class = a["ordinal"]["by_class"].as_object().expect("by_class");
    for (i, c) in ORDINAL_CLASSES.iter().enumerate() {
        assert_eq!(by_class[*c], a["ordinal"]["probabilities"][i], "{c}");
    }
    assert!(by_class.contains_key(a["ordinal"]["class"].as_str().expect("class")));
    assert!(
        a["emr_missing"]
            .as_array()
            .expect("missing")
            .contains(&json!("ldh"))
    );
    let (ok, stdout, stderr) = run(&["--weights".as_ref(), weights.as_os_str()]);
    assert!(ok, "{stderr}");
    let b: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(b["random_weights"], json!(false));
    assert!(b.get("note").is_none());
    for k in ["oxygen_24h", "oxygen_72h", "ordinal"] {
        assert_eq!(a[k], b[k], "{k}");
    }
    std::fs::write(&emr, r#"{"spo2": 140}"#).expect("emr");
    let (ok, _, stderr) = run(&[]);
    assert!(!ok && stderr.contains("\"spo2\""), "{stderr}");
}

/// `medkern classify` and `medkern autoencode` on a folder (CPU, random weights): one result
/// per image, a bad image is reported in the JSON and fails the exit status.
#[test]
fn cli_classify_and_autoencode_folders() {
    let tmp = common::TempDir::new("cnn-cli");
    let dir = tmp.path().to_path_buf();
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).expect("dir");
    for (i, name) in ["a.png", "b.jpg", "c.png"].iter().enumerate() {
        image::RgbImage::from_fn(48, 40, |x, y| {
            image::Rgb([(x * 3 + i as u32 * 40) as u8, (y * 5) as u8, 90])
        })
        .save(frames.join(name))
        .expect("save");
    }
    std::fs::write(frames.join("notes.txt"), "ignored").expect("txt");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_medkern"))
            .args(args)
            .output()
            .expect("run medkern");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let f = frames.as_os_str();
    let (ok, stdout, stderr) = run(&[
        "classify".as_ref(),
        "--model".as_ref(),
        "sepsis".as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--features".as_ref(),
        f,
    ]);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(v["images"], json!(3));
    assert_eq!(v["random_weights"], json!(true));
    let r = v["results"].as_array().expect("results");
    assert_eq!(r.len(), 3);
    assert_eq!(r[0]["features"].as_array().expect("features").len(), 128);
    let p = &r[1]["probabilities"];
    let sum = p["sepsis"].as_f64().expect("p") + p["no_sepsis"].as_f64().expect("p");
    assert!((sum - 1.0).abs() < 1e-5);

    let (ok, stdout, stderr) = run(&[
        "autoencode".as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--clusters".as_ref(),
        "2".as_ref(),
        f,
    ]);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("json");
    let r = v["results"].as_array().expect("results");
    assert_eq!(r.len(), 3);
    assert!(
        r.iter()
            .all(|x| x["mse"].as_f64().is_some() && x["cluster"].as_u64().is_some())
    );

    let bad = dir.join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").expect("bad");
    let (ok, stdout, stderr) = run(&[
        "classify".as_ref(),
        "--model".as_ref(),
        "lite0".as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
        frames.join("a.png").as_os_str(),
        bad.as_os_str(),
    ]);
    assert!(!ok && stderr.contains("1 of 2"), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(v["results"][0]["top"].as_array().expect("top").len(), 5);
    assert!(
        v["results"][1]["error"]
            .as_str()
            .expect("error")
            .contains("bad.png")
    );
}

/// A NaN / ±inf weight is an error naming the tensor (not a NaN prediction).
#[test]
fn non_finite_weights_are_errors() {
    let cfg = small_config();
    let meta = HashMap::from([(
        CONFIG_KEY.to_string(),
        serde_json::to_string(&cfg).expect("json"),
    )]);
    for (name, bad) in [
        ("fusion.bias", f32::NAN),
        ("emr.cross.1.weight", f32::INFINITY),
        ("head.oxygen.weight", f32::NEG_INFINITY),
    ] {
        let mut t = exam::random_head_tensors(&cfg, 1);
        let i = t.iter().position(|(n, _, _)| n == name).expect(name);
        let last = t[i].2.len() - 1;
        t[i].2[last] = bad;
        let bytes = exam::to_safetensors(&t, meta.clone()).expect("bytes");
        let e = ExamHead::from_safetensors(&bytes, &Device::Cpu)
            .err()
            .unwrap_or_else(|| panic!("{name} = {bad} was accepted"))
            .to_string();
        assert!(e.contains(name) && e.contains("non-finite"), "{e}");
    }
}

/// Finite weights that overflow f32 in the ordinal head (an infinite or NaN score) make
/// `forward` an error saying "non-finite", never a prediction (non-finite scores used to give
/// class 0, room_air); so do non-finite image features (an overflowing trunk), which the
/// fusion ReLU would otherwise turn into a finite, meaningless prediction.
#[test]
fn non_finite_outputs_are_errors_not_room_air() {
    let cfg = small_config();
    let recs = [json!({"age": 50, "crp": 10, "device": "niv"})];
    let emr1 = Tensor::Host(emr_tensor(&cfg.emr, &recs));
    let img1 = Tensor::Host(
        HostTensor::from_f64(
            &[1, cfg.image_features],
            &random_features(1, cfg.image_features, 2),
            DType::F32,
        )
        .expect("t"),
    );
    let meta = HashMap::from([(
        CONFIG_KEY.to_string(),
        serde_json::to_string(&cfg).expect("json"),
    )]);
    let mut t = exam::random_head_tensors(&cfg, 1);
    for (name, _, v) in &mut t {
        if name == "fusion.bias" {
            v.iter_mut().for_each(|x| *x = 10.0);
        }
        if name == "head.ordinal.weight" {
            // ±3e38 × z (z ≈ 10) overflows: the score is ±inf or NaN.
            for (k, x) in v.iter_mut().enumerate() {
                *x = if k % 2 == 0 { 3e38 } else { -3e38 };
            }
        }
    }
    let bytes = exam::to_safetensors(&t, meta).expect("bytes");
    let overflow = ExamHead::from_safetensors(&bytes, &Device::Cpu).expect("finite weights");
    let e = overflow
        .forward(&img1, &emr1)
        .expect_err("a non-finite score gave a prediction")
        .to_string();
    assert!(e.contains("exam") && e.contains("non-finite"), "{e}");

    let head = ExamHead::random(&cfg, 1, &Device::Cpu).expect("head");
    let recs = [json!({"age": 50, "crp": 10, "device": "niv"}), json!({})];
    let emr = Tensor::Host(emr_tensor(&cfg.emr, &recs));
    let f = cfg.image_features;
    let ok = random_features(2, f, 3);
    assert_eq!(
        head.forward(
            &Tensor::Host(HostTensor::from_f64(&[2, f], &ok, DType::F32).expect("t")),
            &emr
        )
        .expect("finite")
        .len(),
        2
    );
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut v = ok.clone();
        for x in &mut v[f..] {
            *x = bad;
        }
        let img = Tensor::Host(HostTensor::from_f64(&[2, f], &v, DType::F32).expect("t"));
        let e = head
            .forward(&img, &emr)
            .expect_err("non-finite features gave a prediction")
            .to_string();
        assert!(e.contains("exam") && e.contains("non-finite"), "{bad}: {e}");
    }
}

/// Config sizes from a file's metadata are bounded before anything is allocated for them
/// (1e12 cross layers used to abort on memory) and the fusion width cannot overflow.
#[test]
fn oversized_configs_are_errors_naming_the_field() {
    let base = small_config();
    let cases: Vec<(ExamConfig, &str)> = vec![
        (
            ExamConfig {
                cross_layers: 1_000_000_000_000,
                ..base.clone()
            },
            "cross_layers",
        ),
        (
            ExamConfig {
                cross_layers: exam::MAX_CROSS_LAYERS + 1,
                ..base.clone()
            },
            "cross_layers",
        ),
        (
            ExamConfig {
                deep: vec![4; exam::MAX_DEEP_LAYERS + 1],
                ..base.clone()
            },
            "deep",
        ),
        (
            ExamConfig {
                deep: vec![16, exam::MAX_WIDTH + 1],
                ..base.clone()
            },
            "deep[1]",
        ),
        (
            ExamConfig {
                fusion: 1 << 40,
                ..base.clone()
            },
            "fusion",
        ),
        (
            ExamConfig {
                image_features: usize::MAX,
                ..base.clone()
            },
            "image_features",
        ),
        (
            ExamConfig {
                image_features: usize::MAX - 10,
                deep: vec![usize::MAX],
                ..base.clone()
            },
            "image_features",
        ),
    ];
    for (cfg, field) in cases {
        let e = cfg.validate().expect_err(field).to_string();
        assert!(e.contains(field), "{field}: {e}");
        // Through a file's metadata (no tensors at all: the config is refused first).
        let meta = HashMap::from([(
            CONFIG_KEY.to_string(),
            serde_json::to_string(&cfg).expect("json"),
        )]);
        let bytes = exam::to_safetensors(&[], meta).expect("bytes");
        let e = ExamHead::from_safetensors(&bytes, &Device::Cpu)
            .err()
            .expect("head")
            .to_string();
        assert!(e.contains(field), "{field}: {e}");
        assert!(ExamHead::random(&cfg, 1, &Device::Cpu).is_err(), "{field}");
    }
    // The limits themselves are fine.
    ExamConfig {
        cross_layers: exam::MAX_CROSS_LAYERS,
        ..base.clone()
    }
    .validate()
    .expect("max cross layers");
}

/// With the ResNet-34 trunk, a config whose image_features is not 512 is refused before the
/// head is read (here the head has no tensors at all).
#[test]
fn resnet_checkpoint_checks_image_features_first() {
    let cfg = small_config();
    let meta = HashMap::from([(
        CONFIG_KEY.to_string(),
        serde_json::to_string(&cfg).expect("json"),
    )]);
    let bytes = exam::to_safetensors(&[], meta).expect("bytes");
    let e = ExamModel::from_safetensors(&bytes, &Device::Cpu, DType::F32)
        .err()
        .expect("image_features 24")
        .to_string();
    assert!(e.contains("image_features 24") && e.contains("512"), "{e}");
}

/// `medkern autoencode --clusters k` with k above the number of encoded images: the per-file
/// results are still printed, with a "clusters_error", and the exit status is non-zero.
/// `medkern classify` with weights that overflow to non-finite probabilities: an error entry
/// for the image, never a class.
#[test]
fn cli_clusters_error_and_non_finite_probabilities() {
    let tmp = common::TempDir::new("cnn-cli2");
    let dir = tmp.path().to_path_buf();
    std::fs::create_dir_all(&dir).expect("dir");
    let frames: Vec<std::path::PathBuf> = (0..2)
        .map(|i| {
            let p = dir.join(format!("f{i}.png"));
            image::RgbImage::from_fn(48, 40, |x, y| {
                image::Rgb([(x * 3 + i * 60) as u8, (y * 5) as u8, 200])
            })
            .save(&p)
            .expect("save");
            p
        })
        .collect();
    let run = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_medkern"))
            .args(args)
            .output()
            .expect("run medkern");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = run(&[
        "autoencode".as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--clusters".as_ref(),
        "5".as_ref(),
        frames[0].as_os_str(),
        frames[1].as_os_str(),
    ]);
    assert!(!ok, "k = 5 > 2 images must fail the exit status: {stdout}");
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let r = v["results"].as_array().expect("results");
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|x| x["mse"].as_f64().is_some()));
    assert!(
        v["clusters_error"]
            .as_str()
            .expect("clusters_error")
            .contains("k = 5")
    );
    assert!(stderr.contains("k = 5"), "{stderr}");

    // Sepsis weights whose fc overflows f32: both logits +inf, softmax NaN.
    let mut w = medkern::model::sepsis::random_sepsis(0);
    for name in ["fc.weight", "fc.bias"] {
        let t = w.tensors.get_mut(name).expect(name);
        t.1.iter_mut().for_each(|x| *x = 3e38);
    }
    let weights = dir.join("sepsis_overflow.safetensors");
    std::fs::write(&weights, w.to_safetensors().expect("bytes")).expect("weights");
    let (ok, stdout, stderr) = run(&[
        "classify".as_ref(),
        "--model".as_ref(),
        "sepsis".as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--weights".as_ref(),
        weights.as_os_str(),
        frames[0].as_os_str(),
    ]);
    assert!(!ok, "{stdout}");
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let r = &v["results"][0];
    assert!(r.get("class").is_none(), "{r}");
    assert!(
        r["error"].as_str().expect("error").contains("non-finite"),
        "{r}"
    );
}
