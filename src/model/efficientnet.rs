//! EfficientNet B0–B7 and EfficientNet-Lite0–Lite4 from one scaled configuration, loaded from
//! safetensors with **torchvision parameter names** and run with medkern ops only, NHWC, on the
//! CPU backend (f64 reference ops) or a GPU (f32 / f16 / bf16).
//!
//! - Stem: conv 3×3 s2 + BN + act (`features.0.0`, `features.0.1`).
//! - Stages `features.1..=7`, blocks `features.{s}.{b}.block.{i}`: MBConv = optional 1×1 expand
//!   conv + BN + act (`block.0`), depthwise k3/k5 conv + BN + act, squeeze-excitation
//!   (`fc1`, `fc2`; B only), 1×1 project conv + BN (+ identity when stride 1 and in == out).
//!   Lite models have no SE, so their project conv follows the depthwise index directly
//!   (`block.{d+1}`), which is also what scripts/convert-lite0 writes.
//! - Head: 1×1 conv + BN + act (`features.8`), global average pool, Linear (`classifier.1`):
//!   ImageNet logits or one chest X-ray "abnormal" logit (sigmoid probability).
//!
//! Every BatchNorm is folded into its convolution on load (f64, rounded once to f32, then to the
//! model dtype); the epilogues fuse bias, activation and the residual add: conv2d (stem, expand,
//! project + residual, head), depthwise (BN bias + act), squeeze_excite, global_avg_pool, gemm.
//! Activation is SiLU (B) or ReLU6 (Lite); padding is torchvision's symmetric `(k−1)/2` or
//! TensorFlow SAME (asymmetric at stride 2, what TF-trained checkpoints need).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::bn_fold::{BatchNorm, fold_batchnorm};
use crate::ops::depthwise::weights_from_pytorch;
use crate::ops::preprocess::{PixelRange, Preprocess};
use crate::ops::upsample::{UpsampleMode, upsample};
use crate::ops::{
    self, Activation, Conv2d, ConvWeight, Depthwise, Gemm, Padding, SqueezeExcite, conv2d,
    depthwise, gemm, global_avg_pool, squeeze_excite,
};
use crate::tensor::{Device, HostTensor, Tensor};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const OP: &str = "efficientnet";

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

/// EfficientNet-B (SiLU, squeeze-excitation, scaled stem/head) or EfficientNet-Lite (ReLU6, no
/// SE, stem 32 and head 1280 and the first/last stage's repeats left unscaled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    B,
    Lite,
}

/// How every convolution pads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaddingMode {
    /// torchvision: `(k − 1)/2` on every side.
    Symmetric,
    /// TensorFlow SAME: output `ceil(in/stride)`, the extra row/column at the bottom/right
    /// (TF-trained checkpoints: the Lite weights, lukemelas' ports, candle's EfficientNet).
    TfSame,
}

impl PaddingMode {
    fn padding(self, k: usize) -> Padding {
        match self {
            PaddingMode::Symmetric => Padding::symmetric((k - 1) / 2, (k - 1) / 2),
            PaddingMode::TfSame => Padding::Same,
        }
    }
}

/// The classifier on top of the pooled features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// `classifier.1` `[num_classes, C]`: logits.
    ImageNet { num_classes: usize },
    /// `classifier.1` `[1, C]`: one abnormal-vs-normal logit; sigmoid gives the probability of
    /// "abnormal" (chest X-ray triage).
    ChestXray,
}

/// The base (B0) stages: (expand ratio, kernel, stride, in channels, out channels, repeats).
pub const BASE_STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];

/// One EfficientNet, fully determined: the scaling and the options.
#[derive(Clone, Debug, PartialEq)]
pub struct EfficientNetConfig {
    /// `b0`..`b7`, `lite0`..`lite4`, or a caller's name.
    pub name: String,
    pub family: Family,
    pub width_mult: f64,
    pub depth_mult: f64,
    /// The native input size (square).
    pub resolution: usize,
    pub padding: PaddingMode,
    /// BatchNorm epsilon.
    pub bn_eps: f64,
    pub head: Head,
}

/// One MBConv block of a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// `features.{stage}.{index}`: stage 1..=7.
    pub stage: usize,
    pub index: usize,
    pub in_ch: usize,
    /// Channels after the 1×1 expansion (== in_ch when the ratio is 1: no expand conv).
    pub expanded: usize,
    pub out_ch: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Squeeze-excitation hidden width (`max(1, in_ch/4)`), None for Lite.
    pub se: Option<usize>,
}

impl BlockSpec {
    pub fn residual(&self) -> bool {
        self.stride == 1 && self.in_ch == self.out_ch
    }
    fn has_expand(&self) -> bool {
        self.expanded != self.in_ch
    }
    /// `block.{i}` index of the depthwise conv, the SE and the project conv.
    fn indices(&self) -> (usize, Option<usize>, usize) {
        let d = usize::from(self.has_expand());
        match self.se {
            Some(_) => (d, Some(d + 1), d + 2),
            None => (d, None, d + 1),
        }
    }
    fn prefix(&self) -> String {
        format!("features.{}.{}.block", self.stage, self.index)
    }
}

/// torchvision's `_make_divisible(v, 8)` (TF's `round_filters`).
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let new_v = divisor.max(((v + d / 2.0) as usize) / divisor * divisor);
    if (new_v as f64) < 0.9 * v {
        new_v + divisor
    } else {
        new_v
    }
}

/// TF-Lite preprocessing statistics: `(x − 127)/128` on 0..255 values, i.e. mean 127/255 and
/// std 128/255 on `ToTensor`'s [0, 1] values (the Lite models were trained on [−1, 1] inputs).
pub const LITE_MEAN: [f32; 3] = [127.0 / 255.0; 3];
pub const LITE_STD: [f32; 3] = [128.0 / 255.0; 3];

impl EfficientNetConfig {
    /// EfficientNet-B`n` (0..=7) as torchvision builds it: symmetric padding, BN eps 1e-5 (B0–B4)
    /// or 1e-3 (B5–B7), 1000 ImageNet classes.
    pub fn b(n: usize) -> Result<Self> {
        const B: [(f64, f64, usize); 8] = [
            (1.0, 1.0, 224),
            (1.0, 1.1, 240),
            (1.1, 1.2, 260),
            (1.2, 1.4, 300),
            (1.4, 1.8, 380),
            (1.6, 2.2, 456),
            (1.8, 2.6, 528),
            (2.0, 3.1, 600),
        ];
        let &(w, d, r) = B
            .get(n)
            .ok_or_else(|| invalid("config", format!("EfficientNet-B{n}; expected B0..B7")))?;
        Ok(EfficientNetConfig {
            name: format!("b{n}"),
            family: Family::B,
            width_mult: w,
            depth_mult: d,
            resolution: r,
            padding: PaddingMode::Symmetric,
            bn_eps: if n >= 5 { 1e-3 } else { 1e-5 },
            head: Head::ImageNet { num_classes: 1000 },
        })
    }

    /// EfficientNet-Lite`n` (0..=4) as TensorFlow trained it: TF SAME padding, BN eps 1e-3,
    /// 1000 ImageNet classes.
    pub fn lite(n: usize) -> Result<Self> {
        const L: [(f64, f64, usize); 5] = [
            (1.0, 1.0, 224),
            (1.0, 1.1, 240),
            (1.1, 1.2, 260),
            (1.2, 1.4, 280),
            (1.4, 1.8, 300),
        ];
        let &(w, d, r) = L.get(n).ok_or_else(|| {
            invalid(
                "config",
                format!("EfficientNet-Lite{n}; expected Lite0..Lite4"),
            )
        })?;
        Ok(EfficientNetConfig {
            name: format!("lite{n}"),
            family: Family::Lite,
            width_mult: w,
            depth_mult: d,
            resolution: r,
            padding: PaddingMode::TfSame,
            bn_eps: 1e-3,
            head: Head::ImageNet { num_classes: 1000 },
        })
    }

    /// `b0`..`b7` or `lite0`..`lite4` (an `efficientnet-` / `efficientnet_` prefix is allowed).
    pub fn by_name(name: &str) -> Result<Self> {
        let s = name.to_ascii_lowercase();
        let s = s
            .strip_prefix("efficientnet-")
            .or_else(|| s.strip_prefix("efficientnet_"))
            .unwrap_or(&s);
        let num = |t: &str| t.parse::<usize>().ok();
        if let Some(n) = s.strip_prefix("lite").and_then(num) {
            return Self::lite(n);
        }
        if let Some(n) = s.strip_prefix('b').and_then(num) {
            return Self::b(n);
        }
        Err(invalid(
            "config",
            format!("unknown EfficientNet {name:?}; expected b0..b7 or lite0..lite4"),
        ))
    }

    pub fn with_padding(mut self, p: PaddingMode) -> Self {
        self.padding = p;
        self
    }
    pub fn with_head(mut self, h: Head) -> Self {
        self.head = h;
        self
    }
    pub fn with_bn_eps(mut self, eps: f64) -> Self {
        self.bn_eps = eps;
        self
    }

    pub fn activation(&self) -> Activation {
        match self.family {
            Family::B => Activation::Silu,
            Family::Lite => Activation::Relu6,
        }
    }

    fn filters(&self, c: usize) -> usize {
        make_divisible(c as f64 * self.width_mult, 8)
    }

    /// Stem output channels: 32 scaled (B) or 32 (Lite).
    pub fn stem_channels(&self) -> usize {
        match self.family {
            Family::B => self.filters(32),
            Family::Lite => 32,
        }
    }

    /// Head conv output channels (the pooled feature width): 4 × the last stage's (B, as
    /// torchvision), or 1280 (Lite).
    pub fn head_channels(&self) -> usize {
        match self.family {
            Family::B => 4 * self.filters(BASE_STAGES[6].4),
            Family::Lite => 1280,
        }
    }

    /// Logits per image: the classes, or 1 for the chest X-ray head.
    pub fn num_outputs(&self) -> usize {
        match self.head {
            Head::ImageNet { num_classes } => num_classes,
            Head::ChestXray => 1,
        }
    }

    /// Every MBConv block in order.
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let mut out = Vec::new();
        let mut in_ch = self.stem_channels();
        let last = BASE_STAGES.len() - 1;
        for (s, &(e, k, stride, _, o, n)) in BASE_STAGES.iter().enumerate() {
            let out_ch = self.filters(o);
            let repeats = if self.family == Family::Lite && (s == 0 || s == last) {
                n
            } else {
                (n as f64 * self.depth_mult).ceil() as usize
            };
            for i in 0..repeats {
                out.push(BlockSpec {
                    stage: s + 1,
                    index: i,
                    in_ch,
                    expanded: make_divisible((in_ch * e) as f64, 8),
                    out_ch,
                    kernel: k,
                    stride: if i == 0 { stride } else { 1 },
                    se: (self.family == Family::B).then(|| (in_ch / 4).max(1)),
                });
                in_ch = out_ch;
            }
        }
        out
    }

    /// Every tensor a checkpoint of this configuration holds (torchvision names) and its shape,
    /// `num_batches_tracked` excepted.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.tensor_specs()
            .into_iter()
            .map(|(n, s, _)| (n, s))
            .collect()
    }

    /// [`tensor_shapes`](Self::tensor_shapes) with what each tensor is (for [`random_weights`]).
    fn tensor_specs(&self) -> Vec<(String, Vec<usize>, Init)> {
        let mut t = Vec::new();
        // conv `{p}.0.weight` + BatchNorm `{p}.1.*`; `damped`: the BN closing a residual branch.
        let conv_bn = |t: &mut Vec<_>, p: String, w: Vec<usize>, damped: bool| {
            let oc = w[0];
            t.push((format!("{p}.0.weight"), w, Init::Conv));
            for (leaf, init) in [
                ("weight", Init::BnGamma { damped }),
                ("bias", Init::BnBeta),
                ("running_mean", Init::BnMean),
                ("running_var", Init::BnVar),
            ] {
                t.push((format!("{p}.1.{leaf}"), vec![oc], init));
            }
        };
        conv_bn(
            &mut t,
            "features.0".into(),
            vec![self.stem_channels(), 3, 3, 3],
            false,
        );
        for b in self.blocks() {
            let p = b.prefix();
            let (d, se, pr) = b.indices();
            if b.has_expand() {
                conv_bn(
                    &mut t,
                    format!("{p}.0"),
                    vec![b.expanded, b.in_ch, 1, 1],
                    false,
                );
            }
            conv_bn(
                &mut t,
                format!("{p}.{d}"),
                vec![b.expanded, 1, b.kernel, b.kernel],
                false,
            );
            if let (Some(i), Some(h)) = (se, b.se) {
                t.push((
                    format!("{p}.{i}.fc1.weight"),
                    vec![h, b.expanded, 1, 1],
                    Init::Conv,
                ));
                t.push((
                    format!("{p}.{i}.fc1.bias"),
                    vec![h],
                    Init::SeBias { gate: false },
                ));
                t.push((
                    format!("{p}.{i}.fc2.weight"),
                    vec![b.expanded, h, 1, 1],
                    Init::Conv,
                ));
                t.push((
                    format!("{p}.{i}.fc2.bias"),
                    vec![b.expanded],
                    Init::SeBias { gate: true },
                ));
            }
            conv_bn(
                &mut t,
                format!("{p}.{pr}"),
                vec![b.out_ch, b.expanded, 1, 1],
                b.residual(),
            );
        }
        let last = self.blocks().last().map_or(0, |b| b.out_ch);
        conv_bn(
            &mut t,
            format!("features.{}", BASE_STAGES.len() + 1),
            vec![self.head_channels(), last, 1, 1],
            false,
        );
        t.push((
            "classifier.1.weight".into(),
            vec![self.num_outputs(), self.head_channels()],
            Init::FcWeight,
        ));
        t.push((
            "classifier.1.bias".into(),
            vec![self.num_outputs()],
            Init::FcBias,
        ));
        t
    }

    /// The preprocessing the trained weights expect, at the native resolution: torchvision's
    /// ImageNet mean/std (B), or TF-Lite's `(x − 127)/128` (Lite).
    pub fn preprocess(&self) -> Preprocess<'static> {
        let size = (self.resolution, self.resolution);
        match self.family {
            Family::B => Preprocess::imagenet(size),
            Family::Lite => Preprocess {
                out_size: size,
                range: PixelRange::Scale(255.0),
                mean: &LITE_MEAN,
                std: &LITE_STD,
                grey_to_rgb: false,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Random weights

/// What a checkpoint tensor is, for the random initialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Init {
    Conv,
    /// BatchNorm γ; `damped` after the project conv of a block with an identity shortcut.
    BnGamma {
        damped: bool,
    },
    BnBeta,
    BnMean,
    BnVar,
    /// SE conv bias; `gate`: fc2's (before the sigmoid).
    SeBias {
        gate: bool,
    },
    FcWeight,
    FcBias,
}

/// SplitMix64 + Box–Muller: the deterministic generator of [`random_weights`].
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Deterministic random weights for `cfg` (f32, torchvision names, `num_batches_tracked`
/// omitted): conv weights N(0, 2/fan_in) (SE convs too; fc1 bias N(0, 0.1²), fc2 bias N(2, 0.3²): gates mostly open), BatchNorm with
/// realistic statistics (γ ∈ [0.5, 1.5], and [0.3, 0.7] after the project conv of a block with an
/// identity shortcut so residual sums stay O(1); β ~ N(0, 0.1²), running mean ~ N(0, 0.2²),
/// running var ∈ [0.5, 2.0]), classifier N(0, 1/C) with bias N(0, 0.1²). The signal of the input
/// reaches the logits (different images, clearly different logits). Same seed, same tensors.
pub fn random_weights(cfg: &EfficientNetConfig, seed: u64) -> Result<BTreeMap<String, HostTensor>> {
    let mut rng = Rng(seed ^ 0x5eed_e44e_7000_0000);
    let mut out = BTreeMap::new();
    for (name, shape, init) in cfg.tensor_specs() {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let x = match init {
                    // He-like gain: SiLU / ReLU6 halve the second moment.
                    Init::Conv => {
                        let fan_in = shape[1] * shape[2] * shape[3];
                        rng.normal() * (2.0 / fan_in as f64).sqrt()
                    }
                    Init::BnGamma { damped: true } => 0.3 + 0.4 * rng.uniform(),
                    Init::BnGamma { damped: false } => 0.5 + rng.uniform(),
                    Init::BnBeta | Init::FcBias | Init::SeBias { gate: false } => {
                        0.1 * rng.normal()
                    }
                    Init::BnMean => 0.2 * rng.normal(),
                    Init::BnVar => 0.5 + 1.5 * rng.uniform(),
                    // fc2's bias near +2 opens the gates (σ ≈ 0.9), as trained SE blocks mostly
                    // are, so the image's signal is not halved in every block.
                    Init::SeBias { gate: true } => 2.0 + 0.3 * rng.normal(),
                    Init::FcWeight => rng.normal() / (shape[1] as f64).sqrt(),
                };
                x as f32
            })
            .collect();
        out.insert(name, HostTensor::new(&shape, v)?);
    }
    Ok(out)
}

/// Serialises host tensors (f32) to safetensors bytes.
pub fn to_safetensors(tensors: &BTreeMap<String, HostTensor>) -> Result<Vec<u8>> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if t.dtype() != DType::F32 {
            return Err(invalid(
                "tensors",
                format!("{name} has dtype {}; expected f32", t.dtype()),
            ));
        }
        let v = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            t.shape().to_vec(),
            t.bytes(),
        )
        .map_err(|e| invalid("tensors", format!("{name}: {e}")))?;
        views.push((name.clone(), v));
    }
    safetensors::serialize(views, None).map_err(|e| invalid("tensors", format!("serialize: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The model

/// A conv with its BatchNorm folded in: weight prepared for conv2d, f32 bias.
#[derive(Debug)]
struct ConvBn {
    w: ConvWeight,
    bias: Tensor,
    stride: usize,
    k: usize,
}

#[derive(Debug)]
struct DwBn {
    w: Tensor,
    bias: Tensor,
    stride: usize,
    k: usize,
}

#[derive(Debug)]
struct Se {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
}

#[derive(Debug)]
struct Block {
    spec: BlockSpec,
    expand: Option<ConvBn>,
    dw: DwBn,
    se: Option<Se>,
    project: ConvBn,
}

/// An EfficientNet ready to run on one device in one dtype.
#[derive(Debug)]
pub struct EfficientNet {
    config: EfficientNetConfig,
    device: Device,
    dtype: DType,
    stem: ConvBn,
    blocks: Vec<Block>,
    head: ConvBn,
    fc_w: Tensor,
    fc_b: Tensor,
    max_batch: usize,
}

/// Named tensors read from a safetensors file, every name and shape checked.
struct Weights<'a> {
    st: SafeTensors<'a>,
    expected: BTreeMap<String, Vec<usize>>,
    eps: f64,
    device: &'a Device,
    dtype: DType,
}

impl Weights<'_> {
    fn host(&self, name: &str) -> Result<HostTensor> {
        let want = self
            .expected
            .get(name)
            .ok_or_else(|| corrupt("weights", format!("internal: {name} is not expected")))?;
        let t = self
            .st
            .tensor(name)
            .map_err(|_| corrupt("weights", format!("missing tensor {name}")))?;
        if t.shape() != want.as_slice() {
            return Err(corrupt(
                "weights",
                format!("tensor {name} has shape {:?}, expected {want:?}", t.shape()),
            ));
        }
        let v: Vec<f32> = crate::model::float_values(&t)
            .filter(|_| t.dtype() != safetensors::Dtype::F64)
            .ok_or_else(|| {
                corrupt(
                    "weights",
                    format!(
                        "tensor {name} has dtype {:?}, expected F32, F16 or BF16",
                        t.dtype()
                    ),
                )
            })?
            .into_iter()
            .map(|x| x as f32)
            .collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(corrupt(
                "weights",
                format!("tensor {name} holds a non-finite value at {i}"),
            ));
        }
        HostTensor::new(want, v)
    }

    /// `{p}.0.weight` folded with the BatchNorm `{p}.1.*`: (OIHW weight f32, bias f32).
    fn folded(&self, p: &str) -> Result<(HostTensor, HostTensor)> {
        let w = self.host(&format!("{p}.0.weight"))?;
        let g = self.host(&format!("{p}.1.weight"))?;
        let b = self.host(&format!("{p}.1.bias"))?;
        let m = self.host(&format!("{p}.1.running_mean"))?;
        let v = self.host(&format!("{p}.1.running_var"))?;
        let bn = BatchNorm {
            gamma: &g,
            beta: &b,
            running_mean: &m,
            running_var: &v,
            eps: self.eps,
        };
        let f = fold_batchnorm(&w, None, &bn, DType::F32).map_err(|e| {
            corrupt(
                "weights",
                format!("folding BatchNorm {p}.1 into {p}.0: {e}"),
            )
        })?;
        Ok((f.weight, f.bias))
    }

    fn in_dtype(&self, t: &HostTensor) -> Result<HostTensor> {
        if t.dtype() == self.dtype {
            Ok(t.clone())
        } else {
            HostTensor::from_f64(t.shape(), &t.to_f64(), self.dtype)
        }
    }

    fn conv_bn(&self, p: &str, stride: usize) -> Result<ConvBn> {
        let (w, bias) = self.folded(p)?;
        let k = w.shape()[2];
        Ok(ConvBn {
            w: ConvWeight::from_pytorch(&self.in_dtype(&w)?, 1, self.device)?,
            bias: bias.to_device(self.device)?,
            stride,
            k,
        })
    }

    fn dw_bn(&self, p: &str, stride: usize) -> Result<DwBn> {
        let (w, bias) = self.folded(p)?;
        let k = w.shape()[2];
        Ok(DwBn {
            w: weights_from_pytorch(&self.in_dtype(&w)?)?.to_device(self.device)?,
            bias: bias.to_device(self.device)?,
            stride,
            k,
        })
    }

    /// A 1×1 conv weight `[o, i, 1, 1]` as a Linear weight `[o, i]` (f32).
    fn fc(&self, name: &str) -> Result<Tensor> {
        let t = self.host(name)?;
        let s = t.shape();
        let (o, i) = (s[0], s[1]);
        HostTensor::new(&[o, i], t.as_slice::<f32>()?.to_vec())?.to_device(self.device)
    }
}

impl EfficientNet {
    /// Loads a safetensors checkpoint with torchvision names for `config` onto `device` in
    /// `dtype` (f32 / f16 / bf16; the CPU backend computes in f64 whatever the dtype).
    pub fn load(
        path: &Path,
        config: EfficientNetConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let bytes = crate::input::read_regular(OP, path, "a safetensors checkpoint")?;
        Self::from_bytes(&bytes, config, device, dtype)
    }

    /// [`EfficientNet::load`] from the bytes of a safetensors file.
    pub fn from_bytes(
        bytes: &[u8],
        config: EfficientNetConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        ops::float_dtype(OP, "dtype", dtype)?;
        if config.num_outputs() == 0 || config.resolution == 0 {
            return Err(invalid(
                "config",
                format!(
                    "{}: {} outputs at resolution {}; expected both >= 1",
                    config.name,
                    config.num_outputs(),
                    config.resolution
                ),
            ));
        }
        if !(config.width_mult > 0.0 && config.depth_mult > 0.0) {
            return Err(invalid(
                "config",
                format!(
                    "{}: width {} depth {}; expected both > 0",
                    config.name, config.width_mult, config.depth_mult
                ),
            ));
        }
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| corrupt("weights", format!("not a safetensors file: {e}")))?;
        let expected: BTreeMap<String, Vec<usize>> = config.tensor_shapes().into_iter().collect();
        let names: BTreeSet<String> = st.names().into_iter().map(|n| n.to_string()).collect();
        if let Some(extra) = names
            .iter()
            .find(|n| !expected.contains_key(*n) && !n.ends_with("num_batches_tracked"))
        {
            return Err(corrupt(
                "weights",
                format!(
                    "unexpected tensor {extra} for EfficientNet-{} (is the configuration right?)",
                    config.name
                ),
            ));
        }
        let w = Weights {
            st,
            expected,
            eps: config.bn_eps,
            device,
            dtype,
        };
        let stem = w.conv_bn("features.0", 2)?;
        let mut blocks = Vec::new();
        for spec in config.blocks() {
            let p = spec.prefix();
            let (d, se_i, pr) = spec.indices();
            let expand = if spec.has_expand() {
                Some(w.conv_bn(&format!("{p}.0"), 1)?)
            } else {
                None
            };
            let dw = w.dw_bn(&format!("{p}.{d}"), spec.stride)?;
            let se = match se_i {
                Some(i) => Some(Se {
                    w1: w.fc(&format!("{p}.{i}.fc1.weight"))?,
                    b1: w.host(&format!("{p}.{i}.fc1.bias"))?.to_device(device)?,
                    w2: w.fc(&format!("{p}.{i}.fc2.weight"))?,
                    b2: w.host(&format!("{p}.{i}.fc2.bias"))?.to_device(device)?,
                }),
                None => None,
            };
            let project = w.conv_bn(&format!("{p}.{pr}"), 1)?;
            blocks.push(Block {
                spec,
                expand,
                dw,
                se,
                project,
            });
        }
        let head = w.conv_bn(&format!("features.{}", BASE_STAGES.len() + 1), 1)?;
        let fc_w = w
            .in_dtype(&w.host("classifier.1.weight")?)?
            .to_device(device)?;
        let fc_b = w
            .in_dtype(&w.host("classifier.1.bias")?)?
            .to_device(device)?;
        Ok(EfficientNet {
            config,
            device: device.clone(),
            dtype,
            stem,
            blocks,
            head,
            fc_w,
            fc_b,
            max_batch: crate::input::DEFAULT_MAX_BATCH,
        })
    }

    super::max_batch_methods!();

    pub fn config(&self) -> &EfficientNetConfig {
        &self.config
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn conv(
        &self,
        x: &Tensor,
        c: &ConvBn,
        act: Activation,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        conv2d(
            x,
            &c.w,
            &Conv2d {
                stride: (c.stride, c.stride),
                padding: self.config.padding.padding(c.k),
                bias: Some(&c.bias),
                residual,
                act,
                ..Default::default()
            },
        )
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let s = x.shape();
        if let Some(&n) = s.first() {
            crate::input::check_batch(OP, "x (images)", n, self.max_batch)?;
        }
        if s.len() != 4 || s[3] != 3 || s[0] == 0 || s[1] == 0 || s[2] == 0 {
            return Err(Error::Shape {
                op: OP,
                arg: "x",
                got: s.to_vec(),
                expected: format!(
                    "[N, H, W, 3] (NHWC RGB, e.g. [N, {r}, {r}, 3]; ops::preprocess makes it)",
                    r = self.config.resolution
                ),
            });
        }
        if x.dtype() != self.dtype {
            return Err(Error::DType {
                op: OP,
                arg: "x",
                got: x.dtype(),
                expected: format!("{} (the model's dtype)", self.dtype),
            });
        }
        let same_device = match (&self.device, x) {
            (Device::Cpu, Tensor::Host(_)) => true,
            (Device::Gpu(g), Tensor::Device(d)) => std::sync::Arc::ptr_eq(g, d.gpu()),
            _ => false,
        };
        if !same_device {
            return Err(Error::Device {
                op: OP,
                arg: "x",
                got: x.device().describe(),
                expected: self.device.describe(),
            });
        }
        Ok(())
    }

    /// The last feature map `[N, h, w, head_channels]` (after the head conv + BN + act).
    pub fn feature_map(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let act = self.config.activation();
        let mut h = self.conv(x, &self.stem, act, None)?;
        for b in &self.blocks {
            let e = match &b.expand {
                Some(c) => Some(self.conv(&h, c, act, None)?),
                None => None,
            };
            let inp = e.as_ref().unwrap_or(&h);
            let d = depthwise(
                inp,
                &b.dw.w,
                &Depthwise {
                    stride: (b.dw.stride, b.dw.stride),
                    padding: self.config.padding.padding(b.dw.k),
                    bias: Some(&b.dw.bias),
                    act,
                    ..Default::default()
                },
            )?;
            let d = match &b.se {
                Some(se) => {
                    squeeze_excite(&d, &SqueezeExcite::new(&se.w1, &se.b1, &se.w2, &se.b2))?
                }
                None => d,
            };
            let res = b.spec.residual().then_some(&h);
            h = self.conv(&d, &b.project, Activation::Identity, res)?;
        }
        self.conv(&h, &self.head, act, None)
    }

    /// Globally pooled features `[N, head_channels]` in the model's dtype.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        global_avg_pool(&self.feature_map(x)?)
    }

    /// Logits `[N, num_outputs]` f32 on the model's device, for NHWC images `x` `[N, H, W, 3]`
    /// of the model's dtype (already normalised: [`EfficientNetConfig::preprocess`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_map(x)?.1)
    }

    /// [`EfficientNet::forward`] that also returns the last feature map (before the global
    /// pooling): (the map `[N, h, w, head_channels]` in the model dtype, the logits
    /// `[N, num_outputs]` f32). The same ops as `forward`, so the logits are the same.
    pub fn forward_with_map(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let map = self.feature_map(x)?;
        let f = global_avg_pool(&map)?;
        let logits = gemm(
            &f,
            &self.fc_w,
            &Gemm {
                bias: Some(&self.fc_b),
                out_dtype: Some(DType::F32),
                ..Default::default()
            },
        )?;
        Ok((map, logits))
    }

    /// Class activation maps (Zhou et al. 2016, "Learning Deep Features for Discriminative
    /// Localization"): for each image, `cam[y, x] = Σ_c W[k, c]·F[y, x, c]` over the last
    /// feature map `F` and the classifier row of class `k`: `class`, or the image's top class.
    /// As the head is a global average pool then a Linear, `mean(cam) + b[k]` is logit `k`.
    /// Computed on the model's device: one batched GEMM over the channels (f32 out), then a
    /// bilinear upsample (align_corners false) to the input's size. No gradients.
    pub fn class_activation_map(
        &self,
        x: &Tensor,
        class: Option<usize>,
    ) -> Result<ClassActivation> {
        let outputs = self.config.num_outputs();
        if let Some(k) = class.filter(|&k| k >= outputs) {
            return Err(invalid(
                "class",
                format!("{k}; expected a class below {outputs} (the model's outputs)"),
            ));
        }
        let (map, logits) = self.forward_with_map(x)?;
        let logits: Vec<Vec<f32>> = logits
            .to_host()?
            .as_slice::<f32>()?
            .chunks(outputs)
            .map(<[f32]>::to_vec)
            .collect();
        let classes: Vec<usize> = logits
            .iter()
            .map(|l| class.unwrap_or_else(|| top_k(l, 1).first().copied().unwrap_or(0)))
            .collect();
        let &[n, h, w, c] = map.shape() else {
            return Err(invalid(
                "feature map",
                format!("internal: shape {:?}, expected [N, h, w, C]", map.shape()),
            ));
        };
        // The classifier row of each image's class, `[N, 1, C]`: a batched GEMM's weights.
        // The classifier as loaded (model dtype values), read back once per call.
        let rows = self.fc_w.to_host()?.to_f64();
        let mut sel = Vec::with_capacity(n * c);
        for &k in &classes {
            let row = rows.get(k * c..(k + 1) * c).ok_or_else(|| {
                invalid(
                    "feature map",
                    format!("internal: {c} channels do not match the classifier"),
                )
            })?;
            sel.extend_from_slice(row);
        }
        let sel = HostTensor::from_f64(&[n, 1, c], &sel, self.dtype)?.into_device(&self.device)?;
        let map = map.reshape(&[n, h * w, c])?;
        let low = gemm(
            &map,
            &sel,
            &Gemm {
                out_dtype: Some(DType::F32),
                ..Default::default()
            },
        )?
        .reshape(&[n, h, w, 1])?;
        let s = x.shape();
        let up = upsample(
            &low,
            (s[1], s[2]),
            UpsampleMode::Bilinear {
                align_corners: false,
            },
        )?;
        Ok(ClassActivation {
            classes,
            logits,
            feature_map: map.reshape(&[n, h, w, c])?,
            low_res: low,
            map: up,
        })
    }

    /// Logits on the host, one row per image.
    pub fn logits(&self, x: &Tensor) -> Result<Vec<Vec<f32>>> {
        let l = self.forward(x)?.to_host()?;
        let n = self.config.num_outputs();
        Ok(l.as_slice::<f32>()?
            .chunks(n)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// Chest X-ray head: per image `(abnormal logit, sigmoid probability of abnormal)`.
    pub fn abnormal_probability(&self, x: &Tensor) -> Result<Vec<(f32, f32)>> {
        if self.config.head != Head::ChestXray {
            return Err(invalid(
                "head",
                format!(
                    "{:?}; abnormal_probability needs Head::ChestXray",
                    self.config.head
                ),
            ));
        }
        Ok(self
            .logits(x)?
            .into_iter()
            .map(|r| (r[0], sigmoid(r[0])))
            .collect())
    }
}

/// What [`EfficientNet::class_activation_map`] returns.
#[derive(Debug)]
pub struct ClassActivation {
    /// The class each image's map is for.
    pub classes: Vec<usize>,
    /// The logits of the same forward, one row per image.
    pub logits: Vec<Vec<f32>>,
    /// The last feature map `[N, h, w, head_channels]` (model dtype and device) the maps are
    /// made from.
    pub feature_map: Tensor,
    /// `[N, h, w, 1]` f32 on the model's device: the map at the feature map's resolution
    /// (without the classifier bias).
    pub low_res: Tensor,
    /// `[N, H, W, 1]` f32 on the model's device: `low_res` upsampled to the input's size.
    pub map: Tensor,
}

/// The logistic function, computed in f64: the chest X-ray head's probability of "abnormal".
pub fn sigmoid(logit: f32) -> f32 {
    (1.0 / (1.0 + (-f64::from(logit)).exp())) as f32
}

/// The indices of the `k` largest values, largest first (ties by index).
pub fn top_k(logits: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}
