//! The EXAM model (EMR + chest X-ray AI Model; Dayan et al., Nature Medicine 2021): a chest
//! X-ray image branch (ResNet-34 → 512-d), an EMR branch (a Deep & Cross network over the
//! [`EmrConfig`] vector), concatenated and fused by a Linear + ReLU, then two heads:
//!
//! - **oxygen scores**: `sigmoid` of a Linear `[2, F]`: the probability of needing more than
//!   low-flow oxygen (high flow / NIV, ventilation, or death) at **24 h** and at **72 h**;
//! - **ordinal class** of the most severe oxygen level within 72 h over (room air, low flow,
//!   high flow or NIV, mechanical ventilation, death), a cumulative-logit (proportional odds)
//!   head: one score `s = w·z` and 4 increasing cut points `θ_0 < … < θ_3`,
//!   `P(Y > k) = sigmoid(s − θ_k)`, `P(Y = k) = P(Y > k−1) − P(Y > k)` (with `P(Y > −1) = 1`,
//!   `P(Y > 4) = 0`), so the class probabilities are non-negative and sum to 1 by
//!   construction and a larger `s` shifts mass towards the severe end.
//!
//! # Deep & Cross network (DCN-v2, parallel)
//! `x0` = the EMR vector (`D` = [`EmrConfig::dim`]). Cross layers
//! `x_{l+1} = x0 ⊙ (W_l·x_l + b_l) + x_l` (`W_l` `[D, D]`); the deep part an MLP with ReLU
//! over `x0`; the branch output is `[x_L | h]`. The fusion Linear reads
//! `[image 512 | x_L | h]`; it is applied as three GEMMs accumulating into one output (the
//! fusion weight split by columns at load), so no concatenation is materialised.
//!
//! # Weights (safetensors; `medkern.exam.config` metadata holds the [`ExamConfig`] JSON)
//! | name | shape |
//! |---|---|
//! | `emr.cross.{l}.weight`, `.bias` | `[D, D]`, `[D]`, l < cross_layers |
//! | `emr.deep.{i}.weight`, `.bias` | `[deep[i], deep[i−1] or D]`, `[deep[i]]` |
//! | `fusion.weight`, `.bias` | `[F, image_features + D + deep.last]`, `[F]` |
//! | `head.oxygen.weight`, `.bias` | `[2, F]`, `[2]` (24 h, 72 h) |
//! | `head.ordinal.weight` | `[1, F]` |
//! | `head.ordinal.thresholds` | `[4]`, strictly increasing |
//! | `image.*` | a torchvision ResNet-34 `state_dict()` (its `fc` is read, any row count, but unused) |
//!
//! The config is checked before any tensor is read ([`ExamConfig::validate`]: widths up to
//! [`MAX_WIDTH`], at most [`MAX_CROSS_LAYERS`] cross and [`MAX_DEEP_LAYERS`] deep layers); a
//! non-finite weight (NaN, ±inf) is an error naming the tensor, and so is a non-finite output
//! of [`ExamHead::forward`] (never a class).
//!
//! Without the metadata key the file must fit [`ExamConfig::default`]: 512-d image features, 3
//! cross layers, deep MLP 128 → 64, fusion 256, the default 20-feature EMR list (D = 46).
//! Every name and shape is checked; a tensor under `emr.`, `fusion.` or `head.` that the
//! config does not use is an error too (a checkpoint with more layers than its config).
//!
//! The head (DCN, fusion, heads) runs in f32 on every device (it is tiny); the image trunk in
//! the model's compute dtype; its features are cast to f32 before the fusion.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::emr::EmrConfig;
use crate::model::resnet::{NamedTensors, ResNet, ResNetConfig, random_resnet};
use crate::ops::{self, Activation, Gemm};
use crate::tensor::{Device, HostTensor, Tensor};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;

const OP: &str = "exam";

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

/// The five ordinal oxygen levels, least to most severe.
pub const ORDINAL_CLASSES: [&str; 5] = [
    "room_air",
    "low_flow",
    "high_flow_or_niv",
    "mechanical_ventilation",
    "death",
];

/// Metadata key holding the [`ExamConfig`] JSON.
pub const CONFIG_KEY: &str = "medkern.exam.config";

/// The image branch: preprocessed NHWC images `[N, H, W, 3]` → features `[N, feature_dim]`.
pub trait ImageTrunk: Send + Sync {
    /// Features of a batch (any float dtype; cast to f32 by the head).
    fn features(&self, x: &Tensor) -> Result<Tensor>;
    fn feature_dim(&self) -> usize;
    /// The `(H, W)` the trunk expects its images resized to.
    fn input_size(&self) -> (usize, usize);
    /// A short description for reports (`"resnet34"`).
    fn describe(&self) -> String;
    /// Raises or lowers the trunk's own batch limit, if it has one, to
    /// [`ExamModel::with_max_batch`]'s (which is checked first either way).
    fn set_max_batch(&mut self, _n: usize) {}
}

/// Sizes of the EXAM head and the EMR feature list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExamConfig {
    /// Image feature width (512 for ResNet-34).
    pub image_features: usize,
    pub cross_layers: usize,
    /// Deep MLP widths (at least one layer).
    pub deep: Vec<usize>,
    /// Fusion width F.
    pub fusion: usize,
    pub emr: EmrConfig,
}

impl Default for ExamConfig {
    /// 512-d image features, 3 cross layers, deep MLP 128 → 64, fusion 256, the default EMR
    /// list (46 inputs).
    fn default() -> Self {
        ExamConfig {
            image_features: 512,
            cross_layers: 3,
            deep: vec![128, 64],
            fusion: 256,
            emr: EmrConfig::exam_default(),
        }
    }
}

/// The largest width [`ExamConfig::validate`] accepts (image features, each deep layer,
/// fusion, the EMR vector).
pub const MAX_WIDTH: usize = 65536;
/// The most cross layers [`ExamConfig::validate`] accepts.
pub const MAX_CROSS_LAYERS: usize = 64;
/// The most deep MLP layers [`ExamConfig::validate`] accepts.
pub const MAX_DEEP_LAYERS: usize = 64;

impl ExamConfig {
    /// Checks the sizes (they may come from a file's metadata): non-zero widths of at most
    /// [`MAX_WIDTH`], at most [`MAX_CROSS_LAYERS`] cross layers, 1 to [`MAX_DEEP_LAYERS`] deep
    /// layers, and a fusion input width that does not overflow.
    pub fn validate(&self) -> Result<()> {
        self.emr.validate()?;
        if self.image_features == 0
            || self.fusion == 0
            || self.deep.is_empty()
            || self.deep.contains(&0)
        {
            return Err(invalid(
                "config",
                format!(
                    "image_features {}, deep {:?}, fusion {}; expected non-zero widths and at \
                     least one deep layer",
                    self.image_features, self.deep, self.fusion
                ),
            ));
        }
        let wide = |field: &str, v: usize| -> Result<()> {
            if v > MAX_WIDTH {
                return Err(invalid(
                    "config",
                    format!("{field} is {v}; expected at most {MAX_WIDTH}"),
                ));
            }
            Ok(())
        };
        wide("image_features", self.image_features)?;
        wide("fusion", self.fusion)?;
        wide("emr width (EmrConfig::dim)", self.emr.dim())?;
        if self.cross_layers > MAX_CROSS_LAYERS {
            return Err(invalid(
                "config",
                format!(
                    "cross_layers is {}; expected at most {MAX_CROSS_LAYERS}",
                    self.cross_layers
                ),
            ));
        }
        if self.deep.len() > MAX_DEEP_LAYERS {
            return Err(invalid(
                "config",
                format!(
                    "deep has {} layers; expected at most {MAX_DEEP_LAYERS}",
                    self.deep.len()
                ),
            ));
        }
        for (i, &h) in self.deep.iter().enumerate() {
            wide(&format!("deep[{i}]"), h)?;
        }
        self.fusion_in()?;
        Ok(())
    }
    /// The fusion Linear's input width `image_features + dcn_out()`, checked.
    fn fusion_in(&self) -> Result<usize> {
        self.emr
            .dim()
            .checked_add(self.deep.last().copied().unwrap_or(0))
            .and_then(|d| d.checked_add(self.image_features))
            .ok_or_else(|| {
                invalid(
                    "config",
                    format!(
                        "image_features {} + emr width {} + deep {:?}: the fusion input width \
                         overflows",
                        self.image_features,
                        self.emr.dim(),
                        self.deep.last()
                    ),
                )
            })
    }
    /// Width of the DCN output `[x_L | h]`.
    pub fn dcn_out(&self) -> usize {
        self.emr
            .dim()
            .saturating_add(self.deep.last().copied().unwrap_or(0))
    }
    /// Every head tensor's name and shape, in file order.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let d = self.emr.dim();
        let mut v = Vec::new();
        for l in 0..self.cross_layers {
            v.push((format!("emr.cross.{l}.weight"), vec![d, d]));
            v.push((format!("emr.cross.{l}.bias"), vec![d]));
        }
        let mut prev = d;
        for (i, &h) in self.deep.iter().enumerate() {
            v.push((format!("emr.deep.{i}.weight"), vec![h, prev]));
            v.push((format!("emr.deep.{i}.bias"), vec![h]));
            prev = h;
        }
        let f = self.fusion;
        v.push((
            "fusion.weight".into(),
            vec![f, self.image_features.saturating_add(self.dcn_out())],
        ));
        v.push(("fusion.bias".into(), vec![f]));
        v.push(("head.oxygen.weight".into(), vec![2, f]));
        v.push(("head.oxygen.bias".into(), vec![2]));
        v.push(("head.ordinal.weight".into(), vec![1, f]));
        v.push((
            "head.ordinal.thresholds".into(),
            vec![ORDINAL_CLASSES.len() - 1],
        ));
        v
    }
}

/// One patient's predictions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExamOutput {
    /// P(more than low-flow oxygen) at 24 h and 72 h.
    pub oxygen_24h: f32,
    pub oxygen_72h: f32,
    /// The ordinal score `s` (before the cut points).
    pub ordinal_score: f32,
    /// `P(Y = k)` over [`ORDINAL_CLASSES`].
    pub ordinal_probs: [f32; 5],
    /// The most probable class (index into [`ORDINAL_CLASSES`]).
    pub ordinal_class: usize,
}

impl ExamOutput {
    pub fn class_name(&self) -> &'static str {
        ORDINAL_CLASSES[self.ordinal_class]
    }
}

/// Class probabilities of the cumulative-logit head (f64).
pub fn ordinal_probs(score: f64, thresholds: &[f64]) -> Vec<f64> {
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let gt: Vec<f64> = thresholds.iter().map(|t| sig(score - t)).collect();
    (0..=thresholds.len())
        .map(|k| {
            let above_prev = if k == 0 { 1.0 } else { gt[k - 1] };
            let above = gt.get(k).copied().unwrap_or(0.0);
            above_prev - above
        })
        .collect()
}

/// Named f32 host tensors read from a safetensors file.
pub(crate) struct TensorFile {
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
    bad_dtype: HashMap<String, String>,
    pub(crate) metadata: HashMap<String, String>,
}

impl TensorFile {
    pub(crate) fn parse(bytes: &[u8]) -> Result<TensorFile> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| corrupt("weights", format!("not a safetensors file: {e}")))?;
        let metadata = SafeTensors::read_metadata(bytes)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .unwrap_or_default();
        let mut tensors = HashMap::new();
        let mut bad_dtype = HashMap::new();
        for (name, t) in st.tensors() {
            let Some(v) =
                crate::model::float_values(&t).filter(|_| t.dtype() != safetensors::Dtype::F64)
            else {
                // Kept out: an error only if a head tensor has it (the image trunk reads
                // its own, e.g. torchvision's I64 num_batches_tracked, and ignores them).
                bad_dtype.insert(name, format!("{:?}", t.dtype()));
                continue;
            };
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(corrupt(
                    "weights",
                    format!(
                        "tensor {name} has a non-finite value {} at index {i}; expected finite \
                         weights",
                        v[i]
                    ),
                ));
            }
            tensors.insert(name, (t.shape().to_vec(), v));
        }
        Ok(TensorFile {
            tensors,
            bad_dtype,
            metadata,
        })
    }

    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<&[f64]> {
        if let Some(dt) = self.bad_dtype.get(name) {
            return Err(corrupt(
                "weights",
                format!("tensor {name} has dtype {dt}, expected F32, F16 or BF16"),
            ));
        }
        let (s, v) = self
            .tensors
            .get(name)
            .ok_or_else(|| corrupt("weights", format!("missing tensor {name}")))?;
        if s != shape {
            return Err(corrupt(
                "weights",
                format!("tensor {name} has shape {s:?}, expected {shape:?}"),
            ));
        }
        Ok(v)
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys().chain(self.bad_dtype.keys())
    }
}

/// Serialises named f32 tensors (and metadata) as a safetensors file.
pub fn to_safetensors(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
            .map_err(|e| corrupt("weights", format!("{name}: {e}")))?;
        views.push((name.clone(), view));
    }
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| corrupt("weights", format!("serialize: {e}")))
}

/// SplitMix64 (the deterministic random weights).
pub(crate) struct Rng(u64);
impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6a09_e667_f3bc_c908)
    }
    /// Uniform in [−1, 1).
    pub(crate) fn sym(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// Deterministic random head weights for `config` (PyTorch's Linear default:
/// `U(−1/√fan_in, 1/√fan_in)` for weights and biases; cross weights scaled by a further 1/2 to
/// keep the product of layers tame; cut points `−1.5, −0.5, 0.5, 1.5`).
pub fn random_head_tensors(config: &ExamConfig, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = Rng::new(seed);
    config
        .tensor_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = if name == "head.ordinal.thresholds" {
                (0..n).map(|k| k as f32 - (n as f32 - 1.0) / 2.0).collect()
            } else {
                // Fan-in: the weight's columns (a bias uses its weight's).
                let fan_in = config
                    .tensor_shapes()
                    .into_iter()
                    .find(|(w, _)| *w == name.replace(".bias", ".weight"))
                    .and_then(|(_, s)| s.get(1).copied())
                    .unwrap_or(1)
                    .max(1);
                let mut bound = 1.0 / (fan_in as f64).sqrt();
                if name.starts_with("emr.cross.") {
                    bound *= 0.5;
                }
                (0..n).map(|_| (rng.sym() * bound) as f32).collect()
            };
            (name, shape, v)
        })
        .collect()
}

/// The validated [`ExamConfig`] of a file's metadata (else [`ExamConfig::default`]). Its
/// errors are the file's ([`Error::Corrupt`]), not the caller's.
fn config_of(metadata: &HashMap<String, String>) -> Result<ExamConfig> {
    let config = match metadata.get(CONFIG_KEY) {
        Some(text) => serde_json::from_str::<ExamConfig>(text)
            .map_err(|e| corrupt("config", format!("{CONFIG_KEY} metadata: {e}")))?,
        None => ExamConfig::default(),
    };
    config.validate().map_err(Error::into_corrupt)?;
    Ok(config)
}

/// The EXAM head: Deep & Cross EMR branch, fusion and output heads, f32 on one device.
pub struct ExamHead {
    pub config: ExamConfig,
    device: Device,
    cross: Vec<(Tensor, Tensor)>,
    deep: Vec<(Tensor, Tensor)>,
    /// The fusion weight split by columns: image, cross, deep.
    fusion: [Tensor; 3],
    fusion_b: Tensor,
    oxygen: (Tensor, Tensor),
    ordinal: Tensor,
    thresholds: Vec<f64>,
}

impl ExamHead {
    /// Reads the head from safetensors bytes: config from the metadata (else
    /// [`ExamConfig::default`]), then every tensor by name and shape.
    pub fn from_safetensors(bytes: &[u8], device: &Device) -> Result<ExamHead> {
        let file = TensorFile::parse(bytes)?;
        Self::from_file(&file, device)
    }

    pub(crate) fn from_file(file: &TensorFile, device: &Device) -> Result<ExamHead> {
        let config = config_of(&file.metadata)?;
        let shapes = config.tensor_shapes();
        let known: HashSet<&str> = shapes.iter().map(|(n, _)| n.as_str()).collect();
        if let Some(extra) = file.names().find(|n| {
            ["emr.", "fusion.", "head."]
                .iter()
                .any(|p| n.starts_with(p))
                && !known.contains(n.as_str())
        }) {
            return Err(corrupt(
                "weights",
                format!(
                    "unexpected tensor {extra} (the config has {} cross layers, deep {:?}); \
                     expected only: {}",
                    config.cross_layers,
                    config.deep,
                    shapes
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let shape_of = |name: &str| {
            shapes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.clone())
                .unwrap_or_default()
        };
        let up = |name: &str| -> Result<Tensor> {
            let s = shape_of(name);
            HostTensor::from_f64(&s, file.get(name, &s)?, DType::F32)?.to_device(device)
        };
        let pair = |base: String| -> Result<(Tensor, Tensor)> {
            Ok((up(&format!("{base}.weight"))?, up(&format!("{base}.bias"))?))
        };
        let cross = (0..config.cross_layers)
            .map(|l| pair(format!("emr.cross.{l}")))
            .collect::<Result<Vec<_>>>()?;
        let deep = (0..config.deep.len())
            .map(|i| pair(format!("emr.deep.{i}")))
            .collect::<Result<Vec<_>>>()?;
        let fs = shape_of("fusion.weight");
        let fw = file.get("fusion.weight", &fs)?;
        let (f, k) = (fs[0], fs[1]);
        let (ni, nc) = (config.image_features, config.emr.dim());
        let cols = |a: usize, b: usize| -> Result<Tensor> {
            let v: Vec<f64> = (0..f)
                .flat_map(|r| fw[r * k + a..r * k + b].iter().copied())
                .collect();
            HostTensor::from_f64(&[f, b - a], &v, DType::F32)?.to_device(device)
        };
        let fusion = [cols(0, ni)?, cols(ni, ni + nc)?, cols(ni + nc, k)?];
        let ts = shape_of("head.ordinal.thresholds");
        let thresholds = file.get("head.ordinal.thresholds", &ts)?.to_vec();
        if !thresholds.iter().all(|t| t.is_finite()) || thresholds.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(corrupt(
                "weights",
                format!(
                    "head.ordinal.thresholds {thresholds:?}; expected finite, strictly increasing \
                     cut points"
                ),
            ));
        }
        Ok(ExamHead {
            fusion,
            fusion_b: up("fusion.bias")?,
            oxygen: pair("head.oxygen".into())?,
            ordinal: up("head.ordinal.weight")?,
            thresholds,
            cross,
            deep,
            device: device.clone(),
            config,
        })
    }

    /// Deterministic random head for `config` ([`random_head_tensors`]), built through the
    /// same safetensors path as a trained checkpoint.
    pub fn random(config: &ExamConfig, seed: u64, device: &Device) -> Result<ExamHead> {
        config.validate()?;
        let meta = HashMap::from([(
            CONFIG_KEY.to_string(),
            serde_json::to_string(config).map_err(|e| invalid("config", e.to_string()))?,
        )]);
        let bytes = to_safetensors(&random_head_tensors(config, seed), meta)?;
        Self::from_safetensors(&bytes, device)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn check_emr(&self, emr: &Tensor) -> Result<usize> {
        let d = self.config.emr.dim();
        match *emr.shape() {
            [n, dd] if dd == d && emr.dtype() == DType::F32 => Ok(n),
            _ => Err(Error::Shape {
                op: OP,
                arg: "emr",
                got: emr.shape().to_vec(),
                expected: format!(
                    "[N, {d}] f32 (EmrConfig::encode: values then presence bits; got dtype {})",
                    emr.dtype()
                ),
            }),
        }
    }

    /// The Deep & Cross branch: `(x_L [N, D], h [N, deep.last])`, f32.
    pub fn dcn(&self, emr: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = self.check_emr(emr)?;
        let d = self.config.emr.dim();
        let mut x: Option<Tensor> = None;
        for (w, b) in &self.cross {
            let xl = x.as_ref().unwrap_or(emr);
            let y = ops::gemm(
                xl,
                w,
                &Gemm {
                    bias: Some(b),
                    ..Default::default()
                },
            )?
            .reshape(&[n, 1, 1, d])?;
            let p = ops::channel_scale(&y, emr)?.reshape(&[n, d])?;
            x = Some(ops::residual_add(&p, xl)?);
        }
        let xc = match x {
            Some(x) => x,
            None => ops::scale(emr, 1.0)?,
        };
        let mut h: Option<Tensor> = None;
        for (w, b) in &self.deep {
            let hin = h.as_ref().unwrap_or(emr);
            h = Some(ops::gemm(
                hin,
                w,
                &Gemm {
                    bias: Some(b),
                    act: Activation::Relu,
                    ..Default::default()
                },
            )?);
        }
        let h = h.ok_or_else(|| invalid("config", "no deep layers".into()))?;
        Ok((xc, h))
    }

    /// The fused representation `z = ReLU(W_f·[img | x_L | h] + b_f)` `[N, F]`, f32.
    pub fn fuse(&self, image_features: &Tensor, emr: &Tensor) -> Result<Tensor> {
        let n = self.check_emr(emr)?;
        let ni = self.config.image_features;
        if image_features.shape() != [n, ni] || !image_features.dtype().is_float() {
            return Err(Error::Shape {
                op: OP,
                arg: "image_features",
                got: image_features.shape().to_vec(),
                expected: format!("[{n}, {ni}] float (one row per EMR record)"),
            });
        }
        // A NaN / ±inf input would be hidden by the fusion ReLU (max(NaN, 0) = 0) and give a
        // finite, meaningless prediction.
        for (arg, t) in [("image_features", image_features), ("emr", emr)] {
            if let Some(v) = t.to_host()?.to_f64().into_iter().find(|v| !v.is_finite()) {
                return Err(Error::Invalid {
                    op: OP,
                    arg,
                    detail: format!(
                        "exam forward: non-finite input value {v} (an overflow in the image \
                         trunk, or a bad EMR vector); no prediction"
                    ),
                });
            }
        }
        let img32;
        let img = if image_features.dtype() == DType::F32 {
            image_features
        } else {
            img32 = ops::cast(image_features, DType::F32)?;
            &img32
        };
        let (xc, h) = self.dcn(emr)?;
        let z = ops::gemm(
            img,
            &self.fusion[0],
            &Gemm {
                bias: Some(&self.fusion_b),
                ..Default::default()
            },
        )?;
        let z = ops::gemm(
            &xc,
            &self.fusion[1],
            &Gemm {
                residual: Some(&z),
                ..Default::default()
            },
        )?;
        let z = ops::gemm(
            &h,
            &self.fusion[2],
            &Gemm {
                residual: Some(&z),
                ..Default::default()
            },
        )?;
        ops::activation(&z, Activation::Relu)
    }

    /// Predictions from image features `[N, image_features]` and EMR vectors `[N, D]` f32 on
    /// the head's device.
    pub fn forward(&self, image_features: &Tensor, emr: &Tensor) -> Result<Vec<ExamOutput>> {
        let z = self.fuse(image_features, emr)?;
        let oxy = ops::gemm(
            &z,
            &self.oxygen.0,
            &Gemm {
                bias: Some(&self.oxygen.1),
                act: Activation::Sigmoid,
                ..Default::default()
            },
        )?
        .to_host()?
        .to_f64();
        let s = ops::gemm(&z, &self.ordinal, &Gemm::default())?
            .to_host()?
            .to_f64();
        let non_finite = |what: &str, i: usize, v: &[f64]| Error::Invalid {
            op: OP,
            arg: "output",
            detail: format!(
                "exam forward: non-finite {what} {v:?} for record {i} (an overflow in the \
                     model or its inputs); no prediction"
            ),
        };
        s.iter()
            .enumerate()
            .map(|(i, &score)| {
                let o = [oxy[2 * i], oxy[2 * i + 1]];
                if !o.iter().all(|x| x.is_finite()) {
                    return Err(non_finite("oxygen scores", i, &o));
                }
                if !score.is_finite() {
                    return Err(non_finite("ordinal score", i, &[score]));
                }
                let p = ordinal_probs(score, &self.thresholds);
                if !p.iter().all(|x| x.is_finite()) {
                    return Err(non_finite("ordinal probabilities", i, &p));
                }
                let mut probs = [0f32; 5];
                for (d, v) in probs.iter_mut().zip(&p) {
                    *d = *v as f32;
                }
                let class = p
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f64::NEG_INFINITY),
                        |b, (k, &v)| {
                            if v > b.1 { (k, v) } else { b }
                        },
                    )
                    .0;
                Ok(ExamOutput {
                    oxygen_24h: o[0] as f32,
                    oxygen_72h: o[1] as f32,
                    ordinal_score: score as f32,
                    ordinal_probs: probs,
                    ordinal_class: class,
                })
            })
            .collect()
    }

    /// The cut points `θ_0 < … < θ_3`.
    pub fn thresholds(&self) -> &[f64] {
        &self.thresholds
    }
}

/// The EXAM image branch: a torchvision ResNet-34 ([`ResNet`]) whose 512-d pooled feature
/// (the input of its `fc`, which EXAM does not use) feeds the head; images resized to
/// `input_size` (224×224 by default).
pub struct ResNetTrunk {
    pub net: ResNet,
    pub input_size: (usize, usize),
}

impl ImageTrunk for ResNetTrunk {
    fn features(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.net.forward(x)?.features)
    }
    fn feature_dim(&self) -> usize {
        crate::model::resnet::WIDTHS[3]
    }
    fn input_size(&self) -> (usize, usize) {
        self.input_size
    }
    fn set_max_batch(&mut self, n: usize) {
        self.net.set_max_batch(n);
    }
    fn describe(&self) -> String {
        format!(
            "{} ({}, {}x{})",
            self.net.config().depth.name(),
            self.net.dtype(),
            self.input_size.0,
            self.input_size.1
        )
    }
}

/// The whole EXAM model: an image trunk and the head, on one device.
pub struct ExamModel {
    pub trunk: Box<dyn ImageTrunk>,
    pub head: ExamHead,
    /// The most patients one [`ExamModel::forward`] takes.
    max_batch: usize,
}

impl ExamModel {
    /// Pairs a trunk with a head, checking the feature widths agree.
    pub fn new(trunk: Box<dyn ImageTrunk>, head: ExamHead) -> Result<ExamModel> {
        if trunk.feature_dim() != head.config.image_features {
            return Err(invalid(
                "trunk",
                format!(
                    "{} gives {}-d features; the head expects {}",
                    trunk.describe(),
                    trunk.feature_dim(),
                    head.config.image_features
                ),
            ));
        }
        Ok(ExamModel {
            trunk,
            head,
            max_batch: crate::input::DEFAULT_MAX_BATCH,
        })
    }

    /// Loads an EXAM checkpoint (see the module docs: `image.*` a torchvision ResNet-34
    /// state dict, `emr.*` / `fusion.*` / `head.*` the head). The trunk runs in `dtype`
    /// (f32 on the CPU; f32/f16/bf16 on a GPU), the head in f32.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<ExamModel> {
        let bytes = crate::input::read_regular(OP, path, "a safetensors checkpoint")?;
        Self::from_safetensors(&bytes, device, dtype)
    }

    /// [`ExamModel::load`] from the bytes of the file.
    pub fn from_safetensors(bytes: &[u8], device: &Device, dtype: DType) -> Result<ExamModel> {
        // The config first: a head the ResNet-34 trunk cannot feed is refused before its
        // tensors are read.
        let metadata = SafeTensors::read_metadata(bytes)
            .map_err(|e| corrupt("weights", format!("not a safetensors file: {e}")))?
            .1
            .metadata()
            .clone()
            .unwrap_or_default();
        let config = config_of(&metadata)?;
        if config.image_features != crate::model::resnet::WIDTHS[3] {
            return Err(corrupt(
                "config",
                format!(
                    "image_features {}; the ResNet-34 trunk gives 512",
                    config.image_features
                ),
            ));
        }
        let head = ExamHead::from_safetensors(bytes, device)?;
        // The `image.` tensors, prefix stripped, as the ResNet loader's own file.
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| corrupt("weights", format!("not a safetensors file: {e}")))?;
        let mut views = Vec::new();
        for (name, t) in st.tensors() {
            if let Some(rest) = name.strip_prefix("image.") {
                let v =
                    safetensors::tensor::TensorView::new(t.dtype(), t.shape().to_vec(), t.data())
                        .map_err(|e| corrupt("weights", format!("{name}: {e}")))?;
                views.push((rest.to_string(), v));
            }
        }
        if views.is_empty() {
            return Err(corrupt(
                "weights",
                "no image.* tensors; expected a torchvision ResNet-34 state dict under the prefix image. (image.conv1.weight, image.layer1.0.conv1.weight, ...)"
                    .into(),
            ));
        }
        let classes = st
            .tensor("image.fc.weight")
            .map(|t| t.shape().first().copied().unwrap_or(0))
            .map_err(|_| corrupt("weights", "missing tensor image.fc.weight".into()))?;
        let sub = safetensors::serialize(views, None)
            .map_err(|e| corrupt("weights", format!("serialize: {e}")))?;
        let net = ResNet::from_safetensors(&sub, ResNetConfig::resnet34(classes), device, dtype)?;
        Self::new(
            Box::new(ResNetTrunk {
                net,
                input_size: (224, 224),
            }),
            head,
        )
    }

    /// Deterministic random weights for the whole model (ResNet-34 from
    /// [`random_resnet`] with a 1-row `fc`, the head from [`random_head_tensors`]) as the
    /// bytes of a checkpoint: what [`ExamModel::random`] loads.
    pub fn random_checkpoint(config: &ExamConfig, seed: u64) -> Result<Vec<u8>> {
        config.validate()?;
        let mut all = NamedTensors::default();
        let trunk = random_resnet(&ResNetConfig::resnet34(1), seed);
        for (n, v) in trunk.tensors {
            if !n.ends_with(".num_batches_tracked") {
                all.tensors.insert(format!("image.{n}"), v);
            }
        }
        let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = all
            .tensors
            .into_iter()
            .map(|(n, (s, v))| (n, s, v))
            .collect();
        t.extend(random_head_tensors(config, seed.wrapping_add(1)));
        let meta = HashMap::from([(
            CONFIG_KEY.to_string(),
            serde_json::to_string(config).map_err(|e| invalid("config", e.to_string()))?,
        )]);
        to_safetensors(&t, meta)
    }

    /// Sets the most patients (images and EMR rows) one [`ExamModel::forward`] takes (default
    /// [`DEFAULT_MAX_BATCH`](crate::input::DEFAULT_MAX_BATCH), 4096), the trunk's included: a
    /// larger batch is an error before its activations are allocated.
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self.trunk.set_max_batch(n);
        self
    }

    /// The limit set by [`ExamModel::with_max_batch`].
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The model with deterministic random weights, loaded through the checkpoint path.
    pub fn random(config: &ExamConfig, seed: u64, device: &Device, dtype: DType) -> Result<Self> {
        Self::from_safetensors(&Self::random_checkpoint(config, seed)?, device, dtype)
    }

    /// Predictions for preprocessed images `[N, H, W, 3]` (the trunk's dtype) and EMR vectors
    /// `[N, D]` f32, both on the model's device.
    pub fn forward(&self, images: &Tensor, emr: &Tensor) -> Result<Vec<ExamOutput>> {
        let n = images.shape().first().copied().unwrap_or(0);
        crate::input::check_batch(OP, "images", n, self.max_batch)?;
        let f = self.trunk.features(images)?;
        self.head.forward(&f, emr)
    }

    /// One patient as JSON: a decoded chest X-ray (resized to the trunk's input in `dtype`,
    /// the trunk's) and an EMR `record` (a JSON object, [`EmrConfig::encode`]). The answer:
    /// `emr_present` / `emr_missing` (feature keys), `oxygen_24h`, `oxygen_72h` and
    /// `ordinal` (`class`, `score`, `classes`, `probabilities`, `by_class`). `medkern exam`
    /// and the server's `/exam` both answer through it.
    pub fn assess(
        &self,
        raw: &crate::input::RawImage,
        record: &serde_json::Value,
        dtype: DType,
    ) -> Result<serde_json::Value> {
        use serde_json::json;
        let cfg = &self.head.config.emr;
        let emr = cfg.encode(record)?;
        let present: Vec<&str> = cfg
            .features
            .iter()
            .filter(|f| record.get(&f.key).is_some_and(|v| !v.is_null()))
            .map(|f| f.key.as_str())
            .collect();
        let missing: Vec<&str> = cfg
            .features
            .iter()
            .map(|f| f.key.as_str())
            .filter(|k| !present.contains(k))
            .collect();
        let dev = self.head.device();
        let x = raw.to_model_input(dev, self.trunk.input_size(), dtype)?;
        let emr_t = HostTensor::new(&[1, cfg.dim()], emr)?.into_device(dev)?;
        let o = self
            .forward(&x, &emr_t)?
            .into_iter()
            .next()
            .ok_or_else(|| invalid("output", "no prediction for the image".into()))?;
        Ok(json!({
            "emr_present": present,
            "emr_missing": missing,
            "image_trunk": self.trunk.describe(),
            "oxygen_24h": o.oxygen_24h,
            "oxygen_72h": o.oxygen_72h,
            "ordinal": {
                "class": o.class_name(),
                "score": o.ordinal_score,
                "classes": ORDINAL_CLASSES,
                "probabilities": o.ordinal_probs,
                "by_class": ORDINAL_CLASSES
                    .iter()
                    .zip(&o.ordinal_probs)
                    .map(|(&c, &p)| (c.to_string(), json!(p)))
                    .collect::<serde_json::Map<String, serde_json::Value>>(),
            },
        }))
    }
}
