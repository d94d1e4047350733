//! BERT-family encoders (BERT and its distilled students that share BertModel names: MiniLM,
//! TinyBERT) loaded from a Hugging Face folder and run with medkern ops only: packed
//! variable-length batches (no padding tokens), fused attention reading the QKV projection in
//! place, GEMMs with fused bias / GELU / residual epilogues, LayerNorm. The same code runs on the
//! CPU backend (the f64 reference ops) and on a GPU, where nothing returns to the host until the
//! last hidden state is read.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::embedding::{Lookup, embedding};
use crate::ops::{self, Activation, Attention, Gemm, Qkv, SeqBatch};
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

/// One encoder layer's weights, on the model's device in its dtype.
struct Layer {
    heads: usize,
    /// q, k and v projections concatenated: `[3·heads·d, hidden]`, so one GEMM writes the
    /// `[tokens, 3, heads, d]` layout attention reads in place.
    wqkv: Tensor,
    bqkv: Tensor,
    wo: Tensor,
    bo: Tensor,
    ln1: (Tensor, Tensor),
    wi: Tensor,
    bi: Tensor,
    wo2: Tensor,
    bo2: Tensor,
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
}

impl Weights<'_> {
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
            other => {
                return Err(invalid(
                    "weights",
                    format!("tensor {full} has dtype {other:?}, expected F32, F16 or BF16"),
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
        };
        let c = &config;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let act = c.activation()?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let mut qkv = Vec::with_capacity(3 * h * h);
            let mut bqkv = Vec::with_capacity(3 * h);
            for m in ["query", "key", "value"] {
                qkv.extend(w.host(&format!("{p}.attention.self.{m}.weight"), &[h, h])?);
                bqkv.extend(w.host(&format!("{p}.attention.self.{m}.bias"), &[h])?);
            }
            layers.push(Layer {
                heads: c.num_attention_heads,
                wqkv: HostTensor::from_f64(&[3 * h, h], &qkv, dtype)?.to_device(device)?,
                bqkv: HostTensor::from_f64(&[3 * h], &bqkv, dtype)?.to_device(device)?,
                wo: w.get(&format!("{p}.attention.output.dense.weight"), &[h, h])?,
                bo: w.get(&format!("{p}.attention.output.dense.bias"), &[h])?,
                ln1: w.ln(&format!("{p}.attention.output.LayerNorm"), h)?,
                wi: w.get(&format!("{p}.intermediate.dense.weight"), &[i, h])?,
                bi: w.get(&format!("{p}.intermediate.dense.bias"), &[i])?,
                wo2: w.get(&format!("{p}.output.dense.weight"), &[h, i])?,
                bo2: w.get(&format!("{p}.output.dense.bias"), &[h])?,
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
            let qkv = ops::gemm(
                &x,
                &l.wqkv,
                &Gemm {
                    bias: Some(&l.bqkv),
                    ..Default::default()
                },
            )?
            .reshape(&[tokens, 3, l.heads, d])?;
            let ctx = ops::attention(Qkv::Packed(&qkv), &batch, &Attention::default())?
                .reshape(&[tokens, l.heads * d])?;
            let a = ops::gemm(
                &ctx,
                &l.wo,
                &Gemm {
                    bias: Some(&l.bo),
                    residual: Some(&x),
                    ..Default::default()
                },
            )?;
            let x1 = ops::layernorm(&a, None, &l.ln1.0, &l.ln1.1, eps)?;
            let inter = ops::gemm(
                &x1,
                &l.wi,
                &Gemm {
                    bias: Some(&l.bi),
                    act: self.act,
                    ..Default::default()
                },
            )?;
            let o = ops::gemm(
                &inter,
                &l.wo2,
                &Gemm {
                    bias: Some(&l.bo2),
                    residual: Some(&x1),
                    ..Default::default()
                },
            )?;
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
