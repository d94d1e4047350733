//! MobileBERT (`google/mobilebert-uncased`; Hugging Face `MobileBertModel` /
//! `MobileBertForSequenceClassification` tensor names) from `config.json` + `model.safetensors`,
//! run with medkern ops only on packed variable-length batches, as [`super::bert`] runs BERT.
//!
//! The graph (checked against transformers' `modeling_mobilebert.py`): 128-d word embeddings,
//! the trigram input `concat(x[t+1], x[t], x[t-1])` (zeros past either end of each sequence)
//! through `embedding_transformation` to the 512-d hidden size, plus position and token-type
//! rows, then NoNorm (`x ⊙ weight + bias`, named `LayerNorm`). Each layer: bottleneck Linears
//! 512→128 (`bottleneck.input` is attention.output's residual, `bottleneck.attention` the shared
//! q/k input; v reads the 512-d input), 4 heads of 32, `attention.output` NoNorm(dense +
//! residual), `num_feedforward_networks − 1` stacked FFNs (128→512 relu →128, NoNorm(+ input)),
//! the last FFN, then `output.bottleneck` 128→512, NoNorm(+ the layer's input).
//!
//! # NoNorm folded into the GEMMs
//!
//! `NoNorm(W·z + b) = (γ⊙W)·z + (γ⊙b + β)`: γ scales the Linear's output rows (dense and 2:4
//! values, the int8 per-channel scales, low rank's U) and the bias absorbs β, at load time, so
//! a NoNorm without a residual costs nothing. With a residual, `NoNorm(W·z + b + r)` is the
//! folded GEMM plus `γ⊙r` added by its residual epilogue. `γ⊙r` is free where `r` is a Linear's
//! output used nowhere else (the bottleneck.input residual: γ folds into that Linear too; the
//! position and token-type tables, scaled at load); elsewhere `r` also feeds a Linear, and one
//! `channel_scale` pass makes `γ⊙r` (a `[tokens, 128]` tensor per FFN, one `[tokens, 512]` per
//! layer). The division-based alternative (carry `r/γ` and fold `1/γ` into the consumers)
//! would save those passes but fails for a γ with zeros and compounds γ products along the
//! 24-layer residual stream past what f16 holds; this form is exact for any finite γ.
//!
//! Packed batches: the trigram neighbours are taken within each sequence, as Hugging Face
//! computes a sequence run alone (a padded HF batch would show the last real token the
//! `[PAD]` embedding instead of zeros).

use crate::dtype::DType;
use crate::error::{Error, Result};
pub use crate::input::DEFAULT_MAX_BATCH;
use crate::input::check_batch;
use crate::model::bert::{
    Pooling, activation_of, finite_rows, pad_heads_in, pad_heads_out, pool_rows, read_linear,
    tensor_values,
};
use crate::model::linear::{Linear, LinearHost, LinearKind};
use crate::ops::embedding::{Lookup, embedding};
use crate::ops::{self, Activation, Attention, Qkv, SeqBatch};
use crate::tensor::{Device, HostTensor, Tensor};
use safetensors::SafeTensors;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

const OP: &str = "mobilebert";

/// The prefix task checkpoints put before the encoder's names.
pub const PREFIX: &str = "mobilebert.";

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

/// The fields of a MobileBERT `config.json`; a missing field takes Hugging Face's
/// `MobileBertConfig` default (those of `google/mobilebert-uncased`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct MobileBertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub embedding_size: usize,
    pub trigram_input: bool,
    pub use_bottleneck: bool,
    pub intra_bottleneck_size: usize,
    pub use_bottleneck_attention: bool,
    pub key_query_shared_bottleneck: bool,
    pub num_feedforward_networks: usize,
    pub normalization_type: String,
    pub classifier_activation: bool,
    pub model_type: Option<String>,
    /// Class names of a sequence-classification head (`"0": "NEGATIVE"`).
    pub id2label: Option<std::collections::BTreeMap<String, String>>,
}

impl Default for MobileBertConfig {
    fn default() -> Self {
        MobileBertConfig {
            vocab_size: 30522,
            hidden_size: 512,
            num_hidden_layers: 24,
            num_attention_heads: 4,
            intermediate_size: 512,
            hidden_act: "relu".into(),
            max_position_embeddings: 512,
            type_vocab_size: 2,
            embedding_size: 128,
            trigram_input: true,
            use_bottleneck: true,
            intra_bottleneck_size: 128,
            use_bottleneck_attention: false,
            key_query_shared_bottleneck: true,
            num_feedforward_networks: 4,
            normalization_type: "no_norm".into(),
            classifier_activation: true,
            model_type: Some("mobilebert".into()),
            id2label: None,
        }
    }
}

/// Bounds well past any real MobileBERT, so sizes derived from them cannot overflow.
const MAX_WIDTH: usize = 1 << 16;
const MAX_VOCAB: usize = 1 << 22;
const MAX_LAYERS: usize = 1024;
const MAX_FFNS: usize = 64;

impl MobileBertConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| invalid("config", format!("config.json: {e}")))?;
        Self::from_value(&v)
    }

    /// Parses and checks a `config.json` value whose `model_type` is `mobilebert`; a field
    /// value this implementation does not run is an error naming the field, the value and
    /// what is supported.
    pub fn from_value(v: &serde_json::Value) -> Result<Self> {
        let mt = v.get("model_type").and_then(|t| t.as_str());
        if mt != Some("mobilebert") {
            return Err(invalid(
                "config",
                format!("model_type {mt:?}; expected \"mobilebert\""),
            ));
        }
        let c: MobileBertConfig = serde_json::from_value(v.clone())
            .map_err(|e| invalid("config", format!("config.json: {e}")))?;
        let field = |name: &str, given: String, expected: &str| {
            invalid("config", format!("{name} {given}; expected {expected}"))
        };
        if c.normalization_type != "no_norm" {
            return Err(field(
                "normalization_type",
                format!("{:?}", c.normalization_type),
                "\"no_norm\" (MobileBERT's NoNorm, folded into the GEMMs)",
            ));
        }
        for (name, n, most) in [
            ("hidden_size", c.hidden_size, MAX_WIDTH),
            ("intermediate_size", c.intermediate_size, MAX_WIDTH),
            ("embedding_size", c.embedding_size, MAX_WIDTH),
            ("intra_bottleneck_size", c.intra_bottleneck_size, MAX_WIDTH),
            (
                "max_position_embeddings",
                c.max_position_embeddings,
                MAX_WIDTH,
            ),
            ("type_vocab_size", c.type_vocab_size, MAX_WIDTH),
            ("vocab_size", c.vocab_size, MAX_VOCAB),
            ("num_hidden_layers", c.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", c.num_attention_heads, MAX_WIDTH),
            (
                "num_feedforward_networks",
                c.num_feedforward_networks,
                MAX_FFNS,
            ),
        ] {
            if n == 0 || n > most {
                return Err(field(name, n.to_string(), &format!("1 to {most}")));
            }
        }
        let th = c.true_hidden_size();
        if th % c.num_attention_heads != 0 {
            return Err(field(
                "num_attention_heads",
                c.num_attention_heads.to_string(),
                &format!("a divisor of the attention width {th} (intra_bottleneck_size)"),
            ));
        }
        // HF's query/key take true_hidden_size inputs; without a q/k bottleneck they read the
        // hidden state, which only fits when the two widths agree.
        if c.use_bottleneck
            && !c.use_bottleneck_attention
            && !c.key_query_shared_bottleneck
            && c.intra_bottleneck_size != c.hidden_size
        {
            return Err(field(
                "key_query_shared_bottleneck",
                "false".into(),
                &format!(
                    "true, or intra_bottleneck_size {} equal to hidden_size {} (query/key then \
                     read the hidden state)",
                    c.intra_bottleneck_size, c.hidden_size
                ),
            ));
        }
        activation_of(&c.hidden_act).map_err(|d| invalid("config", d))?;
        Ok(c)
    }

    /// The attention / FFN width: `intra_bottleneck_size` with the bottleneck, else hidden.
    pub fn true_hidden_size(&self) -> usize {
        if self.use_bottleneck {
            self.intra_bottleneck_size
        } else {
            self.hidden_size
        }
    }

    pub fn head_dim(&self) -> usize {
        self.true_hidden_size() / self.num_attention_heads.max(1)
    }

    /// Whether `embeddings.embedding_transformation` exists (HF: trigram input or E ≠ H).
    fn has_transformation(&self) -> bool {
        self.trigram_input || self.embedding_size != self.hidden_size
    }

    /// Whether the layers read q/k from `bottleneck.attention`.
    fn shared_qk(&self) -> bool {
        self.use_bottleneck && !self.use_bottleneck_attention && self.key_query_shared_bottleneck
    }

    /// The tokens kept per text for a requested `max_len` (as [`super::bert::BertConfig::max_len`]).
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
}

/// The Linear stems of encoder layer `l` that `config` uses (the compressions' list; names
/// without the `mobilebert.` prefix). q/k/v and attention.output.dense come first, as for BERT.
pub fn layer_linears(config: &MobileBertConfig, l: usize) -> Vec<String> {
    let p = format!("encoder.layer.{l}");
    let mut v: Vec<String> = [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
    ]
    .iter()
    .map(|s| format!("{p}.{s}"))
    .collect();
    if config.use_bottleneck {
        v.push(format!("{p}.bottleneck.input.dense"));
    }
    if config.shared_qk() {
        v.push(format!("{p}.bottleneck.attention.dense"));
    }
    for j in 0..config.num_feedforward_networks.saturating_sub(1) {
        v.push(format!("{p}.ffn.{j}.intermediate.dense"));
        v.push(format!("{p}.ffn.{j}.output.dense"));
    }
    v.push(format!("{p}.intermediate.dense"));
    v.push(format!("{p}.output.dense"));
    if config.use_bottleneck {
        v.push(format!("{p}.output.bottleneck.dense"));
    }
    v
}

/// The medkern name of a checkpoint tensor (the `mobilebert.` prefix dropped); None for the
/// tensors the encoder and its classifier do not use (pretraining heads `cls.*`, buffers).
pub fn canonical_name(name: &str) -> Option<String> {
    let bare = name.strip_prefix(PREFIX).unwrap_or(name);
    if bare.starts_with("cls.") || bare.contains("position_ids") {
        return None;
    }
    Some(bare.to_string())
}

/// A NoNorm's per-channel scale as an f32 `[1, C]` tensor for `channel_scale`.
fn gamma_tensor(g: &[f64], device: &Device) -> Result<Tensor> {
    HostTensor::from_f64(&[1, g.len()], g, DType::F32)?.to_device(device)
}

/// `γ ⊙ x` per channel of a `[tokens, C]` tensor (one `channel_scale` pass; x's last use).
fn scaled(x: Tensor, g: &Tensor) -> Result<Tensor> {
    let (t, c) = (x.shape()[0], x.shape()[1]);
    ops::channel_scale(&x.reshape(&[1, t, 1, c])?, g)?.reshape(&[t, c])
}

/// Folds `NoNorm(W·z + b) = (γ⊙W)·z + γ⊙b + β` into a Linear's output rows: dense and 2:4
/// values, the int8 per-channel scales (the int8 values stay as they are), low rank's U.
fn fold(mut l: LinearHost, g: &[f64], beta: &[f64]) -> LinearHost {
    let n = l.w_shape[0];
    match l.kind {
        LinearKind::Int8 | LinearKind::Sparse24Int8 => {
            for (s, &gr) in l.extra.iter_mut().zip(g) {
                *s *= gr;
            }
        }
        // Int4: the f16 group scales of each row (rounded to f16 again where they are stored
        // in f16, a relative change below f16's own rounding of the folded weight).
        LinearKind::Int4 => {
            let groups = l.extra_shape.get(1).copied().unwrap_or(0);
            for (r, &gr) in g.iter().enumerate().take(n) {
                for s in &mut l.extra[r * groups..(r + 1) * groups] {
                    *s *= gr;
                }
            }
        }
        LinearKind::Dense | LinearKind::Sparse24 | LinearKind::LowRank => {
            let k = l.w_shape[1];
            for (r, &gr) in g.iter().enumerate().take(n) {
                for v in &mut l.w[r * k..(r + 1) * k] {
                    *v *= gr;
                }
            }
        }
    }
    for ((b, &gr), &br) in l.b.iter_mut().zip(g).zip(beta) {
        *b = gr * *b + br;
    }
    l
}

/// Where a layer's attention reads its inputs, by config.
enum Inputs {
    /// The default (`key_query_shared_bottleneck`): q/k read `qk` = bottleneck.attention(x),
    /// v reads x, and `res` is bottleneck.input(x) with attention.output's γ folded in too
    /// (its only use is that residual).
    SharedQk { qk: Box<Linear>, res: Box<Linear> },
    /// The bottleneck without a shared q/k input: q/k/v read x; `res` as above.
    Plain { res: Box<Linear> },
    /// `use_bottleneck_attention`: q/k/v and the residual all read bottleneck.input(x).
    Bottleneck { input: Box<Linear> },
    /// No bottleneck: q/k/v read x, and x is the residual.
    NoBottleneck,
}

/// One of the stacked FFNs: `NoNorm(out(act(inter(a))) + a)`, γ of the NoNorm kept for the
/// residual.
struct Ffn {
    inter: Linear,
    out: Linear,
    g: Tensor,
}

struct Layer {
    heads: usize,
    inputs: Inputs,
    q: Linear,
    k: Linear,
    v: Linear,
    /// attention.output.dense with its NoNorm folded; `g_attn` its γ (for scaled residuals).
    wo: Linear,
    g_attn: Tensor,
    /// All FFNs, the last one being the layer's `intermediate` / `output`.
    ffns: Vec<Ffn>,
    /// output.bottleneck.dense (NoNorm folded) and its γ.
    out_bottleneck: Option<(Linear, Tensor)>,
}

struct Head {
    /// pooler.dense + tanh (`classifier_activation`), else the first token as is.
    pooler: Option<Linear>,
    classifier: Linear,
}

/// A MobileBERT encoder ready to run.
pub struct MobileBertModel {
    pub config: MobileBertConfig,
    device: Device,
    dtype: DType,
    act: Activation,
    /// `[vocab + 1, E]`: the last row is the zeros the trigram input reads past a sequence end.
    word: Tensor,
    /// γ⊙position rows and γ⊙token-type rows (γ of the embedding NoNorm; β added to the
    /// token-type rows when no transformation Linear takes it).
    position: Tensor,
    token_type: Tensor,
    transformation: Option<Linear>,
    layers: Vec<Layer>,
    /// Head dim the attention runs (zero-padded up to a fused-kernel size).
    dp: usize,
    scale: f32,
    head: Option<Head>,
    max_batch: usize,
}

struct Weights<'a> {
    st: SafeTensors<'a>,
    /// medkern name → name in the file.
    names: HashMap<String, String>,
    prefix: &'static str,
    kinds: HashMap<String, String>,
    used: std::cell::RefCell<BTreeSet<String>>,
}

impl Weights<'_> {
    fn missing(&self, name: &str) -> Error {
        let prefix = if name.starts_with("classifier.") {
            ""
        } else {
            self.prefix
        };
        corrupt("weights", format!("missing tensor {prefix}{name}"))
    }
    fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        self.names
            .get(name)
            .and_then(|f| self.st.tensor(f).ok())
            .map(|t| t.shape().to_vec())
            .ok_or_else(|| self.missing(name))
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
    /// A NoNorm's (γ, β): `base.weight`, `base.bias` of width `c`.
    fn nonorm(&self, base: &str, c: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        Ok((
            self.host(&format!("{base}.weight"), &[c])?,
            self.host(&format!("{base}.bias"), &[c])?,
        ))
    }
    /// Linear `stem` `[n, k]` with NoNorm `norm` folded into it.
    fn folded(&self, stem: &str, norm: &str, n: usize, k: usize) -> Result<LinearHost> {
        let l = self.linear(stem, Some(n), k)?;
        let (g, b) = self.nonorm(norm, n)?;
        Ok(fold(l, &g, &b))
    }
    /// Every tensor of the file was read but for pretraining heads, buffers and a pooler
    /// without a classifier: anything else means config.json is not the checkpoint's.
    fn check_all_used(&self, c: &MobileBertConfig, has_head: bool) -> Result<()> {
        let used = self.used.borrow();
        for n in self.st.names() {
            if used.contains(n) {
                continue;
            }
            match canonical_name(n) {
                None => continue,
                Some(cn) if !has_head && cn.starts_with("pooler.") => continue,
                Some(_) => {}
            }
            return Err(corrupt(
                "weights",
                format!(
                    "unexpected tensor {n}: not used by the configuration ({} layers, {} FFNs \
                     per layer, hidden {}, bottleneck {}); is config.json the checkpoint's?",
                    c.num_hidden_layers,
                    c.num_feedforward_networks,
                    c.hidden_size,
                    c.true_hidden_size()
                ),
            ));
        }
        Ok(())
    }
}

impl MobileBertModel {
    /// Loads `config.json` and `model.safetensors` from a Hugging Face model folder; `dtype` is
    /// the compute dtype (f16/bf16 on a GPU; f32 on the CPU is the reference).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let read = |f: &str| crate::input::read_regular(OP, &dir.join(f), f);
        let cfg = MobileBertConfig::from_json(&String::from_utf8_lossy(&read("config.json")?))
            .map_err(Error::into_corrupt)?;
        let weights =
            crate::input::map_regular(OP, &dir.join("model.safetensors"), "model.safetensors")?;
        Self::from_safetensors(cfg, &weights, device, dtype)
    }

    /// Builds the model from a config and a safetensors file (HF names with or without the
    /// `mobilebert.` prefix, or as [`crate::model::compress::Checkpoint`] saves them, whose
    /// metadata gives each Linear's storage kind). Every tensor's name and shape is checked.
    pub fn from_safetensors(
        config: MobileBertConfig,
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
        let prefix = if st.names().iter().any(|n| n.starts_with(PREFIX)) {
            PREFIX
        } else {
            ""
        };
        let names = st
            .names()
            .into_iter()
            .filter_map(|n| Some((canonical_name(n)?, n.to_string())))
            .collect();
        let w = Weights {
            st,
            names,
            prefix,
            kinds,
            used: Default::default(),
        };
        let c = &config;
        let act = activation_of(&c.hidden_act).map_err(|d| corrupt("config", d))?;
        let (h, b, i, e) = (
            c.hidden_size,
            c.true_hidden_size(),
            c.intermediate_size,
            c.embedding_size,
        );
        let d = c.head_dim();
        // The fused attention kernel has head dims 32..128; smaller ones run zero-padded per
        // head (q·k and the output unchanged), as BertModel does.
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
        let up = |l: LinearHost| Linear::build(l, dtype, device);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let (g_attn, beta_attn) = w.nonorm(&format!("{p}.attention.output.LayerNorm"), b)?;
            // q/k width: the bottleneck when one feeds them, else (B = H then) the hidden size.
            let v_in = if c.use_bottleneck_attention { b } else { h };
            let q = w.linear(&format!("{p}.attention.self.query"), None, b)?;
            let rows = q.w_shape[0];
            if rows == 0 || rows % d != 0 {
                return Err(corrupt(
                    "weights",
                    format!(
                        "{PREFIX}{p}.attention.self.query has {rows} rows, not a multiple of \
                         head_dim {d}"
                    ),
                ));
            }
            let k = w.linear(&format!("{p}.attention.self.key"), Some(rows), b)?;
            let v = w.linear(&format!("{p}.attention.self.value"), Some(rows), v_in)?;
            let wo = fold(
                w.linear(&format!("{p}.attention.output.dense"), Some(b), rows)?,
                &g_attn,
                &beta_attn,
            );
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
            let bottleneck_input = || {
                w.folded(
                    &format!("{p}.bottleneck.input.dense"),
                    &format!("{p}.bottleneck.input.LayerNorm"),
                    b,
                    h,
                )
            };
            // γ_attn ⊙ NoNorm_in(W x + b): both scalings fold into one Linear.
            let residual = || -> Result<Box<Linear>> {
                let zero = vec![0.0; b];
                Ok(Box::new(up(fold(bottleneck_input()?, &g_attn, &zero))?))
            };
            let inputs = if !c.use_bottleneck {
                Inputs::NoBottleneck
            } else if c.use_bottleneck_attention {
                Inputs::Bottleneck {
                    input: Box::new(up(bottleneck_input()?)?),
                }
            } else if c.key_query_shared_bottleneck {
                Inputs::SharedQk {
                    qk: Box::new(up(w.folded(
                        &format!("{p}.bottleneck.attention.dense"),
                        &format!("{p}.bottleneck.attention.LayerNorm"),
                        b,
                        h,
                    )?)?),
                    res: residual()?,
                }
            } else {
                Inputs::Plain { res: residual()? }
            };
            let mut ffns = Vec::with_capacity(c.num_feedforward_networks);
            for j in 0..c.num_feedforward_networks {
                let stem = if j + 1 == c.num_feedforward_networks {
                    p.clone()
                } else {
                    format!("{p}.ffn.{j}")
                };
                let (g, beta) = w.nonorm(&format!("{stem}.output.LayerNorm"), b)?;
                let out = fold(
                    w.linear(&format!("{stem}.output.dense"), Some(b), i)?,
                    &g,
                    &beta,
                );
                ffns.push(Ffn {
                    inter: up(w.linear(&format!("{stem}.intermediate.dense"), Some(i), b)?)?,
                    out: up(out)?,
                    g: gamma_tensor(&g, device)?,
                });
            }
            let out_bottleneck = if c.use_bottleneck {
                let (g, beta) = w.nonorm(&format!("{p}.output.bottleneck.LayerNorm"), h)?;
                let lin = fold(
                    w.linear(&format!("{p}.output.bottleneck.dense"), Some(h), b)?,
                    &g,
                    &beta,
                );
                Some((up(lin)?, gamma_tensor(&g, device)?))
            } else {
                None
            };
            layers.push(Layer {
                heads: rows / d,
                inputs,
                q: up(q)?,
                k: up(k)?,
                v: up(v)?,
                wo: up(wo)?,
                g_attn: gamma_tensor(&g_attn, device)?,
                ffns,
                out_bottleneck,
            });
        }
        let head = if w.names.contains_key("classifier.weight") {
            let labels = w
                .shape_of("classifier.weight")?
                .first()
                .copied()
                .unwrap_or(0);
            Some(Head {
                pooler: if c.classifier_activation {
                    Some(up(w.linear("pooler.dense", Some(h), h)?)?)
                } else {
                    None
                },
                classifier: up(w.linear("classifier", Some(labels), h)?)?,
            })
        } else {
            None
        };
        // Embeddings: NoNorm(T·trigram + b + pos + tt) = (γ⊙T)·trigram + γ⊙b + β + γ⊙pos + γ⊙tt.
        let (g, beta) = w.nonorm("embeddings.LayerNorm", h)?;
        let word = w.host("embeddings.word_embeddings.weight", &[c.vocab_size, e])?;
        let mut pos = w.host(
            "embeddings.position_embeddings.weight",
            &[c.max_position_embeddings, h],
        )?;
        let mut tt = w.host(
            "embeddings.token_type_embeddings.weight",
            &[c.type_vocab_size, h],
        )?;
        for row in pos.chunks_mut(h).chain(tt.chunks_mut(h)) {
            for (x, gc) in row.iter_mut().zip(&g) {
                *x *= gc;
            }
        }
        let (word, transformation) = if c.has_transformation() {
            let k = if c.trigram_input { 3 * e } else { e };
            let t = w.folded(
                "embeddings.embedding_transformation",
                "embeddings.LayerNorm",
                h,
                k,
            )?;
            let mut table = word;
            table.extend(std::iter::repeat_n(0.0, e));
            (
                HostTensor::from_f64(&[c.vocab_size + 1, e], &table, dtype)?.to_device(device)?,
                Some(up(t)?),
            )
        } else {
            // E = H, no transformation: γ scales the word rows too, β rides on the token-type
            // rows (each token reads exactly one).
            let mut table = word;
            for row in table.chunks_mut(h) {
                for (x, gc) in row.iter_mut().zip(&g) {
                    *x *= gc;
                }
            }
            for row in tt.chunks_mut(h) {
                for (x, bc) in row.iter_mut().zip(&beta) {
                    *x += bc;
                }
            }
            (
                HostTensor::from_f64(&[c.vocab_size, e], &table, dtype)?.to_device(device)?,
                None,
            )
        };
        let position = HostTensor::from_f64(&[c.max_position_embeddings, h], &pos, dtype)?
            .to_device(device)?;
        let token_type =
            HostTensor::from_f64(&[c.type_vocab_size, h], &tt, dtype)?.to_device(device)?;
        w.check_all_used(c, head.is_some())?;
        Ok(MobileBertModel {
            device: device.clone(),
            dtype,
            act,
            word,
            position,
            token_type,
            transformation,
            layers,
            dp,
            scale: (1.0 / (d as f64).sqrt()) as f32,
            head,
            max_batch: DEFAULT_MAX_BATCH,
            config,
        })
    }

    /// Sets the most sequences one call takes (default [`DEFAULT_MAX_BATCH`], 4096): more is an
    /// error before anything is allocated for them.
    pub fn set_max_batch(&mut self, n: usize) {
        self.max_batch = n;
    }

    /// [`set_max_batch`](Self::set_max_batch) on an owned model.
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

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
        for (s, seq) in ids.iter().enumerate() {
            if seq.len() > c.max_position_embeddings {
                return Err(invalid(
                    "ids",
                    format!(
                        "sequence {s} has {} tokens, more than max_position_embeddings {}",
                        seq.len(),
                        c.max_position_embeddings
                    ),
                ));
            }
            // The word table has a zero row at `vocab_size`: an id there must not read it.
            if let Some(&id) = seq.iter().find(|&&id| id as usize >= c.vocab_size) {
                return Err(invalid(
                    "ids",
                    format!(
                        "sequence {s} has token id {id}; expected < vocab_size {}",
                        c.vocab_size
                    ),
                ));
            }
            cu.push(cu[cu.len() - 1] + seq.len());
        }
        let tokens = cu[cu.len() - 1];
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let pos: Vec<u32> = ids.iter().flat_map(|s| 0..s.len() as u32).collect();
        let types: Vec<u32> = match type_ids {
            Some(t) => {
                if t.len() != ids.len() || t.iter().zip(ids).any(|(a, b)| a.len() != b.len()) {
                    return Err(invalid("type_ids", "expected one type id per token".into()));
                }
                t.iter().flatten().copied().collect()
            }
            None => vec![0; tokens],
        };
        let extra = Lookup {
            table: &self.token_type,
            ids: &types,
        };
        let position = Lookup {
            table: &self.position,
            ids: &pos,
        };
        let id = Activation::Identity;
        let mut x = match &self.transformation {
            Some(t) => {
                let e = c.embedding_size;
                let words = if c.trigram_input {
                    // Rows [next, this, previous] per token: the `[3·tokens, E]` lookup is the
                    // `[tokens, 3E]` concatenation HF builds, with row `vocab_size` (zeros) past
                    // either end of each sequence.
                    let zero = c.vocab_size as u32;
                    let ids3: Vec<u32> = ids
                        .iter()
                        .flat_map(|s| {
                            (0..s.len()).flat_map(move |t| {
                                [
                                    s.get(t + 1).copied().unwrap_or(zero),
                                    s[t],
                                    if t == 0 { zero } else { s[t - 1] },
                                ]
                            })
                        })
                        .collect();
                    let g = embedding(
                        Lookup {
                            table: &self.word,
                            ids: &ids3,
                        },
                        &[],
                    )?;
                    g.reshape(&[tokens, 3 * e])?
                } else {
                    embedding(
                        Lookup {
                            table: &self.word,
                            ids: &flat,
                        },
                        &[],
                    )?
                };
                let pt = embedding(position, &[extra])?;
                t.forward(&words, id, Some(&pt))?
            }
            None => embedding(
                Lookup {
                    table: &self.word,
                    ids: &flat,
                },
                &[position, extra],
            )?,
        };
        let batch = SeqBatch::packed(&self.device, &cu)?;
        let attn = Attention {
            scale: Some(self.scale),
            ..Attention::default()
        };
        for l in &self.layers {
            x = self.layer(l, x, &batch, &attn)?;
        }
        Ok((x, cu))
    }

    /// One encoder layer on the `[tokens, H]` hidden state `x`.
    fn layer(&self, l: &Layer, x: Tensor, batch: &SeqBatch, attn: &Attention) -> Result<Tensor> {
        let id = Activation::Identity;
        let tokens = x.shape()[0];
        let sh = [tokens, l.heads, self.dp];
        let bn = match &l.inputs {
            Inputs::Bottleneck { input } => Some(input.forward(&x, id, None)?),
            _ => None,
        };
        let shared = match &l.inputs {
            Inputs::SharedQk { qk, .. } => Some(qk.forward(&x, id, None)?),
            _ => None,
        };
        let qk_src = shared.as_ref().or(bn.as_ref()).unwrap_or(&x);
        let v_src = bn.as_ref().unwrap_or(&x);
        let q = l.q.forward(qk_src, id, None)?.reshape(&sh)?;
        let k = l.k.forward(qk_src, id, None)?.reshape(&sh)?;
        let v = l.v.forward(v_src, id, None)?.reshape(&sh)?;
        drop(shared);
        let (residual, x) = match (&l.inputs, bn) {
            (Inputs::SharedQk { res, .. } | Inputs::Plain { res }, _) => {
                (res.forward(&x, id, None)?, Some(x))
            }
            (_, Some(bn)) => (scaled(bn, &l.g_attn)?, Some(x)),
            // No bottleneck: x is the residual (and not needed after).
            (_, None) => (scaled(x, &l.g_attn)?, None),
        };
        let ctx = ops::attention(
            Qkv::Separate {
                q: &q,
                k: &k,
                v: &v,
            },
            batch,
            attn,
        )?
        .reshape(&[tokens, l.heads * self.dp])?;
        let mut a = l.wo.forward(&ctx, id, Some(&residual))?;
        for f in &l.ffns {
            let inter = f.inter.forward(&a, self.act, None)?;
            let r = scaled(a, &f.g)?;
            a = f.out.forward(&inter, id, Some(&r))?;
        }
        match (&l.out_bottleneck, x) {
            (Some((lin, g)), Some(x)) => {
                let r = scaled(x, g)?;
                lin.forward(&a, id, Some(&r))
            }
            (None, _) => Ok(a),
            (Some(_), None) => Err(invalid(
                "config",
                "output.bottleneck without use_bottleneck".into(),
            )),
        }
    }

    /// Whether the checkpoint has a sequence-classification head.
    pub fn has_classifier(&self) -> bool {
        self.head.is_some()
    }

    /// Sequence-classification logits `[batch][labels]` (f32 on the host): pooler (dense +
    /// tanh, or the first token as is without `classifier_activation`) and classifier on the
    /// first token of each sequence, gathered on the device.
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
                "the checkpoint has no classifier (expected classifier.weight)".into(),
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
        let pooled = match &head.pooler {
            Some(p) => p.forward(&cls, Activation::Tanh, None)?,
            None => cls,
        };
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

    /// Sentence embeddings: the last hidden state pooled per sequence (mean, max, or first
    /// token), f32 on the host.
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

/// Deterministic random weights for `config` with Hugging Face names (`mobilebert.` prefix, a
/// `classifier` of `labels` outputs when `labels > 0`), as the bytes of an f32 safetensors
/// file that [`MobileBertModel::from_safetensors`] loads: Linear weights ~ N(0, (0.6/√k)²),
/// biases ~ N(0, 0.1²), NoNorm γ ~ 1 ± 0.3, β ~ N(0, 0.1²), embeddings ~ N(0, 0.5²). For the
/// CLI tests and demos; no trained MobileBERT ships offline.
pub fn random_checkpoint(config: &MobileBertConfig, labels: usize, seed: u64) -> Result<Vec<u8>> {
    let c = config;
    let (h, b, i, e) = (
        c.hidden_size,
        c.true_hidden_size(),
        c.intermediate_size,
        c.embedding_size,
    );
    let mut rng = crate::model::resnet::Rng::new(seed);
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, mean: f64, sigma: f64| {
        let n = shape.iter().product();
        let v = (0..n)
            .map(|_| (mean + sigma * rng.normal()) as f32)
            .collect();
        t.push((name, shape, v));
    };
    let linear = |put: &mut dyn FnMut(String, Vec<usize>, f64, f64), stem: &str, n, k| {
        let sigma = 0.6 / (k as f64).sqrt();
        put(format!("{stem}.weight"), vec![n, k], 0.0, sigma);
        put(format!("{stem}.bias"), vec![n], 0.0, 0.1);
    };
    let nonorm = |put: &mut dyn FnMut(String, Vec<usize>, f64, f64), base: &str, n| {
        put(format!("{base}.weight"), vec![n], 1.0, 0.3);
        put(format!("{base}.bias"), vec![n], 0.0, 0.1);
    };
    let m = |s: &str| format!("{PREFIX}{s}");
    put(
        m("embeddings.word_embeddings.weight"),
        vec![c.vocab_size, e],
        0.0,
        0.5,
    );
    put(
        m("embeddings.position_embeddings.weight"),
        vec![c.max_position_embeddings, h],
        0.0,
        0.5,
    );
    put(
        m("embeddings.token_type_embeddings.weight"),
        vec![c.type_vocab_size, h],
        0.0,
        0.5,
    );
    if c.has_transformation() {
        let k = if c.trigram_input { 3 * e } else { e };
        linear(&mut put, &m("embeddings.embedding_transformation"), h, k);
    }
    nonorm(&mut put, &m("embeddings.LayerNorm"), h);
    for l in 0..c.num_hidden_layers {
        let p = m(&format!("encoder.layer.{l}"));
        let v_in = if c.use_bottleneck_attention { b } else { h };
        linear(&mut put, &format!("{p}.attention.self.query"), b, b);
        linear(&mut put, &format!("{p}.attention.self.key"), b, b);
        linear(&mut put, &format!("{p}.attention.self.value"), b, v_in);
        linear(&mut put, &format!("{p}.attention.output.dense"), b, b);
        nonorm(&mut put, &format!("{p}.attention.output.LayerNorm"), b);
        let bottleneck = |put: &mut dyn FnMut(String, Vec<usize>, f64, f64), which: &str| {
            linear(put, &format!("{p}.bottleneck.{which}.dense"), b, h);
            nonorm(put, &format!("{p}.bottleneck.{which}.LayerNorm"), b);
        };
        if c.use_bottleneck {
            bottleneck(&mut put, "input");
        }
        if c.shared_qk() {
            bottleneck(&mut put, "attention");
        }
        for j in 0..c.num_feedforward_networks {
            let stem = if j + 1 == c.num_feedforward_networks {
                p.clone()
            } else {
                format!("{p}.ffn.{j}")
            };
            linear(&mut put, &format!("{stem}.intermediate.dense"), i, b);
            linear(&mut put, &format!("{stem}.output.dense"), b, i);
            nonorm(&mut put, &format!("{stem}.output.LayerNorm"), b);
        }
        if c.use_bottleneck {
            linear(&mut put, &format!("{p}.output.bottleneck.dense"), h, b);
            nonorm(&mut put, &format!("{p}.output.bottleneck.LayerNorm"), h);
        }
    }
    if labels > 0 {
        if c.classifier_activation {
            linear(&mut put, &m("pooler.dense"), h, h);
        }
        linear(&mut put, "classifier", labels, h);
    }
    crate::model::exam::to_safetensors(&t, HashMap::new())
}
