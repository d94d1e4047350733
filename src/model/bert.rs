//! BERT-family encoders (BERT and its distilled students that share BertModel names: MiniLM,
//! TinyBERT) loaded from a Hugging Face folder and run with medkern ops only: packed
//! variable-length batches (no padding tokens), fused attention reading the QKV projection in
//! place, GEMMs with fused bias / GELU / residual epilogues, LayerNorm. The same code runs on the
//! CPU backend (the f64 reference ops) and on a GPU, where nothing returns to the host until the
//! last hidden state is read.

use crate::dtype::DType;
use crate::error::{Error, Result};
pub use crate::input::DEFAULT_MAX_BATCH;
use crate::input::check_batch;
use crate::model::linear::{Linear, LinearHost, LinearKind};
use crate::ops::embedding::{Lookup, embedding};
use crate::ops::{self, Activation, Attention, Qkv, SeqBatch};
use crate::tensor::{Device, HostTensor, Tensor};
use safetensors::SafeTensors;
use serde::Deserialize;
use std::path::Path;

const OP: &str = "bert";

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

/// The encoder families that load into [`BertModel`]: their tensor names map onto BERT's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arch {
    /// BERT and the students that share its names (MiniLM, TinyBERT).
    #[default]
    Bert,
    /// DistilBERT: no token types, `transformer.layer.N.{q_lin,...}`, ReLU pre-classifier.
    DistilBert,
    /// ALBERT: factorised `V×E` embedding + `E×H` projection, layer weights shared across depth.
    Albert,
}

impl Arch {
    /// The prefix task checkpoints (`*ForSequenceClassification`) put before encoder names.
    fn prefix(self) -> &'static str {
        match self {
            Arch::Bert => "bert.",
            Arch::DistilBert => "distilbert.",
            Arch::Albert => "albert.",
        }
    }
    /// (medkern name, this family's name) of a layer's tensors, by stem.
    fn layer_stems(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Arch::Bert => &[],
            Arch::DistilBert => &[
                ("attention.self.query", "attention.q_lin"),
                ("attention.self.key", "attention.k_lin"),
                ("attention.self.value", "attention.v_lin"),
                ("attention.output.dense", "attention.out_lin"),
                ("attention.output.LayerNorm", "sa_layer_norm"),
                ("intermediate.dense", "ffn.lin1"),
                ("output.dense", "ffn.lin2"),
                ("output.LayerNorm", "output_layer_norm"),
            ],
            Arch::Albert => &[
                ("attention.self.query", "attention.query"),
                ("attention.self.key", "attention.key"),
                ("attention.self.value", "attention.value"),
                ("attention.output.dense", "attention.dense"),
                ("attention.output.LayerNorm", "attention.LayerNorm"),
                ("intermediate.dense", "ffn"),
                ("output.dense", "ffn_output"),
                ("output.LayerNorm", "full_layer_layer_norm"),
            ],
        }
    }
    /// (medkern name, this family's name) of the stems outside the layers.
    fn top_stems(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Arch::Bert => &[],
            Arch::DistilBert => &[("pooler.dense", "pre_classifier")],
            Arch::Albert => &[
                (
                    "embeddings.projection",
                    "encoder.embedding_hidden_mapping_in",
                ),
                ("pooler.dense", "pooler"),
            ],
        }
    }
}

/// The fields of a Hugging Face `config.json` the encoder needs (DistilBERT's own field names
/// are mapped onto these by [`BertConfig::from_json`]).
#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub model_type: Option<String>,
    /// ALBERT's factorised embedding width E (None: E = hidden_size).
    #[serde(default)]
    pub embedding_size: Option<usize>,
    /// ALBERT: layer-weight groups shared across depth, and layers per group.
    #[serde(default = "default_one")]
    pub num_hidden_groups: usize,
    #[serde(default = "default_one")]
    pub inner_group_num: usize,
    /// Class names of a sequence-classification head (`"0": "NEGATIVE"`).
    #[serde(default)]
    pub id2label: Option<std::collections::BTreeMap<String, String>>,
    #[serde(skip)]
    pub arch: Arch,
}

/// DistilBERT's `config.json` field names.
#[derive(Deserialize)]
struct DistilConfig {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    #[serde(default = "default_act")]
    activation: String,
    #[serde(default = "default_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    id2label: Option<std::collections::BTreeMap<String, String>>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_positions() -> usize {
    512
}
fn default_types() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_one() -> usize {
    1
}

impl BertConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| invalid("config", format!("config.json: {e}")))?;
        Self::from_value(&v)
    }

    /// Parses a `config.json` value of any supported family (`model_type` bert, distilbert,
    /// albert; absent = bert).
    pub fn from_value(v: &serde_json::Value) -> Result<Self> {
        let bad = |e: serde_json::Error| invalid("config", format!("config.json: {e}"));
        let model_type = v
            .get("model_type")
            .and_then(|t| t.as_str())
            .unwrap_or("bert");
        let c = match model_type {
            "distilbert" => {
                let d: DistilConfig = serde_json::from_value(v.clone()).map_err(bad)?;
                BertConfig {
                    vocab_size: d.vocab_size,
                    hidden_size: d.dim,
                    num_hidden_layers: d.n_layers,
                    num_attention_heads: d.n_heads,
                    intermediate_size: d.hidden_dim,
                    hidden_act: d.activation,
                    max_position_embeddings: d.max_position_embeddings,
                    type_vocab_size: 0,
                    layer_norm_eps: 1e-12,
                    model_type: Some(model_type.into()),
                    embedding_size: None,
                    num_hidden_groups: 1,
                    inner_group_num: 1,
                    id2label: d.id2label,
                    arch: Arch::DistilBert,
                }
            }
            "albert" => {
                let mut v = v.clone();
                if let Some(o) = v.as_object_mut() {
                    // Hugging Face's AlbertConfig default.
                    o.entry("hidden_act").or_insert("gelu_new".into());
                }
                let mut c: BertConfig = serde_json::from_value(v).map_err(bad)?;
                c.arch = Arch::Albert;
                c
            }
            "bert" => serde_json::from_value(v.clone()).map_err(bad)?,
            other => {
                return Err(invalid(
                    "config",
                    format!("model_type {other:?}; expected bert, distilbert or albert"),
                ));
            }
        };
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            return Err(invalid(
                "config",
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    c.hidden_size, c.num_attention_heads
                ),
            ));
        }
        // Bounds well past any real encoder, so sizes derived from them cannot overflow.
        const MAX_LAYERS: usize = 1024;
        if c.num_hidden_layers > MAX_LAYERS
            || c.num_hidden_groups > MAX_LAYERS
            || c.inner_group_num > MAX_LAYERS
        {
            return Err(invalid(
                "config",
                format!(
                    "num_hidden_layers {} / num_hidden_groups {} / inner_group_num {}; expected \
                     at most {MAX_LAYERS} each",
                    c.num_hidden_layers, c.num_hidden_groups, c.inner_group_num
                ),
            ));
        }
        let groups = (c.num_hidden_groups, c.inner_group_num);
        if groups.0 == 0
            || groups.1 == 0
            || c.num_hidden_layers % groups.0 != 0
            || (c.arch != Arch::Albert && groups != (1, 1))
        {
            return Err(invalid(
                "config",
                format!(
                    "num_hidden_groups {} / inner_group_num {} with {} layers; expected groups \
                     dividing the layer count (ALBERT only)",
                    groups.0, groups.1, c.num_hidden_layers
                ),
            ));
        }
        Ok(c)
    }
    /// The tokens kept per text for a requested `max_len` ([CLS] and [SEP] included): the
    /// model's `max_position_embeddings` when none is given; a request past it is an error
    /// (the model has no position for those tokens), as is one under 2.
    pub fn max_len(&self, requested: Option<usize>) -> Result<usize> {
        let most = self.max_position_embeddings;
        match requested {
            None => Ok(most),
            Some(n) if (2..=most).contains(&n) => Ok(n),
            Some(n) => Err(invalid(
                "max_len",
                format!(
                    "{n} tokens; expected 2 ([CLS] and [SEP]) to {most} (the model's \
                     max_position_embeddings)"
                ),
            )),
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    /// The embedding width (ALBERT's E; the hidden size otherwise).
    pub fn embedding_dim(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }
    /// Layer weight sets stored in the file (ALBERT shares them across depth).
    pub fn stored_layers(&self) -> usize {
        match self.arch {
            Arch::Albert => self.num_hidden_groups * self.inner_group_num,
            _ => self.num_hidden_layers,
        }
    }
    /// The stored layer run at each depth: ALBERT runs group `l / (L / groups)`'s layers at
    /// depth `l`; the others run layer `l`.
    pub fn schedule(&self) -> Vec<usize> {
        match self.arch {
            Arch::Albert => {
                let per = (self.num_hidden_layers / self.num_hidden_groups.max(1)).max(1);
                (0..self.num_hidden_layers)
                    .flat_map(|l| {
                        let g = l / per;
                        (0..self.inner_group_num).map(move |i| g * self.inner_group_num + i)
                    })
                    .collect()
            }
            _ => (0..self.num_hidden_layers).collect(),
        }
    }
    /// The medkern (BERT) name of tensor `name` of this family, without any task prefix; None
    /// for tensors the encoder does not use (pretraining heads, buffers).
    pub fn canonical_name(&self, name: &str) -> Option<String> {
        let a = self.arch;
        let name = name
            .strip_prefix(a.prefix())
            .or_else(|| name.strip_prefix("bert."))
            .unwrap_or(name);
        if Self::not_the_encoders(name) {
            return None;
        }
        let (stem, suffix) = name.rsplit_once('.')?;
        let layer_prefix = match a {
            Arch::DistilBert => "transformer.layer.",
            Arch::Albert => "encoder.albert_layer_groups.",
            Arch::Bert => "",
        };
        if let Some(&(ours, _)) = a.top_stems().iter().find(|(_, theirs)| *theirs == stem) {
            return Some(format!("{ours}.{suffix}"));
        }
        if !layer_prefix.is_empty()
            && let Some(rest) = stem.strip_prefix(layer_prefix)
        {
            let (idx, rest) = match a {
                Arch::Albert => {
                    let (g, rest) = rest.split_once(".albert_layers.")?;
                    let (i, rest) = rest.split_once('.')?;
                    let (g, i): (usize, usize) = (g.parse().ok()?, i.parse().ok()?);
                    // Layers outside the config's groups are not this model's (and must not
                    // alias another group's slot).
                    if g >= self.num_hidden_groups || i >= self.inner_group_num {
                        return None;
                    }
                    (g * self.inner_group_num + i, rest)
                }
                _ => {
                    let (l, rest) = rest.split_once('.')?;
                    (l.parse().ok()?, rest)
                }
            };
            let ours = a.layer_stems().iter().find(|(_, t)| *t == rest)?.0;
            return Some(format!("encoder.layer.{idx}.{ours}.{suffix}"));
        }
        Some(name.to_string())
    }
    /// True for the tensors of a checkpoint that are not the encoder's or its task head's:
    /// pretraining heads (BERT's `cls.*`, ALBERT's `predictions.*` and `sop_classifier.*`,
    /// DistilBERT's `vocab_*`) and buffers (`position_ids`). `name` without a task prefix.
    fn not_the_encoders(name: &str) -> bool {
        [
            "cls.",
            "predictions.",
            "sop_classifier.",
            "vocab_transform.",
            "vocab_layer_norm.",
            "vocab_projector.",
        ]
        .iter()
        .any(|p| name.starts_with(p))
            || name.contains("position_ids")
    }
    /// This family's name for medkern name `name` (for error messages).
    pub fn family_name(&self, name: &str) -> String {
        let a = self.arch;
        let Some((stem, suffix)) = name.rsplit_once('.') else {
            return name.into();
        };
        if let Some(&(_, theirs)) = a.top_stems().iter().find(|(ours, _)| *ours == stem) {
            return format!("{theirs}.{suffix}");
        }
        if a != Arch::Bert
            && let Some(rest) = stem.strip_prefix("encoder.layer.")
            && let Some((l, rest)) = rest.split_once('.')
            && let Ok(l) = l.parse::<usize>()
            && let Some(&(_, theirs)) = a.layer_stems().iter().find(|(o, _)| *o == rest)
        {
            return match a {
                Arch::Albert => {
                    let inner = self.inner_group_num.max(1);
                    format!(
                        "encoder.albert_layer_groups.{}.albert_layers.{}.{theirs}.{suffix}",
                        l / inner,
                        l % inner
                    )
                }
                _ => format!("transformer.layer.{l}.{theirs}.{suffix}"),
            };
        }
        name.into()
    }
    fn activation(&self) -> Result<Activation> {
        activation_of(&self.hidden_act).map_err(|detail| invalid("config", detail))
    }
}

/// The medkern activation of a Hugging Face `hidden_act` name (Err: the message).
pub(crate) fn activation_of(name: &str) -> std::result::Result<Activation, String> {
    match name {
        "gelu" => Ok(Activation::GeluErf),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
        "relu" => Ok(Activation::Relu),
        "silu" | "swish" => Ok(Activation::Silu),
        other => Err(format!(
            "hidden_act {other:?}; expected gelu, gelu_new, relu or silu"
        )),
    }
}

/// The q/k/v projections: one fused Linear writing `[tokens, 3, heads, d]` (read in place by
/// attention) when the three share a storage kind, else three (e.g. low-rank factors).
enum QkvProj {
    Fused(Box<Linear>),
    Split(Box<[Linear; 3]>),
}

/// One encoder layer's weights, on the model's device in its dtype.
struct Layer {
    /// Attention heads left in this layer (head pruning makes layers uneven).
    heads: usize,
    qkv: QkvProj,
    wo: Linear,
    ln1: (Tensor, Tensor),
    wi: Linear,
    wo2: Linear,
    ln2: (Tensor, Tensor),
}

/// A sequence-classification head on the first token: `classifier(act(pooler(h_cls)))`, with
/// tanh (BERT, ALBERT pooler) or ReLU (DistilBERT pre-classifier).
struct Head {
    pooler: Linear,
    act: Activation,
    classifier: Linear,
}

/// An encoder (BERT, DistilBERT or ALBERT) ready to run.
pub struct BertModel {
    pub config: BertConfig,
    device: Device,
    dtype: DType,
    act: Activation,
    word: Tensor,
    position: Tensor,
    /// None for DistilBERT (no token types).
    token_type: Option<Tensor>,
    emb_ln: (Tensor, Tensor),
    /// ALBERT's E→H projection after the embedding LayerNorm.
    emb_proj: Option<Linear>,
    /// Stored layers, and the one run at each depth (ALBERT repeats them).
    layers: Vec<Layer>,
    schedule: Vec<usize>,
    /// Attention softmax scale, `1/√head_dim` of the checkpoint.
    scale: f32,
    head: Option<Head>,
    /// The most sequences one call takes ([`BertModel::set_max_batch`]).
    max_batch: usize,
}

/// Reads named tensors out of a safetensors file by their medkern names, checking shapes.
struct Weights<'a> {
    st: SafeTensors<'a>,
    /// medkern name → name in the file.
    names: std::collections::HashMap<String, String>,
    config: &'a BertConfig,
    /// Prefix the file puts before encoder names (`bert.`, ...), for messages.
    prefix: &'static str,
    device: &'a Device,
    dtype: DType,
    /// `medkern.linear.<name>` → storage kind, from the file's metadata (compressed models).
    kinds: std::collections::HashMap<String, String>,
    /// The names in the file of the tensors read so far (what is left over is unexpected).
    used: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl Weights<'_> {
    fn missing(&self, name: &str) -> Error {
        let theirs = self.config.family_name(name);
        // Task checkpoints keep their heads outside the encoder prefix.
        let prefix = if theirs.starts_with("classifier.") || theirs.starts_with("pre_classifier.") {
            ""
        } else {
            self.prefix
        };
        corrupt("weights", format!("missing tensor {prefix}{theirs}"))
    }
    fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        self.names
            .get(name)
            .and_then(|f| self.st.tensor(f).ok())
            .map(|t| t.shape().to_vec())
            .ok_or_else(|| self.missing(name))
    }

    /// The Linear `name` (`name.weight` `[n, k]` + `name.bias`, or its compressed form as
    /// recorded in the metadata); `n` None takes it from the file (pruned heads).
    fn linear(&self, name: &str, n: Option<usize>, k: usize) -> Result<LinearHost> {
        read_linear(
            OP,
            &self.kinds,
            name,
            n,
            k,
            &|t| self.shape_of(t),
            &|t, s| self.host(t, s),
        )
    }

    fn host(&self, name: &str, shape: &[usize]) -> Result<Vec<f64>> {
        let full = self.names.get(name).ok_or_else(|| self.missing(name))?;
        let t = self.st.tensor(full).map_err(|_| self.missing(name))?;
        self.used.borrow_mut().insert(full.clone());
        if t.shape() != shape {
            return Err(corrupt(
                "weights",
                format!(
                    "tensor {full} has shape {:?}, expected {shape:?}",
                    t.shape()
                ),
            ));
        }
        tensor_values(OP, &t, full)
    }
    /// Every tensor of the file was read, but for pretraining heads and buffers, and the
    /// pooler of a checkpoint without a classifier (sentence encoders keep it): a tensor the
    /// configuration does not reach (layers beyond `num_hidden_layers`, another family's
    /// names) means the config is not the checkpoint's, and running part of it is a silent
    /// wrong answer.
    fn check_all_used(&self, has_head: bool) -> Result<()> {
        let used = self.used.borrow();
        for n in self.st.names() {
            if used.contains(n) {
                continue;
            }
            let bare = n
                .strip_prefix(self.config.arch.prefix())
                .or_else(|| n.strip_prefix("bert."))
                .unwrap_or(n);
            if BertConfig::not_the_encoders(bare) {
                continue;
            }
            let canonical = self.config.canonical_name(n);
            if !has_head
                && canonical
                    .as_deref()
                    .is_some_and(|c| c.starts_with("pooler."))
            {
                continue;
            }
            let c = self.config;
            return Err(corrupt(
                "weights",
                format!(
                    "unexpected tensor {n}: not used by the configuration ({:?}, {} layers, \
                     {} stored; hidden {}); is config.json the checkpoint's?",
                    c.arch,
                    c.num_hidden_layers,
                    c.stored_layers(),
                    c.hidden_size
                ),
            ));
        }
        Ok(())
    }
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let v = self.host(name, shape)?;
        HostTensor::from_f64(shape, &v, self.dtype)?.to_device(self.device)
    }
    /// The word embeddings; int8 ones (a compressed checkpoint: `weight_scale` per row)
    /// dequantised once here.
    fn word_embeddings(&self, vocab: usize, e: usize) -> Result<Tensor> {
        const NAME: &str = "embeddings.word_embeddings.weight";
        let scale_name = format!("{NAME}_scale");
        if !self.has(&scale_name) {
            return self.get(NAME, &[vocab, e]);
        }
        let mut v = self.host(NAME, &[vocab, e])?;
        let scales = self.host(&scale_name, &[vocab])?;
        for (row, s) in v.chunks_mut(e.max(1)).zip(&scales) {
            row.iter_mut().for_each(|x| *x *= s);
        }
        HostTensor::from_f64(&[vocab, e], &v, self.dtype)?.to_device(self.device)
    }
    fn has(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }
    /// LayerNorm weight and bias (`weight`/`bias`, or the old `gamma`/`beta`).
    fn ln(&self, base: &str, h: usize) -> Result<(Tensor, Tensor)> {
        if self.has(&format!("{base}.gamma")) {
            Ok((
                self.get(&format!("{base}.gamma"), &[h])?,
                self.get(&format!("{base}.beta"), &[h])?,
            ))
        } else {
            Ok((
                self.get(&format!("{base}.weight"), &[h])?,
                self.get(&format!("{base}.bias"), &[h])?,
            ))
        }
    }
}

impl BertModel {
    /// Loads `config.json` and `model.safetensors` from a Hugging Face model folder. `dtype` is
    /// the compute dtype (f16/bf16 on a GPU; f32 on the CPU is the reference).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let read = |f: &str| crate::input::read_regular(OP, &dir.join(f), f);
        let cfg = BertConfig::from_json(&String::from_utf8_lossy(&read("config.json")?))
            .map_err(Error::into_corrupt)?;
        let weights =
            crate::input::map_regular(OP, &dir.join("model.safetensors"), "model.safetensors")?;
        Self::from_safetensors(cfg, &weights, device, dtype)
    }

    /// Builds the model from a config and the bytes of a safetensors file (names of the
    /// config's family, with or without a task prefix, or medkern's own as
    /// [`crate::model::compress::Checkpoint`] saves them). A config the model cannot run
    /// (activation, head dim) or that does not match the tensors is [`Error::Corrupt`].
    pub fn from_safetensors(
        config: BertConfig,
        bytes: &[u8],
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| corrupt("weights", format!("not a safetensors file: {e}")))?;
        let kinds = SafeTensors::read_metadata(bytes)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .unwrap_or_default();
        let a = config.arch;
        let prefix = if st.names().iter().any(|n| n.starts_with(a.prefix())) {
            a.prefix()
        } else if st.names().iter().any(|n| n.starts_with("bert.")) {
            "bert."
        } else {
            ""
        };
        let names = st
            .names()
            .into_iter()
            .filter_map(|n| Some((config.canonical_name(n)?, n.to_string())))
            .collect();
        let w = Weights {
            st,
            names,
            config: &config,
            prefix,
            device,
            dtype,
            kinds,
            used: Default::default(),
        };
        let c = &config;
        let (h, i, d, e) = (
            c.hidden_size,
            c.intermediate_size,
            c.head_dim(),
            c.embedding_dim(),
        );
        // The fused attention kernel has head dims 32..128; other widths (TinyBERT-312's 26,
        // 16) run zero-padded per head, which leaves q·k and the output unchanged.
        let dp = ops::attention::HEAD_DIMS
            .iter()
            .copied()
            .find(|&x| x >= d)
            .ok_or_else(|| {
                corrupt(
                    "config",
                    format!(
                        "head_dim {d}; expected at most {}",
                        ops::attention::HEAD_DIMS[ops::attention::HEAD_DIMS.len() - 1]
                    ),
                )
            })?;
        // A config this model cannot run is the checkpoint's fault (it describes the tensors),
        // as are the tensor checks below: Error::Corrupt, as the CNN loaders' config errors.
        let act = c.activation().map_err(Error::into_corrupt)?;
        let mut layers = Vec::with_capacity(c.stored_layers());
        for l in 0..c.stored_layers() {
            let p = format!("encoder.layer.{l}");
            let q = w.linear(&format!("{p}.attention.self.query"), None, h)?;
            let rows = q.w_shape[0];
            if rows == 0 || rows % d != 0 {
                return Err(corrupt(
                    "weights",
                    format!(
                        "{p}.attention.self.query has {rows} rows, not a multiple of head_dim {d}"
                    ),
                ));
            }
            let k = w.linear(&format!("{p}.attention.self.key"), Some(rows), h)?;
            let v = w.linear(&format!("{p}.attention.self.value"), Some(rows), h)?;
            let wo = w.linear(&format!("{p}.attention.output.dense"), Some(h), rows)?;
            let (q, k, v, wo) = if dp == d {
                (q, k, v, wo)
            } else {
                (
                    pad_heads_out(q, d, dp)?,
                    pad_heads_out(k, d, dp)?,
                    pad_heads_out(v, d, dp)?,
                    pad_heads_in(wo, d, dp, &p)?,
                )
            };
            let prow = rows / d * dp;
            // One GEMM for q, k and v when they are stored alike (int4: the same K groups).
            let same_tail =
                |a: &LinearHost, b: &LinearHost| a.extra_shape.get(1..) == b.extra_shape.get(1..);
            let qkv = if q.kind == k.kind
                && k.kind == v.kind
                && q.kind != LinearKind::LowRank
                && same_tail(&q, &k)
                && same_tail(&k, &v)
            {
                let cat = |f: &dyn Fn(&LinearHost) -> &Vec<f64>| -> Vec<f64> {
                    [&q, &k, &v]
                        .iter()
                        .flat_map(|x| f(x).iter().copied())
                        .collect()
                };
                QkvProj::Fused(Box::new(Linear::build(
                    LinearHost {
                        kind: q.kind,
                        w: cat(&|x| &x.w),
                        w_shape: [3 * prow, h],
                        extra: cat(&|x| &x.extra),
                        extra_shape: if q.extra.is_empty() {
                            vec![]
                        } else {
                            std::iter::once(3 * prow)
                                .chain(q.extra_shape.iter().skip(1).copied())
                                .collect()
                        },
                        b: cat(&|x| &x.b),
                    },
                    dtype,
                    device,
                )?))
            } else {
                QkvProj::Split(Box::new([
                    Linear::build(q, dtype, device)?,
                    Linear::build(k, dtype, device)?,
                    Linear::build(v, dtype, device)?,
                ]))
            };
            layers.push(Layer {
                heads: rows / d,
                qkv,
                wo: Linear::build(wo, dtype, device)?,
                ln1: w.ln(&format!("{p}.attention.output.LayerNorm"), h)?,
                wi: Linear::build(
                    w.linear(&format!("{p}.intermediate.dense"), Some(i), h)?,
                    dtype,
                    device,
                )?,
                wo2: Linear::build(
                    w.linear(&format!("{p}.output.dense"), Some(h), i)?,
                    dtype,
                    device,
                )?,
                ln2: w.ln(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        let head = if w.has("classifier.weight") {
            let labels = w
                .shape_of("classifier.weight")?
                .first()
                .copied()
                .unwrap_or(0);
            Some(Head {
                pooler: Linear::build(w.linear("pooler.dense", Some(h), h)?, dtype, device)?,
                act: if a == Arch::DistilBert {
                    Activation::Relu
                } else {
                    Activation::Tanh
                },
                classifier: Linear::build(w.linear("classifier", Some(labels), h)?, dtype, device)?,
            })
        } else {
            None
        };
        let emb_proj = if a == Arch::Albert {
            Some(Linear::build(
                w.linear("embeddings.projection", Some(h), e)?,
                dtype,
                device,
            )?)
        } else {
            None
        };
        let token_type = if a == Arch::DistilBert {
            None
        } else {
            Some(w.get(
                "embeddings.token_type_embeddings.weight",
                &[c.type_vocab_size, e],
            )?)
        };
        let word = w.word_embeddings(c.vocab_size, e)?;
        let position = w.get(
            "embeddings.position_embeddings.weight",
            &[c.max_position_embeddings, e],
        )?;
        let emb_ln = w.ln("embeddings.LayerNorm", e)?;
        w.check_all_used(head.is_some())?;
        Ok(BertModel {
            word,
            position,
            token_type,
            emb_ln,
            emb_proj,
            layers,
            schedule: c.schedule(),
            scale: (1.0 / (d as f64).sqrt()) as f32,
            head,
            act,
            device: device.clone(),
            dtype,
            config,
            max_batch: DEFAULT_MAX_BATCH,
        })
    }

    /// Sets the most sequences [`forward`](Self::forward), [`embed`](Self::embed) and
    /// [`classify`](Self::classify) take in one call (default [`DEFAULT_MAX_BATCH`], 4096):
    /// more is an error before anything is allocated for them, so that a count taken from a
    /// request cannot make one call allocate without bound.
    pub fn set_max_batch(&mut self, n: usize) {
        self.max_batch = n;
    }

    /// [`set_max_batch`](Self::set_max_batch) on an owned model.
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// The limit set by [`set_max_batch`](Self::set_max_batch).
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The last hidden state of a packed batch: `[Σ len, hidden]`, sequence `b` at rows
    /// `cu[b]..cu[b+1]` (returned with it). `type_ids` defaults to zeros.
    pub fn forward(
        &self,
        ids: &[Vec<u32>],
        type_ids: Option<&[Vec<u32>]>,
    ) -> Result<(Tensor, Vec<usize>)> {
        let c = &self.config;
        check_batch(OP, "ids (sequences)", ids.len(), self.max_batch)?;
        let mut cu = vec![0usize];
        for (b, s) in ids.iter().enumerate() {
            if s.len() > c.max_position_embeddings {
                return Err(invalid(
                    "ids",
                    format!(
                        "sequence {b} has {} tokens, more than max_position_embeddings {}",
                        s.len(),
                        c.max_position_embeddings
                    ),
                ));
            }
            cu.push(cu[cu.len() - 1] + s.len());
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let pos: Vec<u32> = ids.iter().flat_map(|s| 0..s.len() as u32).collect();
        let types: Vec<u32> = match type_ids {
            Some(t) => {
                if t.len() != ids.len() || t.iter().zip(ids).any(|(a, b)| a.len() != b.len()) {
                    return Err(invalid("type_ids", "expected one type id per token".into()));
                }
                t.iter().flatten().copied().collect()
            }
            None => vec![0; flat.len()],
        };
        let eps = c.layer_norm_eps as f32;
        let word = Lookup {
            table: &self.word,
            ids: &flat,
        };
        let position = Lookup {
            table: &self.position,
            ids: &pos,
        };
        let e = match &self.token_type {
            Some(tt) => embedding(
                word,
                &[
                    position,
                    Lookup {
                        table: tt,
                        ids: &types,
                    },
                ],
            )?,
            None => embedding(word, &[position])?,
        };
        let mut x = ops::layernorm(&e, None, &self.emb_ln.0, &self.emb_ln.1, eps)?;
        if let Some(p) = &self.emb_proj {
            x = p.forward(&x, Activation::Identity, None)?;
        }
        let batch = SeqBatch::packed(&self.device, &cu)?;
        let tokens = flat.len();
        let d = self.layers.first().map_or(c.head_dim(), |l| match &l.qkv {
            QkvProj::Fused(p) => p.out_features() / (3 * l.heads),
            QkvProj::Split(p) => p[0].out_features() / l.heads,
        });
        let attn = Attention {
            scale: Some(self.scale),
            ..Attention::default()
        };
        for &li in &self.schedule {
            let l = &self.layers[li];
            let id = Activation::Identity;
            let ctx = match &l.qkv {
                QkvProj::Fused(p) => {
                    let qkv = p.forward(&x, id, None)?.reshape(&[tokens, 3, l.heads, d])?;
                    ops::attention(Qkv::Packed(&qkv), &batch, &attn)?
                }
                QkvProj::Split(p) => {
                    let [pq, pk, pv] = &**p;
                    let sh = [tokens, l.heads, d];
                    let q = pq.forward(&x, id, None)?.reshape(&sh)?;
                    let k = pk.forward(&x, id, None)?.reshape(&sh)?;
                    let v = pv.forward(&x, id, None)?.reshape(&sh)?;
                    ops::attention(
                        Qkv::Separate {
                            q: &q,
                            k: &k,
                            v: &v,
                        },
                        &batch,
                        &attn,
                    )?
                }
            }
            .reshape(&[tokens, l.heads * d])?;
            let a = l.wo.forward(&ctx, id, Some(&x))?;
            let x1 = ops::layernorm(&a, None, &l.ln1.0, &l.ln1.1, eps)?;
            let inter = l.wi.forward(&x1, self.act, None)?;
            let o = l.wo2.forward(&inter, id, Some(&x1))?;
            x = ops::layernorm(&o, None, &l.ln2.0, &l.ln2.1, eps)?;
        }
        Ok((x, cu))
    }

    /// Whether the checkpoint has a sequence-classification head.
    pub fn has_classifier(&self) -> bool {
        self.head.is_some()
    }

    /// Sequence-classification logits `[batch][labels]` (f32 on the host): the head runs on
    /// the first token of each sequence, gathered on the device (no host round trip).
    pub fn classify(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        self.classify_typed(ids, None)
    }

    /// [`Self::classify`] with token type ids (segment A = 0, B = 1: sentence pairs, as a
    /// cross-encoder reads a query and a passage); `None` means all zeros.
    pub fn classify_typed(
        &self,
        ids: &[Vec<u32>],
        type_ids: Option<&[Vec<u32>]>,
    ) -> Result<Vec<Vec<f32>>> {
        check_batch(OP, "ids (sequences)", ids.len(), self.max_batch)?;
        let head = self.head.as_ref().ok_or_else(|| {
            invalid(
                "model",
                "the checkpoint has no classifier (expected classifier.weight and a pooler)".into(),
            )
        })?;
        if ids.iter().any(Vec::is_empty) {
            return Err(invalid(
                "ids",
                "a sequence is empty; classify needs its first token".into(),
            ));
        }
        let (x, cu) = self.forward(ids, type_ids)?;
        let first: Vec<u32> = cu[..cu.len() - 1].iter().map(|&r| r as u32).collect();
        let cls = embedding(
            Lookup {
                table: &x,
                ids: &first,
            },
            &[],
        )?;
        let pooled = head.pooler.forward(&cls, head.act, None)?;
        let logits = head
            .classifier
            .forward(&pooled, Activation::Identity, None)?;
        let n = head.classifier.out_features();
        let v = logits.to_host()?.to_f64();
        finite_rows(
            OP,
            "logits",
            v.chunks(n.max(1))
                .map(|r| r.iter().map(|&x| x as f32).collect())
                .collect(),
        )
    }

    /// Label names of the classifier's outputs (`id2label`, else `LABEL_i`).
    pub fn labels(&self) -> Vec<String> {
        let n = self
            .head
            .as_ref()
            .map_or(0, |h| h.classifier.out_features());
        (0..n)
            .map(|i| {
                self.config
                    .id2label
                    .as_ref()
                    .and_then(|m| m.get(&i.to_string()).cloned())
                    .unwrap_or_else(|| format!("LABEL_{i}"))
            })
            .collect()
    }

    /// Sentence embeddings: the last hidden state pooled per sequence (mean or max over its
    /// tokens, or its first token), in f32 on the host.
    pub fn embed(&self, ids: &[Vec<u32>], pooling: Pooling) -> Result<Vec<Vec<f32>>> {
        check_batch(OP, "ids (sequences)", ids.len(), self.max_batch)?;
        if let Some(b) = ids.iter().position(Vec::is_empty) {
            return Err(invalid(
                "ids",
                format!("sequence {b} is empty; pooling needs at least one token"),
            ));
        }
        let (x, cu) = self.forward(ids, None)?;
        let rows = pool_rows(
            &x.to_host()?.to_f64(),
            &cu,
            self.config.hidden_size,
            pooling,
        );
        finite_rows(OP, "embedding", rows)
    }
}

/// Pools the packed hidden states `v` (`[Σ len, h]`, sequence `b` at rows `cu[b]..cu[b+1]`,
/// none empty) per sequence, summing in f64; shared by the encoders. Max keeps a NaN (as the
/// mean's sum does) so that the caller's finiteness check sees it.
pub(crate) fn pool_rows(v: &[f64], cu: &[usize], h: usize, pooling: Pooling) -> Vec<Vec<f32>> {
    cu.windows(2)
        .map(|w| {
            let rows = &v[w[0] * h..w[1] * h];
            let column = |c: usize| rows.iter().skip(c).step_by(h).copied();
            match pooling {
                Pooling::Cls => rows.iter().take(h).map(|&x| x as f32).collect(),
                Pooling::Mean => {
                    let n = (w[1] - w[0]).max(1) as f64;
                    (0..h)
                        .map(|c| (column(c).sum::<f64>() / n) as f32)
                        .collect()
                }
                Pooling::Max => (0..h)
                    .map(|c| {
                        column(c).fold(f64::NEG_INFINITY, |m, x| {
                            if m.is_nan() || x.is_nan() {
                                f64::NAN
                            } else {
                                m.max(x)
                            }
                        }) as f32
                    })
                    .collect(),
            }
        })
        .collect()
}

/// A loader's checked read of a named tensor of a given shape, as f64 values.
pub(crate) type ReadTensor<'a> = &'a dyn Fn(&str, &[usize]) -> Result<Vec<f64>>;

/// Reads Linear `name` through `shape_of` / `host` (the loader's checked tensor reads): `name.weight`
/// `[n, k]` + `name.bias`, or the compressed form `kinds` (the file's `medkern.linear.<name>`
/// metadata) records; `n` None takes it from the file (pruned heads). Shared by the encoders.
pub(crate) fn read_linear(
    op: &'static str,
    kinds: &std::collections::HashMap<String, String>,
    name: &str,
    n: Option<usize>,
    k: usize,
    shape_of: &dyn Fn(&str) -> Result<Vec<usize>>,
    host: ReadTensor,
) -> Result<LinearHost> {
    let tag = kinds
        .get(&format!("medkern.linear.{name}"))
        .map_or("dense", String::as_str);
    let kind = LinearKind::from_tag(tag).ok_or_else(|| Error::Corrupt {
        op,
        arg: "weights",
        detail: format!("{name}: unknown storage kind {tag:?} in the metadata"),
    })?;
    let main = match kind {
        LinearKind::LowRank => format!("{name}.lr_u"),
        LinearKind::Int4 => format!("{name}.weight_packed"),
        _ => format!("{name}.weight"),
    };
    let ms = shape_of(&main)?;
    let n = n.unwrap_or(ms.first().copied().unwrap_or(0));
    let (w, w_shape, extra, extra_shape) = match kind {
        LinearKind::LowRank => {
            let r = ms.get(1).copied().unwrap_or(0);
            (
                host(&main, &[n, r])?,
                [n, r],
                host(&format!("{name}.lr_v"), &[r, k])?,
                vec![r, k],
            )
        }
        LinearKind::Int8 | LinearKind::Sparse24Int8 => (
            host(&main, &[n, k])?,
            [n, k],
            host(&format!("{name}.weight_scale"), &[n])?,
            vec![n],
        ),
        LinearKind::Int4 => {
            let scale = format!("{name}.weight_scale");
            let groups = shape_of(&scale)?.get(1).copied().unwrap_or(0);
            if k % 2 != 0 || groups == 0 || k % groups != 0 || ![64, 128].contains(&(k / groups)) {
                return Err(Error::Corrupt {
                    op,
                    arg: "weights",
                    detail: format!(
                        "{scale}: {groups} int4 groups for K = {k}; expected groups of 64 or \
                         128 values"
                    ),
                });
            }
            // The packed bytes (two values each, the even K index in the low nibble).
            let raw = host(&main, &[n, k / 2])?;
            if let Some(i) = raw
                .iter()
                .position(|&b| !(0.0..=255.0).contains(&b) || b.fract() != 0.0)
            {
                return Err(Error::Corrupt {
                    op,
                    arg: "weights",
                    detail: format!(
                        "{main}: value {} at {i}; expected packed int4 bytes (U8)",
                        raw[i]
                    ),
                });
            }
            let bytes: Vec<u8> = raw.into_iter().map(|b| b as u8).collect();
            (
                crate::model::compress::unpack_int4(&bytes)
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                [n, k],
                host(&scale, &[n, groups])?,
                vec![n, groups],
            )
        }
        _ => (host(&main, &[n, k])?, [n, k], vec![], vec![]),
    };
    Ok(LinearHost {
        kind,
        w,
        w_shape,
        extra,
        extra_shape,
        b: host(&format!("{name}.bias"), &[n])?,
    })
}

/// The values of tensor `full` of a checkpoint as f64: float dtypes (finite values only: NaN or
/// ±inf would flow through every output silently) or I8 (int8 weights).
pub(crate) fn tensor_values(
    op: &'static str,
    t: &safetensors::tensor::TensorView,
    full: &str,
) -> Result<Vec<f64>> {
    let bad = |detail: String| Error::Corrupt {
        op,
        arg: "weights",
        detail,
    };
    match (t.dtype(), crate::model::float_values(t)) {
        (_, Some(v)) => {
            // A value beyond f32 in an F64 tensor is refused too, as the CNN loaders do.
            if let Some(i) = v.iter().position(|&x| !(x as f32).is_finite()) {
                return Err(bad(format!(
                    "tensor {full} holds a non-finite value {} at index {i}; expected finite \
                     weights (a corrupt or diverged checkpoint?)",
                    v[i]
                )));
            }
            Ok(v)
        }
        (safetensors::Dtype::I8, None) => {
            Ok(t.data().iter().map(|&b| f64::from(b as i8)).collect())
        }
        // Packed int4 weights (`<linear>.weight_packed`, two values a byte).
        (safetensors::Dtype::U8, None) if full.ends_with(".weight_packed") => {
            Ok(t.data().iter().map(|&b| f64::from(b)).collect())
        }
        (other, None) => Err(bad(format!(
            "tensor {full} has dtype {other:?}, expected F32, F64, F16, BF16 or I8 (U8 for \
             packed int4)"
        ))),
    }
}

/// The rows of a result, or an error when one holds a non-finite value: the loader refuses
/// non-finite weights, so this is finite weights large enough to overflow (a corrupt or
/// hostile checkpoint), and a NaN row returned as a result would be a silent wrong answer.
pub(crate) fn finite_rows(
    op: &'static str,
    what: &str,
    rows: Vec<Vec<f32>>,
) -> Result<Vec<Vec<f32>>> {
    for (i, r) in rows.iter().enumerate() {
        if let Some(j) = r.iter().position(|x| !x.is_finite()) {
            return Err(Error::Corrupt {
                op,
                arg: "weights",
                detail: format!(
                    "{what} {i} has a non-finite value {} at {j}: the weights overflow f32 \
                     (expected a checkpoint whose activations stay finite)",
                    r[j]
                ),
            });
        }
    }
    Ok(rows)
}

/// Zero-pads each head's `d` output rows of a q/k/v projection to `dp` (weights, bias and
/// per-channel scales; a zero row is also valid 2:4).
pub(crate) fn pad_heads_out(mut x: LinearHost, d: usize, dp: usize) -> Result<LinearHost> {
    let heads = x.w_shape[0] / d;
    let pad_rows = |v: &[f64], cols: usize, fill: f64| -> Vec<f64> {
        (0..heads * dp)
            .flat_map(|r| {
                let (hd, j) = (r / dp, r % dp);
                (0..cols).map(move |c| (hd, j, c))
            })
            .map(|(hd, j, c)| {
                if j < d {
                    v[(hd * d + j) * cols + c]
                } else {
                    fill
                }
            })
            .collect()
    };
    let cols = x.w_shape[1];
    x.w = pad_rows(&x.w, cols, 0.0);
    x.b = pad_rows(&x.b, 1, 0.0);
    if matches!(x.kind, LinearKind::Int8 | LinearKind::Sparse24Int8) {
        x.extra = pad_rows(&x.extra, 1, 1.0);
        x.extra_shape = vec![heads * dp];
    }
    if x.kind == LinearKind::Int4 {
        let groups = x.extra_shape.get(1).copied().unwrap_or(0);
        x.extra = pad_rows(&x.extra, groups, 1.0);
        x.extra_shape = vec![heads * dp, groups];
    }
    x.w_shape = [heads * dp, cols];
    Ok(x)
}

/// Zero-pads each head's `d` input columns of the attention output projection to `dp`.
pub(crate) fn pad_heads_in(
    mut x: LinearHost,
    d: usize,
    dp: usize,
    layer: &str,
) -> Result<LinearHost> {
    let pad_cols = |v: &[f64], rows: usize, k: usize| -> Vec<f64> {
        let heads = k / d;
        (0..rows)
            .flat_map(|r| (0..heads * dp).map(move |c| (r, c)))
            .map(|(r, c)| {
                let (hd, j) = (c / dp, c % dp);
                if j < d { v[r * k + hd * d + j] } else { 0.0 }
            })
            .collect()
    };
    match x.kind {
        LinearKind::Dense | LinearKind::Int8 => {
            let [n, k] = x.w_shape;
            x.w = pad_cols(&x.w, n, k);
            x.w_shape = [n, k / d * dp];
        }
        LinearKind::LowRank => {
            let (r, k) = (x.extra_shape[0], x.extra_shape[1]);
            x.extra = pad_cols(&x.extra, r, k);
            x.extra_shape = vec![r, k / d * dp];
        }
        LinearKind::Sparse24 | LinearKind::Sparse24Int8 => {
            return Err(corrupt(
                "weights",
                format!(
                    "{layer}.attention.output.dense is 2:4 sparse with head_dim {d}: padding \
                     heads to {dp} would break its 2:4 groups (head dims 32..128 only)"
                ),
            ));
        }
        LinearKind::Int4 => {
            return Err(corrupt(
                "weights",
                format!(
                    "{layer}.attention.output.dense is int4 with head_dim {d}: padding heads \
                     to {dp} would break its K groups (head dims 32..128 only)"
                ),
            ));
        }
    }
    Ok(x)
}

/// How [`BertModel::embed`] pools a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the sequence's tokens (sentence-transformers, e.g. all-MiniLM-L6-v2).
    Mean,
    /// The first ([CLS]) token.
    Cls,
    /// The largest value of each feature over the sequence's tokens (sentence-transformers'
    /// `pooling_mode_max_tokens`).
    Max,
}

/// Token ids and their token type ids, one sequence per sentence pair.
pub type PairIds = (Vec<Vec<u32>>, Vec<Vec<u32>>);

/// The default of [`BertTokenizer::with_max_text_bytes`]: 1 MiB.
pub const DEFAULT_MAX_TEXT_BYTES: usize = 1 << 20;

/// WordPiece tokenisation from a `tokenizer.json` (the `tokenizers` crate; Cargo feature
/// `tokenizers`).
#[cfg(feature = "tokenizers")]
pub struct BertTokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer truncating sentence pairs longest-first to `max_len`, as Hugging
    /// Face's `truncation=True` does for a cross-encoder's (query, passage).
    pair: tokenizers::Tokenizer,
    max_len: usize,
    max_text_bytes: usize,
    max_batch: usize,
}

#[cfg(feature = "tokenizers")]
impl BertTokenizer {
    /// Loads `dir/tokenizer.json`; sequences are truncated to `max_len` tokens ([CLS] and
    /// [SEP] included, so `max_len` is at least 2).
    pub fn load(dir: &Path, max_len: usize) -> Result<Self> {
        if max_len < 2 {
            return Err(invalid(
                "max_len",
                format!(
                    "{max_len} tokens; expected at least 2 (the [CLS] and [SEP] tokens are \
                     counted)"
                ),
            ));
        }
        let path = dir.join("tokenizer.json");
        let bytes = crate::input::read_regular(OP, &path, "tokenizer.json")?;
        // Parsed as plain JSON first (serde_json's recursion limit included): tokenizers 0.22
        // panics (`expect("Helper")` in its decoder) on a "decoder" value that does not parse,
        // cut short or nested too deep, instead of returning the error.
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .map_err(|e| invalid("tokenizer", format!("{}: {e}", path.display())))?;
        let mut inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| invalid("tokenizer", format!("{}: {e}", path.display())))?;
        // Batches are packed, never padded; truncation is ours (keeps the final [SEP]).
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| invalid("tokenizer", format!("{}: {e}", path.display())))?;
        let mut pair = inner.clone();
        pair.with_truncation(Some(tokenizers::TruncationParams {
            max_length: max_len,
            strategy: tokenizers::TruncationStrategy::LongestFirst,
            stride: 0,
            direction: tokenizers::TruncationDirection::Right,
        }))
        .map_err(|e| invalid("tokenizer", format!("{}: {e}", path.display())))?;
        Ok(BertTokenizer {
            inner,
            pair,
            max_len,
            max_text_bytes: DEFAULT_MAX_TEXT_BYTES,
            max_batch: DEFAULT_MAX_BATCH,
        })
    }

    /// Sets the most texts [`encode`](Self::encode) takes in one call (default
    /// [`DEFAULT_MAX_BATCH`], 4096): more is an error before any is tokenised.
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// The limit set by [`with_max_batch`](Self::with_max_batch).
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Sets the most bytes of one text that are ever tokenised (default
    /// [`DEFAULT_MAX_TEXT_BYTES`]): it bounds the time and memory one hostile text can take. A
    /// longer text still encodes when a prefix within the limit settles its first `max_len`
    /// tokens (any text with words in it); otherwise (e.g. megabytes without a word break)
    /// [`encode`](Self::encode) returns an error naming the limit.
    pub fn with_max_text_bytes(mut self, bytes: usize) -> Self {
        self.max_text_bytes = bytes;
        self
    }

    /// The limit set by [`with_max_text_bytes`](Self::with_max_text_bytes).
    pub fn max_text_bytes(&self) -> usize {
        self.max_text_bytes
    }

    /// Whether the tokenizer's normalizer lower-cases text (BERT uncased: `BertNormalizer`
    /// with `lowercase`, or a `Lowercase` step), so a `do_lower_case` setting is already met.
    pub fn lowercases(&self) -> bool {
        fn lowers(v: &serde_json::Value) -> bool {
            match v.get("type").and_then(|t| t.as_str()) {
                Some("Lowercase") => true,
                Some("BertNormalizer") => {
                    v.get("lowercase") == Some(&serde_json::Value::Bool(true))
                }
                Some("Sequence") => v
                    .get("normalizers")
                    .and_then(|n| n.as_array())
                    .is_some_and(|n| n.iter().any(lowers)),
                _ => false,
            }
        }
        self.inner
            .get_normalizer()
            .and_then(|n| serde_json::to_value(n).ok())
            .is_some_and(|v| lowers(&v))
    }

    /// Token ids (with [CLS]/[SEP]) of each text, truncated to `max_len` (keeping the final
    /// [SEP]).
    ///
    /// A long text is not tokenised whole: a prefix is, first about `32·max_len` bytes, four
    /// times more while its tokens before its last word (which the cut may split) number fewer
    /// than `max_len`. The pre-tokenisers of the BERT family decide word breaks char by char,
    /// so the words before the last one give the same first tokens as the whole text: the
    /// result is that of tokenising it all. A text longer than
    /// [`max_text_bytes`](Self::max_text_bytes) whose prefix of that size does not settle is
    /// an error.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        check_batch(OP, "texts", texts.len(), self.max_batch)?;
        texts.iter().map(|t| self.encode_one(t)).collect()
    }

    /// Token ids and token type ids of each sentence pair, `[CLS] a [SEP] b [SEP]` with types
    /// 0 for `[CLS] a [SEP]` and 1 for `b [SEP]`, truncated longest-first to `max_len` (the
    /// longer side loses its last tokens first). Each text is tokenised whole, so each must
    /// be within [`max_text_bytes`](Self::max_text_bytes).
    pub fn encode_pairs(&self, pairs: &[(&str, &str)]) -> Result<PairIds> {
        check_batch(OP, "pairs", pairs.len(), self.max_batch)?;
        let mut ids = Vec::with_capacity(pairs.len());
        let mut types = Vec::with_capacity(pairs.len());
        for (i, (a, b)) in pairs.iter().enumerate() {
            for t in [a, b] {
                if t.len() > self.max_text_bytes {
                    return Err(invalid(
                        "text",
                        format!(
                            "pair {i}: a text of {} bytes; expected at most {} (the \
                             tokenizer's max_text_bytes limit)",
                            t.len(),
                            self.max_text_bytes
                        ),
                    ));
                }
            }
            let enc = self
                .pair
                .encode((*a, *b), true)
                .map_err(|e| invalid("text", format!("pair {i}: tokenizer: {e}")))?;
            ids.push(enc.get_ids().to_vec());
            types.push(enc.get_type_ids().to_vec());
        }
        Ok((ids, types))
    }

    fn encode_one(&self, text: &str) -> Result<Vec<u32>> {
        let encode = |t: &str| {
            self.inner
                .encode(t, true)
                .map_err(|e| invalid("text", format!("tokenizer: {e}")))
        };
        let truncate = |mut ids: Vec<u32>| {
            if ids.len() > self.max_len {
                let last = ids[ids.len() - 1];
                ids.truncate(self.max_len - 1);
                ids.push(last);
            }
            ids
        };
        let cap = self.max_text_bytes;
        let mut budget = self.max_len.saturating_mul(32).max(1024);
        loop {
            if text.len() <= budget.min(cap) {
                return Ok(truncate(encode(text)?.get_ids().to_vec()));
            }
            // The last char boundary at or before the budget (0 always is one).
            let cut = (0..=budget.min(cap))
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            let enc = encode(&text[..cut])?;
            // Tokens before the prefix's last word are those of the whole text; with
            // max_len of them (more than the max_len - 1 kept, so the whole text has more
            // than max_len tokens with its [SEP]) the truncation is known.
            let words = enc.get_word_ids();
            let settled = words
                .iter()
                .flatten()
                .max()
                .and_then(|last| words.iter().position(|w| *w == Some(*last)))
                .unwrap_or(0);
            if settled >= self.max_len {
                return Ok(truncate(enc.get_ids().to_vec()));
            }
            if budget >= cap {
                return Err(invalid(
                    "text",
                    format!(
                        "{} bytes whose first {cut} bytes do not settle the first {} tokens \
                         (no word break); expected at most {cap} bytes (the tokenizer's \
                         max_text_bytes limit)",
                        text.len(),
                        self.max_len
                    ),
                ));
            }
            budget = budget.saturating_mul(4);
        }
    }
}

/// Default dtype for a device: f16 on a GPU, f32 on the CPU.
pub fn default_dtype(device: &Device) -> DType {
    match device {
        Device::Cpu => DType::F32,
        Device::Gpu(_) => DType::F16,
    }
}
