//! Offline compression of BERT checkpoints (`src/model/compress.rs`): every method and a
//! combination round-trips through safetensors (the saved folder reloads by itself), and each
//! transformation does what it claims, checked on random-weight models on the CPU backend.
// This file runs the `medkern` binary (feature `cli`).
#![cfg(feature = "cli")]

mod common;
use common::*;
use medkern::model::bert::{BertConfig, BertModel, Pooling};
use medkern::model::compress::{Checkpoint, Rank, heads_to_keep, layer_linears};
use medkern::{DType, Device, HostTensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

const H: usize = 128;
const HEADS: usize = 4;
const I: usize = 256;
const LAYERS: usize = 3;
const VOCAB: usize = 50;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medkern-compress-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A random BERT checkpoint (HF BertModel names).
fn random_checkpoint(seed: u64) -> Checkpoint {
    let mut rng = SeedRng::new(seed);
    let mut t = BTreeMap::new();
    let mut put = |name: String, shape: &[usize], sigma: f64, rng: &mut SeedRng| {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.normal() * sigma).collect();
        t.insert(name, HostTensor::from_f64(shape, &v, DType::F32).unwrap());
    };
    put(
        "embeddings.word_embeddings.weight".into(),
        &[VOCAB, H],
        1.0,
        &mut rng,
    );
    put(
        "embeddings.position_embeddings.weight".into(),
        &[32, H],
        0.3,
        &mut rng,
    );
    put(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, H],
        0.3,
        &mut rng,
    );
    let ln = |p: &str, t: &mut BTreeMap<String, HostTensor>, rng: &mut SeedRng| {
        let g: Vec<f64> = (0..H).map(|_| 1.0 + 0.1 * rng.normal()).collect();
        let b: Vec<f64> = (0..H).map(|_| 0.1 * rng.normal()).collect();
        t.insert(
            format!("{p}.weight"),
            HostTensor::from_f64(&[H], &g, DType::F32).unwrap(),
        );
        t.insert(
            format!("{p}.bias"),
            HostTensor::from_f64(&[H], &b, DType::F32).unwrap(),
        );
    };
    ln("embeddings.LayerNorm", &mut t, &mut rng);
    for l in 0..LAYERS {
        let [q, k, v, o, i, o2] = layer_linears(l);
        for (stem, n, kk) in [
            (q, H, H),
            (k, H, H),
            (v, H, H),
            (o, H, H),
            (i, I, H),
            (o2, H, I),
        ] {
            let sigma = 1.0 / (kk as f64).sqrt();
            let w: Vec<f64> = (0..n * kk).map(|_| rng.normal() * sigma).collect();
            let b: Vec<f64> = (0..n).map(|_| 0.05 * rng.normal()).collect();
            t.insert(
                format!("{stem}.weight"),
                HostTensor::from_f64(&[n, kk], &w, DType::F32).unwrap(),
            );
            t.insert(
                format!("{stem}.bias"),
                HostTensor::from_f64(&[n], &b, DType::F32).unwrap(),
            );
        }
        ln(
            &format!("encoder.layer.{l}.attention.output.LayerNorm"),
            &mut t,
            &mut rng,
        );
        ln(
            &format!("encoder.layer.{l}.output.LayerNorm"),
            &mut t,
            &mut rng,
        );
    }
    Checkpoint {
        config: serde_json::json!({
            "model_type": "bert", "vocab_size": VOCAB, "hidden_size": H,
            "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "intermediate_size": I,
            "hidden_act": "gelu", "max_position_embeddings": 32, "type_vocab_size": 2,
            "layer_norm_eps": 1e-12
        }),
        tensors: t,
        metadata: BTreeMap::new(),
    }
}

fn ids() -> Vec<Vec<u32>> {
    vec![vec![1, 5, 9, 2], vec![3], vec![7, 8, 4, 4, 11, 30, 2]]
}

/// Saves, reloads as a model on the CPU (f32), and returns the mean-pooled embeddings.
fn embed(ck: &Checkpoint, name: &str) -> Vec<Vec<f32>> {
    let dir = tmpdir(name);
    ck.save(&dir, None).unwrap();
    let m = BertModel::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let e = m.embed(&ids(), Pooling::Mean).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    e
}

fn min_cos(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d: f64 = x
                .iter()
                .zip(y)
                .map(|(p, q)| f64::from(*p) * f64::from(*q))
                .sum();
            let n = |v: &[f32]| v.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
            d / (n(x) * n(y))
        })
        .fold(1.0, f64::min)
}

#[test]
fn save_and_reload_is_exact() {
    let ck = random_checkpoint(1);
    let a = embed(&ck, "plain");
    let dir = tmpdir("reload");
    ck.save(&dir, None).unwrap();
    let again = Checkpoint::load(&dir).unwrap();
    assert_eq!(again.tensors, ck.tensors);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(embed(&again, "plain2"), a);
}

#[test]
fn head_pruning_equals_zeroing_the_heads_output() {
    // Removing heads is the same as zeroing their columns of the output projection.
    let ck = random_checkpoint(2);
    let keep: BTreeMap<usize, Vec<usize>> = [(0, vec![0, 2, 3]), (2, vec![1])].into();
    let mut zeroed = random_checkpoint(2);
    let d = H / HEADS;
    for (&l, heads) in &keep {
        let name = format!("encoder.layer.{l}.attention.output.dense.weight");
        let mut w = zeroed.tensors[&name].to_f64();
        for h in (0..HEADS).filter(|h| !heads.contains(h)) {
            for r in 0..H {
                for c in h * d..(h + 1) * d {
                    w[r * H + c] = 0.0;
                }
            }
        }
        zeroed
            .tensors
            .insert(name, HostTensor::from_f64(&[H, H], &w, DType::F32).unwrap());
    }
    let mut pruned = ck;
    pruned.prune_heads(&keep).unwrap();
    assert_eq!(
        pruned.tensors["encoder.layer.2.attention.self.query.weight"].shape(),
        [d, H]
    );
    assert!(pruned.metadata["medkern.compression"].contains("layer 0: heads [0, 2, 3]"));
    let (a, b) = (embed(&pruned, "heads"), embed(&zeroed, "zeroed"));
    assert!(min_cos(&a, &b) > 1.0 - 1e-6, "{}", min_cos(&a, &b));
    // Bad lists are errors.
    let mut bad = random_checkpoint(2);
    assert!(bad.prune_heads(&[(0, vec![2, 1])].into()).is_err());
    assert!(bad.prune_heads(&[(0, vec![4])].into()).is_err());
}

#[test]
fn layer_dropping_keeps_the_listed_layers() {
    let ck = random_checkpoint(3);
    let mut all = random_checkpoint(3);
    all.drop_layers(&[0, 1, 2]).unwrap();
    assert_eq!(embed(&all, "all"), embed(&ck, "orig"));
    let mut two = random_checkpoint(3);
    two.drop_layers(&[0, 2]).unwrap();
    assert_eq!(two.config["num_hidden_layers"], 2);
    // Old layer 2 is new layer 1.
    assert_eq!(
        two.tensors["encoder.layer.1.output.dense.weight"],
        ck.tensors["encoder.layer.2.output.dense.weight"]
    );
    assert!(
        !two.tensors
            .keys()
            .any(|k| k.starts_with("encoder.layer.2."))
    );
    let _ = embed(&two, "two");
    assert!(random_checkpoint(3).drop_layers(&[1, 1]).is_err());
    assert!(random_checkpoint(3).drop_layers(&[3]).is_err());
}

#[test]
fn sparse24_int8_lowrank_and_combinations_round_trip() {
    let base = embed(&random_checkpoint(4), "base");
    // 2:4: every encoder Linear is 2:4 after reload; the CPU model runs the pruned weights.
    let mut s = random_checkpoint(4);
    let kept = s.sparsify_24().unwrap();
    assert!(kept > 0.5 && kept < 1.0, "{kept}");
    let dir = tmpdir("s24");
    s.save(&dir, None).unwrap();
    let back = Checkpoint::load(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    for l in 0..LAYERS {
        for stem in layer_linears(l) {
            medkern::sparse::validate_2_4(&back.tensors[&format!("{stem}.weight")]).unwrap();
            assert_eq!(back.metadata[&format!("medkern.linear.{stem}")], "sparse24");
        }
    }
    let e24 = embed(&s, "s24b");
    // int8 on its own: close to the dense model.
    let mut q = random_checkpoint(4);
    let sqnr = q.quantize_int8().unwrap();
    assert!(sqnr > 30.0, "{sqnr}");
    assert_eq!(
        q.tensors["encoder.layer.0.intermediate.dense.weight"].dtype(),
        DType::I8
    );
    let eq = embed(&q, "int8");
    assert!(
        min_cos(&eq, &base) > 0.99,
        "int8 cos {}",
        min_cos(&eq, &base)
    );
    // Low rank keeping almost all energy is nearly exact; a small rank still runs.
    let mut lr = random_checkpoint(4);
    lr.low_rank(Rank::Energy(0.999_999)).unwrap();
    let elr = embed(&lr, "lr");
    assert!(
        min_cos(&elr, &base) > 0.9999,
        "lowrank cos {}",
        min_cos(&elr, &base)
    );
    let mut lr8 = random_checkpoint(4);
    lr8.low_rank(Rank::Fixed(8)).unwrap();
    assert_eq!(
        lr8.metadata["medkern.linear.encoder.layer.1.intermediate.dense"],
        "lowrank"
    );
    assert_eq!(
        lr8.tensors["encoder.layer.1.intermediate.dense.lr_u"].shape(),
        [I, 8]
    );
    let _ = embed(&lr8, "lr8");
    // Heads pruned + 2:4 + int8, in that order; the file records all three.
    let mut all = random_checkpoint(4);
    all.prune_heads(&[(1, vec![0, 3])].into()).unwrap();
    all.sparsify_24().unwrap();
    all.quantize_int8().unwrap();
    let log = all.metadata["medkern.compression"].clone();
    assert!(
        log.contains("heads") && log.contains("2:4") && log.contains("int8"),
        "{log}"
    );
    assert_eq!(
        all.metadata["medkern.linear.encoder.layer.1.attention.self.key"],
        "sparse24+int8"
    );
    let eall = embed(&all, "all");
    assert!(
        min_cos(&eall, &e24) > 0.5,
        "combined model runs and stays related"
    );
    assert!(all.data_bytes() < random_checkpoint(4).data_bytes() / 2);
    // Order rules: int8 then 2:4 is refused.
    let mut wrong = random_checkpoint(4);
    wrong.quantize_int8().unwrap();
    assert!(wrong.sparsify_24().is_err());
}

#[test]
fn quality_report_rows() {
    use medkern::model::compress::quality;
    let dense = random_checkpoint(5);
    let (dd, dq) = (tmpdir("q-dense"), tmpdir("q-int8"));
    dense.save(&dd, None).unwrap();
    let reference = embed(&dense, "q-ref");
    let same = quality(&dd, &Device::Cpu, DType::F32, &ids(), &reference, 1).unwrap();
    assert!(same.cos_min > 1.0 - 1e-6, "{same:?}");
    assert_eq!(same.bytes, dense.data_bytes());
    let mut q = random_checkpoint(5);
    q.quantize_int8().unwrap();
    q.save(&dq, None).unwrap();
    let r = quality(&dq, &Device::Cpu, DType::F32, &ids(), &reference, 1).unwrap();
    assert!(r.cos_min > 0.99 && r.cos_min < 1.0 - 1e-9, "{r:?}");
    assert!(r.bytes < same.bytes / 2, "{r:?}");
    let _ = std::fs::remove_dir_all(&dd);
    let _ = std::fs::remove_dir_all(&dq);
}

#[test]
fn head_importance_finds_a_dead_head_and_pruning_by_it_is_lossless() {
    let mut ck = random_checkpoint(7);
    // Kill head 2 of layer 1: its output-projection columns become zero.
    let o = format!("{}.weight", layer_linears(1)[3]);
    let d = H / HEADS;
    let mut w = ck.tensors[&o].to_f64();
    for r in 0..H {
        w[r * H + 2 * d..r * H + 3 * d].fill(0.0);
    }
    ck.tensors
        .insert(o, HostTensor::from_f64(&[H, H], &w, DType::F32).unwrap());
    let mut calls = 0;
    let scores = ck
        .head_importance(&ids(), &Device::Cpu, DType::F32, |done, total| {
            calls += 1;
            assert_eq!((done, total), (calls, LAYERS * HEADS));
        })
        .unwrap();
    assert_eq!(calls, LAYERS * HEADS);
    assert_eq!(scores.len(), LAYERS);
    assert!(
        scores[1][2].abs() < 1e-9,
        "dead head scored {}",
        scores[1][2]
    );
    for (l, row) in scores.iter().enumerate() {
        for (h, &v) in row.iter().enumerate() {
            if (l, h) != (1, 2) {
                assert!(v > 1e-6, "live head {l}.{h} scored {v}");
            }
        }
    }
    // Removing the one least important head removes the dead one: embeddings unchanged.
    let keep = heads_to_keep(&scores, 1).unwrap();
    assert_eq!(keep[&1], vec![0, 1, 3]);
    assert_eq!(keep[&0].len(), HEADS);
    let dense = embed(&ck, "imp-dense");
    ck.prune_heads(&keep).unwrap();
    let pruned = embed(&ck, "imp-pruned");
    assert!(min_cos(&dense, &pruned) > 1.0 - 1e-9);
    // Pruning everything but one head per layer is allowed; one more is an Err.
    let all = heads_to_keep(&scores, LAYERS * (HEADS - 1)).unwrap();
    assert!(all.values().all(|v| v.len() == 1));
    let e = heads_to_keep(&scores, LAYERS * (HEADS - 1) + 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("prune"), "{e}");
}

/// `ck` rewritten under `family`'s Hugging Face names (ALBERT keeps layer 0 as its one shared
/// layer and gains an identity-free E = H projection), saved to a folder.
fn as_family(ck: &Checkpoint, family: &str, dir: &std::path::Path) {
    let mut config = ck.config.clone();
    let mut tensors = ck.tensors.clone();
    if family == "distilbert" {
        config = serde_json::json!({
            "model_type": "distilbert", "vocab_size": VOCAB, "dim": H, "n_layers": LAYERS,
            "n_heads": HEADS, "hidden_dim": I, "activation": "gelu",
            "max_position_embeddings": 32,
        });
        tensors.remove("embeddings.token_type_embeddings.weight");
    } else {
        config["model_type"] = serde_json::json!("albert");
        config["embedding_size"] = serde_json::json!(H);
        config["hidden_act"] = serde_json::json!("gelu_new");
        tensors
            .retain(|n, _| !n.starts_with("encoder.layer.") || n.starts_with("encoder.layer.0."));
        let mut rng = SeedRng::new(99);
        let w: Vec<f64> = (0..H * H)
            .map(|_| rng.normal() / (H as f64).sqrt())
            .collect();
        let b: Vec<f64> = (0..H).map(|_| 0.05 * rng.normal()).collect();
        tensors.insert(
            "embeddings.projection.weight".into(),
            HostTensor::from_f64(&[H, H], &w, DType::F32).unwrap(),
        );
        tensors.insert(
            "embeddings.projection.bias".into(),
            HostTensor::from_f64(&[H], &b, DType::F32).unwrap(),
        );
    }
    // Hugging Face's names, written out here (not by the loader's own mapping).
    let layer_names: [(&str, &str, &str); 8] = [
        ("attention.self.query", "attention.q_lin", "attention.query"),
        ("attention.self.key", "attention.k_lin", "attention.key"),
        ("attention.self.value", "attention.v_lin", "attention.value"),
        (
            "attention.output.dense",
            "attention.out_lin",
            "attention.dense",
        ),
        (
            "attention.output.LayerNorm",
            "sa_layer_norm",
            "attention.LayerNorm",
        ),
        ("intermediate.dense", "ffn.lin1", "ffn"),
        ("output.dense", "ffn.lin2", "ffn_output"),
        (
            "output.LayerNorm",
            "output_layer_norm",
            "full_layer_layer_norm",
        ),
    ];
    let hf = |n: &str| -> String {
        if let Some(rest) = n.strip_prefix("encoder.layer.") {
            let (l, rest) = rest.split_once('.').unwrap();
            let (stem, suffix) = rest.rsplit_once('.').unwrap();
            let (_, distil, albert) = layer_names.iter().find(|x| x.0 == stem).unwrap();
            return if family == "distilbert" {
                format!("transformer.layer.{l}.{distil}.{suffix}")
            } else {
                format!("encoder.albert_layer_groups.0.albert_layers.{l}.{albert}.{suffix}")
            };
        }
        n.replace(
            "embeddings.projection",
            "encoder.embedding_hidden_mapping_in",
        )
    };
    let prefix = format!("{family}.");
    let renamed = tensors
        .into_iter()
        .map(|(n, t)| (format!("{prefix}{}", hf(&n)), t))
        .collect();
    Checkpoint {
        config,
        tensors: renamed,
        metadata: BTreeMap::new(),
    }
    .save(dir, None)
    .unwrap();
}

#[test]
fn distilbert_and_albert_checkpoints_compress_and_reload() {
    for family in ["distilbert", "albert"] {
        let src = tmpdir(&format!("{family}-src"));
        as_family(&random_checkpoint(11), family, &src);
        // The file really holds the family's names.
        let raw = std::fs::read(src.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&raw).unwrap();
        let want = if family == "distilbert" {
            "distilbert.transformer.layer.0.attention.q_lin.weight"
        } else {
            "albert.encoder.albert_layer_groups.0.albert_layers.0.ffn_output.weight"
        };
        assert!(st.names().contains(&want), "{family}: {want}");
        let dense = BertModel::load(&src, &Device::Cpu, DType::F32)
            .unwrap()
            .embed(&ids(), Pooling::Mean)
            .unwrap();
        let mut ck = Checkpoint::load(&src).unwrap();
        let keep: BTreeMap<usize, Vec<usize>> = [(0, vec![0, 2, 3])].into();
        ck.prune_heads(&keep).unwrap();
        ck.quantize_int8().unwrap();
        if family == "albert" {
            // ALBERT shares its layer: dropping depth runs it fewer times, exactly the source
            // model with num_hidden_layers 2 and nothing else changed.
            let mut only_drop = Checkpoint::load(&src).unwrap();
            only_drop.drop_layers(&[0, 2]).unwrap();
            assert_eq!(only_drop.config["num_hidden_layers"], serde_json::json!(2));
            let dropped = embed(&only_drop, "albert-dropped");
            let mut cfg = Checkpoint::load(&src).unwrap().config;
            cfg["num_hidden_layers"] = serde_json::json!(2);
            let two = BertModel::from_safetensors(
                BertConfig::from_value(&cfg).unwrap(),
                &raw,
                &Device::Cpu,
                DType::F32,
            )
            .unwrap()
            .embed(&ids(), Pooling::Mean)
            .unwrap();
            assert_eq!(dropped, two);
            let c3 = min_cos(&dense, &two);
            assert!(c3 < 1.0 - 1e-6, "depth 2 equals depth 3 ({c3})");
            ck.drop_layers(&[0, 2]).unwrap();
            let e = ck.drop_layers(&[0, 5]).unwrap_err().to_string();
            assert!(e.contains("keep"), "{e}");
        }
        let out = tmpdir(&format!("{family}-out"));
        ck.save(&out, None).unwrap();
        let m = BertModel::load(&out, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(
            m.config.arch,
            BertConfig::from_value(&ck.config).unwrap().arch
        );
        let got = m.embed(&ids(), Pooling::Mean).unwrap();
        let cos = min_cos(&dense, &got);
        if family == "albert" {
            // Two of three repetitions plus pruning and int8: related, not equal.
            assert!(cos > 0.5 && cos < 0.9999, "{family}: cosine {cos}");
        } else {
            assert!(cos > 0.9, "{family}: cosine {cos}");
            assert!(cos < 1.0 - 1e-7, "{family}: pruning had no effect");
        }
        // Reloading the compressed folder as a checkpoint keeps the medkern names.
        let again = Checkpoint::load(&out).unwrap();
        assert!(
            again
                .tensors
                .contains_key("encoder.layer.0.attention.self.query.weight")
        );
        let _ = std::fs::remove_dir_all(&src);
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// Every file of a folder, name → bytes.
fn snapshot(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect()
}

/// Names in `dir` that look like a save's temporary or set-aside folders.
fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".medkern-tmp-") || n.contains(".medkern-old-"))
        .collect()
}

/// Issue 15, defect 7: `compress --out` equal to `--model` emptied the tokenizer files (a copy
/// onto itself) and overwrote the weights, exit 0. A save now refuses an output that is the
/// model folder, a link to it, inside it or containing it; it writes into a temporary folder
/// beside the output and renames it into place, so a failure leaves neither a half-written
/// model nor temporary files, and an existing folder is replaced only when it holds nothing
/// but an earlier output.
#[test]
fn save_never_overwrites_its_source_nor_leaves_a_half_written_model() {
    let root = tmpdir("save-safety");
    let outer = root.join("outer");
    let model = outer.join("model");
    let ck = random_checkpoint(11);
    ck.save(&model, None).unwrap();
    std::fs::write(model.join("tokenizer.json"), b"{\"tokenizer\": true}").unwrap();
    std::fs::write(model.join("vocab.txt"), b"[PAD]\n[UNK]\n").unwrap();
    let before = snapshot(&model);
    let link = root.join("link-to-model");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&model, &link).unwrap();
    let mut outs = vec![
        (model.clone(), "is the model folder"),
        (model.join("."), "is the model folder"),
        (model.join("compressed"), "is inside the model folder"),
        (outer.clone(), "contains the model folder"),
        (outer.join("..").join("outer"), "contains the model folder"),
    ];
    if cfg!(unix) {
        outs.push((link.clone(), "is the model folder"));
    }
    for (out, why) in outs {
        let e = ck
            .save(&out, Some(&model))
            .expect_err("saving onto the model")
            .to_string();
        assert!(e.contains(why), "{}: {e}", out.display());
        assert!(
            medkern::model::compress::check_out_dir(&out, &model).is_err(),
            "{}",
            out.display()
        );
        assert_eq!(
            snapshot(&model),
            before,
            "{}: the model changed",
            out.display()
        );
    }
    assert!(!model.join("compressed").exists());

    // A normal save beside it copies the tokenizer, and replaces an earlier output.
    let out = root.join("out");
    ck.save(&out, Some(&model)).unwrap();
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        b"{\"tokenizer\": true}"
    );
    let mut other = random_checkpoint(12);
    other.metadata.insert("mark".into(), "second".into());
    other.save(&out, Some(&model)).unwrap();
    let reloaded = Checkpoint::load(&out).unwrap();
    assert_eq!(
        reloaded.metadata.get("mark").map(String::as_str),
        Some("second")
    );
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));

    // A folder holding anything else is not replaced, and is left as it was.
    let mine = root.join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), b"keep me").unwrap();
    let e = ck
        .save(&mine, Some(&model))
        .expect_err("a user's folder")
        .to_string();
    assert!(e.contains("notes.txt"), "{e}");
    assert_eq!(std::fs::read(mine.join("notes.txt")).unwrap(), b"keep me");
    assert_eq!(snapshot(&mine).len(), 1);

    // A failure while writing (a tokenizer file that cannot be copied) leaves the earlier
    // output intact and no temporary folder.
    let broken = root.join("broken-model");
    ck.save(&broken, None).unwrap();
    std::fs::create_dir(broken.join("tokenizer.json")).unwrap(); // a folder: copy fails
    let earlier = snapshot(&out);
    assert!(ck.save(&out, Some(&broken)).is_err());
    assert_eq!(snapshot(&out), earlier, "the earlier output changed");
    let fresh = root.join("fresh");
    assert!(ck.save(&fresh, Some(&broken)).is_err());
    assert!(!fresh.exists(), "a half-written output was left");
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
    let _ = std::fs::remove_dir_all(&root);
}

/// Every compressed form of the random checkpoint (int8, 2:4, 2:4 + int8, low rank, pruned
/// heads, and the dense original) runs on the test device (a GPU, or the emulated one under
/// MEDKERN_TEST_DEVICE=emu) in f16 and bf16 against the CPU backend in f32: the real launchers of
/// the int8, 2:4 and low-rank Linears inside a whole forward. The bound is the dense models' (tests/bert.rs
/// `low_precision_rel`, 4·u·√(1 + 7·layers) per token), where for the int8 forms each Linear's
/// input also goes through int8 (half a step, 1/254 of its row's absmax, added to u): both
/// sides quantise per token, and a value the two round differently lands one step apart.
/// Measured on the emulated GPU: int8 f16 2.0e-2 (bound 8.3e-2), dense f16 1.4e-3 (9.2e-3).
#[test]
fn gpu_compressed_checkpoints_match_cpu() {
    let Some(dev) = test_device("gpu_compressed_checkpoints_match_cpu") else {
        return;
    };
    type Step = fn(&mut Checkpoint);
    let forms: [(&str, Step, bool); 8] = [
        (
            "int4",
            |c| {
                let stems = c.linear_stems().unwrap();
                c.quantize_bits(&stems.into_iter().map(|s| (s, 4)).collect())
                    .unwrap();
            },
            false,
        ),
        (
            "mixed-bits-int8-embeddings",
            |c| {
                let stems = c.linear_stems().unwrap();
                let bits = stems
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| (s, if i % 3 == 0 { 8 } else { 4 }))
                    .collect();
                c.quantize_bits(&bits).unwrap();
                c.compress_embeddings(DType::I8).unwrap();
            },
            true,
        ),
        ("dense", |_| {}, false),
        (
            "int8",
            |c| {
                c.quantize_int8().unwrap();
            },
            true,
        ),
        (
            "sparse24",
            |c| {
                c.sparsify_24().unwrap();
            },
            false,
        ),
        (
            "sparse24-int8",
            |c| {
                c.sparsify_24().unwrap();
                c.quantize_int8().unwrap();
            },
            true,
        ),
        (
            "lowrank",
            |c| {
                c.low_rank(Rank::Fixed(16)).unwrap();
            },
            false,
        ),
        (
            "heads",
            |c| c.prune_heads(&[(1, vec![0, 3])].into()).unwrap(),
            false,
        ),
    ];
    let ids = ids();
    for (name, step, int8) in forms {
        let mut ck = random_checkpoint(4);
        step(&mut ck);
        let dir = tmpdir(&format!("gpu-{name}"));
        ck.save(&dir, None).unwrap();
        let cpu = BertModel::load(&dir, &Device::Cpu, DType::F32).unwrap();
        let want = cpu
            .forward(&ids, None)
            .unwrap()
            .0
            .to_host()
            .unwrap()
            .to_f64();
        for dt in [DType::F16, DType::BF16] {
            let m = BertModel::load(&dir, &dev, dt).unwrap();
            let got = m.forward(&ids, None).unwrap().0.to_host().unwrap().to_f64();
            let u = dt.unit_roundoff() + if int8 { 0.5 / 127.0 } else { 0.0 };
            let rel = 4.0 * u * ((1 + 7 * LAYERS) as f64).sqrt();
            let mut worst = 0.0f64;
            for (t, (g, w)) in got.chunks(H).zip(want.chunks(H)).enumerate() {
                let n = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
                let r = n(&mut g.iter().zip(w).map(|(a, b)| a - b)) / n(&mut w.iter().copied());
                assert!(
                    r <= rel,
                    "{name} {dt} on {}: token {t}: relative error {r:e} > {rel:e}",
                    dev.describe()
                );
                worst = worst.max(r);
            }
            println!(
                "{name} {dt} on {}: worst per-token relative error {worst:.2e} (bound {rel:.2e})",
                dev.describe()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Issue 15: a model folder's config.json that does not parse or validate is the folder's
/// content, Error::Corrupt (as BertModel::load has it), not the caller's Error::Invalid.
#[test]
fn checkpoint_config_errors_are_corrupt() {
    let dir = TempDir::new("compress-bad-config");
    for (what, text) in [
        ("not JSON", "{\"hidden_size\": 4,".to_string()),
        (
            "heads not dividing the width",
            serde_json::json!({
                "vocab_size": 10, "hidden_size": 100, "num_hidden_layers": 1,
                "num_attention_heads": 3, "intermediate_size": 8,
            })
            .to_string(),
        ),
    ] {
        std::fs::write(dir.path().join("config.json"), text).expect("config");
        let e = Checkpoint::load(dir.path()).err().expect(what);
        assert!(
            matches!(&e, medkern::Error::Corrupt { arg: "config", .. }),
            "{what}: {e:?}"
        );
    }
}

/// The random checkpoint with the weight of `stem` replaced by `w` (the fake-quantised
/// reference of a compressed Linear).
fn with_weight(mut ck: Checkpoint, stem: &str, w: Vec<f64>) -> Checkpoint {
    let name = format!("{stem}.weight");
    let shape = ck.tensors[&name].shape().to_vec();
    ck.tensors
        .insert(name, HostTensor::from_f64(&shape, &w, DType::F32).unwrap());
    ck
}

#[test]
fn int4_linears_store_packed_and_run_their_dequantised_weights() {
    use medkern::model::compress::unpack_int4;
    use medkern::quant::{Clip, quantize_weight_int4};
    let stems: Vec<String> = (0..LAYERS).flat_map(layer_linears).collect();
    let mut q = random_checkpoint(6);
    // The reference: each weight replaced by its int4 values times its f16 group scale, on
    // the dense path; the compressed file must run exactly those values.
    let mut reference = random_checkpoint(6);
    for stem in &stems {
        let w = &reference.tensors[&format!("{stem}.weight")];
        let k = w.shape()[1];
        let wq =
            quantize_weight_int4(w, if k % 128 == 0 { 128 } else { 64 }, Clip::AbsMax).unwrap();
        reference = with_weight(reference, stem, wq.dequantize());
    }
    let bits: BTreeMap<String, u8> = stems.iter().map(|s| (s.clone(), 4)).collect();
    let sqnr = q.quantize_bits(&bits).unwrap();
    assert!(sqnr > 12.0 && sqnr < 30.0, "int4 SQNR {sqnr} dB");
    let dir = tmpdir("int4");
    q.save(&dir, None).unwrap();
    let back = Checkpoint::load(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stem = "encoder.layer.1.intermediate.dense";
    assert_eq!(back.metadata[&format!("medkern.linear.{stem}")], "int4");
    let packed = &back.tensors[&format!("{stem}.weight_packed")];
    let scales = &back.tensors[&format!("{stem}.weight_scale")];
    assert_eq!(
        (packed.dtype(), packed.shape()),
        (DType::U8, &[I, H / 2][..])
    );
    assert_eq!((scales.dtype(), scales.shape()), (DType::F16, &[I, 1][..]));
    // Unpacking gives back the quantiser's values, in order.
    let original = random_checkpoint(6);
    let wq = quantize_weight_int4(
        &original.tensors[&format!("{stem}.weight")],
        128,
        Clip::AbsMax,
    )
    .unwrap();
    assert_eq!(unpack_int4(packed.bytes()), wq.q);
    // Int4 Linears are a quarter of f32 plus the scales.
    let dense_w: usize = stems
        .iter()
        .map(|s| original.tensors[&format!("{s}.weight")].bytes().len())
        .sum();
    let int4_w: usize = stems
        .iter()
        .map(|s| {
            back.tensors[&format!("{s}.weight_packed")].bytes().len()
                + back.tensors[&format!("{s}.weight_scale")].bytes().len()
        })
        .sum();
    assert!(
        int4_w * 8 > dense_w && int4_w * 7 < dense_w,
        "{int4_w} vs {dense_w}"
    );
    let e = embed(&q, "int4-run");
    let r = embed(&reference, "int4-ref");
    let worst = e
        .iter()
        .flatten()
        .zip(r.iter().flatten())
        .map(|(a, b)| (a - b).abs() / (1e-3 + b.abs()))
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-3,
        "int4 model vs its dequantised reference: {worst}"
    );
    // And it is the lossy thing it claims to be: not the dense model.
    assert!(min_cos(&e, &embed(&random_checkpoint(6), "int4-dense")) < 0.999_99);
}

#[test]
fn bits_auto_keeps_the_sensitive_linear_in_int8_and_meets_the_budget() {
    use medkern::model::compress::{Budget, choose_bits, linear_bytes};
    let mut ck = random_checkpoint(7);
    // Plant a Linear that int4 wrecks: one huge weight per row makes every other value round
    // to zero at 4 bits (at 8 bits they keep ~5 significant bits).
    let planted = "encoder.layer.1.attention.self.value";
    let name = format!("{planted}.weight");
    let mut w = ck.tensors[&name].to_f64();
    for r in 0..H {
        w[r * H + (r * 7) % H] = 40.0 / (H as f64).sqrt();
    }
    ck = with_weight(ck, planted, w);
    let sens = ck
        .int4_sensitivity(&ids(), &Device::Cpu, DType::F32, |_, _| {})
        .unwrap();
    assert_eq!(sens.len(), 6 * LAYERS);
    let worst = sens
        .iter()
        .max_by(|a, b| a.damage.total_cmp(&b.damage))
        .unwrap();
    assert_eq!(worst.stem, planted, "{sens:#?}");
    assert!(sens.iter().all(|s| s.damage.is_finite() && s.damage >= 0.0));
    // A budget halfway between all-int8 and all-int4: some Linears, never the planted one,
    // go to 4 bits, and the saved file fits.
    let weights: usize = sens
        .iter()
        .map(|s| ck.tensors[&format!("{}.weight", s.stem)].bytes().len())
        .sum();
    let other = ck.data_bytes() - weights;
    let all8: usize = sens.iter().map(|s| linear_bytes(s.n, s.k, 8, 0)).sum();
    let all4: usize = sens
        .iter()
        .map(|s| linear_bytes(s.n, s.k, 4, if s.k % 128 == 0 { 128 } else { 64 }))
        .sum();
    let budget = other + (all8 + all4) / 2;
    let bits = choose_bits(&sens, other, budget).unwrap();
    assert_eq!(bits[planted], 8, "{bits:?}");
    let fours = bits.values().filter(|&&b| b == 4).count();
    assert!(fours > 0 && fours < bits.len(), "{bits:?}");
    ck.quantize_bits(&bits).unwrap();
    assert!(ck.data_bytes() <= budget, "{} > {budget}", ck.data_bytes());
    let dir = tmpdir("auto");
    ck.save(&dir, None).unwrap();
    let back = Checkpoint::load(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(back.data_bytes(), ck.data_bytes());
    assert_eq!(back.metadata[&format!("medkern.linear.{planted}")], "int8");
    // Budgets that need nothing, and one nothing can meet.
    let none = choose_bits(&sens, other, other + all8).unwrap();
    assert!(none.values().all(|&b| b == 8));
    let e = choose_bits(&sens, other, other + all4 - 1).unwrap_err();
    assert!(e.to_string().contains("smallest"), "{e}");
    // Budget syntax.
    assert_eq!(Budget::parse("12MB").unwrap(), Budget::Bytes(12_000_000));
    assert_eq!(Budget::parse("2MiB").unwrap(), Budget::Bytes(2 << 20));
    assert_eq!(Budget::parse("6x").unwrap(), Budget::Ratio(6.0));
    assert_eq!(Budget::parse("6x").unwrap().bytes(600), 100);
    for bad in ["", "x", "0.5x", "-3MB", "NaN", "12GB", "1e40"] {
        assert!(Budget::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn word_embeddings_in_int8_or_f16_reload_and_stay_close() {
    let base = embed(&random_checkpoint(8), "emb-base");
    let dense = random_checkpoint(8).data_bytes();
    let word = VOCAB * H;
    for (dt, saved, min) in [
        (DType::I8, word * 3 - 4 * VOCAB, 0.999),
        (DType::F16, word * 2, 0.999_99),
    ] {
        let mut ck = random_checkpoint(8);
        let sqnr = ck.compress_embeddings(dt).unwrap();
        assert!(sqnr > 30.0, "{dt}: {sqnr} dB");
        assert_eq!(ck.data_bytes(), dense - saved, "{dt}");
        let dir = tmpdir(&format!("emb-{dt}"));
        ck.save(&dir, None).unwrap();
        let back = Checkpoint::load(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            back.tensors["embeddings.word_embeddings.weight"].dtype(),
            dt
        );
        assert_eq!(back.data_bytes(), ck.data_bytes());
        let e = embed(&ck, &format!("emb-{dt}-run"));
        let c = min_cos(&e, &base);
        assert!(c > min, "{dt}: cos {c}");
        assert_ne!(e, base, "{dt}: the embeddings did not change at all");
        assert!(ck.compress_embeddings(DType::BF16).is_err());
    }
    let mut twice = random_checkpoint(8);
    twice.compress_embeddings(DType::I8).unwrap();
    assert!(twice.compress_embeddings(DType::I8).is_err());
}

#[test]
fn cli_bits_auto_meets_a_budget_and_reports_bits_per_linear() {
    let Some(minilm) = model_or_skip(
        "cli_bits_auto_meets_a_budget_and_reports_bits_per_linear",
        "all-MiniLM-L6-v2",
    ) else {
        return;
    };
    // The random checkpoint with MiniLM's vocabulary size, so its tokenizer runs on it.
    const V: usize = 30522;
    let mut ck = random_checkpoint(9);
    let mut rng = SeedRng::new(9);
    let word: Vec<f64> = (0..V * H).map(|_| rng.normal()).collect();
    ck.tensors.insert(
        "embeddings.word_embeddings.weight".into(),
        HostTensor::from_f64(&[V, H], &word, DType::F32).unwrap(),
    );
    ck.config["vocab_size"] = V.into();
    let model = tmpdir("cli-bits-model");
    ck.save(&model, Some(&minilm)).unwrap();
    // The budget: halfway between every Linear in int8 and every Linear in int4, after the
    // word embeddings go to int8.
    use medkern::model::compress::linear_bytes;
    ck.compress_embeddings(DType::I8).unwrap();
    let (dims, other) = ck.bits_layout().unwrap();
    let all8: usize = dims.iter().map(|d| linear_bytes(d.n, d.k, 8, 0)).sum();
    let all4: usize = dims.iter().map(|d| linear_bytes(d.n, d.k, 4, 128)).sum();
    let budget = other + (all8 + all4) / 2;
    let out = tmpdir("cli-bits-out");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_medkern"))
            .args(["compress", "--device", "cpu", "--model"])
            .arg(&model)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let budget_arg = format!("{}MB", budget as f64 / 1e6);
    let o = run(&[
        "--bits",
        "auto",
        "--budget",
        &budget_arg,
        "--embeddings",
        "int8",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = r["bits"].as_array().unwrap();
    assert_eq!(rows.len(), dims.len());
    let fours = rows.iter().filter(|x| x["bits"] == 4).count();
    assert!(fours > 0 && fours < rows.len(), "{rows:?}");
    assert!(rows.iter().all(|x| x["int4_damage"].as_f64().is_some()));
    let bytes = r["compressed"]["bytes"].as_u64().unwrap() as usize;
    assert!(bytes <= budget, "{bytes} > {budget}");
    let cos = r["compressed"]["cosine_min"].as_f64().unwrap();
    assert!(cos > 0.9 && cos < 1.0, "{cos}");
    assert_eq!(r["embeddings"]["dtype"], "int8");
    // An unreachable budget fails before any measurement, naming the smallest size.
    let o = run(&["--bits", "auto", "--budget", "20x"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--budget") && err.contains("smallest"),
        "{err}"
    );
    // --bits 4 needs no budget; a budget without auto, and bits other than 4/8/auto, are refused.
    let o = run(&["--bits", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["bits"].as_array().unwrap().iter().all(|x| x["bits"] == 4));
    for bad in [
        &["--bits", "4", "--budget", "3x"][..],
        &["--bits", "3"],
        &["--bits", "auto"],
    ] {
        let o = run(bad);
        assert!(!o.status.success(), "{bad:?} accepted");
    }
    let _ = std::fs::remove_dir_all(&model);
    let _ = std::fs::remove_dir_all(&out);
}
