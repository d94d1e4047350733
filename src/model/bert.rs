//! BERT-family encoders (BERT and its distilled students that share BertModel names: MiniLM,
//! TinyBERT) loaded from a Hugging Face folder and run with medkern ops only: packed
//! variable-length batches (no padding tokens), fused attention reading the QKV projection in
//! place, GEMMs with fused bias / GELU / residual epilogues, LayerNorm. The same code runs on the
//! CPU backend (the f64 reference ops) and on a GPU, where nothing returns to the host until the
//! last hidden state is read.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::linear::{Linear, LinearHost, LinearKind};
use crate::ops::embedding::{Lookup, embedding};
use crate::ops::{self, Activation, Attention, Qkv, SeqBatch};
use crate::tensor::{Device, HostTensor, Tensor};
use safetensors::SafeTensors;
use serde::Deserialize;
use std::path::Path;

const OP: &str = "bert";

fn invalid(arg: &'static str, detail: String) -> Error {
    Error::Invalid {
        op: OP,
        arg,
        detail,
    }
}

/// The fields of a Hugging Face `config.json` the encoder needs.
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

impl BertConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        let c: BertConfig = serde_json::from_str(text)
            .map_err(|e| invalid("config", format!("config.json: {e}")))?;
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            return Err(invalid(
                "config",
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    c.hidden_size, c.num_attention_heads
                ),
            ));
        }
        Ok(c)
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    fn activation(&self) -> Result<Activation> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            "silu" | "swish" => Ok(Activation::Silu),
            other => Err(invalid(
                "config",
                format!("hidden_act {other:?}; expected gelu, gelu_new, relu or silu"),
            )),
        }
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

/// A BERT encoder ready to run.
pub struct BertModel {
    pub config: BertConfig,
    device: Device,
    dtype: DType,
    act: Activation,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_ln: (Tensor, Tensor),
    layers: Vec<Layer>,
}

/// Reads named tensors out of a safetensors file, checking names and shapes.
struct Weights<'a> {
    st: SafeTensors<'a>,
    prefix: &'static str,
    device: &'a Device,
    dtype: DType,
    /// `medkern.linear.<name>` → storage kind, from the file's metadata (compressed models).
    kinds: std::collections::HashMap<String, String>,
}

impl Weights<'_> {
    fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        let full = format!("{}{name}", self.prefix);
        self.st
            .tensor(&full)
            .map(|t| t.shape().to_vec())
            .map_err(|_| invalid("weights", format!("missing tensor {full}")))
    }

    /// The Linear `name` (`name.weight` `[n, k]` + `name.bias`, or its compressed form as
    /// recorded in the metadata); `n` None takes it from the file (pruned heads).
    fn linear(&self, name: &str, n: Option<usize>, k: usize) -> Result<LinearHost> {
        let tag = self
            .kinds
            .get(&format!("medkern.linear.{name}"))
            .map_or("dense", String::as_str);
        let kind = LinearKind::from_tag(tag).ok_or_else(|| {
            invalid(
                "weights",
                format!("{name}: unknown storage kind {tag:?} in the metadata"),
            )
        })?;
        let main = if kind == LinearKind::LowRank {
            format!("{name}.lr_u")
        } else {
            format!("{name}.weight")
        };
        let ms = self.shape_of(&main)?;
        let n = n.unwrap_or(ms.first().copied().unwrap_or(0));
        let (w, w_shape, extra, extra_shape) = match kind {
            LinearKind::LowRank => {
                let r = ms.get(1).copied().unwrap_or(0);
                (
                    self.host(&main, &[n, r])?,
                    [n, r],
                    self.host(&format!("{name}.lr_v"), &[r, k])?,
                    vec![r, k],
                )
            }
            LinearKind::Int8 | LinearKind::Sparse24Int8 => (
                self.host(&main, &[n, k])?,
                [n, k],
                self.host(&format!("{name}.weight_scale"), &[n])?,
                vec![n],
            ),
            _ => (self.host(&main, &[n, k])?, [n, k], vec![], vec![]),
        };
        Ok(LinearHost {
            kind,
            w,
            w_shape,
            extra,
            extra_shape,
            b: self.host(&format!("{name}.bias"), &[n])?,
        })
    }

    fn host(&self, name: &str, shape: &[usize]) -> Result<Vec<f64>> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .st
            .tensor(&full)
            .map_err(|_| invalid("weights", format!("missing tensor {full}")))?;
        if t.shape() != shape {
            return Err(invalid(
                "weights",
                format!(
                    "tensor {full} has shape {:?}, expected {shape:?}",
                    t.shape()
                ),
            ));
        }
        let d = t.data();
        use safetensors::Dtype as S;
        let v: Vec<f64> = match t.dtype() {
            S::F32 => d
                .chunks_exact(4)
                .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
            S::F16 => d
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
                .collect(),
            S::BF16 => d
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
                .collect(),
            S::I8 => d.iter().map(|&b| f64::from(b as i8)).collect(),
            other => {
                return Err(invalid(
                    "weights",
                    format!("tensor {full} has dtype {other:?}, expected F32, F16, BF16 or I8"),
                ));
            }
        };
        Ok(v)
    }
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let v = self.host(name, shape)?;
        HostTensor::from_f64(shape, &v, self.dtype)?.to_device(self.device)
    }
    fn has(&self, name: &str) -> bool {
        self.st.tensor(&format!("{}{name}", self.prefix)).is_ok()
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
        let read = |f: &str| {
            std::fs::read(dir.join(f)).map_err(|e| Error::Io {
                op: OP,
                path: dir.join(f).display().to_string(),
                source: e,
            })
        };
        let cfg = BertConfig::from_json(&String::from_utf8_lossy(&read("config.json")?))?;
        Self::from_safetensors(cfg, &read("model.safetensors")?, device, dtype)
    }

    /// Builds the model from a config and the bytes of a safetensors file.
    pub fn from_safetensors(
        config: BertConfig,
        bytes: &[u8],
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| invalid("weights", format!("not a safetensors file: {e}")))?;
        let kinds = SafeTensors::read_metadata(bytes)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .unwrap_or_default();
        let prefix = if st.tensor("bert.embeddings.word_embeddings.weight").is_ok() {
            "bert."
        } else {
            ""
        };
        let w = Weights {
            st,
            prefix,
            device,
            dtype,
            kinds,
        };
        let c = &config;
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let act = c.activation()?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let q = w.linear(&format!("{p}.attention.self.query"), None, h)?;
            let rows = q.w_shape[0];
            if rows == 0 || rows % d != 0 {
                return Err(invalid(
                    "weights",
                    format!(
                        "{p}.attention.self.query has {rows} rows, not a multiple of head_dim {d}"
                    ),
                ));
            }
            let k = w.linear(&format!("{p}.attention.self.key"), Some(rows), h)?;
            let v = w.linear(&format!("{p}.attention.self.value"), Some(rows), h)?;
            let qkv = if q.kind == k.kind && k.kind == v.kind && q.kind != LinearKind::LowRank {
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
                        w_shape: [3 * rows, h],
                        extra: cat(&|x| &x.extra),
                        extra_shape: if q.extra.is_empty() {
                            vec![]
                        } else {
                            vec![3 * rows]
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
                wo: Linear::build(
                    w.linear(&format!("{p}.attention.output.dense"), Some(h), rows)?,
                    dtype,
                    device,
                )?,
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
        Ok(BertModel {
            word: w.get("embeddings.word_embeddings.weight", &[c.vocab_size, h])?,
            position: w.get(
                "embeddings.position_embeddings.weight",
                &[c.max_position_embeddings, h],
            )?,
            token_type: w.get(
                "embeddings.token_type_embeddings.weight",
                &[c.type_vocab_size, h],
            )?,
            emb_ln: w.ln("embeddings.LayerNorm", h)?,
            layers,
            act,
            device: device.clone(),
            dtype,
            config,
        })
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
        let e = embedding(
            Lookup {
                table: &self.word,
                ids: &flat,
            },
            &[
                Lookup {
                    table: &self.position,
                    ids: &pos,
                },
                Lookup {
                    table: &self.token_type,
                    ids: &types,
                },
            ],
        )?;
        let mut x = ops::layernorm(&e, None, &self.emb_ln.0, &self.emb_ln.1, eps)?;
        let batch = SeqBatch::packed(&self.device, &cu)?;
        let tokens = flat.len();
        let d = c.head_dim();
        for l in &self.layers {
            let id = Activation::Identity;
            let ctx = match &l.qkv {
                QkvProj::Fused(p) => {
                    let qkv = p.forward(&x, id, None)?.reshape(&[tokens, 3, l.heads, d])?;
                    ops::attention(Qkv::Packed(&qkv), &batch, &Attention::default())?
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
                        &Attention::default(),
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

    /// Sentence embeddings: the last hidden state pooled per sequence (mean over its tokens, or
    /// its first token), in f32 on the host.
    pub fn embed(&self, ids: &[Vec<u32>], pooling: Pooling) -> Result<Vec<Vec<f32>>> {
        let (x, cu) = self.forward(ids, None)?;
        let h = self.config.hidden_size;
        let v = x.to_host()?.to_f64();
        Ok(cu
            .windows(2)
            .map(|w| {
                let rows = &v[w[0] * h..w[1] * h];
                match pooling {
                    Pooling::Cls => rows.iter().take(h).map(|&x| x as f32).collect(),
                    Pooling::Mean => {
                        let n = (w[1] - w[0]).max(1) as f64;
                        (0..h)
                            .map(|c| (rows.iter().skip(c).step_by(h).sum::<f64>() / n) as f32)
                            .collect()
                    }
                }
            })
            .collect())
    }
}

/// How [`BertModel::embed`] pools a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the sequence's tokens (sentence-transformers, e.g. all-MiniLM-L6-v2).
    Mean,
    /// The first ([CLS]) token.
    Cls,
}

/// WordPiece tokenisation from a `tokenizer.json` (the `tokenizers` crate).
pub struct BertTokenizer {
    inner: tokenizers::Tokenizer,
    max_len: usize,
}

impl BertTokenizer {
    /// Loads `dir/tokenizer.json`; sequences are truncated to `max_len` tokens.
    pub fn load(dir: &Path, max_len: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let mut inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| invalid("tokenizer", format!("{}: {e}", path.display())))?;
        // Batches are packed, never padded; truncation is ours (keeps the final [SEP]).
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| invalid("tokenizer", format!("{}: {e}", path.display())))?;
        Ok(BertTokenizer { inner, max_len })
    }

    /// Token ids (with [CLS]/[SEP]) of each text, truncated to `max_len` (keeping the final
    /// [SEP]).
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|t| {
                let enc = self
                    .inner
                    .encode(*t, true)
                    .map_err(|e| invalid("text", format!("tokenizer: {e}")))?;
                let mut ids = enc.get_ids().to_vec();
                if ids.len() > self.max_len && self.max_len >= 2 {
                    let last = ids[ids.len() - 1];
                    ids.truncate(self.max_len - 1);
                    ids.push(last);
                }
                Ok(ids)
            })
            .collect()
    }
}

/// Default dtype for a device: f16 on a GPU, f32 on the CPU.
pub fn default_dtype(device: &Device) -> DType {
    match device {
        Device::Cpu => DType::F32,
        Device::Gpu(_) => DType::F16,
    }
}
