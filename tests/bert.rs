//! BERT encoder (`src/model/bert.rs`) and its embedding op (`kernels/embedding.cu`,
//! `src/ops/embedding.rs`).
//!
//! - CPU f32 forward against an independent implementation, candle-transformers'
//!   `models::bert::BertModel` (CPU, f32): random-weight tiny BERTs written to safetensors
//!   (ragged batches, token types, both tensor-name prefixes, the three activations), and the real
//!   sentence-transformers/all-MiniLM-L6-v2 installed by `scripts/setup-models`.
//! - Bad inputs: missing / misshapen tensors, corrupt files, bad configs, over-long sequences.
//! - GPU (f16, bf16) against the CPU f32 forward; counted SKIP without a GPU.
//!
//! The MiniLM tests fail when `.models/all-MiniLM-L6-v2` is missing (run scripts/setup-models),
//! unless `MEDKERN_SKIP_MODELS=1`, which turns them into counted SKIPs. `MEDKERN_MODELS_DIR`
//! points them at another folder holding `all-MiniLM-L6-v2/`.
// This file needs the `tokenizers` feature (BertTokenizer).
#![cfg(feature = "tokenizers")]

mod common;
use candle_core::{DType as CDType, Device as CDevice, Tensor as CTensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert as cbert;
use common::*;
use medkern::model::bert::{BertConfig, BertModel, BertTokenizer, DEFAULT_MAX_TEXT_BYTES, Pooling};
use medkern::ops::embedding::{Lookup, embedding};
use medkern::reference::embedding as reference;
use medkern::{DType, Device};
use safetensors::tensor::TensorView;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A tiny random BERT. Head dims stay in the fused attention kernel's set (32..128).
struct Tiny {
    name: &'static str,
    hidden: usize,
    heads: usize,
    layers: usize,
    inter: usize,
    /// Hugging Face `hidden_act`.
    act: &'static str,
    /// Tensor-name prefix: "" (BertModel) or "bert." (BertFor* checkpoints).
    prefix: &'static str,
    eps: f64,
    seed: u64,
}

const VOCAB: usize = 50;
const MAX_POS: usize = 16;
const TYPES: usize = 2;

const TINY: [Tiny; 5] = [
    Tiny {
        name: "h128-4heads-2layers-gelu",
        hidden: 128,
        heads: 4,
        layers: 2,
        inter: 256,
        act: "gelu",
        prefix: "",
        eps: 1e-12,
        seed: 1,
    },
    Tiny {
        name: "h96-3heads-2layers-gelu_new-prefixed",
        hidden: 96,
        heads: 3,
        layers: 2,
        inter: 192,
        act: "gelu_new",
        prefix: "bert.",
        eps: 1e-5,
        seed: 2,
    },
    Tiny {
        name: "h64-1head-3layers-relu",
        hidden: 64,
        heads: 1,
        layers: 3,
        inter: 128,
        act: "relu",
        prefix: "",
        eps: 1e-12,
        seed: 3,
    },
    // Head dims outside the fused kernel's set run zero-padded to the next one.
    Tiny {
        name: "h64-4heads-head_dim16",
        hidden: 64,
        heads: 4,
        layers: 2,
        inter: 128,
        act: "gelu",
        prefix: "",
        eps: 1e-12,
        seed: 4,
    },
    Tiny {
        name: "h104-4heads-head_dim26-tinybert-like",
        hidden: 104,
        heads: 4,
        layers: 2,
        inter: 208,
        act: "gelu",
        prefix: "",
        eps: 1e-12,
        seed: 5,
    },
];

type Weights = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Random tensors ~ N(mean, sigma²) under a name prefix.
struct Gen {
    w: Weights,
    rng: SeedRng,
    prefix: &'static str,
}

impl Gen {
    fn put(&mut self, name: &str, shape: &[usize], mean: f64, sigma: f64) {
        let n = shape.iter().product();
        let v = (0..n)
            .map(|_| (mean + sigma * self.rng.normal()) as f32)
            .collect();
        self.w
            .insert(format!("{}{name}", self.prefix), (shape.to_vec(), v));
    }
    /// LayerNorm gamma 1 ± 0.2, beta ~0.1.
    fn ln(&mut self, base: &str, h: usize) {
        self.put(&format!("{base}.weight"), &[h], 1.0, 0.2);
        self.put(&format!("{base}.bias"), &[h], 0.0, 0.1);
    }
}

impl Tiny {
    fn config_json(&self) -> String {
        serde_json::json!({
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": VOCAB,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "intermediate_size": self.inter,
            "hidden_act": self.act,
            "max_position_embeddings": MAX_POS,
            "type_vocab_size": TYPES,
            "layer_norm_eps": self.eps,
            "hidden_dropout_prob": 0.1,
            "pad_token_id": 0,
        })
        .to_string()
    }

    fn config(&self) -> BertConfig {
        BertConfig::from_json(&self.config_json()).expect("tiny config")
    }

    fn candle_config(&self) -> cbert::Config {
        cbert::Config {
            vocab_size: VOCAB,
            hidden_size: self.hidden,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            intermediate_size: self.inter,
            hidden_act: match self.act {
                "gelu" => cbert::HiddenAct::Gelu,
                "gelu_new" => cbert::HiddenAct::GeluApproximate,
                "relu" => cbert::HiddenAct::Relu,
                a => panic!("no candle activation for {a}"),
            },
            hidden_dropout_prob: 0.0,
            max_position_embeddings: MAX_POS,
            type_vocab_size: TYPES,
            initializer_range: 0.02,
            layer_norm_eps: self.eps,
            pad_token_id: 0,
            position_embedding_type: cbert::PositionEmbeddingType::Absolute,
            use_cache: false,
            classifier_dropout: None,
            model_type: Some("bert".into()),
        }
    }

    /// Random weights scaled so that every part matters: unit-variance embeddings, projections
    /// of gain ~1 (q and k 1.5, so attention is peaked but not one-hot), LayerNorm gammas
    /// 1 ± 0.2, biases ~0.1.
    fn weights(&self) -> Weights {
        let mut g = Gen {
            w: Weights::new(),
            rng: SeedRng::new(self.seed),
            prefix: self.prefix,
        };
        let (h, i) = (self.hidden, self.inter);
        let gain = 1.0 / (h as f64).sqrt();
        g.put("embeddings.word_embeddings.weight", &[VOCAB, h], 0.0, 1.0);
        g.put(
            "embeddings.position_embeddings.weight",
            &[MAX_POS, h],
            0.0,
            0.5,
        );
        g.put(
            "embeddings.token_type_embeddings.weight",
            &[TYPES, h],
            0.0,
            0.5,
        );
        g.ln("embeddings.LayerNorm", h);
        for l in 0..self.layers {
            let p = format!("encoder.layer.{l}");
            for (m, qk) in [("query", 1.5), ("key", 1.5), ("value", 1.0)] {
                g.put(
                    &format!("{p}.attention.self.{m}.weight"),
                    &[h, h],
                    0.0,
                    qk * gain,
                );
                g.put(&format!("{p}.attention.self.{m}.bias"), &[h], 0.0, 0.1);
            }
            g.put(
                &format!("{p}.attention.output.dense.weight"),
                &[h, h],
                0.0,
                gain,
            );
            g.put(&format!("{p}.attention.output.dense.bias"), &[h], 0.0, 0.1);
            g.ln(&format!("{p}.attention.output.LayerNorm"), h);
            g.put(
                &format!("{p}.intermediate.dense.weight"),
                &[i, h],
                0.0,
                gain,
            );
            g.put(&format!("{p}.intermediate.dense.bias"), &[i], 0.0, 0.1);
            let gain2 = 1.0 / (i as f64).sqrt();
            g.put(&format!("{p}.output.dense.weight"), &[h, i], 0.0, gain2);
            g.put(&format!("{p}.output.dense.bias"), &[h], 0.0, 0.1);
            g.ln(&format!("{p}.output.LayerNorm"), h);
        }
        g.w
    }

    /// A ragged batch: lengths 1, 7, MAX_POS (every position) and 3, random ids and token types.
    fn batch(&self) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
        let mut rng = SeedRng::new(self.seed + 100);
        let lens = [1, 7, MAX_POS, 3];
        let ids = lens
            .iter()
            .map(|&n| (0..n).map(|_| rng.below(VOCAB as u64) as u32).collect())
            .collect();
        let types = lens
            .iter()
            .map(|&n| (0..n).map(|_| rng.below(TYPES as u64) as u32).collect())
            .collect();
        (ids, types)
    }
}

/// The weights as an f32 safetensors file.
fn safetensors_bytes(w: &Weights) -> Vec<u8> {
    let raw: Vec<(&String, &Vec<usize>, Vec<u8>)> = w
        .iter()
        .map(|(n, (s, v))| (n, s, bytemuck::cast_slice(v).to_vec()))
        .collect();
    let views = raw.iter().map(|(n, s, b)| {
        (
            n.as_str(),
            TensorView::new(safetensors::Dtype::F32, s.to_vec(), b).expect("tensor view"),
        )
    });
    safetensors::serialize(views, None).expect("serialize")
}

/// A fresh folder under the system temp dir (removed by the caller).
fn temp_dir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medkern-bert-{}-{what}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// candle's last hidden state of each sequence run alone (no padding, no mask), packed
/// `[Σ len, hidden]` like medkern's.
fn candle_forward(m: &cbert::BertModel, ids: &[Vec<u32>], types: &[Vec<u32>]) -> Vec<f64> {
    let dev = CDevice::Cpu;
    let mut out = Vec::new();
    for (s, t) in ids.iter().zip(types) {
        let x = CTensor::new(s.as_slice(), &dev)
            .and_then(|x| x.unsqueeze(0))
            .expect("ids");
        let tt = CTensor::new(t.as_slice(), &dev)
            .and_then(|x| x.unsqueeze(0))
            .expect("type ids");
        let y = m
            .forward(&x, &tt, None)
            .and_then(|y| y.flatten_all())
            .and_then(|y| y.to_vec1::<f32>())
            .expect("candle forward");
        out.extend(y.into_iter().map(f64::from));
    }
    out
}

fn candle_model(cfg: &cbert::Config, bytes: Vec<u8>) -> cbert::BertModel {
    let vb = VarBuilder::from_buffered_safetensors(bytes, CDType::F32, &CDevice::Cpu)
        .expect("candle safetensors");
    cbert::BertModel::load(vb, cfg).expect("candle BertModel")
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (norm(a) * norm(b))
}

/// Per token `t`: `‖got_t − want_t‖ ≤ rel·‖want_t‖` and every element
/// `|got − want| ≤ rel·(4·rms(want_t) + |want|)` (the max of `h` errors is a few times their
/// rms). Returns the worst per-token relative error.
fn check_tokens(what: &str, got: &[f64], want: &[f64], h: usize, rel: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: element count");
    let mut worst = 0.0f64;
    for (t, (g, w)) in got.chunks(h).zip(want.chunks(h)).enumerate() {
        let d: Vec<f64> = g.iter().zip(w).map(|(a, b)| a - b).collect();
        let r = norm(&d) / norm(w);
        assert!(
            r <= rel,
            "{what}: token {t}: relative error {r:e} > {rel:e}"
        );
        worst = worst.max(r);
        let rms = norm(w) / (h as f64).sqrt();
        if let Err(e) = check_close(
            &format!("{what}: token {t}"),
            g,
            w,
            &|_| 4.0 * rel * rms,
            rel,
        ) {
            panic!("{e}");
        }
    }
    worst
}

// ---------------------------------------------------------------------------------------------
// CPU f32 against candle-transformers

/// Tolerance of the CPU f32 forward against candle's: both keep f32 activations (medkern
/// accumulates in f64, candle in f32), so they differ by a few f32 roundings per op; 1e-4
/// relative leaves two orders of magnitude.
const F32_REL: f64 = 1e-4;

#[test]
fn tiny_random_berts_match_candle() {
    for t in &TINY {
        let w = t.weights();
        let bytes = safetensors_bytes(&w);
        // One model goes through BertModel::load (config.json + model.safetensors on disk).
        let model = if t.prefix.is_empty() {
            BertModel::from_safetensors(t.config(), &bytes, &Device::Cpu, DType::F32)
                .expect("from_safetensors")
        } else {
            let dir = temp_dir(t.name);
            std::fs::write(dir.join("config.json"), t.config_json()).expect("write config");
            std::fs::write(dir.join("model.safetensors"), &bytes).expect("write weights");
            let m = BertModel::load(&dir, &Device::Cpu, DType::F32).expect("load");
            let _ = std::fs::remove_dir_all(&dir);
            m
        };
        let (ids, types) = t.batch();
        let (x, cu) = model.forward(&ids, Some(&types)).expect("forward");
        assert_eq!(cu, vec![0, 1, 8, 8 + MAX_POS, 11 + MAX_POS], "{}", t.name);
        assert_eq!(x.shape(), &[cu[4], t.hidden], "{}", t.name);
        let got = x.to_host().expect("to_host").to_f64();
        let want = candle_forward(&candle_model(&t.candle_config(), bytes), &ids, &types);
        let worst = check_tokens(t.name, &got, &want, t.hidden, F32_REL);
        println!(
            "{}: worst per-token relative error vs candle {worst:.2e}",
            t.name
        );

        // Token types matter (the table is used), and a sequence does not see its neighbours:
        // alone, it gives the same rows as in the packed batch.
        let (x0, _) = model.forward(&ids, None).expect("forward");
        assert_ne!(x0.to_host().expect("to_host").to_f64(), got, "{}", t.name);
        let (x2, _) = model
            .forward(&ids[1..2], Some(&types[1..2]))
            .expect("forward");
        let alone = x2.to_host().expect("to_host").to_f64();
        let h = t.hidden;
        check_tokens(
            &format!("{} alone", t.name),
            &alone,
            &got[cu[1] * h..cu[2] * h],
            h,
            1e-6,
        );
    }
}

#[test]
fn pooling_is_mean_or_first_token() {
    let t = &TINY[0];
    let model = BertModel::from_safetensors(
        t.config(),
        &safetensors_bytes(&t.weights()),
        &Device::Cpu,
        DType::F32,
    )
    .expect("model");
    let (ids, _) = t.batch();
    let (x, cu) = model.forward(&ids, None).expect("forward");
    let x = x.to_host().expect("to_host").to_f64();
    let h = t.hidden;
    let mean = model.embed(&ids, Pooling::Mean).expect("embed");
    let cls = model.embed(&ids, Pooling::Cls).expect("embed");
    assert_eq!(mean.len(), ids.len());
    for (b, w) in cu.windows(2).enumerate() {
        let n = (w[1] - w[0]) as f64;
        for c in 0..h {
            let m: f64 = (w[0]..w[1]).map(|r| x[r * h + c]).sum::<f64>() / n;
            assert!((f64::from(mean[b][c]) - m).abs() <= 1e-6 * (1.0 + m.abs()));
            assert_eq!(f64::from(cls[b][c]), x[w[0] * h + c]);
        }
    }
}

/// Where the installed models are: `MEDKERN_MODELS_DIR`, or `.models/` in the repository.
fn models_dir() -> PathBuf {
    std::env::var_os("MEDKERN_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".models"))
}

/// The all-MiniLM-L6-v2 folder, or None after a counted SKIP when `MEDKERN_SKIP_MODELS=1`;
/// otherwise a missing folder fails the test.
fn minilm_or_skip(test: &str) -> Option<PathBuf> {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    let present = ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .all(|f| dir.join(f).is_file());
    if present {
        return Some(dir);
    }
    if std::env::var("MEDKERN_SKIP_MODELS").is_ok_and(|v| v == "1") {
        skip(
            test,
            &format!("no model in {} (MEDKERN_SKIP_MODELS=1)", dir.display()),
        );
        return None;
    }
    panic!(
        "{test}: all-MiniLM-L6-v2 is not installed in {}: run scripts/setup-models \
         (or set MEDKERN_SKIP_MODELS=1 to skip the real-model tests)",
        dir.display()
    );
}

/// Clinical and general sentences, short and long, with punctuation, numbers, units and an
/// accent (the uncased tokenizer strips it).
const SENTENCES: [&str; 8] = [
    "The patient presents with fever, productive cough and shortness of breath for three days.",
    "Chest X-ray shows right lower lobe consolidation consistent with community-acquired pneumonia.",
    "Lactate 4.2 mmol/L and MAP 58 mmHg despite 30 mL/kg of crystalloids: septic shock, start norepinephrine.",
    "Blood cultures grew Staphylococcus aureus; vancomycin was started empirically.",
    "No acute distress. Lungs clear to auscultation bilaterally. Café-au-lait spots on the trunk.",
    "The quarterly earnings report exceeded analysts' expectations.",
    "A cat sat on the mat.",
    "ok",
];

/// Mean-pooled embeddings and per-token hidden states from candle, each sentence alone.
fn candle_minilm(dir: &std::path::Path, ids: &[Vec<u32>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let cfg: cbert::Config = serde_json::from_str(
        &std::fs::read_to_string(dir.join("config.json")).expect("config.json"),
    )
    .expect("candle config");
    let m = candle_model(
        &cfg,
        std::fs::read(dir.join("model.safetensors")).expect("model.safetensors"),
    );
    let types: Vec<Vec<u32>> = ids.iter().map(|s| vec![0; s.len()]).collect();
    let hidden = candle_forward(&m, ids, &types);
    let h = cfg.hidden_size;
    let mut row = 0;
    let pooled = ids
        .iter()
        .map(|s| {
            let n = s.len();
            let e = (0..h)
                .map(|c| (row..row + n).map(|r| hidden[r * h + c]).sum::<f64>() / n as f64)
                .collect();
            row += n;
            e
        })
        .collect();
    (hidden, pooled)
}

#[test]
fn minilm_matches_candle() {
    let Some(dir) = minilm_or_skip("minilm_matches_candle") else {
        return;
    };
    let tok = BertTokenizer::load(&dir, 256).expect("tokenizer");
    let ids = tok.encode(&SENTENCES).expect("encode");
    for s in &ids {
        assert_eq!((s[0], s[s.len() - 1]), (101, 102), "[CLS] ... [SEP]");
    }
    assert_eq!(ids[7].len(), 3, "\"ok\" is [CLS] ok [SEP]");
    let model = BertModel::load(&dir, &Device::Cpu, DType::F32).expect("load MiniLM");
    assert_eq!(
        (model.config.hidden_size, model.config.num_hidden_layers),
        (384, 6)
    );
    let (x, _) = model.forward(&ids, None).expect("forward");
    let got = x.to_host().expect("to_host").to_f64();
    let emb = model.embed(&ids, Pooling::Mean).expect("embed");
    let (want, want_emb) = candle_minilm(&dir, &ids);
    let worst_tok = check_tokens("MiniLM hidden", &got, &want, 384, F32_REL);
    let mut worst = (1.0f64, 0);
    for (i, (e, w)) in emb.iter().zip(&want_emb).enumerate() {
        let e: Vec<f64> = e.iter().map(|&v| f64::from(v)).collect();
        let c = cosine(&e, w);
        assert!(
            c >= 0.9999,
            "sentence {i} ({:?}): cosine {c} to candle's embedding < 0.9999",
            SENTENCES[i]
        );
        if c < worst.0 {
            worst = (c, i);
        }
    }
    println!(
        "MiniLM vs candle: worst embedding cosine {:.12} (1 - cos = {:.1e}, sentence {}), worst \
         per-token relative error {worst_tok:.2e}",
        worst.0,
        1.0 - worst.0,
        worst.1
    );
    // And the embeddings mean something: the two respiratory-infection sentences are closer
    // to each other than to the earnings report.
    let f = |i: usize| emb[i].iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
    let (fever, pneumonia, earnings) = (f(0), f(1), f(5));
    assert!(
        cosine(&fever, &pneumonia) > cosine(&fever, &earnings) + 0.1,
        "fever/pneumonia {} vs fever/earnings {}",
        cosine(&fever, &pneumonia),
        cosine(&fever, &earnings)
    );
}

// ---------------------------------------------------------------------------------------------
// Bad inputs

fn err_of(r: medkern::Result<BertModel>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let t = &TINY[1];
    let mut w = t.weights();
    let name = "bert.encoder.layer.1.attention.self.key.bias";
    assert!(w.remove(name).is_some());
    let e = err_of(BertModel::from_safetensors(
        t.config(),
        &safetensors_bytes(&w),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(e.contains(name) && e.contains("missing"), "{e}");
    // A model with fewer layers than the config says fails on the first absent layer.
    let mut cfg = t.config();
    cfg.num_hidden_layers = 3;
    let e = err_of(BertModel::from_safetensors(
        cfg,
        &safetensors_bytes(&t.weights()),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(e.contains("bert.encoder.layer.2."), "{e}");
}

#[test]
fn wrong_shape_is_an_error_naming_tensor_and_shapes() {
    let t = &TINY[2];
    let mut w = t.weights();
    let name = "encoder.layer.0.intermediate.dense.weight";
    let (shape, _) = w.get_mut(name).expect("tensor");
    *shape = vec![t.hidden, t.inter]; // transposed: [64, 128] instead of [128, 64]
    let e = err_of(BertModel::from_safetensors(
        t.config(),
        &safetensors_bytes(&w),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(
        e.contains(name) && e.contains("[64, 128]") && e.contains("[128, 64]"),
        "{e}"
    );
    // A config that disagrees with the weights (vocabulary size) is caught the same way.
    let mut cfg = t.config();
    cfg.vocab_size = VOCAB + 1;
    let e = err_of(BertModel::from_safetensors(
        cfg,
        &safetensors_bytes(&t.weights()),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(
        e.contains("embeddings.word_embeddings.weight")
            && e.contains(&format!("[{}, 64]", VOCAB + 1)),
        "{e}"
    );
}

#[test]
fn corrupt_files_are_errors() {
    let t = &TINY[0];
    let good = safetensors_bytes(&t.weights());
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", good[..good.len() - 100].to_vec()),
        ("header only", good[..good.len() / 100].to_vec()),
        ("text", b"this is not a safetensors file".to_vec()),
    ];
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(("header length past the end", huge));
    let mut bad_json = good.clone();
    bad_json[8..16].copy_from_slice(b"\xff\xfe{{{{{{");
    cases.push(("header not JSON", bad_json));
    let mut rng = SeedRng::new(9);
    cases.push((
        "random bytes",
        (0..4096).map(|_| rng.below(256) as u8).collect(),
    ));
    for (what, bytes) in cases {
        let e = err_of(BertModel::from_safetensors(
            t.config(),
            &bytes,
            &Device::Cpu,
            DType::F32,
        ));
        assert!(e.contains("weights"), "{what}: {e}");
    }
    // An unsupported weight dtype is named.
    let mut w = t.weights();
    let ln = w.remove("embeddings.LayerNorm.bias").expect("tensor");
    let raw: Vec<u8> =
        ln.1.iter()
            .flat_map(|v| (*v as i32).to_le_bytes())
            .collect();
    let mut views: Vec<(String, TensorView)> = Vec::new();
    let keep: Vec<(String, Vec<usize>, Vec<u8>)> = w
        .iter()
        .map(|(n, (s, v))| (n.clone(), s.clone(), bytemuck::cast_slice(v).to_vec()))
        .collect();
    for (n, s, b) in &keep {
        views.push((
            n.clone(),
            TensorView::new(safetensors::Dtype::F32, s.clone(), b).expect("view"),
        ));
    }
    views.push((
        "embeddings.LayerNorm.bias".into(),
        TensorView::new(safetensors::Dtype::I32, ln.0.clone(), &raw).expect("view"),
    ));
    let bytes = safetensors::serialize(views, None).expect("serialize");
    let e = err_of(BertModel::from_safetensors(
        t.config(),
        &bytes,
        &Device::Cpu,
        DType::F32,
    ));
    assert!(
        e.contains("embeddings.LayerNorm.bias") && e.contains("I32"),
        "{e}"
    );
    // A folder without the files is an I/O error naming the path.
    let dir = temp_dir("empty");
    let e = err_of(BertModel::load(&dir, &Device::Cpu, DType::F32));
    assert!(e.contains("config.json"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_configs_are_errors() {
    let cfg = |hidden: usize, heads: usize| {
        serde_json::json!({
            "vocab_size": 10, "hidden_size": hidden, "num_hidden_layers": 1,
            "num_attention_heads": heads, "intermediate_size": 8,
        })
        .to_string()
    };
    for (h, n) in [(100, 3), (64, 0), (96, 64)] {
        let e = BertConfig::from_json(&cfg(h, n))
            .expect_err("not divisible")
            .to_string();
        assert!(
            e.contains(&h.to_string()) && e.contains(&n.to_string()),
            "{h}/{n}: {e}"
        );
    }
    assert!(BertConfig::from_json(&cfg(96, 3)).is_ok());
    let e = BertConfig::from_json("{\"hidden_size\": 64}")
        .expect_err("missing fields")
        .to_string();
    assert!(e.contains("config"), "{e}");
    assert!(BertConfig::from_json("not json").is_err());
    // An activation medkern has no kernel for.
    let t = &TINY[0];
    let mut c = t.config();
    c.hidden_act = "mish".into();
    let e = err_of(BertModel::from_safetensors(
        c,
        &safetensors_bytes(&t.weights()),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(e.contains("mish"), "{e}");
    // head_dim 160 (one head of 160) is past the attention kernel's largest head dim: an Err
    // naming head_dim, never a panic.
    let t1 = &HEAD_DIM_160;
    let r = BertModel::from_safetensors(
        t1.config(),
        &safetensors_bytes(&t1.weights()),
        &Device::Cpu,
        DType::F32,
    )
    .and_then(|m| m.forward(&t1.batch().0, None).map(|_| ()));
    let e = r.expect_err("head_dim 160").to_string();
    assert!(e.contains("head_dim") && e.contains("160"), "{e}");
}

/// One head of 160: past the attention kernel's largest head dim.
const HEAD_DIM_160: Tiny = Tiny {
    name: "h160-1head",
    hidden: 160,
    heads: 1,
    layers: 1,
    inter: 128,
    act: "gelu",
    prefix: "",
    eps: 1e-12,
    seed: 4,
};

/// Issue 15: the checks of `BertModel::from_safetensors` that refuse a checkpoint's config
/// (an activation medkern has no kernel for, a head dim past the attention kernel's) returned
/// `Error::Invalid`, the caller's-argument error, so the C ABI said MK_ERR_INVALID_ARGUMENT
/// for a model folder it could not use. They are `Error::Corrupt` now, as the CNN loaders' and
/// `BertModel::load`'s config.json parse errors.
#[test]
fn config_checks_of_from_safetensors_are_corrupt() {
    let t = &TINY[0];
    let mut c = t.config();
    c.hidden_act = "mish".into();
    let e = BertModel::from_safetensors(
        c,
        &safetensors_bytes(&t.weights()),
        &Device::Cpu,
        DType::F32,
    )
    .err()
    .expect("mish refused");
    assert!(
        matches!(&e, medkern::Error::Corrupt { arg: "config", .. })
            && e.to_string().contains("mish"),
        "{e:?}"
    );
    let t1 = &HEAD_DIM_160;
    let e = BertModel::from_safetensors(
        t1.config(),
        &safetensors_bytes(&t1.weights()),
        &Device::Cpu,
        DType::F32,
    )
    .err()
    .expect("head_dim 160 refused");
    assert!(
        matches!(&e, medkern::Error::Corrupt { arg: "config", .. })
            && e.to_string().contains("head_dim 160"),
        "{e:?}"
    );
    // The same from a folder (config.json + model.safetensors).
    let dir = temp_dir("mish-folder");
    let json = t.config_json().replace("\"gelu\"", "\"mish\"");
    assert!(json.contains("mish"), "{json}");
    std::fs::write(dir.join("config.json"), json).expect("config");
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors_bytes(&t.weights()),
    )
    .expect("weights");
    let e = BertModel::load(&dir, &Device::Cpu, DType::F32)
        .err()
        .expect("mish folder refused");
    assert!(matches!(&e, medkern::Error::Corrupt { .. }), "{e:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 15: the number of sequences in one call was not bounded: 4097 sequences (one more
/// than the default limit) are refused before anything is computed, naming the limit and the
/// count given.
#[test]
fn batch_size_is_bounded() {
    let t = &TINY[0];
    let model = BertModel::from_safetensors(
        t.config(),
        &safetensors_bytes(&t.weights()),
        &Device::Cpu,
        DType::F32,
    )
    .expect("model");
    let over = vec![vec![1u32, 2]; 4097];
    for (what, r) in [
        ("embed", model.embed(&over, Pooling::Mean).map(|_| ())),
        ("forward", model.forward(&over, None).map(|_| ())),
    ] {
        let e = r.expect_err(what);
        let msg = e.to_string();
        assert!(
            matches!(e, medkern::Error::Invalid { .. })
                && msg.contains("4097")
                && msg.contains("4096")
                && msg.contains("max_batch"),
            "{what}: {msg}"
        );
    }
    // A limit set by the caller, for the model and the tokenizer's texts.
    let mut model = model.with_max_batch(2);
    assert_eq!(model.max_batch(), 2);
    let three = vec![vec![1u32, 2]; 3];
    let e = model
        .embed(&three, Pooling::Mean)
        .expect_err("3 over 2")
        .to_string();
    assert!(
        e.contains("3 in one batch") && e.contains("at most 2"),
        "{e}"
    );
    model.set_max_batch(3);
    model.embed(&three, Pooling::Mean).expect("3 within 3");
    // max_len: the model's positions (MAX_POS) at most.
    let c = model.config.clone();
    assert_eq!(c.max_len(None).expect("default"), MAX_POS);
    assert_eq!(c.max_len(Some(MAX_POS)).expect("all"), MAX_POS);
    for bad in [0, 1, MAX_POS + 1, usize::MAX] {
        let e = c.max_len(Some(bad)).expect_err("refused").to_string();
        assert!(
            e.contains("max_len")
                && e.contains(&bad.to_string())
                && e.contains("max_position_embeddings"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn bad_token_inputs_are_errors() {
    let t = &TINY[0];
    let model = BertModel::from_safetensors(
        t.config(),
        &safetensors_bytes(&t.weights()),
        &Device::Cpu,
        DType::F32,
    )
    .expect("model");
    // One token more than max_position_embeddings.
    let long = vec![vec![1u32; MAX_POS + 1]];
    let e = model
        .forward(&long, None)
        .expect_err("too long")
        .to_string();
    assert!(
        e.contains("max_position_embeddings") && e.contains(&(MAX_POS + 1).to_string()),
        "{e}"
    );
    assert!(model.embed(&long, Pooling::Mean).is_err());
    // Exactly max_position_embeddings is fine.
    assert!(model.forward(&[vec![1u32; MAX_POS]], None).is_ok());
    // A token id outside the vocabulary, a type id outside the type table.
    let e = model
        .forward(&[vec![1, VOCAB as u32]], None)
        .expect_err("id")
        .to_string();
    assert!(e.contains(&VOCAB.to_string()), "{e}");
    assert!(
        model
            .forward(&[vec![1, 2]], Some(&[vec![0, TYPES as u32]]))
            .is_err()
    );
    // Type ids that do not match the ids one to one.
    assert!(model.forward(&[vec![1, 2]], Some(&[vec![0]])).is_err());
    assert!(
        model
            .forward(&[vec![1, 2]], Some(&[vec![0, 0], vec![0]]))
            .is_err()
    );
}

// ---------------------------------------------------------------------------------------------
// GPU (f16, bf16) against the CPU f32 forward

/// Per-token relative bound of an f16/bf16 forward against the f32 one. Every op rounds its
/// output to the dtype (unit roundoff u) and the weights are rounded once; an encoder layer
/// stores 7 activations (QKV, attention context, attention output, LayerNorm, FFN
/// intermediate, FFN output, LayerNorm), each adding a relative error of about u, independent
/// from one another, and LayerNorm keeps the residual stream at unit scale, so the errors add
/// in quadrature over the 1 + 7·layers roundings rather than compound. The bound is 4× that
/// estimate (attention's probabilities are rounded too on the GPU, and GELU/softmax can
/// amplify locally): `4·u·√(1 + 7·layers)`; f16 through MiniLM's 6 layers: 1.3e-2, bf16: 0.10.
/// The elementwise check adds `4·rms(token)` of slack to that (the max of `h` errors). The CPU
/// backend, which rounds every op output the same way (MEDKERN_TEST_BACKEND=cpu), stays 4-6×
/// below: MiniLM 2.3e-3 (f16) and 1.7e-2 (bf16), the tiny models 1.5e-3..1.8e-3 and 1.2e-2..1.5e-2.
fn low_precision_rel(dt: DType, layers: usize) -> f64 {
    4.0 * dt.unit_roundoff() * ((1 + 7 * layers) as f64).sqrt()
}

/// Embedding cosine bounds: `1 − cos ≈ ε²/2` for a relative error ε of the pooled vector
/// (averaging tokens only shrinks ε). At the per-token bounds above that is cos ≥ 0.9999 (f16)
/// and 0.995 (bf16); the CPU backend's emulation of the roundings (MEDKERN_TEST_BACKEND=cpu)
/// gives 0.999998 and 0.99988 on MiniLM. Bounds: 0.999 (f16), 0.995 (bf16).
fn min_cosine(dt: DType) -> f64 {
    if dt == DType::F16 { 0.999 } else { 0.995 }
}

#[test]
fn gpu_tiny_berts_match_cpu_f32() {
    let Some(dev) = test_device("gpu_tiny_berts_match_cpu_f32") else {
        return;
    };
    for t in &TINY {
        let bytes = safetensors_bytes(&t.weights());
        let (ids, types) = t.batch();
        let cpu = BertModel::from_safetensors(t.config(), &bytes, &Device::Cpu, DType::F32)
            .expect("cpu model");
        let (x, _) = cpu.forward(&ids, Some(&types)).expect("cpu forward");
        let want = x.to_host().expect("to_host").to_f64();
        for dt in [DType::F16, DType::BF16] {
            let m = BertModel::from_safetensors(t.config(), &bytes, &dev, dt).expect("model");
            let (y, cu) = m.forward(&ids, Some(&types)).expect("forward");
            assert_eq!(cu[4], 11 + MAX_POS);
            let got = y.to_host().expect("to_host").to_f64();
            let what = format!("{} {dt}", t.name);
            let worst = check_tokens(
                &what,
                &got,
                &want,
                t.hidden,
                low_precision_rel(dt, t.layers),
            );
            println!(
                "{what} on {}: worst per-token relative error {worst:.2e} (bound {:.2e})",
                dev.describe(),
                low_precision_rel(dt, t.layers)
            );
        }
    }
}

#[test]
fn gpu_minilm_matches_cpu_f32() {
    let Some(dev) = test_device("gpu_minilm_matches_cpu_f32") else {
        return;
    };
    let Some(dir) = minilm_or_skip("gpu_minilm_matches_cpu_f32") else {
        return;
    };
    let ids = BertTokenizer::load(&dir, 256)
        .and_then(|t| t.encode(&SENTENCES))
        .expect("tokenize");
    let cpu = BertModel::load(&dir, &Device::Cpu, DType::F32).expect("load");
    let (x, _) = cpu.forward(&ids, None).expect("cpu forward");
    let want = x.to_host().expect("to_host").to_f64();
    let want_emb = cpu.embed(&ids, Pooling::Mean).expect("cpu embed");
    let layers = cpu.config.num_hidden_layers;
    for dt in [DType::F16, DType::BF16] {
        let m = BertModel::load(&dir, &dev, dt).expect("load");
        let (y, _) = m.forward(&ids, None).expect("forward");
        let got = y.to_host().expect("to_host").to_f64();
        let rel = low_precision_rel(dt, layers);
        let worst_tok = check_tokens(&format!("MiniLM {dt}"), &got, &want, 384, rel);
        let emb = m.embed(&ids, Pooling::Mean).expect("embed");
        let mut worst = 1.0f64;
        for (i, (e, w)) in emb.iter().zip(&want_emb).enumerate() {
            let e: Vec<f64> = e.iter().map(|&v| f64::from(v)).collect();
            let w: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
            let c = cosine(&e, &w);
            assert!(
                c >= min_cosine(dt),
                "MiniLM {dt} sentence {i}: cosine {c} to the f32 embedding < {}",
                min_cosine(dt)
            );
            worst = worst.min(c);
        }
        println!(
            "MiniLM {dt} on {}: worst per-token relative error {worst_tok:.2e} (bound {rel:.2e}), \
             worst embedding cosine {worst:.6} (bound {})",
            dev.describe(),
            min_cosine(dt)
        );
    }
}

#[test]
fn embedding_op_matches_reference() {
    let Some(dev) = test_device("embedding_op_matches_reference") else {
        return;
    };
    let mut rng = SeedRng::new(11);
    for dt in [DType::F32, DType::F16, DType::BF16] {
        // h: a 16-byte-vector multiple, a tail, a single column.
        for (h, tokens) in [(64, 37), (13, 5), (1, 1), (384, 0)] {
            let rows = [30, 8, 2];
            let tables: Vec<Vec<f64>> = rows
                .iter()
                .map(|&r| random_values(&mut rng, r * h, 1.0, dt))
                .collect();
            let ids: Vec<Vec<u32>> = rows
                .iter()
                .map(|&r| (0..tokens).map(|_| rng.below(r as u64) as u32).collect())
                .collect();
            let up: Vec<_> = tables
                .iter()
                .zip(rows)
                .map(|(v, r)| upload(&dev, &[r, h], v, dt))
                .collect();
            let y = embedding(
                Lookup {
                    table: &up[0],
                    ids: &ids[0],
                },
                &[
                    Lookup {
                        table: &up[1],
                        ids: &ids[1],
                    },
                    Lookup {
                        table: &up[2],
                        ids: &ids[2],
                    },
                ],
            )
            .expect("embedding");
            assert_eq!(y.shape(), &[tokens, h]);
            let got = y.to_host().expect("to_host").to_f64();
            let want = reference::embedding(
                &ids[0],
                &tables[0],
                &[(&tables[1], &ids[1]), (&tables[2], &ids[2])],
                h,
            );
            // Three terms (|v| < 40) summed in f32, rounded once to the dtype.
            check_close(
                &format!("embedding {dt} h={h}"),
                &got,
                &want,
                &|_| min_step(dt) + 1e-5,
                dt.unit_roundoff(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            // An id past its table is an error, not an out-of-bounds read.
            if tokens > 0 {
                let mut bad = ids[1].clone();
                bad[tokens - 1] = rows[1] as u32;
                let e = embedding(
                    Lookup {
                        table: &up[0],
                        ids: &ids[0],
                    },
                    &[Lookup {
                        table: &up[1],
                        ids: &bad,
                    }],
                )
                .expect_err("id out of range");
                assert!(e.to_string().contains("ids"), "{e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// DistilBERT and ALBERT (Hugging Face names) and the sequence-classification head

/// A tiny random DistilBERT or ALBERT with a classification head, in its family's HF names
/// (task-checkpoint prefix `distilbert.` / `albert.`, `classifier` and pooler at the top).
struct Family {
    name: &'static str,
    model_type: &'static str,
    hidden: usize,
    heads: usize,
    layers: usize,
    inter: usize,
    /// ALBERT's embedding width E (unused for DistilBERT).
    emb: usize,
    /// ALBERT layer groups (1 = one layer shared by every depth), and layers per group.
    groups: usize,
    inner: usize,
    /// The activation as the family's config names it.
    act: &'static str,
    labels: usize,
    seed: u64,
}

const FAMILIES: [Family; 5] = [
    Family {
        name: "distilbert-relu",
        model_type: "distilbert",
        hidden: 64,
        heads: 2,
        layers: 3,
        inter: 128,
        emb: 0,
        groups: 1,
        inner: 1,
        act: "relu",
        labels: 3,
        seed: 21,
    },
    Family {
        name: "distilbert-gelu_new",
        model_type: "distilbert",
        hidden: 96,
        heads: 3,
        layers: 2,
        inter: 192,
        emb: 0,
        groups: 1,
        inner: 1,
        act: "gelu_new",
        labels: 2,
        seed: 22,
    },
    Family {
        name: "albert-1group-shared",
        model_type: "albert",
        hidden: 64,
        heads: 2,
        layers: 3,
        inter: 128,
        emb: 32,
        groups: 1,
        inner: 1,
        act: "gelu_new",
        labels: 2,
        seed: 23,
    },
    Family {
        name: "albert-1group-2inner",
        model_type: "albert",
        hidden: 64,
        heads: 2,
        layers: 2,
        inter: 128,
        emb: 32,
        groups: 1,
        inner: 2,
        act: "gelu_new",
        labels: 2,
        seed: 25,
    },
    Family {
        name: "albert-2groups",
        model_type: "albert",
        hidden: 96,
        heads: 3,
        layers: 4,
        inter: 128,
        emb: 48,
        groups: 2,
        inner: 1,
        act: "gelu",
        labels: 4,
        seed: 24,
    },
];

impl Family {
    fn distil(&self) -> bool {
        self.model_type == "distilbert"
    }
    fn config_json(&self) -> serde_json::Value {
        if self.distil() {
            serde_json::json!({
                "model_type": "distilbert",
                "vocab_size": VOCAB, "dim": self.hidden, "n_layers": self.layers,
                "n_heads": self.heads, "hidden_dim": self.inter, "activation": self.act,
                "max_position_embeddings": MAX_POS, "initializer_range": 0.02,
                "pad_token_id": 0, "sinusoidal_pos_embds": false,
                "id2label": (0..self.labels).map(|i| (i.to_string(), format!("class{i}")))
                    .collect::<BTreeMap<_, _>>(),
            })
        } else {
            serde_json::json!({
                "model_type": "albert",
                "vocab_size": VOCAB, "embedding_size": self.emb, "hidden_size": self.hidden,
                "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
                "intermediate_size": self.inter, "hidden_act": self.act,
                "num_hidden_groups": self.groups, "inner_group_num": self.inner,
                "max_position_embeddings": MAX_POS, "type_vocab_size": TYPES,
                "layer_norm_eps": 1e-12,
            })
        }
    }
    fn config(&self) -> BertConfig {
        BertConfig::from_value(&self.config_json()).expect("family config")
    }

    /// HF-named random weights, scaled like [`Tiny::weights`].
    fn weights(&self) -> Weights {
        let prefix = if self.distil() {
            "distilbert."
        } else {
            "albert."
        };
        let mut g = Gen {
            w: Weights::new(),
            rng: SeedRng::new(self.seed),
            prefix,
        };
        let (h, i) = (self.hidden, self.inter);
        let e = if self.distil() { h } else { self.emb };
        let gain = 1.0 / (h as f64).sqrt();
        g.put("embeddings.word_embeddings.weight", &[VOCAB, e], 0.0, 1.0);
        g.put(
            "embeddings.position_embeddings.weight",
            &[MAX_POS, e],
            0.0,
            0.5,
        );
        if !self.distil() {
            g.put(
                "embeddings.token_type_embeddings.weight",
                &[TYPES, e],
                0.0,
                0.5,
            );
            g.put(
                "encoder.embedding_hidden_mapping_in.weight",
                &[h, e],
                0.0,
                1.0 / (e as f64).sqrt(),
            );
            g.put("encoder.embedding_hidden_mapping_in.bias", &[h], 0.0, 0.1);
        }
        g.ln("embeddings.LayerNorm", e);
        let stored = if self.distil() {
            self.layers
        } else {
            self.groups * self.inner
        };
        for l in 0..stored {
            let names: [String; 8] = if self.distil() {
                let p = format!("transformer.layer.{l}");
                [
                    format!("{p}.attention.q_lin"),
                    format!("{p}.attention.k_lin"),
                    format!("{p}.attention.v_lin"),
                    format!("{p}.attention.out_lin"),
                    format!("{p}.sa_layer_norm"),
                    format!("{p}.ffn.lin1"),
                    format!("{p}.ffn.lin2"),
                    format!("{p}.output_layer_norm"),
                ]
            } else {
                let (g, i) = (l / self.inner, l % self.inner);
                let p = format!("encoder.albert_layer_groups.{g}.albert_layers.{i}");
                [
                    format!("{p}.attention.query"),
                    format!("{p}.attention.key"),
                    format!("{p}.attention.value"),
                    format!("{p}.attention.dense"),
                    format!("{p}.attention.LayerNorm"),
                    format!("{p}.ffn"),
                    format!("{p}.ffn_output"),
                    format!("{p}.full_layer_layer_norm"),
                ]
            };
            for (n, qk) in [(&names[0], 1.5), (&names[1], 1.5), (&names[2], 1.0)] {
                g.put(&format!("{n}.weight"), &[h, h], 0.0, qk * gain);
                g.put(&format!("{n}.bias"), &[h], 0.0, 0.1);
            }
            g.put(&format!("{}.weight", names[3]), &[h, h], 0.0, gain);
            g.put(&format!("{}.bias", names[3]), &[h], 0.0, 0.1);
            g.ln(&names[4], h);
            g.put(&format!("{}.weight", names[5]), &[i, h], 0.0, gain);
            g.put(&format!("{}.bias", names[5]), &[i], 0.0, 0.1);
            g.put(
                &format!("{}.weight", names[6]),
                &[h, i],
                0.0,
                1.0 / (i as f64).sqrt(),
            );
            g.put(&format!("{}.bias", names[6]), &[h], 0.0, 0.1);
            g.ln(&names[7], h);
        }
        // Heads live outside the encoder prefix except ALBERT's pooler.
        let pooler = if self.distil() {
            "pre_classifier"
        } else {
            "pooler"
        };
        g.prefix = if self.distil() { "" } else { "albert." };
        g.put(&format!("{pooler}.weight"), &[h, h], 0.0, gain);
        g.put(&format!("{pooler}.bias"), &[h], 0.0, 0.1);
        g.prefix = "";
        g.put("classifier.weight", &[self.labels, h], 0.0, gain);
        g.put("classifier.bias", &[self.labels], 0.0, 0.1);
        g.w
    }

    /// candle's last hidden state of each sequence alone, packed `[Σ len, hidden]`:
    /// DistilBERT by candle-transformers' `DistilBertModel`; ALBERT by candle-transformers'
    /// `BertEncoder` over the shared layer weights repeated per depth, after the factorised
    /// embedding done with candle ops here.
    fn candle_forward(&self, w: &Weights, ids: &[Vec<u32>], types: &[Vec<u32>]) -> Vec<f64> {
        let dev = CDevice::Cpu;
        let t = |name: &str| {
            let (s, v) = w.get(name).unwrap_or_else(|| panic!("{name}"));
            CTensor::from_vec(v.clone(), s.as_slice(), &dev).expect("tensor")
        };
        let mut out = Vec::new();
        if self.distil() {
            let cfg: candle_transformers::models::distilbert::Config =
                serde_json::from_value(serde_json::json!({
                    "vocab_size": VOCAB, "dim": self.hidden, "n_layers": self.layers,
                    "n_heads": self.heads, "hidden_dim": self.inter,
                    // candle's distilbert "gelu" is the tanh form (HF's gelu_new).
                    "activation": if self.act == "relu" { "relu" } else { "gelu" },
                    "max_position_embeddings": MAX_POS, "initializer_range": 0.02,
                    "pad_token_id": 0, "model_type": "distilbert",
                }))
                .expect("candle distilbert config");
            let vb = VarBuilder::from_buffered_safetensors(safetensors_bytes(w), CDType::F32, &dev)
                .expect("vb");
            let m = candle_transformers::models::distilbert::DistilBertModel::load(vb, &cfg)
                .expect("candle DistilBertModel");
            for s in ids {
                let x = CTensor::new(s.as_slice(), &dev)
                    .and_then(|x| x.unsqueeze(0))
                    .expect("ids");
                let mask = CTensor::zeros((1, s.len()), CDType::U8, &dev).expect("mask");
                let y = m
                    .forward(&x, &mask)
                    .and_then(|y| y.flatten_all())
                    .and_then(|y| y.to_vec1::<f32>())
                    .expect("candle forward");
                out.extend(y.into_iter().map(f64::from));
            }
            return out;
        }
        // ALBERT: depth l runs group l / (L / groups), written under BERT names.
        let mut enc = Weights::new();
        let per = self.layers / self.groups;
        for l in 0..self.layers * self.inner {
            let (g, i) = ((l / self.inner) / per, l % self.inner);
            let p = format!("albert.encoder.albert_layer_groups.{g}.albert_layers.{i}");
            for (ours, theirs) in [
                ("attention.self.query", "attention.query"),
                ("attention.self.key", "attention.key"),
                ("attention.self.value", "attention.value"),
                ("attention.output.dense", "attention.dense"),
                ("attention.output.LayerNorm", "attention.LayerNorm"),
                ("intermediate.dense", "ffn"),
                ("output.dense", "ffn_output"),
                ("output.LayerNorm", "full_layer_layer_norm"),
            ] {
                for sfx in ["weight", "bias"] {
                    enc.insert(
                        format!("encoder.layer.{l}.{ours}.{sfx}"),
                        w[&format!("{p}.{theirs}.{sfx}")].clone(),
                    );
                }
            }
        }
        let cfg = cbert::Config {
            num_hidden_layers: self.layers * self.inner,
            hidden_size: self.hidden,
            num_attention_heads: self.heads,
            intermediate_size: self.inter,
            hidden_act: if self.act == "gelu" {
                cbert::HiddenAct::Gelu
            } else {
                cbert::HiddenAct::GeluApproximate
            },
            ..Tiny::candle_config(&TINY[0])
        };
        let vb = VarBuilder::from_buffered_safetensors(safetensors_bytes(&enc), CDType::F32, &dev)
            .expect("vb");
        let encoder = cbert::BertEncoder::load(vb.pp("encoder"), &cfg).expect("BertEncoder");
        let ln = candle_nn::LayerNorm::new(
            t("albert.embeddings.LayerNorm.weight"),
            t("albert.embeddings.LayerNorm.bias"),
            1e-12,
        );
        let proj = candle_nn::Linear::new(
            t("albert.encoder.embedding_hidden_mapping_in.weight"),
            Some(t("albert.encoder.embedding_hidden_mapping_in.bias")),
        );
        use candle_core::Module;
        for (s, ty) in ids.iter().zip(types) {
            let n = s.len();
            let pos: Vec<u32> = (0..n as u32).collect();
            let idx = |v: &[u32]| CTensor::new(v, &dev).expect("ids");
            let e = (t("albert.embeddings.word_embeddings.weight")
                .index_select(&idx(s), 0)
                .expect("word")
                + t("albert.embeddings.position_embeddings.weight")
                    .index_select(&idx(&pos), 0)
                    .expect("pos"))
            .and_then(|x| {
                x + t("albert.embeddings.token_type_embeddings.weight")
                    .index_select(&idx(ty), 0)
                    .expect("types")
            })
            .expect("sum");
            let x = ln
                .forward(&e)
                .and_then(|x| proj.forward(&x))
                .and_then(|x| x.unsqueeze(0))
                .expect("embedding");
            let mask = CTensor::zeros((1, 1, 1, n), CDType::F32, &dev).expect("mask");
            let y = encoder
                .forward(&x, &mask)
                .and_then(|y| y.flatten_all())
                .and_then(|y| y.to_vec1::<f32>())
                .expect("candle encoder");
            out.extend(y.into_iter().map(f64::from));
        }
        out
    }

    fn batch(&self) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
        let mut rng = SeedRng::new(self.seed + 100);
        let lens = [7, 1, MAX_POS, 4];
        let ids = lens
            .iter()
            .map(|&n| (0..n).map(|_| rng.below(VOCAB as u64) as u32).collect())
            .collect();
        // DistilBERT has no token types.
        let types = lens
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|_| {
                        if self.distil() {
                            0
                        } else {
                            rng.below(TYPES as u64) as u32
                        }
                    })
                    .collect()
            })
            .collect();
        (ids, types)
    }
}

/// The classification head computed here in f64 from the reference's first-token rows:
/// `classifier(act(pooler(h)))`, tanh for BERT / ALBERT, ReLU for DistilBERT.
fn head_reference(
    w: &Weights,
    pooler: &str,
    relu: bool,
    hidden_rows: &[f64],
    cu: &[usize],
    h: usize,
) -> Vec<Vec<f64>> {
    let lin = |name: &str, x: &[f64]| -> Vec<f64> {
        let (s, wv) = &w[&format!("{name}.weight")];
        let (_, b) = &w[&format!("{name}.bias")];
        (0..s[0])
            .map(|r| {
                f64::from(b[r])
                    + (0..s[1])
                        .map(|c| f64::from(wv[r * s[1] + c]) * x[c])
                        .sum::<f64>()
            })
            .collect()
    };
    cu[..cu.len() - 1]
        .iter()
        .map(|&r| {
            let p: Vec<f64> = lin(pooler, &hidden_rows[r * h..(r + 1) * h])
                .into_iter()
                .map(|v| if relu { v.max(0.0) } else { v.tanh() })
                .collect();
            lin("classifier", &p)
        })
        .collect()
}

#[test]
fn distilbert_and_albert_match_candle() {
    for f in &FAMILIES {
        let w = f.weights();
        let bytes = safetensors_bytes(&w);
        let dir = temp_dir(f.name);
        std::fs::write(dir.join("config.json"), f.config_json().to_string()).expect("config");
        std::fs::write(dir.join("model.safetensors"), &bytes).expect("weights");
        let model = BertModel::load(&dir, &Device::Cpu, DType::F32).expect("load");
        let _ = std::fs::remove_dir_all(&dir);
        let (ids, types) = f.batch();
        let (x, cu) = model.forward(&ids, Some(&types)).expect("forward");
        let got = x.to_host().expect("to_host").to_f64();
        let want = f.candle_forward(&w, &ids, &types);
        let worst = check_tokens(f.name, &got, &want, f.hidden, F32_REL);
        println!(
            "{}: worst per-token relative error vs candle {worst:.2e}",
            f.name
        );

        // The head on the reference's rows, computed here.
        assert!(model.has_classifier(), "{}", f.name);
        let pooler = if f.distil() {
            "pre_classifier"
        } else {
            "albert.pooler"
        };
        let want_logits = head_reference(&w, pooler, f.distil(), &want, &cu, f.hidden);
        // classify() runs without token types (zeros); compare with a zero-type reference.
        let zero_types: Vec<Vec<u32>> = ids.iter().map(|s| vec![0; s.len()]).collect();
        let want0 = f.candle_forward(&w, &ids, &zero_types);
        let want_logits0 = head_reference(&w, pooler, f.distil(), &want0, &cu, f.hidden);
        let logits = model.classify(&ids).expect("classify");
        assert_eq!(logits.len(), ids.len());
        for (b, (g, r)) in logits.iter().zip(&want_logits0).enumerate() {
            assert_eq!(g.len(), f.labels);
            let g: Vec<f64> = g.iter().map(|&v| f64::from(v)).collect();
            check_close(&format!("{} logits {b}", f.name), &g, r, &|_| 1e-4, 1e-4)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        if !f.distil() {
            // Token types reach ALBERT's embedding: the typed and untyped references differ.
            assert_ne!(want_logits, want_logits0, "{}", f.name);
        }
        let labels = model.labels();
        assert_eq!(labels.len(), f.labels);
        if f.distil() {
            assert_eq!(labels[1], "class1");
        } else {
            assert_eq!(labels[1], "LABEL_1");
        }
    }
}

#[test]
fn bert_classification_head_matches_reference() {
    // A BertForSequenceClassification checkpoint: bert.-prefixed encoder, bert.pooler.dense,
    // classifier.
    let t = &TINY[1];
    let mut w = t.weights();
    let mut g = Gen {
        w: Weights::new(),
        rng: SeedRng::new(77),
        prefix: "",
    };
    let h = t.hidden;
    g.put(
        "bert.pooler.dense.weight",
        &[h, h],
        0.0,
        1.0 / (h as f64).sqrt(),
    );
    g.put("bert.pooler.dense.bias", &[h], 0.0, 0.1);
    g.put("classifier.weight", &[5, h], 0.0, 1.0 / (h as f64).sqrt());
    g.put("classifier.bias", &[5], 0.0, 0.1);
    w.extend(g.w);
    let bytes = safetensors_bytes(&w);
    let model =
        BertModel::from_safetensors(t.config(), &bytes, &Device::Cpu, DType::F32).expect("model");
    let (ids, _) = t.batch();
    let zero: Vec<Vec<u32>> = ids.iter().map(|s| vec![0; s.len()]).collect();
    let want = candle_forward(&candle_model(&t.candle_config(), bytes), &ids, &zero);
    let cu: Vec<usize> = std::iter::once(0)
        .chain(ids.iter().scan(0, |a, s| {
            *a += s.len();
            Some(*a)
        }))
        .collect();
    let want = head_reference(&w, "bert.pooler.dense", false, &want, &cu, h);
    let got = model.classify(&ids).expect("classify");
    for (b, (g, r)) in got.iter().zip(&want).enumerate() {
        let g: Vec<f64> = g.iter().map(|&v| f64::from(v)).collect();
        check_close(&format!("bert logits {b}"), &g, r, &|_| 1e-4, 1e-4)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // Without a head, classify is an Err naming the classifier; empty sequences are Errs.
    let plain = BertModel::from_safetensors(
        t.config(),
        &safetensors_bytes(&t.weights()),
        &Device::Cpu,
        DType::F32,
    )
    .expect("model");
    let e = plain.classify(&ids).expect_err("no head").to_string();
    assert!(e.contains("classifier"), "{e}");
    let e = model.classify(&[vec![]]).expect_err("empty").to_string();
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn family_bad_inputs_are_errors() {
    // A missing ALBERT tensor is named in ALBERT's own names.
    let f = &FAMILIES[2];
    let mut w = f.weights();
    let name = "albert.encoder.albert_layer_groups.0.albert_layers.0.ffn_output.bias";
    assert!(w.remove(name).is_some());
    let e = err_of(BertModel::from_safetensors(
        f.config(),
        &safetensors_bytes(&w),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(e.contains(name) && e.contains("missing"), "{e}");
    let f = &FAMILIES[0];
    let mut w = f.weights();
    let name = "distilbert.transformer.layer.2.attention.q_lin.weight";
    assert!(w.remove(name).is_some());
    let e = err_of(BertModel::from_safetensors(
        f.config(),
        &safetensors_bytes(&w),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(e.contains(name) && e.contains("missing"), "{e}");
    // Heads sit outside the encoder prefix in task checkpoints, and are named so.
    let mut w = f.weights();
    assert!(w.remove("pre_classifier.bias").is_some());
    let e = err_of(BertModel::from_safetensors(
        f.config(),
        &safetensors_bytes(&w),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(e.contains("missing tensor pre_classifier.bias"), "{e}");
    // A layer of a group the config does not have is not loaded in another's place.
    let f2 = &FAMILIES[2];
    let mut v = f2.config_json();
    v["num_hidden_groups"] = serde_json::json!(3);
    v["num_hidden_layers"] = serde_json::json!(3);
    let e = err_of(BertModel::from_safetensors(
        BertConfig::from_value(&v).expect("config"),
        &safetensors_bytes(&f2.weights()),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(
        e.contains("albert.encoder.albert_layer_groups.1.albert_layers.0"),
        "{e}"
    );
    let mut v = f2.config_json();
    v["num_hidden_layers"] = serde_json::json!(1_000_000_000u64);
    let e = BertConfig::from_value(&v).expect_err("huge").to_string();
    assert!(e.contains("num_hidden_layers"), "{e}");
    // ALBERT groups must divide the depth; groups are ALBERT-only; unknown families fail.
    let mut v = FAMILIES[4].config_json();
    v["num_hidden_groups"] = serde_json::json!(3);
    let e = BertConfig::from_value(&v).expect_err("groups").to_string();
    assert!(e.contains("num_hidden_groups"), "{e}");
    let mut v = serde_json::from_str::<serde_json::Value>(&TINY[0].config_json()).expect("json");
    v["num_hidden_groups"] = serde_json::json!(2);
    let e = BertConfig::from_value(&v)
        .expect_err("bert groups")
        .to_string();
    assert!(e.contains("ALBERT"), "{e}");
    v["model_type"] = serde_json::json!("roberta");
    let e = BertConfig::from_value(&v).expect_err("family").to_string();
    assert!(e.contains("roberta"), "{e}");
}

#[test]
fn gpu_families_match_cpu_f32() {
    let Some(dev) = test_device("gpu_families_match_cpu_f32") else {
        return;
    };
    for f in &FAMILIES {
        let bytes = safetensors_bytes(&f.weights());
        let (ids, types) = f.batch();
        let cpu = BertModel::from_safetensors(f.config(), &bytes, &Device::Cpu, DType::F32)
            .expect("cpu model");
        let (x, _) = cpu.forward(&ids, Some(&types)).expect("cpu forward");
        let want = x.to_host().expect("to_host").to_f64();
        let want_logits = cpu.classify(&ids).expect("cpu classify");
        for dt in [DType::F16, DType::BF16] {
            let m = BertModel::from_safetensors(f.config(), &bytes, &dev, dt).expect("model");
            let (y, _) = m.forward(&ids, Some(&types)).expect("forward");
            let got = y.to_host().expect("to_host").to_f64();
            let what = format!("{} {dt}", f.name);
            let rel = low_precision_rel(dt, f.layers);
            check_tokens(&what, &got, &want, f.hidden, rel);
            let logits = m.classify(&ids).expect("classify");
            for (g, r) in logits.iter().zip(&want_logits) {
                let g: Vec<f64> = g.iter().map(|&v| f64::from(v)).collect();
                let r: Vec<f64> = r.iter().map(|&v| f64::from(v)).collect();
                let scale = r.iter().map(|v| v.abs()).fold(1.0, f64::max);
                check_close(
                    &format!("{what} logits"),
                    &g,
                    &r,
                    &|_| 4.0 * rel * scale,
                    rel,
                )
                .unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}

/// Issue 15, defect 5: all-NaN word embeddings gave `null` embeddings with exit 0, and one NaN
/// in a query weight a finite, wrong embedding (a row of NaN scores is treated as masked).
/// Non-finite weights are now refused at load, naming the tensor, as the CNN loaders do.
#[test]
fn non_finite_weights_are_errors_at_load() {
    type Spoil = Box<dyn Fn(&mut Vec<f32>)>;
    let t = &TINY[1];
    let cases: [(&str, Spoil); 4] = [
        (
            "bert.embeddings.word_embeddings.weight",
            Box::new(|v| v.iter_mut().for_each(|x| *x = f32::NAN)),
        ),
        (
            "bert.encoder.layer.0.attention.self.query.weight",
            Box::new(|v| v[17] = f32::NAN),
        ),
        (
            "bert.encoder.layer.1.output.LayerNorm.bias",
            Box::new(|v| v[0] = f32::INFINITY),
        ),
        (
            "bert.encoder.layer.1.intermediate.dense.bias",
            Box::new(|v| v[5] = f32::NEG_INFINITY),
        ),
    ];
    for (name, spoil) in cases {
        let mut w = t.weights();
        spoil(&mut w.get_mut(name).expect("tensor").1);
        let e = err_of(BertModel::from_safetensors(
            t.config(),
            &safetensors_bytes(&w),
            &Device::Cpu,
            DType::F32,
        ));
        assert!(e.contains(name) && e.contains("non-finite"), "{name}: {e}");
    }
    // Large finite weights still load.
    let mut w = t.weights();
    w.get_mut("bert.encoder.layer.0.output.dense.bias")
        .expect("tensor")
        .1[0] = 1e30;
    BertModel::from_safetensors(t.config(), &safetensors_bytes(&w), &Device::Cpu, DType::F32)
        .expect("finite weights load");
}

/// Issue 15, defect 6: a config of fewer layers than the checkpoint ran part of the model
/// silently. Tensors the configuration does not use are now an error naming one, as
/// EfficientNet's loader does; pretraining heads, buffers and a sentence encoder's pooler
/// are still ignored.
#[test]
fn tensors_the_config_does_not_use_are_errors() {
    let t = &TINY[2]; // 3 layers
    let mut cfg = t.config();
    cfg.num_hidden_layers = 2;
    let e = err_of(BertModel::from_safetensors(
        cfg,
        &safetensors_bytes(&t.weights()),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(
        e.contains("unexpected tensor encoder.layer.2.") && e.contains("2 layers"),
        "{e}"
    );
    // A tensor of no known role.
    let mut w = t.weights();
    w.insert("encoder.adapter.weight".into(), (vec![2], vec![0.5, 0.5]));
    let e = err_of(BertModel::from_safetensors(
        t.config(),
        &safetensors_bytes(&w),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(
        e.contains("unexpected tensor encoder.adapter.weight"),
        "{e}"
    );
    // Ignored: a pretraining head, the position_ids buffer, and a pooler without a classifier.
    let h = t.hidden;
    let mut w = t.weights();
    w.insert(
        "cls.predictions.bias".into(),
        (vec![VOCAB], vec![0.0; VOCAB]),
    );
    w.insert(
        "embeddings.position_ids".into(),
        (vec![1, MAX_POS], (0..MAX_POS).map(|i| i as f32).collect()),
    );
    w.insert(
        "pooler.dense.weight".into(),
        (vec![h, h], vec![0.01; h * h]),
    );
    w.insert("pooler.dense.bias".into(), (vec![h], vec![0.0; h]));
    BertModel::from_safetensors(t.config(), &safetensors_bytes(&w), &Device::Cpu, DType::F32)
        .expect("heads, buffers and an unused pooler are ignored");
    // An ALBERT checkpoint of 2 layer groups under a config of 1: group 1 is unused.
    let f = &FAMILIES[4];
    assert_eq!(f.groups, 2);
    let mut v = f.config_json();
    v["num_hidden_groups"] = serde_json::json!(1);
    let e = err_of(BertModel::from_safetensors(
        BertConfig::from_value(&v).expect("config"),
        &safetensors_bytes(&f.weights()),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(
        e.contains("unexpected tensor albert.encoder.albert_layer_groups.1."),
        "{e}"
    );
}

/// The ids of `text` tokenised whole by the `tokenizers` crate, truncated as medkern
/// documents it (first max_len − 1, then the final [SEP]).
fn whole_then_truncated(tok: &tokenizers::Tokenizer, text: &str, max_len: usize) -> Vec<u32> {
    let mut ids = tok.encode(text, true).expect("encode").get_ids().to_vec();
    if ids.len() > max_len {
        let last = ids[ids.len() - 1];
        ids.truncate(max_len - 1);
        ids.push(last);
    }
    ids
}

/// Issue 15, defects 10 (max_len) and 11: `max_len` 0 or 1 was silently ignored (no
/// truncation), and an 8 MB text was tokenised whole before its truncation to 512 tokens
/// (seconds, hundreds of MB). max_len < 2 is now an error; a long text is tokenised by
/// growing prefixes cut at whitespace, with the same ids as tokenising it whole.
#[test]
fn long_texts_are_truncated_without_tokenising_them_whole() {
    let test = "long_texts_are_truncated_without_tokenising_them_whole";
    let Some(dir) = minilm_or_skip(test) else {
        return;
    };
    for bad in [0, 1] {
        let e = BertTokenizer::load(&dir, bad)
            .err()
            .expect("max_len < 2")
            .to_string();
        assert!(e.contains("max_len") && e.contains("at least 2"), "{e}");
    }
    // As BertTokenizer::load configures it: no padding, no truncation of its own.
    let mut whole =
        tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizer");
    whole.with_padding(None);
    whole.with_truncation(None).expect("no truncation");
    // Texts around the prefix sizes: sentences, runs of spaces and newlines, accents, a
    // 3000-character word without whitespace, text after a long stretch of whitespace.
    let mut rng = SeedRng::new(15);
    let mut texts: Vec<String> = Vec::new();
    for n in [1usize, 40, 300, 1200, 5000] {
        let mut t = String::new();
        for _ in 0..n {
            t.push_str(SENTENCES[rng.below(SENTENCES.len() as u64) as usize]);
            t.push_str(["  ", "\n", " ", "\t \n"][rng.below(4) as usize]);
        }
        texts.push(t);
    }
    texts.push(format!("{} tail words here", "x".repeat(3000)));
    texts.push(format!("{}{}", " ".repeat(70_000), SENTENCES[0].repeat(50)));
    texts.push(format!("{} {}", "é".repeat(20_000), SENTENCES[1]));
    // Word breaks without whitespace (issue 15): punctuation, CJK characters (each a word),
    // combining accents that a cut may separate from their letter.
    texts.push("x,".repeat(30_000));
    texts.push("患者胸痛发热三天".repeat(6_000));
    texts.push("e\u{301}t\u{301}e\u{301};".repeat(12_000));
    for max_len in [2usize, 3, 16, 128, 512] {
        let tok = BertTokenizer::load(&dir, max_len).expect("tokenizer");
        for (i, t) in texts.iter().enumerate() {
            let got = tok.encode(&[t.as_str()]).expect("encode").remove(0);
            assert_eq!(
                got,
                whole_then_truncated(&whole, t, max_len),
                "text {i} ({} bytes), max_len {max_len}",
                t.len()
            );
        }
    }
    // An 8 MB text: only a prefix is tokenised.
    let big = SENTENCES[0].repeat(8 * 1024 * 1024 / SENTENCES[0].len());
    let tok = BertTokenizer::load(&dir, 512).expect("tokenizer");
    let t0 = std::time::Instant::now();
    let ids = tok.encode(&[big.as_str()]).expect("encode").remove(0);
    let took = t0.elapsed();
    assert_eq!(ids.len(), 512);
    assert_eq!(ids, whole_then_truncated(&whole, &big[..100_000], 512));
    assert!(
        took < std::time::Duration::from_secs(2),
        "an 8 MB text took {took:?} to tokenise to 512 tokens"
    );
}

/// Issue 15: a text without whitespace (8 MB of "x") was tokenised whole, since the prefixes
/// were cut at whitespace only. Prefixes are now cut at any char boundary and only the words
/// before the last count, so texts broken by punctuation or CJK characters stop early; a text
/// whose prefix of `max_text_bytes` (default 1 MiB) has no word break is an error naming that
/// limit, returned at once; one within the limit is still tokenised whole.
#[test]
fn text_bytes_are_bounded_before_tokenising() {
    let test = "text_bytes_are_bounded_before_tokenising";
    let Some(dir) = minilm_or_skip(test) else {
        return;
    };
    let mut whole =
        tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizer");
    whole.with_padding(None);
    whole.with_truncation(None).expect("no truncation");
    let tok = BertTokenizer::load(&dir, 512).expect("tokenizer");
    assert_eq!(tok.max_text_bytes(), DEFAULT_MAX_TEXT_BYTES);
    let timed = |tok: &BertTokenizer, t: &str| {
        let t0 = std::time::Instant::now();
        let r = tok.encode(&[t]).map(|mut v| v.remove(0));
        let took = t0.elapsed();
        assert!(
            took < std::time::Duration::from_secs(2),
            "{} bytes took {took:?}",
            t.len()
        );
        r
    };
    let mb8 = 8 * 1024 * 1024;
    let e = timed(&tok, &"x".repeat(mb8)).expect_err("8 MB without a break");
    let msg = e.to_string();
    assert!(
        msg.contains("max_text_bytes") && msg.contains(&DEFAULT_MAX_TEXT_BYTES.to_string()),
        "{msg}"
    );
    assert!(msg.contains(&mb8.to_string()), "{msg}");
    // Without whitespace but with word breaks: only a prefix is tokenised, same ids.
    for unit in ["x,", "患者胸痛", "a.b-"] {
        let big = unit.repeat(mb8 / unit.len());
        let ids = timed(&tok, &big).expect("encode");
        assert_eq!(ids.len(), 512);
        assert_eq!(
            ids,
            whole_then_truncated(&whole, &big[..60_000], 512),
            "{unit}"
        );
    }
    // Within the limit, a text without a break is tokenised whole: [CLS] [UNK] [SEP].
    let t = "x".repeat(DEFAULT_MAX_TEXT_BYTES);
    assert_eq!(
        timed(&tok, &t).expect("1 MiB"),
        whole_then_truncated(&whole, &t, 512)
    );
    // A lower limit, settable on the tokenizer: the same text is now an error, a long text
    // with words is not.
    let tok = tok.with_max_text_bytes(4096);
    let e = tok
        .encode(&[&"x".repeat(5000)])
        .expect_err("over 4096 bytes");
    assert!(e.to_string().contains("at most 4096 bytes"), "{e}");
    let long = SENTENCES[2].repeat(1000);
    assert_eq!(
        tok.encode(&[&long]).expect("long text").remove(0),
        whole_then_truncated(&whole, &long, 512)
    );
}

/// Issue 15: `BertTokenizer::encode` takes at most `max_batch` texts (default 4096): more is an
/// error naming the limit and the count, before any text is tokenised.
#[test]
fn tokenizer_bounds_its_batch() {
    let Some(dir) = minilm_or_skip("tokenizer_bounds_its_batch") else {
        return;
    };
    let tok = BertTokenizer::load(&dir, 512).expect("tokenizer");
    assert_eq!(tok.max_batch(), medkern::input::DEFAULT_MAX_BATCH);
    let many = vec!["a"; 4097];
    let e = tok.encode(&many).expect_err("4097 texts").to_string();
    assert!(
        e.contains("texts") && e.contains("4097") && e.contains("4096") && e.contains("max_batch"),
        "{e}"
    );
    let tok = tok.with_max_batch(2);
    assert!(tok.encode(&["a", "b", "c"]).is_err());
    assert_eq!(tok.encode(&["a", "b"]).expect("2 texts").len(), 2);
}
