//! Model folders loaded as sentence-transformers loads them (issue 19): `modules.json` with
//! its Pooling mode, Normalize module and `max_seq_length`, checked against pooling computed
//! here from the model's own token states; hub ids resolved from a local cache only; compress
//! keeping the sentence-transformers files.
// This file runs the `medkern` binary (feature `cli`).
#![cfg(feature = "cli")]

mod common;

use medkern::model::bert::{BertModel, BertTokenizer, Pooling};
use medkern::model::encoder::{EncoderOptions, TextEncoder};
use medkern::{DType, Device};
use std::path::{Path, PathBuf};
use std::process::Command;

const TEXTS: [&str; 3] = [
    "The patient presents with fever, productive cough and shortness of breath.",
    "Chest X-ray shows bilateral infiltrates.",
    "a",
];

fn minilm_or_skip(test: &str) -> Option<PathBuf> {
    common::model_or_skip(test, "all-MiniLM-L6-v2")
}

/// A folder of links to MiniLM's model, config and tokenizer files, with `modules` as its
/// `modules.json` (None: none) and `pooling` as `1_Pooling/config.json`.
fn st_folder(
    tmp: &common::TempDir,
    minilm: &Path,
    name: &str,
    modules: Option<&str>,
    pooling: Option<&str>,
) -> PathBuf {
    let d = tmp.path().join(name);
    std::fs::create_dir_all(d.join("1_Pooling")).expect("mkdir");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(minilm.join(f), d.join(f)).expect("link");
    }
    if let Some(m) = modules {
        std::fs::write(d.join("modules.json"), m).expect("modules.json");
    }
    if let Some(p) = pooling {
        std::fs::write(d.join("1_Pooling/config.json"), p).expect("pooling config");
    }
    d
}

fn modules(normalize: bool) -> String {
    let mut m = String::from(
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}"#,
    );
    if normalize {
        m.push_str(
            r#",{"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}"#,
        );
    }
    m.push(']');
    m
}

fn pooling_config(mode: &str) -> String {
    let flag = |m: &str| if m == mode { "true" } else { "false" };
    format!(
        r#"{{"word_embedding_dimension": 384, "pooling_mode_cls_token": {},
            "pooling_mode_mean_tokens": {}, "pooling_mode_max_tokens": {},
            "pooling_mode_mean_sqrt_len_tokens": false}}"#,
        flag("cls"),
        flag("mean"),
        flag("max")
    )
}

fn load(dir: &Path) -> medkern::Result<TextEncoder> {
    TextEncoder::load(dir, &Device::Cpu, DType::F32, &EncoderOptions::default())
}

/// The pooled rows computed here in f64 from the model's last hidden states.
fn reference(model: &BertModel, ids: &[Vec<u32>], mode: &str, unit: bool) -> Vec<Vec<f64>> {
    let (x, cu) = model.forward(ids, None).expect("forward");
    let h = model.config.hidden_size;
    let v = x.to_host().expect("host").to_f64();
    (0..ids.len())
        .map(|b| {
            let tokens: Vec<&[f64]> = (cu[b]..cu[b + 1]).map(|t| &v[t * h..(t + 1) * h]).collect();
            let mut row: Vec<f64> = (0..h)
                .map(|c| match mode {
                    "cls" => tokens[0][c],
                    "mean" => tokens.iter().map(|t| t[c]).sum::<f64>() / tokens.len() as f64,
                    "max" => tokens.iter().map(|t| t[c]).fold(f64::MIN, f64::max),
                    _ => unreachable!("mode {mode}"),
                })
                .collect();
            if unit {
                let n = row.iter().map(|x| x * x).sum::<f64>().sqrt();
                row.iter_mut().for_each(|x| *x /= n);
            }
            row
        })
        .collect()
}

fn assert_close(got: &[Vec<f32>], want: &[Vec<f64>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what} row {i}");
        for (j, (&g, &w)) in g.iter().zip(w).enumerate() {
            assert!(
                (f64::from(g) - w).abs() <= 1e-6 + 1e-6 * w.abs(),
                "{what} row {i} col {j}: {g} vs {w}"
            );
        }
    }
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn modules_json_pooling_and_normalize_match_an_independent_computation() {
    let test = "modules_json_pooling_and_normalize_match_an_independent_computation";
    let Some(minilm) = minilm_or_skip(test) else {
        return;
    };
    let tmp = common::TempDir::new("encoder-modes");
    let model = BertModel::load(&minilm, &Device::Cpu, DType::F32).expect("model");
    let ids = BertTokenizer::load(&minilm, 256)
        .expect("tokenizer")
        .encode(&TEXTS)
        .expect("ids");
    for (mode, pooling, unit) in [
        ("mean", Pooling::Mean, true),
        ("mean", Pooling::Mean, false),
        ("cls", Pooling::Cls, false),
        ("max", Pooling::Max, false),
        ("max", Pooling::Max, true),
    ] {
        let name = format!("{mode}-{unit}");
        let d = st_folder(
            &tmp,
            &minilm,
            &name,
            Some(&modules(unit)),
            Some(&pooling_config(mode)),
        );
        let enc = load(&d).expect(&name);
        assert_eq!((enc.pooling, enc.normalize), (pooling, unit), "{name}");
        assert_eq!(enc.encode(&TEXTS).expect("ids"), ids, "{name}");
        let got = enc.embed(&TEXTS).expect("embed");
        assert_close(&got, &reference(&model, &ids, mode, unit), &name);
        if !unit {
            assert_eq!(got, model.embed(&ids, pooling).expect("embed"), "{name}");
        }
    }
    // Explicit options override the folder: max + Normalize run as CLS, not normalised.
    let d = tmp.path().join("max-true");
    let enc = TextEncoder::load(
        &d,
        &Device::Cpu,
        DType::F32,
        &EncoderOptions {
            pooling: Some(Pooling::Cls),
            normalize: Some(false),
            ..EncoderOptions::default()
        },
    )
    .expect("override");
    assert_eq!(
        enc.embed(&TEXTS).expect("embed"),
        model.embed(&ids, Pooling::Cls).expect("embed")
    );
    // Without modules.json: mean pooling, not normalised, all 512 positions.
    let d = st_folder(&tmp, &minilm, "plain", None, None);
    let enc = load(&d).expect("plain");
    assert_eq!(
        (enc.pooling, enc.normalize, enc.max_len()),
        (Pooling::Mean, false, 512)
    );
}

#[test]
fn unsupported_modules_and_modes_are_errors_naming_them() {
    let test = "unsupported_modules_and_modes_are_errors_naming_them";
    let Some(minilm) = minilm_or_skip(test) else {
        return;
    };
    let tmp = common::TempDir::new("encoder-refused");
    let dense = modules(true).replace(
        "sentence_transformers.models.Normalize",
        "sentence_transformers.models.Dense",
    );
    let d = st_folder(
        &tmp,
        &minilm,
        "dense",
        Some(&dense),
        Some(&pooling_config("mean")),
    );
    let e = load(&d).err().expect("Dense").to_string();
    assert!(
        e.contains("sentence_transformers.models.Dense") && e.contains("modules.json"),
        "{e}"
    );
    let sqrt = pooling_config("none").replace(
        r#""pooling_mode_mean_sqrt_len_tokens": false"#,
        r#""pooling_mode_mean_sqrt_len_tokens": true"#,
    );
    let d = st_folder(&tmp, &minilm, "sqrt", Some(&modules(false)), Some(&sqrt));
    let e = load(&d).err().expect("sqrt").to_string();
    assert!(
        e.contains("pooling_mode_mean_sqrt_len_tokens") && e.contains("1_Pooling"),
        "{e}"
    );
    let both = pooling_config("cls").replace(
        r#""pooling_mode_mean_tokens": false"#,
        r#""pooling_mode_mean_tokens": true"#,
    );
    let d = st_folder(&tmp, &minilm, "both", Some(&modules(false)), Some(&both));
    assert!(load(&d).is_err(), "two pooling modes at once");
    let d = st_folder(&tmp, &minilm, "nopool", Some(&modules(false)), None);
    let e = load(&d).err().expect("no pooling config").to_string();
    assert!(e.contains("1_Pooling"), "{e}");
    let wide = pooling_config("mean").replace("384", "768");
    let d = st_folder(&tmp, &minilm, "wide", Some(&modules(false)), Some(&wide));
    let e = load(&d).err().expect("width").to_string();
    assert!(
        e.contains("word_embedding_dimension") && e.contains("384"),
        "{e}"
    );
}

#[test]
fn max_seq_length_caps_the_tokens() {
    let Some(minilm) = minilm_or_skip("max_seq_length_caps_the_tokens") else {
        return;
    };
    let long = "pneumonia ".repeat(600);
    let enc = load(&minilm).expect("MiniLM");
    assert_eq!(enc.max_len(), 256);
    assert_eq!(enc.encode(&[&long]).expect("ids")[0].len(), 256);
    let tmp = common::TempDir::new("encoder-seq");
    let d = st_folder(
        &tmp,
        &minilm,
        "short",
        Some(&modules(false)),
        Some(&pooling_config("mean")),
    );
    std::fs::write(
        d.join("sentence_bert_config.json"),
        r#"{"max_seq_length": 16}"#,
    )
    .expect("w");
    let enc = load(&d).expect("short");
    assert_eq!(enc.encode(&[&long]).expect("ids")[0].len(), 16);
    // An explicit max_len overrides the folder's.
    let enc = TextEncoder::load(
        &d,
        &Device::Cpu,
        DType::F32,
        &EncoderOptions {
            max_len: Some(40),
            ..EncoderOptions::default()
        },
    )
    .expect("override");
    assert_eq!(enc.encode(&[&long]).expect("ids")[0].len(), 40);
}

#[test]
fn minilm_with_no_options_gives_unit_mean_vectors() {
    let Some(minilm) = minilm_or_skip("minilm_with_no_options_gives_unit_mean_vectors") else {
        return;
    };
    let enc = load(&minilm).expect("MiniLM");
    assert_eq!((enc.pooling, enc.normalize), (Pooling::Mean, true));
    let got = enc.embed(&TEXTS).expect("embed");
    let model = BertModel::load(&minilm, &Device::Cpu, DType::F32).expect("model");
    let ids = enc.encode(&TEXTS).expect("ids");
    assert_close(&got, &reference(&model, &ids, "mean", true), "MiniLM");
    for v in &got {
        assert!((norm(v) - 1.0).abs() < 1e-6, "norm {}", norm(v));
    }
}

fn medkern(args: &[&str], hf_home: Option<&Path>) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_medkern"));
    c.args(args).env_remove("HF_HUB_CACHE");
    if let Some(h) = hf_home {
        c.env("HF_HOME", h);
    }
    c.output().expect("run medkern")
}

fn embeddings(out: &std::process::Output) -> Vec<Vec<f32>> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v.as_array()
        .expect("array")
        .iter()
        .map(|o| {
            o["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect()
        })
        .collect()
}

#[test]
fn cli_embed_follows_the_folder_and_its_overrides() {
    let Some(minilm) = minilm_or_skip("cli_embed_follows_the_folder_and_its_overrides") else {
        return;
    };
    let m = minilm.to_str().expect("utf-8");
    let run = |extra: &[&str]| {
        let mut a = vec!["embed", "--device", "cpu", "--model", m];
        a.extend(extra);
        a.extend(TEXTS);
        embeddings(&medkern(&a, None))
    };
    let unit = run(&[]);
    for v in &unit {
        assert!((norm(v) - 1.0).abs() < 1e-5, "norm {}", norm(v));
    }
    let enc = load(&minilm).expect("MiniLM");
    assert_eq!(unit, enc.embed(&TEXTS).expect("embed"));
    let raw = run(&["--no-normalize"]);
    assert_eq!(run(&["--normalize=false"]), raw);
    assert!(
        raw.iter().any(|v| (norm(v) - 1.0).abs() > 1e-3),
        "not normalised"
    );
    let model = BertModel::load(&minilm, &Device::Cpu, DType::F32).expect("model");
    let ids = enc.encode(&TEXTS).expect("ids");
    assert_eq!(raw, model.embed(&ids, Pooling::Mean).expect("embed"));
    let max = run(&["--pooling", "max", "--no-normalize"]);
    assert_eq!(max, model.embed(&ids, Pooling::Max).expect("embed"));
}

/// A fake hub cache: `models--org--name/refs/main` naming a snapshot of links to MiniLM.
#[test]
fn hub_ids_resolve_from_the_local_cache_only() {
    let Some(minilm) = minilm_or_skip("hub_ids_resolve_from_the_local_cache_only") else {
        return;
    };
    let tmp = common::TempDir::new("encoder-hub");
    let hash = "0123456789abcdef0123456789abcdef01234567";
    let repo = tmp.path().join("hub/models--acme--mini-lm");
    let snap = repo.join("snapshots").join(hash);
    std::fs::create_dir_all(snap.join("1_Pooling")).expect("mkdir");
    std::fs::create_dir_all(repo.join("refs")).expect("mkdir");
    std::fs::write(repo.join("refs/main"), hash).expect("ref");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        std::os::unix::fs::symlink(minilm.join(f), snap.join(f)).expect("link");
    }
    let want = load(&minilm).expect("MiniLM").embed(&TEXTS).expect("embed");
    let embed = |id: &str, extra: &[&str]| {
        let mut a = vec!["embed", "--device", "cpu", "--model", id];
        a.extend(extra);
        a.extend(TEXTS);
        medkern(&a, Some(tmp.path()))
    };
    assert_eq!(embeddings(&embed("acme/mini-lm", &[])), want);
    assert_eq!(
        embeddings(&embed("acme/mini-lm", &["--revision", hash])),
        want
    );
    let fails = |out: std::process::Output, needles: &[&str]| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{err}");
        for n in needles {
            assert!(err.contains(n), "{n:?} not in {err}");
        }
    };
    fails(
        embed("acme/mini-lm", &["--revision", "v2"]),
        &["refs/v2", "nothing is downloaded"],
    );
    fails(
        embed("acme/other", &[]),
        &["models--acme--other", "nothing is downloaded"],
    );
    fails(
        embed("acme/../mini-lm", &[]),
        &["not a folder, nor a hub id"],
    );
    fails(
        embed("acme/mini-lm", &["--revision", "../main"]),
        &["revision"],
    );
    // In the library: ids checked before the file system, a revision only with an id.
    for bad in ["acme/../x", "/no/such/model", "a/b/c", "acme--x/y"] {
        let e = medkern::resolve_model(bad, None)
            .expect_err(bad)
            .to_string();
        assert!(e.contains("not a folder, nor a hub id"), "{bad}: {e}");
    }
    assert!(medkern::resolve_model(&minilm, Some("main")).is_err());
    assert_eq!(
        medkern::resolve_model(&minilm, None).expect("folder"),
        minilm
    );
}

#[test]
fn compress_keeps_the_sentence_transformers_files() {
    let Some(minilm) = minilm_or_skip("compress_keeps_the_sentence_transformers_files") else {
        return;
    };
    let tmp = common::TempDir::new("encoder-compress");
    let out = tmp.path().join("out");
    let ck = medkern::model::compress::Checkpoint::load(&minilm).expect("checkpoint");
    // Twice: the second replaces the first output, module folder included.
    for _ in 0..2 {
        ck.save(&out, Some(&minilm)).expect("save");
    }
    for f in [
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        assert_eq!(
            std::fs::read(out.join(f)).expect(f),
            std::fs::read(minilm.join(f)).expect(f),
            "{f}"
        );
    }
    let enc = load(&out).expect("compressed folder");
    assert_eq!(
        (enc.pooling, enc.normalize, enc.max_len()),
        (Pooling::Mean, true, 256)
    );
    let src = load(&minilm).expect("MiniLM");
    for (a, b) in enc
        .embed(&TEXTS)
        .expect("embed")
        .iter()
        .zip(src.embed(&TEXTS).expect("embed"))
    {
        let cos: f64 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum();
        assert!(cos > 0.999, "cosine {cos}");
    }
}

/// The weights are mapped, not read, but under the same model-file limit, checked first.
#[test]
fn mapped_weights_keep_the_model_file_limit() {
    let Some(minilm) = minilm_or_skip("mapped_weights_keep_the_model_file_limit") else {
        return;
    };
    let m = minilm.to_str().expect("utf-8");
    let out = medkern(
        &[
            "--max-model-bytes",
            "1000000",
            "embed",
            "--device",
            "cpu",
            "--model",
            m,
            "x",
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("model.safetensors") && err.contains("limit of 1000000"),
        "{err}"
    );
}

/// Sentence pairs: `[CLS] a [SEP] b [SEP]`, type ids 0 up to the first [SEP] and 1 after it,
/// each side the tokens it has alone; past `max_len` the longer side loses its last tokens
/// first (Hugging Face's `truncation=True`), and both [SEP] stay.
#[test]
fn sentence_pairs_are_typed_and_truncated_longest_first() {
    let Some(minilm) = minilm_or_skip("sentence_pairs_are_typed_and_truncated_longest_first")
    else {
        return;
    };
    let tok = BertTokenizer::load(&minilm, 16).expect("tokenizer");
    let alone = |t: &str| {
        let ids = tok.encode(&[t]).expect("ids").remove(0);
        ids[1..ids.len() - 1].to_vec()
    };
    let (cls, sep) = (101u32, 102u32);
    let (q, d) = ("sepsis", "lactate is high");
    let (ids, types) = tok.encode_pairs(&[(q, d)]).expect("pair");
    let (qa, da) = (alone(q), alone(d));
    let mut want = vec![cls];
    want.extend(&qa);
    want.push(sep);
    want.extend(&da);
    want.push(sep);
    assert_eq!(ids[0], want);
    let mut want_types = vec![0u32; qa.len() + 2];
    want_types.extend(vec![1u32; da.len() + 1]);
    assert_eq!(types[0], want_types);
    // A long passage is cut to max_len, the short query kept whole.
    let long = "pneumonia with bilateral infiltrates ".repeat(20);
    let (ids, types) = tok.encode_pairs(&[(q, &long)]).expect("long pair");
    assert_eq!(ids[0].len(), 16);
    assert_eq!(&ids[0][1..1 + qa.len()], qa.as_slice());
    assert_eq!(ids[0][1 + qa.len()], sep);
    assert_eq!(ids[0][15], sep);
    assert_eq!(types[0].iter().filter(|&&t| t == 0).count(), qa.len() + 2);
    assert_eq!(
        &ids[0][2 + qa.len()..15],
        &alone(&long)[..15 - 2 - qa.len()]
    );
    // Both long: each keeps about half.
    let (ids, types) = tok.encode_pairs(&[(&long, &long)]).expect("both long");
    let zeros = types[0].iter().filter(|&&t| t == 0).count();
    assert_eq!(ids[0].len(), 16);
    assert!((7..=9).contains(&zeros), "{types:?}");
    // An over-long text is an error naming the limit, not a slow tokenisation.
    let tok = tok.with_max_text_bytes(64);
    let e = tok
        .encode_pairs(&[(q, &long)])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("max_text_bytes"), "{e}");
}
