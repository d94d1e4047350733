//! A text encoder as a user calls it: a model folder (BERT family or MobileBERT), its
//! tokenizer, and the pooling / normalisation that turn token states into one embedding per
//! text. The CLI's `embed`, the server and the bindings share it, so a folder gives the same
//! vectors through each.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::bert::{BertModel, Pooling};
use crate::model::mobilebert::MobileBertModel;
use crate::tensor::Device;
use std::path::Path;
// What TextEncoder needs (feature `tokenizers`).
#[cfg(feature = "tokenizers")]
use crate::input::check_batch;
#[cfg(feature = "tokenizers")]
use crate::model::bert::{BertTokenizer, PairIds};
#[cfg(feature = "tokenizers")]
use crate::model::hub::resolve_model;
#[cfg(feature = "tokenizers")]
use crate::model::sentence;
#[cfg(feature = "tokenizers")]
use std::path::PathBuf;

const OP: &str = "encoder";

/// The network behind a [`TextEncoder`]: MobileBERT when the folder's `config.json` says
/// `"model_type": "mobilebert"`, else the BERT family (BERT, DistilBERT, ALBERT).
pub enum EncoderModel {
    Bert(Box<BertModel>),
    Mobile(Box<MobileBertModel>),
}

impl EncoderModel {
    /// Loads the network of `dir` (config.json + model.safetensors) with at most `max_batch`
    /// sequences per call.
    pub fn load(dir: &Path, device: &Device, dtype: DType, max_batch: usize) -> Result<Self> {
        let config = crate::input::read_regular(OP, &dir.join("config.json"), "config.json")?;
        let v: serde_json::Value = serde_json::from_slice(&config).map_err(|e| Error::Invalid {
            op: OP,
            arg: "config.json",
            detail: format!("{}: {e}", dir.join("config.json").display()),
        })?;
        let mobile = v.get("model_type").and_then(|t| t.as_str()) == Some("mobilebert");
        Ok(if mobile {
            EncoderModel::Mobile(Box::new(
                MobileBertModel::load(dir, device, dtype)?.with_max_batch(max_batch),
            ))
        } else {
            EncoderModel::Bert(Box::new(
                BertModel::load(dir, device, dtype)?.with_max_batch(max_batch),
            ))
        })
    }

    /// Tokens kept per text: `requested`, checked against the model's positions, or all of them.
    pub fn max_len(&self, requested: Option<usize>) -> Result<usize> {
        match self {
            EncoderModel::Bert(m) => m.config.max_len(requested),
            EncoderModel::Mobile(m) => m.config.max_len(requested),
        }
    }

    /// One pooled (not normalised) vector per id sequence; the sequences run as one packed
    /// variable-length batch.
    pub fn embed(&self, ids: &[Vec<u32>], pooling: Pooling) -> Result<Vec<Vec<f32>>> {
        match self {
            EncoderModel::Bert(m) => m.embed(ids, pooling),
            EncoderModel::Mobile(m) => m.embed(ids, pooling),
        }
    }

    /// The sequence-classification head's logits per id sequence.
    pub fn classify(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        self.classify_typed(ids, None)
    }

    /// [`Self::classify`] with token type ids (sentence pairs); `None` means all zeros.
    pub fn classify_typed(
        &self,
        ids: &[Vec<u32>],
        type_ids: Option<&[Vec<u32>]>,
    ) -> Result<Vec<Vec<f32>>> {
        match self {
            EncoderModel::Bert(m) => m.classify_typed(ids, type_ids),
            EncoderModel::Mobile(m) => m.classify_typed(ids, type_ids),
        }
    }

    /// Whether the checkpoint has a sequence-classification head.
    pub fn has_classifier(&self) -> bool {
        match self {
            EncoderModel::Bert(m) => m.has_classifier(),
            EncoderModel::Mobile(m) => m.has_classifier(),
        }
    }

    /// The head's class names (`id2label`, or `LABEL_i`).
    pub fn labels(&self) -> Vec<String> {
        match self {
            EncoderModel::Bert(m) => m.labels(),
            EncoderModel::Mobile(m) => m.labels(),
        }
    }

    /// The width of an embedding (the hidden size).
    pub fn dim(&self) -> usize {
        match self {
            EncoderModel::Bert(m) => m.config.hidden_size,
            EncoderModel::Mobile(m) => m.config.hidden_size,
        }
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        match self {
            EncoderModel::Bert(m) => m.device(),
            EncoderModel::Mobile(m) => m.device(),
        }
    }
}

/// How a [`TextEncoder`] is loaded. `None` fields take the folder's own settings where it has
/// them (a sentence-transformers folder's `modules.json`, its Pooling config, Normalize module
/// and `sentence_bert_config.json` `max_seq_length`), else the defaults: mean pooling, no
/// normalisation, all the model's positions. A `Some` value overrides the folder.
#[derive(Clone, Debug)]
pub struct EncoderOptions {
    pub pooling: Option<Pooling>,
    pub normalize: Option<bool>,
    pub max_len: Option<usize>,
    /// The most texts in one call (tokenizer and model), checked before any work.
    pub max_batch: usize,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            pooling: None,
            normalize: None,
            max_len: None,
            max_batch: crate::input::DEFAULT_MAX_BATCH,
        }
    }
}

/// A model folder ready to embed and classify texts (Cargo feature `tokenizers`).
#[cfg(feature = "tokenizers")]
pub struct TextEncoder {
    pub model: EncoderModel,
    pub tokenizer: BertTokenizer,
    pub pooling: Pooling,
    pub normalize: bool,
    max_len: usize,
    lower_case: bool,
    dir: PathBuf,
}

#[cfg(feature = "tokenizers")]
impl TextEncoder {
    /// Loads `dir` (config.json, model.safetensors, tokenizer.json) on `device` in `dtype`;
    /// `dir` may also be a hub id (`org/name`) already in the local hub cache (see
    /// [`resolve_model`]), at its `main` revision.
    pub fn load(dir: &Path, device: &Device, dtype: DType, opts: &EncoderOptions) -> Result<Self> {
        Self::load_revision(dir, None, device, dtype, opts)
    }

    /// [`Self::load`] of a hub id at `revision` (a branch, tag or commit hash; None: `main`).
    pub fn load_revision(
        spec: &Path,
        revision: Option<&str>,
        device: &Device,
        dtype: DType,
        opts: &EncoderOptions,
    ) -> Result<Self> {
        let root = resolve_model(spec, revision)?;
        let st = sentence::read(&root)?;
        let dir = st
            .as_ref()
            .map_or(root.clone(), |s| s.transformer_dir.clone());
        let model = EncoderModel::load(&dir, device, dtype, opts.max_batch)?;
        let most = model.max_len(None)?;
        let max_len = match (opts.max_len, st.as_ref().and_then(|s| s.max_seq_length)) {
            (Some(n), _) => model.max_len(Some(n))?,
            // sentence-transformers truncates to max_seq_length; never past the positions.
            (None, Some(n)) => n.min(most),
            (None, None) => most,
        };
        let tokenizer = BertTokenizer::load(&dir, max_len)?.with_max_batch(opts.max_batch);
        let mut lower_case = false;
        if let Some(s) = &st {
            if let Some(d) = s.word_embedding_dimension.filter(|&d| d != model.dim()) {
                return Err(Error::Corrupt {
                    op: OP,
                    arg: "file",
                    detail: format!(
                        "{}: word_embedding_dimension is {d}; expected the model's hidden size                          {}",
                        s.pooling_file.display(),
                        model.dim()
                    ),
                });
            }
            // Lower-casing twice changes nothing, so only a tokenizer that keeps case needs it.
            lower_case = s.do_lower_case && !tokenizer.lowercases();
        }
        Ok(TextEncoder {
            model,
            tokenizer,
            pooling: opts
                .pooling
                .or(st.as_ref().map(|s| s.pooling))
                .unwrap_or(Pooling::Mean),
            normalize: opts
                .normalize
                .or(st.as_ref().map(|s| s.normalize))
                .unwrap_or(false),
            max_len,
            lower_case,
            dir,
        })
    }

    /// The folder the weights came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Tokens kept per text, [CLS] and [SEP] included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Token ids per text (truncated to [`Self::max_len`]).
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        if !self.lower_case {
            return self.tokenizer.encode(texts);
        }
        // sentence_bert_config.json's do_lower_case with a cased tokenizer: lower-cased as
        // sentence-transformers does, each text bounded first (the tokenizer reads no more).
        check_batch(OP, "texts", texts.len(), self.tokenizer.max_batch())?;
        let lower: Vec<String> = texts.iter().map(|t| self.lower(t)).collect();
        let refs: Vec<&str> = lower.iter().map(String::as_str).collect();
        self.tokenizer.encode(&refs)
    }

    /// `t` lower-cased, first cut to the tokenizer's byte limit (at a char boundary).
    fn lower(&self, t: &str) -> String {
        let cap = self.tokenizer.max_text_bytes();
        let cut = (0..=cap.min(t.len()))
            .rev()
            .find(|&i| t.is_char_boundary(i))
            .unwrap_or(0);
        t[..cut].to_lowercase()
    }

    /// Token ids and type ids per sentence pair (`[CLS] a [SEP] b [SEP]`, truncated
    /// longest-first to [`Self::max_len`]): what a cross-encoder's head reads.
    pub fn encode_pairs(&self, pairs: &[(&str, &str)]) -> Result<PairIds> {
        if !self.lower_case {
            return self.tokenizer.encode_pairs(pairs);
        }
        check_batch(OP, "pairs", pairs.len(), self.tokenizer.max_batch())?;
        let lower: Vec<(String, String)> = pairs
            .iter()
            .map(|(a, b)| (self.lower(a), self.lower(b)))
            .collect();
        let refs: Vec<(&str, &str)> = lower
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        self.tokenizer.encode_pairs(&refs)
    }

    /// One embedding per id sequence: pooled, then scaled to unit length when
    /// [`Self::normalize`] (a zero vector stays zero).
    pub fn embed_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let mut e = self.model.embed(ids, self.pooling)?;
        if self.normalize {
            e.iter_mut().for_each(|v| normalize_unit(v));
        }
        Ok(e)
    }

    /// [`Self::encode`] then [`Self::embed_ids`].
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_ids(&self.encode(texts)?)
    }

    /// The classification head's logits per id sequence.
    pub fn classify_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        self.model.classify(ids)
    }

    /// The classification head's logits per sentence pair ([`Self::encode_pairs`]).
    pub fn classify_pairs(&self, pairs: &[(&str, &str)]) -> Result<Vec<Vec<f32>>> {
        let (ids, types) = self.encode_pairs(pairs)?;
        self.model.classify_typed(&ids, Some(&types))
    }
}

/// Scales `v` to unit Euclidean length (sentence-transformers' Normalize), the norm summed in
/// f64; a zero vector is left as it is.
pub fn normalize_unit(v: &mut [f32]) {
    let n = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x = (f64::from(*x) / n) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_unit;

    #[test]
    fn normalize_unit_scales_to_length_one_and_keeps_zero() {
        let mut v = [3.0f32, -4.0, 0.0];
        normalize_unit(&mut v);
        assert_eq!(v, [0.6, -0.8, 0.0]);
        let mut z = [0.0f32; 4];
        normalize_unit(&mut z);
        assert_eq!(z, [0.0; 4]);
    }
}
