//! The fuzz targets' bodies, one function per target, each taking the fuzzer's bytes; and the
//! seed corpus, generated from medkern's own writers so that it follows the formats as they
//! change. Shared by the libFuzzer binaries (`fuzz/fuzz_targets/*.rs`) and by the regression
//! replay (`tests/fuzz_regressions.rs`, which includes this file), so every kept finding and
//! every seed is replayed by `cargo test` without a fuzzer.
//!
//! A target may return early on any `Err`: refusing bad input is the contract. It panics only
//! when medkern broke a promise: a panic inside medkern, a C call answering `MK_ERR_INTERNAL` (a
//! caught panic), or an `Ok` that violates its contract (non-finite output, wrong length,
//! more tokens than asked). Memory bombs are caught by the capped allocator (`alloc.rs`).

#![allow(dead_code)]

use medkern::input::InputLimits;
use medkern::input::dicom::{self, DicomOptions};
use medkern::model::bert::{BertConfig, BertModel, BertTokenizer, Pooling};
use medkern::model::compress::Checkpoint;
use medkern::model::efficientnet::{self, EfficientNet, EfficientNetConfig};
use medkern::model::emr::EmrConfig;
use medkern::model::exam::{self, ExamConfig, ExamHead, ExamModel};
use medkern::model::resnet::{NamedTensors, ResNet, ResNetConfig, random_resnet};
use medkern::model::sepsis::{self, Autoencoder, SepsisNet};
use medkern::{DType, Device, HostTensor, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its binary and its folders under `fuzz/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("dicom", dicom),
    ("image", image),
    ("checkpoint", checkpoint),
    ("emr", emr),
    ("bert_config", bert_config),
    ("tokenizer", tokenizer),
    ("capi", capi),
];

/// Limits smaller than the defaults (same code paths, faster executions): a fuzzed image may
/// still be 4 Mpixel.
fn limits() -> InputLimits {
    InputLimits {
        max_pixels: 4 << 20,
        max_alloc_bytes: 64 << 20,
        ..InputLimits::default()
    }
}

fn all_finite(name: &str, v: &[f32]) {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        panic!("{name}: Ok with a non-finite value {} at {i}", v[i]);
    }
}

fn host_f32(name: &str, t: &Tensor) -> Vec<f32> {
    let h = t
        .to_host()
        .unwrap_or_else(|e| panic!("{name}: to_host: {e}"));
    h.to_f64().iter().map(|&x| x as f32).collect()
}

/// Preprocesses a decoded image to a small model input on the CPU: the output must be finite
/// and of the asked shape.
fn check_preprocess(name: &str, raw: &medkern::input::RawImage) {
    if let Ok(t) = raw.to_model_input(&Device::Cpu, (16, 16), DType::F32) {
        assert_eq!(t.shape(), &[1, 16, 16, 3], "{name}: preprocess shape");
        all_finite(name, &host_f32(name, &t));
    }
    if let Ok(c) = raw.clone().center_crop_square() {
        let (h, w) = c.size();
        assert_eq!(h, w, "{name}: center crop not square");
    }
}

/// DICOM Part 10 bytes: read, then preprocess.
pub fn dicom(data: &[u8]) {
    let opts = DicomOptions {
        limits: limits(),
        ..DicomOptions::default()
    };
    if let Ok(img) = dicom::from_bytes(data, Path::new("fuzz.dcm"), &opts) {
        assert_eq!(
            img.pixels.shape(),
            &[1, img.rows, img.cols, 1],
            "dicom: pixels vs rows/cols"
        );
        check_preprocess("dicom", &img.into_raw());
    }
}

/// PNG / JPEG bytes: decode under limits, then preprocess.
pub fn image(data: &[u8]) {
    if let Ok(raw) = medkern::input::image::from_bytes(data, Path::new("fuzz.img"), &limits()) {
        let (h, w) = raw.size();
        assert!(
            (h * w) as u64 <= limits().max_pixels,
            "image: over max_pixels"
        );
        check_preprocess("image", &raw);
    }
}

/// The model families [`checkpoint`] loads, by the input's first byte.
const FAMILIES: usize = 7;

/// Data a header-mode input may declare: enough for the ResNet-34 trunk of EXAM.
const MAX_DECLARED: u64 = 160 << 20;

/// A safetensors checkpoint of one model family. The first byte picks the family and the
/// mode: raw (the rest is the file) or header (the rest is a safetensors header; the data
/// it declares is generated, so the fuzzer explores names, shapes, dtypes and metadata
/// without having to carry megabytes of weights). The second byte picks the generated
/// values (small random floats, one NaN among them, or raw bytes).
pub fn checkpoint(data: &[u8]) {
    let [sel, fill, rest @ ..] = data else {
        return;
    };
    let family = usize::from(sel >> 1) % FAMILIES;
    let file = if sel & 1 == 1 {
        match with_generated_data(rest, *fill) {
            Some(f) => f,
            None => return,
        }
    } else {
        rest.to_vec()
    };
    load_family(family, &file);
}

fn load_family(family: usize, file: &[u8]) {
    let cpu = &Device::Cpu;
    let f32_ = DType::F32;
    match family {
        0 => {
            if let Ok(m) = ResNet::from_safetensors(file, ResNetConfig::resnet18(2), cpu, f32_) {
                assert_eq!(m.config().num_classes, 2);
            }
        }
        1 => {
            let _ = SepsisNet::from_safetensors(file, cpu, f32_);
        }
        2 => {
            let _ = Autoencoder::from_safetensors(file, cpu, f32_);
        }
        3 => {
            if let Ok(cfg) = EfficientNetConfig::lite(0) {
                let _ = EfficientNet::from_bytes(file, cfg, cpu, f32_);
            }
        }
        4 => {
            if let Ok(head) = ExamHead::from_safetensors(file, cpu) {
                run_head(&head);
            }
        }
        5 => {
            let _ = ExamModel::from_safetensors(file, cpu, f32_);
        }
        _ => {
            if let Ok(m) = BertModel::from_safetensors(tiny_bert_config(), file, cpu, f32_) {
                // Finite weights may still overflow: that is an Err, never NaN rows.
                if let Ok(e) = m.embed(&[vec![1, 5, 9, 2], vec![3]], Pooling::Mean) {
                    assert_eq!(e.len(), 2);
                    for row in &e {
                        all_finite("checkpoint: bert embed", row);
                    }
                }
            }
            let config = TINY_BERT.as_bytes();
            let _ = Checkpoint::from_bytes(config, file);
        }
    }
}

/// Runs a loaded EXAM head on fixed features and a default EMR record: probabilities are
/// finite and sum to 1.
fn run_head(head: &ExamHead) {
    let cfg = &head.config;
    let feats: Vec<f32> = (0..cfg.image_features)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0)
        .collect();
    let Ok(emr) = cfg.emr.encode_json("{}") else {
        return;
    };
    let Ok(f) = HostTensor::new(&[1, cfg.image_features], feats) else {
        return;
    };
    if let Ok(out) = head.forward(&Tensor::Host(f), &Tensor::Host(emr)) {
        for o in out {
            let p: f64 = o.ordinal_probs.iter().map(|&x| f64::from(x)).sum();
            assert!(
                o.ordinal_probs.iter().all(|x| x.is_finite())
                    && (p - 1.0).abs() < 1e-3
                    && o.oxygen_24h.is_finite()
                    && o.oxygen_72h.is_finite(),
                "checkpoint: EXAM output {o:?}"
            );
        }
    }
}

/// Builds a safetensors file from a fuzzed header and generated data (None: not a header).
fn with_generated_data(header: &[u8], fill: u8) -> Option<Vec<u8>> {
    let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let mut end = 0u64;
    for (k, t) in &v {
        if k == "__metadata__" {
            continue;
        }
        let e = t.get("data_offsets")?.get(1)?.as_u64()?;
        end = end.max(e);
    }
    if end > MAX_DECLARED {
        return None;
    }
    let mut file = Vec::with_capacity(8 + header.len() + end as usize);
    file.extend_from_slice(&(header.len() as u64).to_le_bytes());
    file.extend_from_slice(header);
    let mut s = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(fill);
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let words = end.div_ceil(4) as usize;
    let nan_at = if fill % 3 == 1 { words / 2 } else { usize::MAX };
    for i in 0..words {
        let r = next();
        let w = match fill % 3 {
            2 => r as u32,
            _ if i == nan_at => f32::NAN.to_bits(),
            _ => ((((r >> 40) as f32) / (1u64 << 24) as f32 - 0.5) * 0.2).to_bits(),
        };
        file.extend_from_slice(&w.to_le_bytes());
    }
    file.truncate(8 + header.len() + end as usize);
    Some(file)
}

const TINY_BERT: &str = r#"{"model_type": "bert", "vocab_size": 40, "hidden_size": 16,
"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32, "hidden_act": "gelu",
"max_position_embeddings": 16, "type_vocab_size": 2, "layer_norm_eps": 1e-12}"#;

fn tiny_bert_config() -> BertConfig {
    BertConfig::from_json(TINY_BERT).unwrap_or_else(|e| panic!("TINY_BERT: {e}"))
}

/// An EMR feature list (JSON), a NUL byte, then a record (or an array of records); an empty
/// list means EXAM's default features.
pub fn emr(data: &[u8]) {
    let (cfg, rec) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let Ok(rec) = std::str::from_utf8(rec) else {
        return;
    };
    let config = if cfg.is_empty() {
        EmrConfig::exam_default()
    } else {
        match std::str::from_utf8(cfg)
            .ok()
            .and_then(|c| EmrConfig::from_json(c).ok())
        {
            Some(c) => c,
            None => return,
        }
    };
    if let Ok(t) = config.encode_json(rec) {
        let s = t.shape();
        assert!(
            s.len() == 2 && s[1] == config.dim(),
            "emr: shape {s:?}, dim {}",
            config.dim()
        );
        all_finite(
            "emr",
            &t.to_f64().iter().map(|&x| x as f32).collect::<Vec<_>>(),
        );
        // The feature list round-trips through its own JSON.
        let again = EmrConfig::from_json(&config.to_json())
            .unwrap_or_else(|e| panic!("emr: to_json does not read back: {e}"));
        assert_eq!(again.dim(), config.dim(), "emr: round trip");
    }
}

/// A BERT `config.json` (any family medkern reads).
pub fn bert_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = BertConfig::from_json(text) {
        let _ = c.embedding_dim();
    }
}

/// Where the installed models are: `MEDKERN_MODELS_DIR`, or `.models/` under the working
/// directory (the repository root for `cargo test`; `scripts/fuzz` sets the variable).
pub fn models_dir() -> PathBuf {
    std::env::var_os("MEDKERN_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".models"))
}

/// The all-MiniLM-L6-v2 folder (tokenizer.json), or None when the models are not installed.
pub fn minilm_dir() -> Option<PathBuf> {
    let d = models_dir().join("all-MiniLM-L6-v2");
    d.join("tokenizer.json").is_file().then_some(d)
}

/// The `max_len` of each tokenizer of [`tokenizer`], in order.
const MAX_LENS: [usize; 5] = [2, 3, 16, 128, 512];

fn tokenizers() -> &'static [BertTokenizer] {
    static T: OnceLock<Vec<BertTokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = minilm_dir().unwrap_or_else(|| {
            panic!(
                "fuzz target tokenizer: no all-MiniLM-L6-v2/tokenizer.json under {} (run \
                 scripts/setup-models or set MEDKERN_MODELS_DIR)",
                models_dir().display()
            )
        });
        MAX_LENS
            .iter()
            .map(|&n| {
                BertTokenizer::load(&dir, n)
                    .unwrap_or_else(|e| panic!("tokenizer: {e}"))
                    .with_max_text_bytes(64 << 10)
            })
            .collect()
    })
}

/// Text for the tokenizer: the first byte picks `max_len`, the rest (UTF-8) is the text,
/// split at NULs into a batch.
pub fn tokenizer(data: &[u8]) {
    let [sel, rest @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let toks = tokenizers();
    let t = &toks[usize::from(*sel) % toks.len()];
    let max = MAX_LENS[usize::from(*sel) % toks.len()];
    let texts: Vec<&str> = text.split('\0').collect();
    if let Ok(ids) = t.encode(&texts) {
        assert_eq!(ids.len(), texts.len(), "tokenizer: one id list per text");
        for s in &ids {
            assert!(
                (2..=max).contains(&s.len()),
                "tokenizer: {} ids for max_len {max}",
                s.len()
            );
            // [CLS] ... [SEP] of the BERT vocabulary.
            assert_eq!((s[0], s[s.len() - 1]), (101, 102), "tokenizer: {s:?}");
        }
    }
}

struct CModel {
    dev: *mut medkern::capi::MkDevice,
    model: *mut medkern::capi::MkBert,
}
// SAFETY: the handles are Send + Sync (the C ABI documents it; static assertions in src/capi.rs).
unsafe impl Send for CModel {}
// SAFETY: as above.
unsafe impl Sync for CModel {}

/// A tiny random BERT (all-MiniLM-L6-v2's tokenizer, 2 layers of width 16, 3 labels) written
/// to a temporary folder and loaded through the C ABI once.
fn c_model() -> &'static CModel {
    static M: OnceLock<CModel> = OnceLock::new();
    M.get_or_init(|| {
        use medkern::capi::*;
        let tok = minilm_dir().unwrap_or_else(|| {
            panic!(
                "fuzz target capi: no all-MiniLM-L6-v2 under {}",
                models_dir().display()
            )
        });
        let dir = std::env::temp_dir().join(format!("medkern-fuzz-capi-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let config = TINY_BERT
            .replace("\"vocab_size\": 40", "\"vocab_size\": 30522")
            .replace(
                "\"model_type\"",
                "\"id2label\": {\"0\": \"a\", \"1\": \"b\", \"2\": \"c\"}, \"model_type\"",
            );
        std::fs::write(dir.join("config.json"), config).expect("capi: config");
        std::fs::write(dir.join("model.safetensors"), tiny_bert_file(30522, true))
            .expect("capi: weights");
        std::fs::copy(tok.join("tokenizer.json"), dir.join("tokenizer.json"))
            .expect("capi: tokenizer");
        let mut dev = std::ptr::null_mut();
        let mut model = std::ptr::null_mut();
        // SAFETY: NUL-terminated strings, valid out pointers.
        unsafe {
            assert_eq!(mk_device_open(c"cpu".as_ptr(), &mut dev) as i32, 0);
            let d = std::ffi::CString::new(dir.to_string_lossy().as_bytes()).expect("dir");
            let s = mk_bert_load(dev, d.as_ptr(), MK_DTYPE_F32, 16, &mut model) as i32;
            assert_eq!(
                s,
                0,
                "capi: mk_bert_load: {:?}",
                std::ffi::CStr::from_ptr(mk_last_error())
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
        CModel { dev, model }
    })
}

/// C ABI calls a server makes per request, with fuzzed arguments: token-id batches
/// (`mk_bert_embed_ids`/`mk_bert_classify_ids`: any ids, any lengths, any output length) and
/// text batches (`mk_bert_embed`). Every call either succeeds with finite outputs or fails
/// with a status other than MK_ERR_INTERNAL (a caught panic).
pub fn capi(data: &[u8]) {
    use medkern::capi::*;
    let [op, nseq, outsel, rest @ ..] = data else {
        return;
    };
    let m = c_model();
    let _ = m.dev;
    let n = usize::from(*nseq % 6);
    // SAFETY: live handle.
    let dim = unsafe { mk_bert_dim(m.model) };
    let labels = 3;
    let width = if op % 3 == 2 { labels } else { dim };
    let out_len = match outsel % 4 {
        0 => n * width,
        1 => (n * width).saturating_sub(1),
        2 => n * width + 3,
        _ => usize::from(*outsel),
    };
    let mut out = vec![f32::from_bits(0x7fc0_dead); out_len];
    let status = if op % 3 == 1 {
        // Texts: the rest split at NUL bytes (each given NUL-terminated), n of them (empty
        // ones when the rest has fewer).
        let mut texts: Vec<std::ffi::CString> = rest
            .split(|&b| b == 0)
            .take(n)
            .map(|t| std::ffi::CString::new(t).expect("no NUL"))
            .collect();
        texts.resize(n, std::ffi::CString::default());
        let ptrs: Vec<*const std::ffi::c_char> = texts.iter().map(|t| t.as_ptr()).collect();
        // SAFETY: n valid strings, out valid for out_len writes.
        unsafe {
            mk_bert_embed(
                m.model,
                ptrs.as_ptr(),
                n,
                MK_POOLING_MEAN,
                1,
                out.as_mut_ptr(),
                out_len,
            )
        }
    } else {
        // Ids: n lengths (a byte each), then u32 ids (little endian), as many as there are.
        let (lens_b, ids_b) = rest.split_at(n.min(rest.len()));
        let ids: Vec<u32> = ids_b
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut lens: Vec<usize> = lens_b.iter().map(|&b| usize::from(b % 24)).collect();
        lens.resize(n, 0);
        let total: usize = lens.iter().sum();
        if total > ids.len() {
            // The caller's contract is ids valid for sum(lens) reads: keep to it.
            return;
        }
        // SAFETY: lens valid for n reads, ids for their sum, out for out_len writes.
        unsafe {
            if op % 3 == 0 {
                mk_bert_embed_ids(
                    m.model,
                    ids.as_ptr(),
                    lens.as_ptr(),
                    n,
                    i32::from(op / 3 % 2),
                    i32::from(op / 6 % 2),
                    out.as_mut_ptr(),
                    out_len,
                )
            } else {
                mk_bert_classify_ids(
                    m.model,
                    ids.as_ptr(),
                    lens.as_ptr(),
                    n,
                    out.as_mut_ptr(),
                    out_len,
                )
            }
        }
    };
    let code = status as i32;
    // SAFETY: mk_last_error returns a valid NUL-terminated string.
    let msg = unsafe { std::ffi::CStr::from_ptr(mk_last_error()) }.to_string_lossy();
    assert_ne!(
        code,
        MkStatus::Internal as i32,
        "capi: internal error: {msg}"
    );
    if code == 0 {
        all_finite("capi: output", &out[..n * width]);
    } else {
        assert!(!msg.is_empty(), "capi: status {code} with no message");
        // Nothing written on failure.
        assert!(
            out.iter().all(|x| x.to_bits() == 0x7fc0_dead),
            "capi: status {code} but the output was written"
        );
    }
}

/// Random tensors of the tiny BERT (HF BertModel names), with a classifier when asked, as the
/// bytes of a safetensors file.
fn tiny_bert_file(vocab: usize, classifier: bool) -> Vec<u8> {
    let (h, inter, layers) = (16usize, 32usize, 2usize);
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move |n: usize, sigma: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * sigma
            })
            .collect()
    };
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, v: Vec<f32>| t.push((name, shape, v));
    put(
        "embeddings.word_embeddings.weight".into(),
        vec![vocab, h],
        rnd(vocab * h, 1.0),
    );
    put(
        "embeddings.position_embeddings.weight".into(),
        vec![16, h],
        rnd(16 * h, 0.3),
    );
    put(
        "embeddings.token_type_embeddings.weight".into(),
        vec![2, h],
        rnd(2 * h, 0.3),
    );
    let mut lns = vec!["embeddings.LayerNorm".to_string()];
    for l in 0..layers {
        for (stem, n, k) in medkern::model::compress::layer_linears(l)
            .into_iter()
            .zip([(h, h), (h, h), (h, h), (h, h), (inter, h), (h, inter)])
            .map(|(s, (n, k))| (s, n, k))
        {
            put(
                format!("{stem}.weight"),
                vec![n, k],
                rnd(n * k, 1.0 / (k as f32).sqrt()),
            );
            put(format!("{stem}.bias"), vec![n], rnd(n, 0.05));
        }
        lns.push(format!("encoder.layer.{l}.attention.output.LayerNorm"));
        lns.push(format!("encoder.layer.{l}.output.LayerNorm"));
    }
    for p in lns {
        put(
            format!("{p}.weight"),
            vec![h],
            rnd(h, 0.1).iter().map(|x| 1.0 + x).collect(),
        );
        put(format!("{p}.bias"), vec![h], rnd(h, 0.1));
    }
    if classifier {
        put("pooler.dense.weight".into(), vec![h, h], rnd(h * h, 0.25));
        put("pooler.dense.bias".into(), vec![h], rnd(h, 0.05));
        put("classifier.weight".into(), vec![3, h], rnd(3 * h, 0.25));
        put("classifier.bias".into(), vec![3], rnd(3, 0.05));
    }
    exam::to_safetensors(&t, HashMap::new()).expect("tiny BERT safetensors")
}

fn named(n: NamedTensors) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    n.tensors.into_iter().map(|(k, (s, v))| (k, s, v)).collect()
}

/// The header of a safetensors file (what a header-mode [`checkpoint`] input carries).
fn header_of(file: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(file[..8].try_into().expect("8 bytes")) as usize;
    file[8..8 + n].to_vec()
}

/// A minimal DICOM Part 10 file, explicit VR little endian: `elements` are (group, element,
/// VR, value) in order after the file meta group.
fn dicom_file(elements: &[(u16, u16, &[u8; 2], Vec<u8>)]) -> Vec<u8> {
    fn el(out: &mut Vec<u8>, g: u16, e: u16, vr: &[u8; 2], v: &[u8]) {
        out.extend_from_slice(&g.to_le_bytes());
        out.extend_from_slice(&e.to_le_bytes());
        out.extend_from_slice(vr);
        if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(v);
    }
    let mut meta = Vec::new();
    el(&mut meta, 2, 1, b"OB", &[0, 1]);
    el(&mut meta, 2, 2, b"UI", b"1.2.840.10008.5.1.4.1.1.1\0");
    el(&mut meta, 2, 3, b"UI", b"1.2.3.4\0");
    el(&mut meta, 2, 0x10, b"UI", b"1.2.840.10008.1.2.1\0");
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    el(&mut out, 2, 0, b"UL", &(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    for (g, e, vr, v) in elements {
        el(&mut out, *g, *e, vr, v);
    }
    out
}

fn us(v: u16) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn grey_dicom(
    rows: u16,
    cols: u16,
    bits: u16,
    extra: Vec<(u16, u16, &'static [u8; 2], Vec<u8>)>,
) -> Vec<u8> {
    let words: Vec<u8> = (0..u32::from(rows) * u32::from(cols))
        .flat_map(|i| {
            ((i.wrapping_mul(2654435761u32) >> 16) as u16 & ((1u32 << bits) - 1) as u16)
                .to_le_bytes()
        })
        .collect();
    let mut el: Vec<(u16, u16, &[u8; 2], Vec<u8>)> = vec![
        (0x0028, 0x0002, b"US", us(1)),
        (0x0028, 0x0004, b"CS", b"MONOCHROME2 ".to_vec()),
        (0x0028, 0x0010, b"US", us(rows)),
        (0x0028, 0x0011, b"US", us(cols)),
        (0x0028, 0x0100, b"US", us(16)),
        (0x0028, 0x0101, b"US", us(bits)),
        (0x0028, 0x0102, b"US", us(bits - 1)),
        (0x0028, 0x0103, b"US", us(0)),
    ];
    el.extend(extra);
    el.push((0x7fe0, 0x0010, b"OW", words));
    el.sort_by_key(|(g, e, _, _)| (*g, *e));
    dicom_file(&el)
}

/// The seed corpus of `target`: small valid inputs that reach deep into the code under test.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "dicom" => {
            let seq_item = {
                // (0008,1140) SQ with one defined-length item holding one element.
                let mut item_body = Vec::new();
                item_body.extend_from_slice(&0x0008u16.to_le_bytes());
                item_body.extend_from_slice(&0x1155u16.to_le_bytes());
                item_body.extend_from_slice(b"UI");
                item_body.extend_from_slice(&8u16.to_le_bytes());
                item_body.extend_from_slice(b"1.2.3.4\0");
                let mut item = vec![0xfe, 0xff, 0x00, 0xe0];
                item.extend_from_slice(&(item_body.len() as u32).to_le_bytes());
                item.extend_from_slice(&item_body);
                item
            };
            vec![
                grey_dicom(8, 8, 12, vec![]),
                grey_dicom(5, 3, 16, vec![
                    (0x0028, 0x1050, b"DS", b"2048".to_vec()),
                    (0x0028, 0x1051, b"DS", b"4096".to_vec()),
                    (0x0028, 0x1052, b"DS", b"-1024 ".to_vec()),
                    (0x0028, 0x1053, b"DS", b"2 ".to_vec()),
                ]),
                grey_dicom(4, 4, 8, vec![(0x0008, 0x1140, b"SQ", seq_item)]),
            ]
        }
        "image" => {
            use image::ImageEncoder;
            let px: Vec<u8> = (0..12 * 9 * 3).map(|i| (i * 37 % 251) as u8).collect();
            let mut png = Vec::new();
            image::codecs::png::PngEncoder::new(&mut png)
                .write_image(&px, 12, 9, image::ExtendedColorType::Rgb8)
                .expect("png");
            let mut grey16 = Vec::new();
            let g: Vec<u8> = (0..7 * 5).flat_map(|i: u16| (i * 1777).to_be_bytes()).collect();
            image::codecs::png::PngEncoder::new(&mut grey16)
                .write_image(&g, 7, 5, image::ExtendedColorType::L16)
                .expect("png16");
            let mut jpg = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 80)
                .write_image(&px, 12, 9, image::ExtendedColorType::Rgb8)
                .expect("jpeg");
            vec![png, grey16, jpg]
        }
        "checkpoint" => {
            let mut out = Vec::new();
            let add = |out: &mut Vec<Vec<u8>>, family: u8, file: Vec<u8>| {
                let mut s = vec![family << 1 | 1, 0];
                s.extend_from_slice(&header_of(&file));
                out.push(s);
            };
            add(&mut out, 0, named(random_resnet(&ResNetConfig::resnet18(2), 1)).pipe(safetensors));
            add(&mut out, 1, named(sepsis::random_sepsis(1)).pipe(safetensors));
            add(&mut out, 2, named(sepsis::random_autoencoder(1)).pipe(safetensors));
            if let Ok(w) = EfficientNetConfig::lite(0).and_then(|c| efficientnet::random_weights(&c, 1)) {
                add(&mut out, 3, efficientnet::to_safetensors(&w).expect("lite0"));
            }
            let cfg = ExamConfig::default();
            let head = exam::to_safetensors(
                &exam::random_head_tensors(&cfg, 1),
                HashMap::from([(
                    exam::CONFIG_KEY.to_string(),
                    serde_json::to_string(&cfg).expect("config"),
                )]),
            )
            .expect("head");
            // The head also whole (raw mode): small enough to carry.
            let mut raw = vec![4 << 1, 0];
            raw.extend_from_slice(&head);
            out.push(raw);
            add(&mut out, 4, head);
            add(&mut out, 5, ExamModel::random_checkpoint(&cfg, 1).expect("exam"));
            let bert = tiny_bert_file(40, false);
            let mut raw = vec![6 << 1, 0];
            raw.extend_from_slice(&bert);
            out.push(raw);
            add(&mut out, 6, bert);
            out
        }
        "emr" => {
            let cfg = EmrConfig::exam_default().to_json();
            let rec = r#"{"age": 63, "sex": "F", "spo2": 91.5, "temperature": 38.2}"#;
            let mut with_cfg = cfg.into_bytes();
            with_cfg.push(0);
            with_cfg.extend_from_slice(format!("[{rec}, {{}}]").as_bytes());
            vec![rec.as_bytes().to_vec(), with_cfg, b"{}".to_vec()]
        }
        "bert_config" => vec![
            TINY_BERT.as_bytes().to_vec(),
            br#"{"model_type": "distilbert", "vocab_size": 30522, "dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072, "id2label": {"0": "NEGATIVE", "1": "POSITIVE"}}"#.to_vec(),
            br#"{"model_type": "albert", "vocab_size": 30000, "embedding_size": 128, "hidden_size": 768, "num_hidden_layers": 12, "num_hidden_groups": 1, "inner_group_num": 1, "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu_new"}"#.to_vec(),
        ],
        "tokenizer" => vec![
            b"\x03Patient reports chest pain radiating to the left arm.".to_vec(),
            b"\x01SpO2 91% on room air\x00\xc3\xa9d\xc3\xa8me pulmonaire \xe8\x82\xba\xe7\x82\x8e".to_vec(),
            b"\x04unbelievably-long-hyphenated-words and   spaces".to_vec(),
        ],
        "capi" => vec![
            b"\x00\x02\x00\x03\x02\x65\x00\x00\x00\x07\x00\x00\x00\x66\x00\x00\x00\x65\x00\x00\x00\x66\x00\x00\x00".to_vec(),
            b"\x01\x02\x00chest pain\x00shortness of breath".to_vec(),
            b"\x02\x01\x00\x03\x65\x00\x00\x00\xff\xff\xff\xff\x66\x00\x00\x00".to_vec(),
        ],
        _ => vec![],
    }
}

fn safetensors(t: Vec<(String, Vec<usize>, Vec<f32>)>) -> Vec<u8> {
    exam::to_safetensors(&t, HashMap::new()).expect("safetensors")
}

trait Pipe: Sized {
    fn pipe<R>(self, f: impl FnOnce(Self) -> R) -> R {
        f(self)
    }
}
impl<T> Pipe for T {}
