//! ResNet-18 and ResNet-34 (torchvision's BasicBlock ResNets) loaded from a safetensors file with
//! torchvision parameter names and run with medkern ops only: NHWC activations, every
//! convolution with its BatchNorm folded into the weight and bias at load time
//! ([`crate::ops::bn_fold`]), the ReLU and the residual add fused into the convolution's
//! epilogue, the stem's 3×3/2 max pool, a global average pool (the 512-d feature) and the `fc`
//! GEMM (f32 logits). The same code runs on the CPU backend (the f64 reference ops, f32 storage)
//! and on a GPU (f32, f16 or bf16), where nothing returns to the host until the caller reads an
//! output.
//!
//! Tensor names (torchvision `resnet18()` / `resnet34()` `state_dict()`): `conv1.weight`,
//! `bn1.{weight,bias,running_mean,running_var}`, `layer{1..4}.{i}.conv{1,2}.weight`,
//! `layer{1..4}.{i}.bn{1,2}.*`, `layer{2..4}.0.downsample.{0,1}.*` (1×1 stride-2 conv + BN),
//! `fc.{weight,bias}`. `num_batches_tracked` and any other extra tensor are ignored. Every
//! tensor read is checked by name and shape; a missing or misshapen one is an error naming it.
//! BatchNorm uses torchvision's ε = 1e-5.
//!
//! [`random_resnet`] writes deterministic random weights under the same names (He-normal convs,
//! BatchNorm statistics away from the identity) so tests and benches load through the path a
//! trained checkpoint takes.
//!
//! The building blocks (the folded conv + BN, the trunk, the head) are shared with
//! [`crate::model::sepsis`].

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::bn_fold::{BatchNorm, fold_batchnorm};
use crate::ops::{self, Activation, Conv2d, ConvWeight, Gemm, Padding, Pool2d};
use crate::tensor::{Device, HostTensor, Tensor};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::Path;

const OP: &str = "resnet";

/// torchvision's BatchNorm2d epsilon.
pub const BN_EPS: f64 = 1e-5;

/// Output channels of layer1..layer4.
pub const WIDTHS: [usize; 4] = [64, 128, 256, 512];

/// A file's unusable content (weights): [`Error::Corrupt`].
pub(crate) fn corrupt(op: &'static str, arg: &'static str, detail: String) -> Error {
    Error::Corrupt { op, arg, detail }
}

pub(crate) fn invalid(op: &'static str, arg: &'static str, detail: String) -> Error {
    Error::Invalid { op, arg, detail }
}

/// Reads the bytes of a checkpoint, which must be a regular file (a FIFO or device is an
/// error, not a hang: [`crate::input::read_regular`]).
pub(crate) fn read_file(op: &'static str, path: &Path) -> Result<Vec<u8>> {
    crate::input::read_regular(op, path, "a safetensors checkpoint")
}

/// Named tensors of a safetensors file, read with name and shape checks.
pub(crate) struct StWeights<'a> {
    st: SafeTensors<'a>,
    op: &'static str,
}

impl<'a> StWeights<'a> {
    pub(crate) fn parse(op: &'static str, bytes: &'a [u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| corrupt(op, "weights", format!("not a safetensors file: {e}")))?;
        Ok(StWeights { st, op })
    }

    /// Tensor `name` as f32 host values, checked against `shape`.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let op = self.op;
        let t = self
            .st
            .tensor(name)
            .map_err(|_| corrupt(op, "weights", format!("missing tensor {name}")))?;
        if t.shape() != shape {
            return Err(corrupt(
                op,
                "weights",
                format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    t.shape()
                ),
            ));
        }
        let v = crate::model::float_values(&t).ok_or_else(|| {
            corrupt(
                op,
                "weights",
                format!(
                    "tensor {name} has dtype {:?}, expected F32, F64, F16 or BF16",
                    t.dtype()
                ),
            )
        })?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(corrupt(
                op,
                "weights",
                format!("tensor {name} has a non-finite value {} at {i}", v[i]),
            ));
        }
        HostTensor::from_f64(shape, &v, DType::F32)
    }
}

/// Checks an NHWC image batch `x` `[N, H, W, channels]` against a model's dtype and device.
pub(crate) fn check_input(
    op: &'static str,
    x: &Tensor,
    channels: usize,
    dtype: DType,
    device: &Device,
    max_batch: usize,
) -> Result<()> {
    let s = x.shape();
    if let Some(&n) = s.first() {
        crate::input::check_batch(op, "x (images)", n, max_batch)?;
    }
    if s.len() != 4 || s[3] != channels || s[..3].contains(&0) {
        return Err(Error::Shape {
            op,
            arg: "x",
            got: s.to_vec(),
            expected: format!("[N, H, W, {channels}] (NHWC images), N, H, W >= 1"),
        });
    }
    if x.dtype() != dtype {
        return Err(Error::DType {
            op,
            arg: "x",
            got: x.dtype(),
            expected: format!("{dtype} (the model's dtype)"),
        });
    }
    let same = match (&x.device(), device) {
        (Device::Cpu, Device::Cpu) => true,
        (Device::Gpu(a), Device::Gpu(b)) => std::sync::Arc::ptr_eq(a, b),
        _ => false,
    };
    if !same {
        return Err(Error::Device {
            op,
            arg: "x",
            got: x.device().describe(),
            expected: format!("{} (the model's device)", device.describe()),
        });
    }
    Ok(())
}

/// A bias-free convolution with its BatchNorm folded in: `conv(x, w·s) + (β − μ·s)`,
/// `s = γ/√(var + ε)`, with the activation and an optional residual in the epilogue.
pub(crate) struct ConvBn {
    w: ConvWeight,
    bias: Tensor,
    stride: usize,
    pad: usize,
}

impl ConvBn {
    /// Loads `{conv}.weight` `[oc, ic, k, k]` and `{bn}.{weight,bias,running_mean,running_var}`
    /// `[oc]`, folds the BatchNorm in f64 and uploads the weight in `dtype` (bias f32).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn load(
        w: &StWeights,
        conv: &str,
        bn: &str,
        (ic, oc, k): (usize, usize, usize),
        stride: usize,
        pad: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let cw = w.get(&format!("{conv}.weight"), &[oc, ic, k, k])?;
        let p = |s: &str| w.get(&format!("{bn}.{s}"), &[oc]);
        let (gamma, beta, mean, var) = (
            p("weight")?,
            p("bias")?,
            p("running_mean")?,
            p("running_var")?,
        );
        let f = fold_batchnorm(
            &cw,
            None,
            &BatchNorm {
                gamma: &gamma,
                beta: &beta,
                running_mean: &mean,
                running_var: &var,
                eps: BN_EPS,
            },
            DType::F32,
        )
        .map_err(|e| corrupt(w.op, "weights", format!("{bn}: {e}")))?;
        let wt = HostTensor::from_f64(&[oc, ic, k, k], &f.weight.to_f64(), dtype)?;
        Ok(ConvBn {
            w: ConvWeight::from_pytorch(&wt, 1, device)?,
            bias: f.bias.to_device(device)?,
            stride,
            pad,
        })
    }

    /// `act(conv(x) + bias + residual)`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        act: Activation,
    ) -> Result<Tensor> {
        ops::conv2d(
            x,
            &self.w,
            &Conv2d {
                stride: (self.stride, self.stride),
                padding: Padding::symmetric(self.pad, self.pad),
                bias: Some(&self.bias),
                residual,
                act,
                ..Default::default()
            },
        )
    }
}

/// torchvision's BasicBlock: `relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))`.
struct BasicBlock {
    conv1: ConvBn,
    conv2: ConvBn,
    downsample: Option<ConvBn>,
}

impl BasicBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(x, None, Activation::Relu)?;
        match &self.downsample {
            Some(d) => {
                let id = d.forward(x, None, Activation::Identity)?;
                self.conv2.forward(&h, Some(&id), Activation::Relu)
            }
            None => self.conv2.forward(&h, Some(x), Activation::Relu),
        }
    }
}

/// The convolutional part of a ResNet: stem (7×7/2 conv + BN + ReLU, 3×3/2 max pool) and
/// `blocks.len()` stages of BasicBlocks (stage `i` has `WIDTHS[i]` channels, stride 2 from the
/// second stage on).
pub(crate) struct Trunk {
    stem: ConvBn,
    layers: Vec<Vec<BasicBlock>>,
    width: usize,
}

impl Trunk {
    pub(crate) fn load(
        w: &StWeights,
        blocks: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let stem = ConvBn::load(w, "conv1", "bn1", (3, 64, 7), 2, 3, dtype, device)?;
        let mut layers = Vec::with_capacity(blocks.len());
        let mut c_in = 64;
        for (l, &n) in blocks.iter().enumerate() {
            let c = WIDTHS[l];
            let mut stage = Vec::with_capacity(n);
            for i in 0..n {
                let p = format!("layer{}.{i}", l + 1);
                let (ic, stride) = if i == 0 {
                    (c_in, if l == 0 { 1 } else { 2 })
                } else {
                    (c, 1)
                };
                let downsample = if stride != 1 || ic != c {
                    Some(ConvBn::load(
                        w,
                        &format!("{p}.downsample.0"),
                        &format!("{p}.downsample.1"),
                        (ic, c, 1),
                        stride,
                        0,
                        dtype,
                        device,
                    )?)
                } else {
                    None
                };
                stage.push(BasicBlock {
                    conv1: ConvBn::load(
                        w,
                        &format!("{p}.conv1"),
                        &format!("{p}.bn1"),
                        (ic, c, 3),
                        stride,
                        1,
                        dtype,
                        device,
                    )?,
                    conv2: ConvBn::load(
                        w,
                        &format!("{p}.conv2"),
                        &format!("{p}.bn2"),
                        (c, c, 3),
                        1,
                        1,
                        dtype,
                        device,
                    )?,
                    downsample,
                });
            }
            layers.push(stage);
            c_in = c;
        }
        Ok(Trunk {
            stem,
            layers,
            width: c_in,
        })
    }

    /// Output channels of the last stage.
    pub(crate) fn width(&self) -> usize {
        self.width
    }

    /// `[N, H, W, 3]` → the last stage's feature map `[N, h, w, width]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.stem.forward(x, None, Activation::Relu)?;
        let mut h = ops::max_pool2d(&s, &Pool2d::resnet_stem())?;
        for stage in &self.layers {
            for b in stage {
                h = b.forward(&h)?;
            }
        }
        Ok(h)
    }
}

/// A Linear classifier head `y = x·Wᵀ + b`, logits in f32.
pub(crate) struct Head {
    w: Tensor,
    b: Tensor,
}

impl Head {
    pub(crate) fn load(
        w: &StWeights,
        name: &str,
        (n, k): (usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let up = |t: HostTensor, shape: &[usize]| {
            HostTensor::from_f64(shape, &t.to_f64(), dtype)?.to_device(device)
        };
        Ok(Head {
            w: up(w.get(&format!("{name}.weight"), &[n, k])?, &[n, k])?,
            b: up(w.get(&format!("{name}.bias"), &[n])?, &[n])?,
        })
    }
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::gemm(
            x,
            &self.w,
            &Gemm {
                bias: Some(&self.b),
                out_dtype: Some(DType::F32),
                ..Default::default()
            },
        )
    }
}

/// Which BasicBlock ResNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResNetDepth {
    /// Blocks per stage [2, 2, 2, 2].
    ResNet18,
    /// Blocks per stage [3, 4, 6, 3].
    ResNet34,
}

impl ResNetDepth {
    pub fn blocks(self) -> [usize; 4] {
        match self {
            ResNetDepth::ResNet18 => [2, 2, 2, 2],
            ResNetDepth::ResNet34 => [3, 4, 6, 3],
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ResNetDepth::ResNet18 => "resnet18",
            ResNetDepth::ResNet34 => "resnet34",
        }
    }
}

/// Architecture of a [`ResNet`]: depth and the rows of `fc.weight` (1000 for ImageNet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    pub depth: ResNetDepth,
    pub num_classes: usize,
}

impl ResNetConfig {
    pub fn resnet18(num_classes: usize) -> Self {
        ResNetConfig {
            depth: ResNetDepth::ResNet18,
            num_classes,
        }
    }
    pub fn resnet34(num_classes: usize) -> Self {
        ResNetConfig {
            depth: ResNetDepth::ResNet34,
            num_classes,
        }
    }
}

/// What [`ResNet::forward`] returns, on the model's device.
pub struct ResNetOutput {
    /// `[N, num_classes]` f32.
    pub logits: Tensor,
    /// The globally average-pooled last feature map, `[N, 512]` in the model's dtype (the
    /// input of `fc`; torchvision's `resnet.fc = Identity()` output).
    pub features: Tensor,
}

/// A ResNet-18/34 ready to run.
pub struct ResNet {
    config: ResNetConfig,
    device: Device,
    dtype: DType,
    trunk: Trunk,
    fc: Head,
    max_batch: usize,
}

impl ResNet {
    /// Loads a safetensors file (torchvision names; see the module doc). `dtype` is the
    /// compute dtype: f16/bf16 (or f32) on a GPU, f32 on the CPU.
    pub fn load(path: &Path, config: ResNetConfig, device: &Device, dtype: DType) -> Result<Self> {
        Self::from_safetensors(&read_file(OP, path)?, config, device, dtype)
    }

    /// Builds the model from the bytes of a safetensors file.
    pub fn from_safetensors(
        bytes: &[u8],
        config: ResNetConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        ops::float_dtype(OP, "dtype", dtype)?;
        if config.num_classes == 0 {
            return Err(invalid(OP, "num_classes", "0; expected >= 1".into()));
        }
        let w = StWeights::parse(OP, bytes)?;
        let trunk = Trunk::load(&w, &config.depth.blocks(), dtype, device)?;
        let fc = Head::load(&w, "fc", (config.num_classes, trunk.width()), dtype, device)?;
        Ok(ResNet {
            config,
            device: device.clone(),
            dtype,
            trunk,
            fc,
            max_batch: crate::input::DEFAULT_MAX_BATCH,
        })
    }

    super::max_batch_methods!();

    /// [`ResNet::with_max_batch`] in place.
    pub(crate) fn set_max_batch(&mut self, n: usize) {
        self.max_batch = n;
    }

    pub fn config(&self) -> ResNetConfig {
        self.config
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Logits and pooled features of a normalised NHWC batch `x` `[N, H, W, 3]` in the model's
    /// dtype on its device (ImageNet-normalised 224×224 for trained weights; any H, W >= 1 run:
    /// `ops::preprocess` makes such a batch from u8 images).
    pub fn forward(&self, x: &Tensor) -> Result<ResNetOutput> {
        check_input(OP, x, 3, self.dtype, &self.device, self.max_batch)?;
        let h = self.trunk.forward(x)?;
        let features = ops::global_avg_pool(&h)?;
        let logits = self.fc.forward(&features)?;
        Ok(ResNetOutput { logits, features })
    }

    /// Classifies raw u8 RGB(A) images `[N, H, W, C]` (C = 3 or 4) on the model's device:
    /// torchvision's ImageNet preprocessing (`ops::preprocess`: ÷255, bilinear resize to `size`
    /// without antialias, ImageNet mean/std) into the model's dtype, then [`ResNet::forward`].
    pub fn classify_u8(&self, images: &Tensor, size: (usize, usize)) -> Result<ResNetOutput> {
        let n = images.shape().first().copied().unwrap_or(0);
        crate::input::check_batch(OP, "images", n, self.max_batch)?;
        if images.dtype() != DType::U8 {
            return Err(Error::DType {
                op: OP,
                arg: "images",
                got: images.dtype(),
                expected: "u8 [N, H, W, 3|4]".into(),
            });
        }
        let x = ops::preprocess(images, &ops::Preprocess::imagenet(size), self.dtype)?;
        self.forward(&x)
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic random weights

/// Named f32 tensors (`name → (shape, values)`), writable as a safetensors file. Names ending
/// in `.num_batches_tracked` are written as I64 scalars, as torchvision saves them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamedTensors {
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl NamedTensors {
    /// The tensors as safetensors bytes (F32, little endian).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let raw: Vec<(&String, safetensors::Dtype, &Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(n, (s, v))| {
                if n.ends_with(".num_batches_tracked") {
                    let c = v.first().copied().unwrap_or(0.0) as i64;
                    (n, safetensors::Dtype::I64, s, c.to_le_bytes().to_vec())
                } else {
                    let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    (n, safetensors::Dtype::F32, s, b)
                }
            })
            .collect();
        let views = raw
            .iter()
            .map(|(n, dt, s, b)| {
                safetensors::tensor::TensorView::new(*dt, s.to_vec(), b)
                    .map(|v| (n.as_str(), v))
                    .map_err(|e| invalid("NamedTensors", "tensors", format!("{n}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, None)
            .map_err(|e| invalid("NamedTensors", "tensors", format!("serialize: {e}")))
    }
}

/// SplitMix64 with Box–Muller normals: the seeded generator of the random weights.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Writes random tensors under torchvision-style names.
pub(crate) struct WeightGen {
    pub(crate) rng: Rng,
    pub(crate) out: NamedTensors,
}

impl WeightGen {
    pub(crate) fn new(seed: u64) -> Self {
        WeightGen {
            rng: Rng::new(seed),
            out: NamedTensors::default(),
        }
    }
    fn put(&mut self, name: String, shape: &[usize], f: &mut dyn FnMut(&mut Rng) -> f64) {
        let n = shape.iter().product();
        let v = (0..n).map(|_| f(&mut self.rng) as f32).collect();
        self.out.tensors.insert(name, (shape.to_vec(), v));
    }
    /// `[oc, ic, k, k]` He-normal (σ = √(2/fan_in)), as trained ReLU nets keep activations O(1).
    pub(crate) fn conv(&mut self, name: &str, oc: usize, ic: usize, k: usize) {
        let s = (2.0 / (ic * k * k) as f64).sqrt();
        self.put(format!("{name}.weight"), &[oc, ic, k, k], &mut |r| {
            s * r.normal()
        });
    }
    /// `[oc]` bias ~ N(0, 0.05²).
    pub(crate) fn bias(&mut self, name: &str, n: usize) {
        self.put(format!("{name}.bias"), &[n], &mut |r| 0.05 * r.normal());
    }
    /// BatchNorm statistics away from the identity: γ ~ gain·U(0.6, 1.4), β ~ N(0, 0.1²),
    /// running_mean ~ N(0, 0.3²), running_var ~ U(0.4, 2.5); `num_batches_tracked` = 1000.
    pub(crate) fn bn(&mut self, name: &str, c: usize, gain: f64) {
        self.put(format!("{name}.weight"), &[c], &mut |r| {
            gain * (0.6 + 0.8 * r.uniform())
        });
        self.put(format!("{name}.bias"), &[c], &mut |r| 0.1 * r.normal());
        self.put(format!("{name}.running_mean"), &[c], &mut |r| {
            0.3 * r.normal()
        });
        self.put(format!("{name}.running_var"), &[c], &mut |r| {
            0.4 + 2.1 * r.uniform()
        });
        self.out.tensors.insert(
            format!("{name}.num_batches_tracked"),
            (vec![], vec![1000.0]),
        );
    }
    /// `[n, k]` weight ~ N(0, 1/k) and bias.
    pub(crate) fn linear(&mut self, name: &str, n: usize, k: usize) {
        let s = (1.0 / k as f64).sqrt();
        self.put(format!("{name}.weight"), &[n, k], &mut |r| s * r.normal());
        self.bias(name, n);
    }
    /// Stem and `blocks.len()` BasicBlock stages (torchvision names). The second BatchNorm of
    /// each block has γ scaled by 0.4, so the residual stream grows slowly with depth (as in
    /// trained ResNets) and f16 activations stay far from overflow.
    pub(crate) fn trunk(&mut self, blocks: &[usize]) {
        self.conv("conv1", 64, 3, 7);
        self.bn("bn1", 64, 1.0);
        let mut c_in = 64;
        for (l, &n) in blocks.iter().enumerate() {
            let c = WIDTHS[l];
            for i in 0..n {
                let p = format!("layer{}.{i}", l + 1);
                let (ic, stride) = if i == 0 {
                    (c_in, if l == 0 { 1 } else { 2 })
                } else {
                    (c, 1)
                };
                self.conv(&format!("{p}.conv1"), c, ic, 3);
                self.bn(&format!("{p}.bn1"), c, 1.0);
                self.conv(&format!("{p}.conv2"), c, c, 3);
                self.bn(&format!("{p}.bn2"), c, 0.4);
                if stride != 1 || ic != c {
                    self.conv(&format!("{p}.downsample.0"), c, ic, 1);
                    self.bn(&format!("{p}.downsample.1"), c, 1.0);
                }
            }
            c_in = c;
        }
    }
}

/// Deterministic random weights of a ResNet under torchvision's names (same seed, same bytes).
pub fn random_resnet(config: &ResNetConfig, seed: u64) -> NamedTensors {
    let mut g = WeightGen::new(seed);
    g.trunk(&config.depth.blocks());
    g.linear("fc", config.num_classes, WIDTHS[3]);
    g.out
}
