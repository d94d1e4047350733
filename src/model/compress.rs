//! Offline compression of BERT-family checkpoints. A [`Checkpoint`] is the host copy of a model
//! folder (config + tensors + metadata); each method rewrites tensors in place and records
//! itself in the metadata, so the saved folder reloads by itself through
//! [`crate::model::bert::BertModel::load`]:
//! Works on BERT, DistilBERT and ALBERT folders: tensors are held under medkern's (BERT) names
//! ([`crate::model::bert::BertConfig::canonical_name`]) and saved that way.
//! - attention-head pruning (explicit per-layer lists, or the least important heads model-wide
//!   by [`Checkpoint::head_importance`] on sample inputs; layers may end uneven),
//! - layer dropping (LayerDrop-style: keep a list, e.g. every other layer; ALBERT runs its
//!   shared layer fewer times),
//! - 2:4 magnitude pruning of every encoder Linear (`medkern.linear.<name>` = `sparse24`),
//! - int8 W8A8, Q8BERT scheme: symmetric per-channel int8 weights + f32 scales, activations
//!   quantised per token at run time; softmax/LayerNorm/GELU stay in float (`int8`, or
//!   `sparse24+int8` after 2:4 pruning),
//! - low-rank factorisation `W ≈ U·V` by truncated SVD, by rank or kept energy (`lowrank`),
//! - Q-BERT-style mixed precision: each Linear's weight in int4 (W4A16, group-wise f16 scales:
//!   `int4`) or int8 (W8A8), bits picked per Linear by measured sensitivity to meet a size
//!   budget ([`Checkpoint::int4_sensitivity`], [`choose_bits`], [`Checkpoint::quantize_bits`]),
//! - word embeddings stored in int8 with one f32 scale per row, or in f16
//!   ([`Checkpoint::compress_embeddings`]).
//!
//!
//! MobileBERT folders (`model_type` `mobilebert`) take head pruning, 2:4, int8 and low rank on
//! their own Linear list ([`crate::model::mobilebert::layer_linears`]; names kept as Hugging
//! Face's without the `mobilebert.` prefix) and reload through
//! [`crate::model::mobilebert::MobileBertModel`] ([`Checkpoint::mobilebert_model`]), which folds
//! NoNorm into whatever form each Linear takes.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::bert::{Arch, BertConfig, BertModel, Pooling};
use crate::model::linear::LinearKind;
use crate::model::mobilebert::{self, MobileBertConfig, MobileBertModel};
use crate::quant::{Clip, QuantizedWeight, quantize_weight, quantize_weight_int4};
use crate::sparse::prune_2_4;
use crate::tensor::{Device, HostTensor};
use std::collections::BTreeMap;
use std::path::Path;

const OP: &str = "compress";

/// Sample sentences for head importance and the quality report (`medkern compress` default).
pub const SAMPLE_SENTENCES: [&str; 8] = [
    "Patient presents with shortness of breath and a persistent dry cough for three days.",
    "Chest X-ray shows bilateral patchy opacities consistent with viral pneumonia.",
    "Oxygen saturation dropped to 89 percent on room air; started on two litres nasal cannula.",
    "No history of diabetes or hypertension; non-smoker.",
    "Lactate 3.1 mmol/L, blood cultures drawn, broad-spectrum antibiotics started for suspected sepsis.",
    "The discharge summary notes full recovery and a follow-up appointment in two weeks.",
    "A cat sat quietly on the windowsill watching the rain.",
    "Troponin negative, ECG sinus rhythm without ST changes.",
];

/// The tokenizer files [`Checkpoint::save`] copies from the source folder.
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
];

/// The sentence-transformers files [`Checkpoint::save`] copies from the source folder, besides
/// each module folder's `config.json` (`1_Pooling/config.json`), so that the output embeds as
/// the source does.
const SENTENCE_FILES: [&str; 3] = [
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
];

/// Whether `name` is a sentence-transformers module folder name (`1_Pooling`, `2_Normalize`):
/// digits, `_`, then letters, digits or `_`.
fn is_module_folder(name: &str) -> bool {
    name.split_once('_').is_some_and(|(n, rest)| {
        !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && !rest.is_empty()
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// Refuses a source folder whose sentence-transformers modules a compressed copy could not
/// keep: modules medkern does not run, or a Transformer outside the folder's root (the
/// compressed weights are written there). Checked before any work.
pub fn check_sentence_modules(model: &Path) -> Result<()> {
    let Some(st) = crate::model::sentence::read(model)? else {
        return Ok(());
    };
    if st.module_paths.first().is_some_and(|p| !p.is_empty()) {
        return Err(invalid(
            "model",
            format!(
                "{}: modules.json puts the Transformer in {}; expected it at the folder's root                  (path \"\"), where the compressed weights are written",
                model.display(),
                st.transformer_dir.display()
            ),
        ));
    }
    Ok(())
}

/// `p` with links and `..` resolved, also when it does not exist yet (its nearest existing
/// ancestor is resolved and the rest appended).
fn resolved(p: &Path) -> std::path::PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => resolved(parent).join(name),
        (_, Some(name)) => std::env::current_dir()
            .map(|d| resolved(&d).join(name))
            .unwrap_or_else(|_| p.to_path_buf()),
        _ => p.to_path_buf(),
    }
}

/// Refuses an output folder `out` that would overwrite or contain the model folder `model`:
/// the same folder (also through a link), a folder inside it, or one that contains it.
/// `medkern compress` calls it before any work; [`Checkpoint::save`] calls it too.
pub fn check_out_dir(out: &Path, model: &Path) -> Result<()> {
    let (o, m) = (resolved(out), resolved(model));
    let why = if o == m {
        "is the model folder"
    } else if o.starts_with(&m) {
        "is inside the model folder"
    } else if m.starts_with(&o) {
        "contains the model folder"
    } else {
        return Ok(());
    };
    Err(invalid(
        "out",
        format!(
            "{} {why} {} (resolved: {} and {}); expected a separate folder, so that the \
             model is not overwritten",
            out.display(),
            model.display(),
            o.display(),
            m.display()
        ),
    ))
}

/// An existing `dir` may be replaced only when it is a folder that is empty or holds only
/// the files a save writes.
fn check_replaceable(dir: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return Ok(());
    };
    if !meta.is_dir() {
        return Err(invalid(
            "out",
            format!(
                "{} exists and is not a folder; expected a new or empty folder",
                dir.display()
            ),
        ));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Io {
        op: OP,
        path: dir.display().to_string(),
        source: e,
    })?;
    for e in entries {
        let e = e.map_err(|e| Error::Io {
            op: OP,
            path: dir.display().to_string(),
            source: e,
        })?;
        let name = e.file_name().to_string_lossy().into_owned();
        let is_file = e.file_type().is_ok_and(|t| t.is_file());
        let ours = name == "config.json"
            || name == "model.safetensors"
            || TOKENIZER_FILES.contains(&name.as_str())
            || SENTENCE_FILES.contains(&name.as_str());
        let module = e.file_type().is_ok_and(|t| t.is_dir())
            && is_module_folder(&name)
            && holds_only_config(&e.path());
        if !((ours && is_file) || module) {
            return Err(invalid(
                "out",
                format!(
                    "{} exists and holds {name}, which a save does not write; expected a new \
                     or empty folder, or an earlier output (nothing else is replaced)",
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Whether the folder `dir` is empty or holds only a regular `config.json` (a module folder a
/// save writes).
fn holds_only_config(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.into_iter().all(|e| {
            e.is_ok_and(|e| {
                e.file_name() == "config.json" && e.file_type().is_ok_and(|t| t.is_file())
            })
        })
    })
}

/// A file's unusable content (weights, a config read from a file): [`Error::Corrupt`].
fn corrupt(arg: &'static str, detail: String) -> Error {
    Error::Corrupt {
        op: OP,
        arg,
        detail,
    }
}

fn invalid(arg: &'static str, detail: String) -> Error {
    Error::Invalid {
        op: OP,
        arg,
        detail,
    }
}

/// The Linear layers of encoder layer `l`, by name stem.
pub fn layer_linears(l: usize) -> [String; 6] {
    let p = format!("encoder.layer.{l}");
    [
        format!("{p}.attention.self.query"),
        format!("{p}.attention.self.key"),
        format!("{p}.attention.self.value"),
        format!("{p}.attention.output.dense"),
        format!("{p}.intermediate.dense"),
        format!("{p}.output.dense"),
    ]
}

/// A model folder on the host: `config.json` as JSON, every tensor (names without any `bert.`
/// prefix) as f32 (int8 weights as i8), and the safetensors metadata.
pub struct Checkpoint {
    pub config: serde_json::Value,
    pub tensors: BTreeMap<String, HostTensor>,
    pub metadata: BTreeMap<String, String>,
}

/// How much a low-rank factorisation keeps.
#[derive(Clone, Copy, Debug)]
pub enum Rank {
    /// At most this rank (rounded up to a multiple of 8 for the tensor-core GEMM).
    Fixed(usize),
    /// The smallest rank keeping this fraction of the squared singular values (0..=1).
    Energy(f64),
}

impl Checkpoint {
    /// Reads `dir/config.json` and `dir/model.safetensors`.
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |f: &str| crate::input::read_regular(OP, &dir.join(f), f);
        // A bad config is reported before a missing weights file.
        let (config, arch) = Self::config_of(&read("config.json")?)?;
        Self::with_config(config, arch, &read("model.safetensors")?)
    }

    /// [`Checkpoint::load`] from the bytes of `config.json` and `model.safetensors`.
    pub fn from_bytes(config_json: &[u8], weights: &[u8]) -> Result<Self> {
        let (config, arch) = Self::config_of(config_json)?;
        Self::with_config(config, arch, weights)
    }

    fn config_of(config_json: &[u8]) -> Result<(serde_json::Value, Naming)> {
        // The folder's config is the file's content: its errors are Error::Corrupt.
        let config: serde_json::Value = serde_json::from_slice(config_json)
            .map_err(|e| corrupt("config", format!("config.json: {e}")))?;
        let naming = if is_mobilebert(&config) {
            MobileBertConfig::from_value(&config).map_err(Error::into_corrupt)?;
            Naming::MobileBert
        } else {
            Naming::Bert(BertConfig::from_value(&config).map_err(Error::into_corrupt)?)
        };
        Ok((config, naming))
    }

    fn with_config(config: serde_json::Value, arch: Naming, bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| corrupt("weights", format!("not a safetensors file: {e}")))?;
        let metadata: BTreeMap<String, String> = safetensors::SafeTensors::read_metadata(bytes)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut tensors = BTreeMap::new();
        for (name, t) in st.tensors() {
            use safetensors::Dtype as S;
            let d = t.data();
            let shape = t.shape().to_vec();
            // medkern (BERT) names for every family; pretraining heads and buffers dropped.
            let key = match &arch {
                Naming::Bert(c) => c.canonical_name(&name),
                Naming::MobileBert => mobilebert::canonical_name(&name),
            };
            let Some(key) = key else {
                continue;
            };
            let ht = match t.dtype() {
                S::F32 => HostTensor::new(
                    &shape,
                    d.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect::<Vec<f32>>(),
                )?,
                // Kept in f16: a compressed checkpoint's f16 scales and embeddings stay their
                // size when it is loaded again (data_bytes, a second save).
                S::F16 => HostTensor::new(
                    &shape,
                    d.chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
                        .collect::<Vec<half::f16>>(),
                )?,
                S::BF16 => HostTensor::new(
                    &shape,
                    d.chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect::<Vec<f32>>(),
                )?,
                S::I8 => HostTensor::new(&shape, d.iter().map(|&b| b as i8).collect::<Vec<i8>>())?,
                // Packed int4 weights (two values a byte).
                S::U8 => HostTensor::new(&shape, d.to_vec())?,
                // Buffers such as position_ids (I64) are not weights; they are not needed.
                _ => continue,
            };
            tensors.insert(key, ht);
        }
        Ok(Checkpoint {
            config,
            tensors,
            metadata,
        })
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` (with the metadata), and copies the
    /// tokenizer and sentence-transformers files (`modules.json`, `1_Pooling/config.json`, ...)
    /// from `tokenizer_from` when given.
    ///
    /// Nothing a user had is lost, and a failure never leaves a half-written model: `dir` may
    /// not be `tokenizer_from`, inside it or contain it (links resolved; see
    /// [`check_out_dir`]); everything is written into a temporary folder beside `dir` and
    /// renamed into place. An existing `dir` must be empty or hold only the files a save
    /// writes (an earlier output); it is then replaced.
    pub fn save(&self, dir: &Path, tokenizer_from: Option<&Path>) -> Result<()> {
        let io = |path: &Path, e: std::io::Error| Error::Io {
            op: OP,
            path: path.display().to_string(),
            source: e,
        };
        if let Some(src) = tokenizer_from {
            check_out_dir(dir, src)?;
            check_sentence_modules(src)?;
        }
        check_replaceable(dir)?;
        let name = dir
            .file_name()
            .ok_or_else(|| {
                invalid(
                    "out",
                    format!("{}: expected a folder name to write to", dir.display()),
                )
            })?
            .to_string_lossy()
            .into_owned();
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| io(&parent, e))?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let tag = format!("{}-{stamp}", std::process::id());
        let tmp = parent.join(format!(".{name}.medkern-tmp-{tag}"));
        std::fs::create_dir(&tmp).map_err(|e| io(&tmp, e))?;
        let written = self.write_files(&tmp, tokenizer_from);
        let placed = written.and_then(|()| {
            if !dir.exists() {
                return std::fs::rename(&tmp, dir).map_err(|e| io(dir, e));
            }
            // Replace an earlier output: move it aside, move the new one in, drop the old.
            let old = parent.join(format!(".{name}.medkern-old-{tag}"));
            std::fs::rename(dir, &old).map_err(|e| io(dir, e))?;
            if let Err(e) = std::fs::rename(&tmp, dir) {
                let _ = std::fs::rename(&old, dir);
                return Err(io(dir, e));
            }
            std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))
        });
        if placed.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        placed
    }

    /// The files of a save, into the existing folder `dir`.
    fn write_files(&self, dir: &Path, tokenizer_from: Option<&Path>) -> Result<()> {
        let io = |path: &Path, e: std::io::Error| Error::Io {
            op: OP,
            path: path.display().to_string(),
            source: e,
        };
        let cfg = serde_json::to_vec_pretty(&self.config)
            .map_err(|e| invalid("config", e.to_string()))?;
        std::fs::write(dir.join("config.json"), cfg)
            .map_err(|e| io(&dir.join("config.json"), e))?;
        let bytes = self.safetensors_bytes()?;
        let path = dir.join("model.safetensors");
        std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;
        if let Some(src) = tokenizer_from {
            let copy = |f: &str| -> Result<()> {
                if src.join(f).exists() {
                    // Read, then written: a FIFO or device among them is an error, not a
                    // copy that never ends.
                    let bytes = crate::input::read_regular(OP, &src.join(f), f)?;
                    std::fs::write(dir.join(f), bytes).map_err(|e| io(&dir.join(f), e))?;
                }
                Ok(())
            };
            for f in TOKENIZER_FILES.iter().chain(&SENTENCE_FILES) {
                copy(f)?;
            }
            // The module folders (checked relative paths): each one present, with its
            // config.json; the Normalize folder is empty on the hub.
            if let Some(st) = crate::model::sentence::read(src)? {
                for p in st.module_paths.iter().filter(|p| !p.is_empty()) {
                    if src.join(p).is_dir() {
                        std::fs::create_dir_all(dir.join(p)).map_err(|e| io(&dir.join(p), e))?;
                        copy(&format!("{p}/config.json"))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The tensors and metadata as one safetensors file.
    pub fn safetensors_bytes(&self) -> Result<Vec<u8>> {
        let mut views = Vec::with_capacity(self.tensors.len());
        for (name, t) in &self.tensors {
            let dt = match t.dtype() {
                DType::F32 => safetensors::Dtype::F32,
                DType::F16 => safetensors::Dtype::F16,
                DType::I8 => safetensors::Dtype::I8,
                DType::U8 => safetensors::Dtype::U8,
                other => {
                    return Err(invalid(
                        "tensors",
                        format!("{name} has dtype {other}; checkpoints hold f32, f16, i8 or u8"),
                    ));
                }
            };
            let view = safetensors::tensor::TensorView::new(dt, t.shape().to_vec(), t.bytes())
                .map_err(|e| invalid("tensors", format!("{name}: {e}")))?;
            views.push((name.clone(), view));
        }
        let meta: std::collections::HashMap<String, String> =
            self.metadata.clone().into_iter().collect();
        safetensors::serialize(views, Some(meta))
            .map_err(|e| invalid("tensors", format!("serialize: {e}")))
    }

    /// The MobileBERT model this checkpoint describes, on `device` in `dtype`.
    pub fn mobilebert_model(&self, device: &Device, dtype: DType) -> Result<MobileBertModel> {
        MobileBertModel::from_safetensors(
            MobileBertConfig::from_value(&self.config)?,
            &self.safetensors_bytes()?,
            device,
            dtype,
        )
    }

    /// Whether this is a MobileBERT checkpoint (`model_type` `mobilebert`).
    pub fn is_mobilebert(&self) -> bool {
        is_mobilebert(&self.config)
    }

    /// The compressible Linear stems of stored layer `l` (BERT's six, or MobileBERT's list).
    pub fn linears(&self, l: usize) -> Result<Vec<String>> {
        if self.is_mobilebert() {
            Ok(mobilebert::layer_linears(
                &MobileBertConfig::from_value(&self.config)?,
                l,
            ))
        } else {
            Ok(layer_linears(l).to_vec())
        }
    }

    /// Attention head width (MobileBERT: its bottleneck width over the heads).
    fn head_dim(&self) -> Result<usize> {
        if self.is_mobilebert() {
            Ok(MobileBertConfig::from_value(&self.config)?.head_dim())
        } else {
            Ok(self.bert_config()?.head_dim())
        }
    }

    /// The model this checkpoint describes, on `device` in `dtype`.
    pub fn model(&self, device: &Device, dtype: DType) -> Result<BertModel> {
        BertModel::from_safetensors(
            self.bert_config()?,
            &self.safetensors_bytes()?,
            device,
            dtype,
        )
    }

    /// Attention-head importance by ablation (Michel et al. 2019 ablate heads too, but rank
    /// them by a gradient proxy on a task loss; this needs no labels or gradients):
    /// for each stored layer and head, `1 - mean cosine` between the mean-pooled embeddings of
    /// `ids` with that head's output zeroed and the unpruned model's. Higher = more important.
    /// `progress(done, total)` is called after each head.
    pub fn head_importance(
        &self,
        ids: &[Vec<u32>],
        device: &Device,
        dtype: DType,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Vec<Vec<f64>>> {
        if ids.is_empty() || ids.iter().any(Vec::is_empty) {
            return Err(invalid(
                "ids",
                "head importance needs at least one non-empty sample sequence".into(),
            ));
        }
        let c = self.bert_config()?;
        let d = c.head_dim();
        // The batch is the caller's ids, already in memory: bound it where it is made
        // (BertTokenizer::with_max_batch); the models here take it whole.
        let reference = self
            .model(device, dtype)?
            .with_max_batch(ids.len())
            .embed(ids, Pooling::Mean)?;
        let mut work = Checkpoint {
            config: self.config.clone(),
            tensors: self.tensors.clone(),
            metadata: self.metadata.clone(),
        };
        let heads: Vec<usize> = (0..c.stored_layers())
            .map(|l| {
                let [q, .., o, _, _] = layer_linears(l);
                if self.kind(&q) != LinearKind::Dense || self.kind(&o) != LinearKind::Dense {
                    return Err(invalid(
                        "heads",
                        format!("head importance needs dense attention weights ({q})"),
                    ));
                }
                let w = self
                    .tensors
                    .get(&format!("{q}.weight"))
                    .ok_or_else(|| invalid("tensors", format!("missing tensor {q}.weight")))?;
                Ok(w.shape()[0] / d)
            })
            .collect::<Result<_>>()?;
        let total: usize = heads.iter().sum();
        let mut done = 0;
        let mut scores = Vec::with_capacity(heads.len());
        for (l, &nh) in heads.iter().enumerate() {
            let o = format!("{}.weight", layer_linears(l)[3]);
            let orig = work.take(&o)?;
            let (n, k) = (orig.shape()[0], orig.shape()[1]);
            let vals = orig.to_f64();
            let mut row = Vec::with_capacity(nh);
            for h in 0..nh {
                let mut z = vals.clone();
                for r in 0..n {
                    z[r * k + h * d..r * k + (h + 1) * d].fill(0.0);
                }
                work.tensors
                    .insert(o.clone(), HostTensor::from_f64(&[n, k], &z, DType::F32)?);
                let emb = work
                    .model(device, dtype)?
                    .with_max_batch(ids.len())
                    .embed(ids, Pooling::Mean)?;
                let cos = emb
                    .iter()
                    .zip(&reference)
                    .map(|(a, b)| cosine(a, b))
                    .sum::<f64>()
                    / emb.len() as f64;
                row.push(1.0 - cos);
                done += 1;
                progress(done, total);
            }
            work.tensors.insert(o, orig);
            scores.push(row);
        }
        Ok(scores)
    }

    /// The parsed config (any supported family).
    pub fn bert_config(&self) -> Result<BertConfig> {
        BertConfig::from_value(&self.config)
    }

    /// Stored layer weight sets (ALBERT's are shared across depth).
    pub fn num_layers(&self) -> Result<usize> {
        if self.is_mobilebert() {
            return Ok(MobileBertConfig::from_value(&self.config)?.num_hidden_layers);
        }
        Ok(self.bert_config()?.stored_layers())
    }

    fn take(&mut self, name: &str) -> Result<HostTensor> {
        self.tensors
            .remove(name)
            .ok_or_else(|| invalid("tensors", format!("missing tensor {name}")))
    }

    fn kind(&self, stem: &str) -> LinearKind {
        self.metadata
            .get(&format!("medkern.linear.{stem}"))
            .and_then(|t| LinearKind::from_tag(t))
            .unwrap_or(LinearKind::Dense)
    }

    fn set_kind(&mut self, stem: &str, k: LinearKind) {
        self.metadata
            .insert(format!("medkern.linear.{stem}"), k.tag().to_string());
    }

    fn note(&mut self, what: String) {
        let log = self
            .metadata
            .entry("medkern.compression".into())
            .or_default();
        if !log.is_empty() {
            log.push_str("; ");
        }
        log.push_str(&what);
    }

    /// Keeps heads `keep[l]` (sorted, distinct indices into the layer's current heads) in each
    /// listed layer: slices q/k/v rows and the output projection's columns.
    pub fn prune_heads(&mut self, keep: &BTreeMap<usize, Vec<usize>>) -> Result<()> {
        let d = self.head_dim()?;
        let layers = self.num_layers()?;
        for (&l, heads) in keep {
            if l >= layers {
                return Err(invalid(
                    "heads",
                    format!("layer {l}; expected a layer < {layers}"),
                ));
            }
            let [q, k, v, o, ..] = layer_linears(l);
            for stem in [&q, &k, &v, &o] {
                if self.kind(stem) != LinearKind::Dense {
                    return Err(invalid(
                        "heads",
                        format!(
                            "prune heads before other compression ({stem} is {})",
                            self.kind(stem).tag()
                        ),
                    ));
                }
            }
            let wq = self.take(&format!("{q}.weight"))?;
            let have = wq.shape()[0] / d;
            self.tensors.insert(format!("{q}.weight"), wq);
            if heads.is_empty()
                || heads.windows(2).any(|w| w[0] >= w[1])
                || heads[heads.len() - 1] >= have
            {
                return Err(invalid(
                    "heads",
                    format!(
                        "layer {l}: keep {heads:?}; expected sorted distinct heads < {have} (at least one)"
                    ),
                ));
            }
            let rows: Vec<usize> = heads.iter().flat_map(|&h| h * d..(h + 1) * d).collect();
            for stem in [&q, &k, &v] {
                for suffix in ["weight", "bias"] {
                    let t = self.take(&format!("{stem}.{suffix}"))?;
                    // Each projection's own input width (MobileBERT's v reads the hidden
                    // state, q/k the bottleneck).
                    let cols = match (suffix, t.shape()) {
                        ("weight", &[n, k]) if n == have * d => k,
                        ("bias", &[n]) if n == have * d => 1,
                        (_, shape) => {
                            return Err(invalid(
                                "heads",
                                format!(
                                    "{stem}.{suffix} has shape {shape:?}; expected {} rows \
                                     ({have} heads of {d})",
                                    have * d
                                ),
                            ));
                        }
                    };
                    let vals = t.to_f64();
                    let out: Vec<f64> = rows
                        .iter()
                        .flat_map(|&r| vals[r * cols..(r + 1) * cols].to_vec())
                        .collect();
                    let shape = if suffix == "weight" {
                        vec![rows.len(), cols]
                    } else {
                        vec![rows.len()]
                    };
                    self.tensors.insert(
                        format!("{stem}.{suffix}"),
                        HostTensor::from_f64(&shape, &out, DType::F32)?,
                    );
                }
            }
            let wo = self.take(&format!("{o}.weight"))?;
            let (n, kin) = (wo.shape()[0], wo.shape()[1]);
            let vals = wo.to_f64();
            let out: Vec<f64> = (0..n)
                .flat_map(|r| rows.iter().map(move |&c| (r, c)))
                .map(|(r, c)| vals[r * kin + c])
                .collect();
            self.tensors.insert(
                format!("{o}.weight"),
                HostTensor::from_f64(&[n, rows.len()], &out, DType::F32)?,
            );
            self.note(format!("layer {l}: heads {heads:?} kept"));
        }
        Ok(())
    }

    /// Keeps encoder layers `keep` (sorted, distinct) and renumbers them 0.. in order.
    /// ALBERT (one shared group) runs its shared layer `keep.len()` times instead.
    pub fn drop_layers(&mut self, keep: &[usize]) -> Result<()> {
        let c = self.bert_config()?;
        let n = c.num_hidden_layers;
        if c.arch == Arch::Albert {
            if keep.is_empty() || keep.windows(2).any(|w| w[0] >= w[1]) || keep[keep.len() - 1] >= n
            {
                return Err(invalid(
                    "layers",
                    format!("keep {keep:?}; expected sorted distinct layers < {n} (at least one)"),
                ));
            }
            if c.num_hidden_groups != 1 {
                return Err(invalid(
                    "layers",
                    format!(
                        "ALBERT with {} layer groups: dropping depth would change which group \
                         runs where; expected num_hidden_groups 1",
                        c.num_hidden_groups
                    ),
                ));
            }
            self.config["num_hidden_layers"] = serde_json::json!(keep.len());
            self.note(format!(
                "ALBERT depth {n} -> {} (shared weights)",
                keep.len()
            ));
            return Ok(());
        }
        if keep.is_empty() || keep.windows(2).any(|w| w[0] >= w[1]) || keep[keep.len() - 1] >= n {
            return Err(invalid(
                "layers",
                format!("keep {keep:?}; expected sorted distinct layers < {n} (at least one)"),
            ));
        }
        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, t) in std::mem::take(&mut self.tensors) {
            match layer_of(&name) {
                Some((l, rest)) => {
                    if let Some(new) = keep.iter().position(|&k| k == l) {
                        tensors.insert(format!("encoder.layer.{new}.{rest}"), t);
                    }
                }
                None => {
                    tensors.insert(name, t);
                }
            }
        }
        for (key, v) in std::mem::take(&mut self.metadata) {
            match key.strip_prefix("medkern.linear.").and_then(layer_of) {
                Some((l, rest)) => {
                    if let Some(new) = keep.iter().position(|&k| k == l) {
                        metadata.insert(format!("medkern.linear.encoder.layer.{new}.{rest}"), v);
                    }
                }
                None => {
                    metadata.insert(key, v);
                }
            }
        }
        self.tensors = tensors;
        self.metadata = metadata;
        let key = if c.arch == Arch::DistilBert {
            "n_layers"
        } else {
            "num_hidden_layers"
        };
        self.config[key] = serde_json::json!(keep.len());
        self.note(format!("layers {keep:?} of {n} kept"));
        Ok(())
    }

    /// 2:4 magnitude pruning of every encoder Linear; returns the mean fraction of weight
    /// energy kept.
    pub fn sparsify_24(&mut self) -> Result<f64> {
        let mut kept = Vec::new();
        for l in 0..self.num_layers()? {
            for stem in self.linears(l)? {
                if self.kind(&stem) != LinearKind::Dense {
                    return Err(invalid(
                        "sparse24",
                        format!(
                            "{stem} is already {}; apply 2:4 before int8 or low rank",
                            self.kind(&stem).tag()
                        ),
                    ));
                }
                let w = self.take(&format!("{stem}.weight"))?;
                if w.shape()[1] % 4 != 0 {
                    return Err(invalid(
                        "sparse24",
                        format!("{stem}.weight {:?}: K must be a multiple of 4", w.shape()),
                    ));
                }
                let (p, r) = prune_2_4(&w)?;
                kept.push(r.energy_kept);
                self.tensors.insert(format!("{stem}.weight"), p);
                self.set_kind(&stem, LinearKind::Sparse24);
            }
        }
        self.note("2:4 magnitude pruning of every encoder Linear".into());
        Ok(kept.iter().sum::<f64>() / kept.len().max(1) as f64)
    }

    /// Q8BERT int8: every encoder Linear's weight to symmetric per-channel int8 (absmax) with
    /// f32 scales; returns the mean weight SQNR in dB.
    pub fn quantize_int8(&mut self) -> Result<f64> {
        let mut sqnr = Vec::new();
        for l in 0..self.num_layers()? {
            for stem in self.linears(l)? {
                let kind = match self.kind(&stem) {
                    LinearKind::Dense => LinearKind::Int8,
                    LinearKind::Sparse24 => LinearKind::Sparse24Int8,
                    other => {
                        return Err(invalid(
                            "int8",
                            format!(
                                "{stem} is {}; int8 applies to dense or 2:4 weights",
                                other.tag()
                            ),
                        ));
                    }
                };
                let w = self.take(&format!("{stem}.weight"))?;
                let q = quantize_weight(&w, 0, Clip::AbsMax)?;
                sqnr.push(q.sqnr_db);
                self.tensors.insert(format!("{stem}.weight"), q.q_tensor()?);
                self.tensors
                    .insert(format!("{stem}.weight_scale"), q.scale_tensor()?);
                self.set_kind(&stem, kind);
            }
        }
        self.note(
            "int8 W8A8 (per-channel symmetric weights, per-token dynamic activations)".into(),
        );
        Ok(sqnr.iter().sum::<f64>() / sqnr.len().max(1) as f64)
    }

    /// Truncated-SVD factorisation of every encoder Linear (`W [n, k] ≈ U [n, r] · V [r, k]`,
    /// singular values folded into U); returns the mean fraction of energy kept. Layers where
    /// the factors would not be smaller than W stay dense.
    pub fn low_rank(&mut self, rank: Rank) -> Result<f64> {
        let mut kept = Vec::new();
        for l in 0..self.num_layers()? {
            for stem in self.linears(l)? {
                if self.kind(&stem) != LinearKind::Dense {
                    return Err(invalid(
                        "low_rank",
                        format!(
                            "{stem} is {}; low rank applies to dense weights",
                            self.kind(&stem).tag()
                        ),
                    ));
                }
                let w = self.take(&format!("{stem}.weight"))?;
                let (n, k) = (w.shape()[0], w.shape()[1]);
                let m = nalgebra::DMatrix::from_row_slice(n, k, &w.to_f64());
                let svd = m.svd(true, true);
                let (Some(u), Some(vt)) = (svd.u, svd.v_t) else {
                    return Err(invalid("low_rank", format!("{stem}: SVD did not converge")));
                };
                let s = svd.singular_values;
                let total: f64 = s.iter().map(|x| x * x).sum();
                let full = s.len();
                let r = match rank {
                    Rank::Fixed(r) => r.div_ceil(8) * 8,
                    Rank::Energy(e) => {
                        let mut acc = 0.0;
                        let mut r = full;
                        for (i, x) in s.iter().enumerate() {
                            acc += x * x;
                            if acc >= e * total {
                                r = i + 1;
                                break;
                            }
                        }
                        r.div_ceil(8) * 8
                    }
                }
                .clamp(8, full.max(8));
                if r >= full || r * (n + k) >= n * k {
                    self.tensors.insert(format!("{stem}.weight"), w);
                    kept.push(1.0);
                    continue;
                }
                // nalgebra sorts singular values in decreasing order.
                let mut uf = vec![0.0; n * r];
                for i in 0..n {
                    for j in 0..r {
                        uf[i * r + j] = u[(i, j)] * s[j];
                    }
                }
                let mut vf = vec![0.0; r * k];
                for i in 0..r {
                    for j in 0..k {
                        vf[i * k + j] = vt[(i, j)];
                    }
                }
                kept.push(
                    s.iter().take(r).map(|x| x * x).sum::<f64>() / total.max(f64::MIN_POSITIVE),
                );
                self.tensors.insert(
                    format!("{stem}.lr_u"),
                    HostTensor::from_f64(&[n, r], &uf, DType::F32)?,
                );
                self.tensors.insert(
                    format!("{stem}.lr_v"),
                    HostTensor::from_f64(&[r, k], &vf, DType::F32)?,
                );
                self.set_kind(&stem, LinearKind::LowRank);
            }
        }
        self.note(format!("low rank {rank:?}"));
        Ok(kept.iter().sum::<f64>() / kept.len().max(1) as f64)
    }

    /// Every encoder Linear's name stem, layer by layer.
    pub fn linear_stems(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for l in 0..self.num_layers()? {
            out.extend(self.linears(l)?);
        }
        Ok(out)
    }

    /// `[n, k]` of a dense Linear's weight (`Err` when it is not dense).
    fn dense_weight_dims(&self, stem: &str, what: &'static str) -> Result<[usize; 2]> {
        if self.kind(stem) != LinearKind::Dense {
            return Err(invalid(
                what,
                format!(
                    "{stem} is {}; {what} applies to dense weights",
                    self.kind(stem).tag()
                ),
            ));
        }
        let name = format!("{stem}.weight");
        match self.tensors.get(&name).map(HostTensor::shape) {
            Some(&[n, k]) => Ok([n, k]),
            Some(other) => Err(invalid(
                what,
                format!("{name} has shape {other:?}, expected [N, K]"),
            )),
            None => Err(invalid("tensors", format!("missing tensor {name}"))),
        }
    }

    /// Every encoder Linear (all dense) as an unmeasured [`Sensitivity`] (damage 0), and the
    /// tensor bytes of everything else (embeddings, norms, biases, heads): the inputs of
    /// [`choose_bits`]'s size sums, known before any measurement.
    pub fn bits_layout(&self) -> Result<(Vec<Sensitivity>, usize)> {
        let mut dims = Vec::new();
        let mut weights = 0;
        for stem in self.linear_stems()? {
            let [n, k] = self.dense_weight_dims(&stem, "bits")?;
            weights += self.tensors[&format!("{stem}.weight")].bytes().len();
            dims.push(Sensitivity {
                stem,
                n,
                k,
                damage: 0.0,
                int4_sqnr_db: f64::NAN,
            });
        }
        Ok((dims, self.data_bytes() - weights))
    }

    /// Mean-pooled embeddings of `ids` by the model this checkpoint describes (any family).
    fn embed_mean(&self, ids: &[Vec<u32>], device: &Device, dtype: DType) -> Result<Vec<Vec<f32>>> {
        if self.is_mobilebert() {
            self.mobilebert_model(device, dtype)?
                .with_max_batch(ids.len())
                .embed(ids, Pooling::Mean)
        } else {
            self.model(device, dtype)?
                .with_max_batch(ids.len())
                .embed(ids, Pooling::Mean)
        }
    }

    /// Q-BERT-style sensitivity of each dense encoder Linear to 4 bits: `1 - mean cosine`
    /// between the mean-pooled embeddings of `ids` with that Linear alone fake-quantised to
    /// int4 (its dequantised weight, the exact values the W4A16 GEMM multiplies) and the
    /// unquantised model's. Q-BERT ranks layers by the Hessian spectrum; an inference library
    /// has no gradients, so it measures the outputs. `progress(done, total)` after each.
    pub fn int4_sensitivity(
        &self,
        ids: &[Vec<u32>],
        device: &Device,
        dtype: DType,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Vec<Sensitivity>> {
        let base = self.embed_mean(ids, device, dtype)?;
        let stems = self.linear_stems()?;
        let mut out = Vec::with_capacity(stems.len());
        for (i, stem) in stems.iter().enumerate() {
            let [n, k] = self.dense_weight_dims(stem, "int4")?;
            let name = format!("{stem}.weight");
            let q = quantize_weight_int4(&self.tensors[&name], int4_group(stem, k)?, Clip::AbsMax)?;
            let mut trial = Checkpoint {
                config: self.config.clone(),
                tensors: self.tensors.clone(),
                metadata: self.metadata.clone(),
            };
            trial.tensors.insert(
                name,
                HostTensor::from_f64(&[n, k], &q.dequantize(), DType::F32)?,
            );
            let emb = trial.embed_mean(ids, device, dtype)?;
            let cos: f64 = emb
                .iter()
                .zip(&base)
                .map(|(a, b)| cosine(a, b))
                .sum::<f64>()
                / emb.len().max(1) as f64;
            out.push(Sensitivity {
                stem: stem.clone(),
                n,
                k,
                damage: 1.0 - cos,
                int4_sqnr_db: q.sqnr_db,
            });
            progress(i + 1, stems.len());
        }
        Ok(out)
    }

    /// Quantises each listed dense encoder Linear to the given bits: 4 (int4 W4A16: packed
    /// `weight_packed` u8 `[n, k/2]`, low nibble first, and f16 `weight_scale` `[n, k/group]`)
    /// or 8 (int8 W8A8, per-channel, as [`Checkpoint::quantize_int8`]). Returns the mean weight
    /// SQNR in dB.
    pub fn quantize_bits(&mut self, bits: &BTreeMap<String, u8>) -> Result<f64> {
        let mut sqnr = Vec::new();
        for (stem, &b) in bits {
            let [_, k] = self.dense_weight_dims(stem, "bits")?;
            let w = self.take(&format!("{stem}.weight"))?;
            match b {
                4 => {
                    let q = quantize_weight_int4(&w, int4_group(stem, k)?, Clip::AbsMax)?;
                    sqnr.push(q.sqnr_db);
                    let (packed, scales) = int4_tensors(&q)?;
                    self.tensors.insert(format!("{stem}.weight_packed"), packed);
                    self.tensors.insert(format!("{stem}.weight_scale"), scales);
                    self.set_kind(stem, LinearKind::Int4);
                }
                8 => {
                    let q = quantize_weight(&w, 0, Clip::AbsMax)?;
                    sqnr.push(q.sqnr_db);
                    self.tensors.insert(format!("{stem}.weight"), q.q_tensor()?);
                    self.tensors
                        .insert(format!("{stem}.weight_scale"), q.scale_tensor()?);
                    self.set_kind(stem, LinearKind::Int8);
                }
                other => {
                    self.tensors.insert(format!("{stem}.weight"), w);
                    return Err(invalid(
                        "bits",
                        format!("{stem}: {other} bits; expected 4 or 8"),
                    ));
                }
            }
        }
        let fours = bits.values().filter(|&&b| b == 4).count();
        self.note(format!(
            "mixed precision: {fours} Linears int4 W4A16 (group-wise f16 scales), {} int8 W8A8",
            bits.len() - fours
        ));
        Ok(sqnr.iter().sum::<f64>() / sqnr.len().max(1) as f64)
    }

    /// Stores the word embeddings in int8 (symmetric, one f32 scale per row:
    /// `embeddings.word_embeddings.weight_scale`) or f16; the model dequantises them once on
    /// load. They are most of a small encoder's bytes (MiniLM: 11.7 of 22.7 M parameters), so
    /// int8 Linears alone leave the file 1.5× smaller at best. Returns the SQNR in dB.
    pub fn compress_embeddings(&mut self, dtype: DType) -> Result<f64> {
        const NAME: &str = "embeddings.word_embeddings.weight";
        if self.is_mobilebert() {
            return Err(invalid(
                "embeddings",
                "MobileBERT's 128-wide word embeddings stay as they are; compressed word \
                 embeddings apply to BERT, DistilBERT and ALBERT"
                    .into(),
            ));
        }
        let w = self.take(NAME)?;
        let v = w.to_f64();
        let (out, sqnr) = match dtype {
            DType::I8 => {
                if w.dtype() == DType::I8 {
                    self.tensors.insert(NAME.into(), w);
                    return Err(invalid("embeddings", format!("{NAME} is already int8")));
                }
                let q = quantize_weight(&w, 0, Clip::AbsMax)?;
                self.tensors
                    .insert(format!("{NAME}_scale"), q.scale_tensor()?);
                (q.q_tensor()?, q.sqnr_db)
            }
            DType::F16 => {
                let t = HostTensor::from_f64(w.shape(), &v, DType::F16)?;
                let r = t.to_f64();
                (t, sqnr_db(&v, &r))
            }
            other => {
                self.tensors.insert(NAME.into(), w);
                return Err(invalid(
                    "embeddings",
                    format!("{other}; word embeddings are stored in int8 or f16"),
                ));
            }
        };
        self.tensors.insert(NAME.into(), out);
        self.metadata
            .insert("medkern.embeddings".into(), dtype.to_string());
        self.note(format!("word embeddings in {dtype}"));
        Ok(sqnr)
    }

    /// Bytes of tensor data (what the compressed file costs, before the header).
    pub fn data_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.bytes().len()).sum()
    }
}

/// One Linear's measured sensitivity to 4-bit weights ([`Checkpoint::int4_sensitivity`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sensitivity {
    pub stem: String,
    pub n: usize,
    pub k: usize,
    /// `1 - mean cosine` of the embeddings with this Linear alone in int4.
    pub damage: f64,
    pub int4_sqnr_db: f64,
}

/// The int4 group along K for a Linear with `k` inputs: 128 where it divides K, else 64.
pub fn int4_group(stem: &str, k: usize) -> Result<usize> {
    match k {
        k if k % 128 == 0 => Ok(128),
        k if k % 64 == 0 => Ok(64),
        _ => Err(invalid(
            "int4",
            format!("{stem}: K = {k}; int4 groups need K to be a multiple of 64"),
        )),
    }
}

/// Weight bytes of an `[n, k]` Linear stored at `bits`: int4 = packed values + f16 group
/// scales; int8 = values + f32 per-channel scales (the bias, f32, is the same either way).
pub fn linear_bytes(n: usize, k: usize, bits: u8, group: usize) -> usize {
    match bits {
        4 => n * k / 2 + 2 * n * k.div_ceil(group.max(1)),
        8 => n * k + 4 * n,
        _ => 4 * n * k,
    }
}

/// An int4 weight as its stored tensors: values packed two a byte (even K index in the low
/// nibble) and the f16 scales.
pub fn int4_tensors(q: &QuantizedWeight) -> Result<(HostTensor, HostTensor)> {
    if q.bits != 4 || q.k % 2 != 0 {
        return Err(invalid(
            "int4",
            format!(
                "a {}-bit weight with K = {}; expected 4 bits, even K",
                q.bits, q.k
            ),
        ));
    }
    let packed: Vec<u8> =
        q.q.chunks_exact(2)
            .map(|p| (p[0] as u8 & 0x0f) | ((p[1] as u8 & 0x0f) << 4))
            .collect();
    let groups = q.k.div_ceil(q.group_size.max(1));
    let scales: Vec<half::f16> = q.scales.iter().map(|&x| half::f16::from_f32(x)).collect();
    Ok((
        HostTensor::new(&[q.n, q.k / 2], packed)?,
        HostTensor::new(&[q.n, groups], scales)?,
    ))
}

/// The int4 values (-8..=7) of packed bytes, in order.
pub fn unpack_int4(packed: &[u8]) -> Vec<i8> {
    packed
        .iter()
        .flat_map(|&b| [((b << 4) as i8) >> 4, (b as i8) >> 4])
        .collect()
}

fn sqnr_db(x: &[f64], y: &[f64]) -> f64 {
    let signal: f64 = x.iter().map(|v| v * v).sum();
    let noise: f64 = x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum();
    if noise == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}

/// A size budget for `compress --bits auto`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Tensor bytes of the whole compressed file.
    Bytes(usize),
    /// At least this many times smaller than the dense model's tensor bytes.
    Ratio(f64),
}

impl Budget {
    /// "40MB" / "40" (10⁶ bytes), "38MiB", or "6x" (a size ratio to the dense model).
    pub fn parse(s: &str) -> Result<Budget> {
        let t = s.trim();
        let bad = || {
            invalid(
                "--budget",
                format!("{s:?}; expected a size (\"12MB\", \"11.5MiB\") or a ratio (\"6x\")"),
            )
        };
        let num = |v: &str| -> Result<f64> {
            let x: f64 = v.trim().parse().map_err(|_| bad())?;
            if x.is_finite() && x > 0.0 {
                Ok(x)
            } else {
                Err(bad())
            }
        };
        if let Some(r) = t.strip_suffix(['x', 'X']) {
            let r = num(r)?;
            return if r >= 1.0 {
                Ok(Budget::Ratio(r))
            } else {
                Err(bad())
            };
        }
        let (v, unit) = if let Some(v) = t.strip_suffix("MiB") {
            (v, 1024.0 * 1024.0)
        } else if let Some(v) = t.strip_suffix("MB") {
            (v, 1e6)
        } else {
            (t, 1e6)
        };
        let bytes = num(v)? * unit;
        if bytes >= 1e15 {
            return Err(bad());
        }
        Ok(Budget::Bytes(bytes as usize))
    }

    /// The budget in bytes for a model whose dense tensors take `dense_bytes`.
    pub fn bytes(self, dense_bytes: usize) -> usize {
        match self {
            Budget::Bytes(b) => b,
            Budget::Ratio(r) => (dense_bytes as f64 / r) as usize,
        }
    }
}

/// Bits per Linear (4 or 8) meeting `budget` bytes with the least measured damage: every
/// Linear starts at 8 bits; Linears move to 4 bits in increasing order of damage per byte
/// saved (the greedy answer to this knapsack) until the file fits. `other_bytes` is
/// everything else in the file (embeddings, norms, biases, heads). An unreachable budget (all
/// int4 is still too large) is an `Err` naming the smallest size reachable.
pub fn choose_bits(
    sens: &[Sensitivity],
    other_bytes: usize,
    budget: usize,
) -> Result<BTreeMap<String, u8>> {
    let mut bits: BTreeMap<String, u8> = sens.iter().map(|s| (s.stem.clone(), 8)).collect();
    let size8: usize = sens.iter().map(|s| linear_bytes(s.n, s.k, 8, 0)).sum();
    let saving = |s: &Sensitivity| -> Result<usize> {
        let g = int4_group(&s.stem, s.k)?;
        Ok(linear_bytes(s.n, s.k, 8, 0).saturating_sub(linear_bytes(s.n, s.k, 4, g)))
    };
    let mut order = Vec::with_capacity(sens.len());
    for s in sens {
        order.push((s, saving(s)?));
    }
    let min_size = other_bytes + size8 - order.iter().map(|(_, b)| b).sum::<usize>();
    if min_size > budget {
        return Err(invalid(
            "--budget",
            format!(
                "{budget} bytes is below the smallest mixed-precision size, {min_size} bytes \
                 (every Linear in int4)"
            ),
        ));
    }
    // Damage per byte saved, lowest first; NaN damage (never expected) sorts last.
    order.sort_by(|(a, ab), (b, bb)| {
        let ra = a.damage.max(0.0) / (*ab).max(1) as f64;
        let rb = b.damage.max(0.0) / (*bb).max(1) as f64;
        ra.total_cmp(&rb).then_with(|| a.stem.cmp(&b.stem))
    });
    let mut size = other_bytes + size8;
    for (s, saved) in order {
        if size <= budget {
            break;
        }
        bits.insert(s.stem.clone(), 4);
        size -= saved;
    }
    Ok(bits)
}

/// How a checkpoint's tensor names map to the names it is held under.
enum Naming {
    /// BERT, DistilBERT, ALBERT: onto BERT's names.
    Bert(BertConfig),
    /// MobileBERT: Hugging Face's names without the `mobilebert.` prefix.
    MobileBert,
}

fn is_mobilebert(config: &serde_json::Value) -> bool {
    config.get("model_type").and_then(|t| t.as_str()) == Some("mobilebert")
}

/// `encoder.layer.<l>.<rest>` → (l, rest).
fn layer_of(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("encoder.layer.")?;
    let (l, rest) = rest.split_once('.')?;
    Some((l.parse().ok()?, rest))
}

/// Which heads to keep when the `prune` least important heads (by `scores[layer][head]`) are
/// removed model-wide: layers end uneven, and every layer keeps at least one head.
pub fn heads_to_keep(scores: &[Vec<f64>], prune: usize) -> Result<BTreeMap<usize, Vec<usize>>> {
    let total: usize = scores.iter().map(Vec::len).sum();
    if prune > total.saturating_sub(scores.len()) {
        return Err(invalid(
            "heads",
            format!(
                "prune {prune} of {total} heads in {} layers; at most {} (one head stays per layer)",
                scores.len(),
                total.saturating_sub(scores.len())
            ),
        ));
    }
    let mut order: Vec<(f64, usize, usize)> = scores
        .iter()
        .enumerate()
        .flat_map(|(l, r)| r.iter().enumerate().map(move |(h, &s)| (s, l, h)))
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    let mut left: Vec<usize> = scores.iter().map(Vec::len).collect();
    let mut gone = std::collections::BTreeSet::new();
    for &(_, l, h) in &order {
        if gone.len() == prune {
            break;
        }
        if left[l] > 1 {
            left[l] -= 1;
            gone.insert((l, h));
        }
    }
    Ok(scores
        .iter()
        .enumerate()
        .map(|(l, r)| {
            (
                l,
                (0..r.len()).filter(|&h| !gone.contains(&(l, h))).collect(),
            )
        })
        .collect())
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b)).max(f64::MIN_POSITIVE)
}

/// One row of the compression quality report.
#[derive(Clone, Debug)]
pub struct Quality {
    /// Tensor bytes on disk (model.safetensors without its header).
    pub bytes: usize,
    /// Cosine similarity of each sentence's embedding to the dense model's: worst and mean.
    pub cos_min: f64,
    pub cos_mean: f64,
    /// Median forward time of the sentence batch, ms (includes reading the result back).
    pub ms: f64,
}

/// Embeds `ids` with the model in `dir` and compares with `reference` embeddings (the dense
/// model's); `runs` timed forwards after one warm-up.
pub fn quality(
    dir: &Path,
    device: &crate::tensor::Device,
    dtype: DType,
    ids: &[Vec<u32>],
    reference: &[Vec<f32>],
    runs: usize,
) -> Result<Quality> {
    // The caller's ids, already in memory, are taken whole (as in head_importance).
    let model = BertModel::load(dir, device, dtype)?.with_max_batch(ids.len());
    let mut emb = model.embed(ids, Pooling::Mean)?;
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let t0 = std::time::Instant::now();
        emb = model.embed(ids, Pooling::Mean)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let cos: Vec<f64> = emb
        .iter()
        .zip(reference)
        .map(|(a, b)| cosine(a, b))
        .collect();
    let bytes = Checkpoint::load(dir)?.data_bytes();
    Ok(Quality {
        bytes,
        cos_min: cos.iter().copied().fold(1.0, f64::min),
        cos_mean: cos.iter().sum::<f64>() / cos.len().max(1) as f64,
        ms: times[times.len() / 2],
    })
}

/// Which layers [`CompressOptions::layers`] keeps.
#[derive(Clone, Debug, PartialEq)]
pub enum KeepLayers {
    /// Layers 0, 2, 4... (LayerDrop-style).
    EveryOther,
    List(Vec<usize>),
}

/// Weight bits per encoder Linear ([`CompressOptions::bits`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bits {
    /// Every Linear in int4 (W4A16, group-wise f16 scales).
    Four,
    /// Every Linear in int8 (W8A8).
    Eight,
    /// Each Linear's sensitivity to 4 bits measured on the sample sentences; the least
    /// sensitive go to 4 bits until the file fits the budget.
    Auto(Budget),
}

/// What [`compress_folder`] does, in this order: heads, layers, 2:4, int8, low rank,
/// embeddings, bits. The CLI's `medkern compress` and the Python package fill it.
#[derive(Clone, Debug, Default)]
pub struct CompressOptions {
    /// Heads to keep per layer (unlisted layers keep all).
    pub heads: Option<BTreeMap<usize, Vec<usize>>>,
    /// Remove this many of the least important heads model-wide.
    pub prune_heads: Option<usize>,
    pub layers: Option<KeepLayers>,
    pub sparse24: bool,
    pub int8: bool,
    pub low_rank: Option<Rank>,
    /// Word embeddings stored in int8 (one scale per row) or f16.
    pub embeddings: Option<DType>,
    pub bits: Option<Bits>,
    /// Sample sentences (head importance, sensitivity, the quality report); empty: the 8
    /// built-in [`SAMPLE_SENTENCES`].
    pub sentences: Vec<String>,
    /// The most sentences accepted (checked before any work).
    pub max_batch: usize,
}

impl CompressOptions {
    /// The options' own contradictions, refused before any work.
    pub fn validate(&self) -> Result<()> {
        let bad = |arg: &'static str, detail: &str| Error::Invalid {
            op: OP,
            arg,
            detail: detail.into(),
        };
        if self.heads.is_some() && self.prune_heads.is_some() {
            return Err(bad(
                "heads",
                "give heads to keep or a number to prune, not both",
            ));
        }
        if self.bits.is_some() && (self.int8 || self.sparse24 || self.low_rank.is_some()) {
            return Err(bad(
                "bits",
                "bits per Linear replace int8, 2:4 and low rank; expected one of them",
            ));
        }
        if let Some(e) = self.embeddings
            && e != DType::I8
            && e != DType::F16
        {
            return Err(bad("embeddings", &format!("{e}; expected int8 or f16")));
        }
        match self.low_rank {
            Some(Rank::Fixed(0)) => Err(bad("low_rank", "rank 0; expected a rank ≥ 1")),
            Some(Rank::Energy(e)) if !(e > 0.0 && e <= 1.0) => Err(bad(
                "low_rank",
                &format!("energy {e}; expected a fraction in (0, 1]"),
            )),
            _ => Ok(()),
        }
    }

    /// The number of steps [`compress_folder`] reports through its progress callback.
    pub fn steps(&self) -> u64 {
        3 + u64::from(self.heads.is_some() || self.prune_heads.is_some())
            + u64::from(self.layers.is_some())
            + u64::from(self.sparse24)
            + u64::from(self.int8)
            + u64::from(self.low_rank.is_some())
            + u64::from(self.embeddings.is_some())
            + 2 * u64::from(self.bits.is_some())
    }
}

/// What [`compress_folder`] tells its progress callback.
pub enum Progress<'a> {
    /// A step starts (its description).
    Step(&'a str),
    /// A step finished.
    Done,
}

/// Compresses the dense folder `model` into `out` as `opts` says and returns the quality
/// report (JSON: what each method kept, `dense` and `compressed` rows of bytes, embedding
/// cosine to the dense model and time, `size_ratio`, `speedup`, `methods`, `device`). Checks
/// the options, the output folder and the sentences before any work.
#[cfg(feature = "tokenizers")]
pub fn compress_folder(
    model: &Path,
    out: &Path,
    opts: &CompressOptions,
    dev: &Device,
    dtype: DType,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<serde_json::Value> {
    use crate::model::bert::BertTokenizer;
    use serde_json::json;
    opts.validate()?;
    check_out_dir(out, model)?;
    check_sentence_modules(model)?;
    let sentences: Vec<&str> = if opts.sentences.is_empty() {
        SAMPLE_SENTENCES.to_vec()
    } else {
        opts.sentences
            .iter()
            .map(String::as_str)
            .filter(|l| !l.trim().is_empty())
            .collect()
    };
    crate::input::check_batch(OP, "sentences", sentences.len(), opts.max_batch)?;
    if sentences.is_empty() {
        return Err(Error::Invalid {
            op: OP,
            arg: "sentences",
            detail: "only blank sentences; expected at least one with text".into(),
        });
    }
    progress(Progress::Step(&format!("loading {}", model.display())));
    let mut ck = Checkpoint::load(model)?;
    let dense_bytes = ck.data_bytes();
    let cfg = ck.bert_config()?;
    let ids = BertTokenizer::load(model, cfg.max_position_embeddings)?
        .with_max_batch(opts.max_batch)
        .encode(&sentences)?;
    progress(Progress::Done);
    let mut report = serde_json::Map::new();
    if let Some(keep) = &opts.heads {
        progress(Progress::Step("pruning heads"));
        ck.prune_heads(keep)?;
        progress(Progress::Done);
    } else if let Some(n) = opts.prune_heads {
        progress(Progress::Step("head importance"));
        let scores = ck.head_importance(&ids, dev, dtype, |done, total| {
            progress(Progress::Step(&format!("head importance {done}/{total}")));
        })?;
        let keep = heads_to_keep(&scores, n)?;
        report.insert("head_importance".into(), json!(scores));
        report.insert("heads_kept".into(), json!(keep));
        ck.prune_heads(&keep)?;
        progress(Progress::Done);
    }
    if let Some(l) = &opts.layers {
        progress(Progress::Step("dropping layers"));
        let keep: Vec<usize> = match l {
            KeepLayers::EveryOther => (0..cfg.num_hidden_layers).step_by(2).collect(),
            KeepLayers::List(v) => v.clone(),
        };
        ck.drop_layers(&keep)?;
        progress(Progress::Done);
    }
    if opts.sparse24 {
        progress(Progress::Step("2:4 pruning"));
        report.insert("sparse24_energy_kept".into(), json!(ck.sparsify_24()?));
        progress(Progress::Done);
    }
    if opts.int8 {
        progress(Progress::Step("int8 quantisation"));
        report.insert("int8_weight_sqnr_db".into(), json!(ck.quantize_int8()?));
        progress(Progress::Done);
    }
    if let Some(r) = opts.low_rank {
        progress(Progress::Step("low rank (SVD)"));
        report.insert("low_rank_energy_kept".into(), json!(ck.low_rank(r)?));
        progress(Progress::Done);
    }
    if let Some(dt) = opts.embeddings {
        progress(Progress::Step("word embeddings"));
        let sqnr = ck.compress_embeddings(dt)?;
        let name = if dt == DType::I8 { "int8" } else { "f16" };
        report.insert("embeddings".into(), json!({"dtype": name, "sqnr_db": sqnr}));
        progress(Progress::Done);
    }
    if let Some(mode) = opts.bits {
        let stems = ck.linear_stems()?;
        // Each Linear's measured `1 - cosine` at 4 bits (auto only).
        let mut damage = BTreeMap::new();
        let bits: BTreeMap<String, u8> = match mode {
            Bits::Auto(budget) => {
                let target = budget.bytes(dense_bytes);
                // An unreachable budget fails before the measurement, not after it.
                let (unmeasured, other) = ck.bits_layout()?;
                choose_bits(&unmeasured, other, target)?;
                progress(Progress::Step("sensitivity to 4 bits"));
                let sens = ck.int4_sensitivity(&ids, dev, dtype, |done, total| {
                    progress(Progress::Step(&format!(
                        "sensitivity to 4 bits {done}/{total}"
                    )));
                })?;
                let bits = choose_bits(&sens, other, target)?;
                report.insert("budget_bytes".into(), json!(target));
                damage = sens.iter().map(|s| (s.stem.clone(), s.damage)).collect();
                bits
            }
            Bits::Four | Bits::Eight => {
                let b = if mode == Bits::Four { 4 } else { 8 };
                stems.iter().map(|s| (s.clone(), b)).collect()
            }
        };
        progress(Progress::Done);
        progress(Progress::Step("quantising"));
        let sqnr = ck.quantize_bits(&bits)?;
        let rows: Vec<serde_json::Value> = stems
            .iter()
            .map(|s| json!({"linear": s, "bits": bits.get(s), "int4_damage": damage.get(s)}))
            .collect();
        report.insert("bits".into(), json!(rows));
        report.insert("weight_sqnr_db".into(), json!(sqnr));
        progress(Progress::Done);
    }
    progress(Progress::Step(&format!("saving {}", out.display())));
    ck.save(out, Some(model))?;
    progress(Progress::Done);
    progress(Progress::Step("quality report"));
    let dense = BertModel::load(model, dev, dtype)?.embed(&ids, Pooling::Mean)?;
    let runs = 5;
    let base = quality(model, dev, dtype, &ids, &dense, runs)?;
    let q = quality(out, dev, dtype, &ids, &dense, runs)?;
    progress(Progress::Done);
    let row = |q: &Quality| json!({"bytes": q.bytes, "cosine_min": q.cos_min, "cosine_mean": q.cos_mean, "ms": q.ms});
    report.insert("dense".into(), row(&base));
    report.insert("compressed".into(), row(&q));
    report.insert(
        "size_ratio".into(),
        json!(base.bytes as f64 / q.bytes.max(1) as f64),
    );
    report.insert(
        "speedup".into(),
        json!(base.ms / q.ms.max(f64::MIN_POSITIVE)),
    );
    report.insert(
        "methods".into(),
        json!(ck.metadata.get("medkern.compression")),
    );
    report.insert(
        "device".into(),
        json!(format!("{} {dtype}", dev.describe())),
    );
    report.insert("sentences".into(), json!(sentences.len()));
    Ok(serde_json::Value::Object(report))
}
