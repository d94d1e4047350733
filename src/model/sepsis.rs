//! The sepsis microcirculation models (sublingual video frames): a ResNet-18-based classifier,
//! a convolutional autoencoder whose bottleneck codes are clustered, and k-means for the
//! clustering. The CNNs run with medkern ops on the CPU backend or a GPU, as [`super::resnet`].
//!
//! **Classifier** ([`SepsisNet`]): ResNet-18's stem (7×7/2 conv + BN + ReLU, 3×3/2 max pool),
//! `layer1` (2 BasicBlocks, 64 channels) and `layer2` (2 BasicBlocks, 128 channels, stride 2),
//! then a global average pool (the 128-d feature, for t-SNE) and `fc` `[2, 128]`: 10 weighted
//! layers (1 + 8 convs, 1 Linear, plus the 1×1 downsample), the "~10-layer ResNet-18-based"
//! network with a 128-d last-conv feature. torchvision names: `conv1`, `bn1`, `layer1.*`,
//! `layer2.*`, `fc` (the names a torchvision ResNet-18 truncated after `layer2` has). A
//! 224×224 frame gives a 28×28×128 map before the pool. Outputs: logits, softmax probabilities
//! and the feature.
//!
//! **Autoencoder** ([`Autoencoder`]): 3 convolutions k3 stride 2 padding 1 with bias and ReLU,
//! 3 transposed convolutions k3 stride 2 padding 1 output_padding 1 with bias (ReLU, ReLU,
//! sigmoid), no skips. On a 96×96×3 frame (values in [0, 1]):
//!
//! ```text
//! encoder.0  3×96×96  → 16×48×48   conv k3 s2 p1 + ReLU
//! encoder.2 16×48×48  → 32×24×24   conv k3 s2 p1 + ReLU
//! encoder.4 32×24×24  →  8×12×12   conv k3 s2 p1 + ReLU   (bottleneck: 8·12·12 = 1152)
//! decoder.0  8×12×12  → 32×24×24   conv_transpose k3 s2 p1 op1 + ReLU
//! decoder.2 32×24×24  → 16×48×48   conv_transpose k3 s2 p1 op1 + ReLU
//! decoder.4 16×48×48  →  3×96×96   conv_transpose k3 s2 p1 op1 + sigmoid
//! ```
//!
//! Why: the paper fixes 3 + 3 layers, no skips, and a 1152-d bottleneck; 1152 = 8·12·12 is a
//! 96×96 frame halved three times with 8 channels, a small-enough frame for per-frame clustering
//! of microcirculation texture. The decoder mirrors the encoder (12×12×8 → 24×24×32 → 48×48×16 →
//! 96×96×3) and is exactly the shape set benches/conv_transpose.rs and scripts/peer_bench.py
//! already time. Names are those of `nn.Sequential(Conv2d, ReLU, Conv2d, ReLU, Conv2d, ReLU)`
//! modules called `encoder` / `decoder` (`encoder.{0,2,4}.{weight,bias}`, conv weights
//! `[C_out, C_in, 3, 3]`; `decoder.{0,2,4}.{weight,bias}`, ConvTranspose2d weights
//! `[C_in, C_out, 3, 3]`). Any H, W divisible by 8 run (bottleneck `8·H/8·W/8`). The codes are
//! the bottleneck flattened in NHWC order (`(h·W/8 + w)·8 + c`), not PyTorch's NCHW flatten: a
//! fixed permutation of the same 1152 values, which k-means distances do not see.
//!
//! **k-means** ([`kmeans`]): greedy k-means++ seeding with a seeded RNG, Lloyd iterations until
//! the assignments stop changing or `max_iter`, the best of `n_init` runs, in f64 on the CPU.

use super::resnet::{
    Head, NamedTensors, Rng, StWeights, Trunk, WeightGen, check_input, invalid, read_file,
};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{
    self, Activation, Conv2d, ConvTranspose, ConvWeight, Padding, PixelRange, Preprocess,
};
use crate::tensor::{Device, HostTensor, Tensor};
use std::path::Path;

const OP: &str = "sepsis";
const AE: &str = "autoencoder";
const KM: &str = "kmeans";

/// Width of the classifier's feature (layer2's channels).
pub const SEPSIS_FEATURES: usize = 128;
/// Classes of the classifier (no sepsis, sepsis).
pub const SEPSIS_CLASSES: usize = 2;
/// Blocks of the stages the classifier keeps (ResNet-18's layer1 and layer2).
const SEPSIS_BLOCKS: [usize; 2] = [2, 2];

/// What [`SepsisNet::forward`] returns, on the model's device.
pub struct SepsisOutput {
    /// `[N, 2]` f32.
    pub logits: Tensor,
    /// `softmax(logits)`, `[N, 2]` f32.
    pub probs: Tensor,
    /// The pooled last-conv feature `[N, 128]` in the model's dtype.
    pub features: Tensor,
}

/// The sepsis classifier (see the module doc).
pub struct SepsisNet {
    device: Device,
    dtype: DType,
    trunk: Trunk,
    fc: Head,
    max_batch: usize,
}

impl SepsisNet {
    /// Loads a safetensors file (names in the module doc).
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::from_safetensors(&read_file(OP, path)?, device, dtype)
    }

    pub fn from_safetensors(bytes: &[u8], device: &Device, dtype: DType) -> Result<Self> {
        ops::float_dtype(OP, "dtype", dtype)?;
        let w = StWeights::parse(OP, bytes)?;
        let trunk = Trunk::load(&w, &SEPSIS_BLOCKS, dtype, device)?;
        let fc = Head::load(&w, "fc", (SEPSIS_CLASSES, SEPSIS_FEATURES), dtype, device)?;
        Ok(SepsisNet {
            device: device.clone(),
            dtype,
            trunk,
            fc,
            max_batch: crate::input::DEFAULT_MAX_BATCH,
        })
    }

    super::max_batch_methods!();

    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// A normalised NHWC batch `x` `[N, H, W, 3]` (model dtype and device; 224×224 frames).
    pub fn forward(&self, x: &Tensor) -> Result<SepsisOutput> {
        check_input(OP, x, 3, self.dtype, &self.device, self.max_batch)?;
        let h = self.trunk.forward(x)?;
        let features = ops::global_avg_pool(&h)?;
        let logits = self.fc.forward(&features)?;
        let probs = ops::softmax(&logits, None, 1.0)?;
        Ok(SepsisOutput {
            logits,
            probs,
            features,
        })
    }

    /// Classifies raw u8 RGB(A) frames `[N, H, W, C]` (C = 3 or 4) on the model's device:
    /// ImageNet preprocessing (`ops::preprocess`: ÷255, bilinear resize to `size`, ImageNet
    /// mean/std) into the model's dtype, then [`SepsisNet::forward`].
    pub fn classify_u8(&self, images: &Tensor, size: (usize, usize)) -> Result<SepsisOutput> {
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
        let x = ops::preprocess(images, &Preprocess::imagenet(size), self.dtype)?;
        self.forward(&x)
    }
}

/// Random weights of the classifier under its names (deterministic in `seed`).
pub fn random_sepsis(seed: u64) -> NamedTensors {
    let mut g = WeightGen::new(seed);
    g.trunk(&SEPSIS_BLOCKS);
    g.linear("fc", SEPSIS_CLASSES, SEPSIS_FEATURES);
    g.out
}

// ---------------------------------------------------------------------------------------------
// Autoencoder

/// Channels after encoder.0, encoder.2, encoder.4 (the bottleneck).
pub const AE_CHANNELS: [usize; 3] = [16, 32, 8];
/// Channels of the frames.
pub const AE_IN_CHANNELS: usize = 3;
/// The frame side the architecture is sized for (1152-d codes).
pub const AE_SIZE: usize = 96;
/// Bottleneck width at [`AE_SIZE`]: 8·12·12.
pub const AE_CODE_DIM: usize = 1152;

/// What [`Autoencoder::forward`] returns.
pub struct AutoencoderOutput {
    /// `[N, H, W, 3]` in (0, 1), model dtype and device.
    pub reconstruction: Tensor,
    /// Per image, mean over its `H·W·3` values of `(reconstruction − x)²` (f64, computed on the
    /// host from the two tensors as stored).
    pub mse: Vec<f64>,
    /// Bottleneck codes `[N, 8·(H/8)·(W/8)]` (1152 at 96×96), NHWC order, model dtype and
    /// device.
    pub codes: Tensor,
}

/// The convolutional autoencoder (see the module doc).
pub struct Autoencoder {
    device: Device,
    dtype: DType,
    enc: Vec<(ConvWeight, Tensor)>,
    /// `[3, 3, C_in, C_out]` weights and f32 biases.
    dec: Vec<(Tensor, Tensor)>,
    max_batch: usize,
}

impl Autoencoder {
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::from_safetensors(&read_file(AE, path)?, device, dtype)
    }

    pub fn from_safetensors(bytes: &[u8], device: &Device, dtype: DType) -> Result<Self> {
        ops::float_dtype(AE, "dtype", dtype)?;
        let w = StWeights::parse(AE, bytes)?;
        let bias = |name: String, n: usize| w.get(&name, &[n])?.to_device(device);
        let cast = |t: HostTensor| HostTensor::from_f64(t.shape(), &t.to_f64(), dtype);
        let mut enc = Vec::with_capacity(3);
        let mut c_in = AE_IN_CHANNELS;
        for (i, &c) in AE_CHANNELS.iter().enumerate() {
            let name = format!("encoder.{}", 2 * i);
            let wt = cast(w.get(&format!("{name}.weight"), &[c, c_in, 3, 3])?)?;
            enc.push((
                ConvWeight::from_pytorch(&wt, 1, device)?,
                bias(format!("{name}.bias"), c)?,
            ));
            c_in = c;
        }
        let dec_ch = [
            AE_CHANNELS[2],
            AE_CHANNELS[1],
            AE_CHANNELS[0],
            AE_IN_CHANNELS,
        ];
        let mut dec = Vec::with_capacity(3);
        for i in 0..3 {
            let name = format!("decoder.{}", 2 * i);
            let (ci, co) = (dec_ch[i], dec_ch[i + 1]);
            let wt = cast(w.get(&format!("{name}.weight"), &[ci, co, 3, 3])?)?;
            dec.push((
                ops::conv_transpose::weights_from_pytorch(&wt)?.to_device(device)?,
                bias(format!("{name}.bias"), co)?,
            ));
        }
        Ok(Autoencoder {
            device: device.clone(),
            dtype,
            enc,
            dec,
            max_batch: crate::input::DEFAULT_MAX_BATCH,
        })
    }

    super::max_batch_methods!();

    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn check(&self, x: &Tensor) -> Result<()> {
        check_input(
            AE,
            x,
            AE_IN_CHANNELS,
            self.dtype,
            &self.device,
            self.max_batch,
        )?;
        let s = x.shape();
        if s[1] % 8 != 0 || s[2] % 8 != 0 {
            return Err(Error::Shape {
                op: AE,
                arg: "x",
                got: s.to_vec(),
                expected: format!(
                    "[N, H, W, 3] with H and W multiples of 8 (three stride-2 halvings; \
                     [N, {AE_SIZE}, {AE_SIZE}, 3] gives {AE_CODE_DIM}-d codes)"
                ),
            });
        }
        Ok(())
    }

    /// The bottleneck codes `[N, code_dim]` of frames `x` `[N, H, W, 3]` (values in [0, 1]).
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.check(x)?;
        let n = x.shape()[0];
        let map = self.encode_map(x)?;
        let d = map.len() / n;
        map.reshape(&[n, d])
    }

    fn encode_map(&self, x: &Tensor) -> Result<Tensor> {
        let mut h: Option<Tensor> = None;
        for (w, b) in &self.enc {
            let y = ops::conv2d(
                h.as_ref().unwrap_or(x),
                w,
                &Conv2d {
                    stride: (2, 2),
                    padding: Padding::symmetric(1, 1),
                    bias: Some(b),
                    act: Activation::Relu,
                    ..Default::default()
                },
            )?;
            h = Some(y);
        }
        h.ok_or_else(|| invalid(AE, "encoder", "no layers".into()))
    }

    /// Decodes a bottleneck map `[N, H/8, W/8, 8]` to frames `[N, H, W, 3]`.
    fn decode_map(&self, z: &Tensor) -> Result<Tensor> {
        let mut h: Option<Tensor> = None;
        for (i, (w, b)) in self.dec.iter().enumerate() {
            let y = ops::conv_transpose2d(
                h.as_ref().unwrap_or(z),
                w,
                &ConvTranspose {
                    stride: (2, 2),
                    padding: (1, 1),
                    output_padding: (1, 1),
                    bias: Some(b),
                    act: if i == 2 {
                        Activation::Sigmoid
                    } else {
                        Activation::Relu
                    },
                },
            )?;
            h = Some(y);
        }
        h.ok_or_else(|| invalid(AE, "decoder", "no layers".into()))
    }

    /// Reconstruction, per-image MSE and codes of frames `x` `[N, H, W, 3]` (model dtype and
    /// device, values in [0, 1], H and W multiples of 8).
    pub fn forward(&self, x: &Tensor) -> Result<AutoencoderOutput> {
        self.check(x)?;
        let s = x.shape().to_vec();
        let n = s[0];
        let map = self.encode_map(x)?;
        let ms = map.shape().to_vec();
        let reconstruction = self.decode_map(&map)?;
        let codes = map.reshape(&[n, ms[1] * ms[2] * ms[3]])?;
        let r = reconstruction.to_host()?.to_f64();
        let v = x.to_host()?.to_f64();
        let per = v.len() / n;
        let mse = (0..n)
            .map(|i| {
                let a = &r[i * per..(i + 1) * per];
                let b = &v[i * per..(i + 1) * per];
                a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum::<f64>() / per as f64
            })
            .collect();
        Ok(AutoencoderOutput {
            reconstruction,
            mse,
            codes,
        })
    }

    /// [`Autoencoder::forward`] on raw u8 RGB(A) frames `[N, H, W, C]` (C = 3 or 4) on the
    /// model's device: `ops::preprocess` maps them to [0, 1] (÷255, no mean/std) and resizes
    /// them (bilinear) to `size` (both multiples of 8; [`AE_SIZE`]² for 1152-d codes).
    pub fn autoencode_u8(
        &self,
        images: &Tensor,
        size: (usize, usize),
    ) -> Result<AutoencoderOutput> {
        if images.dtype() != DType::U8 {
            return Err(Error::DType {
                op: AE,
                arg: "images",
                got: images.dtype(),
                expected: "u8 [N, H, W, 3|4]".into(),
            });
        }
        let p = Preprocess {
            out_size: size,
            range: PixelRange::Scale(255.0),
            mean: &[0.0; 3],
            std: &[1.0; 3],
            grey_to_rgb: false,
        };
        let x = ops::preprocess(images, &p, self.dtype)?;
        self.forward(&x)
    }
}

/// Random weights of the autoencoder under its names (He-normal convs, biases ~0.05, the last
/// decoder layer scaled by 0.5 so the sigmoid is not saturated).
pub fn random_autoencoder(seed: u64) -> NamedTensors {
    let mut g = WeightGen::new(seed);
    let mut c_in = AE_IN_CHANNELS;
    for (i, &c) in AE_CHANNELS.iter().enumerate() {
        let name = format!("encoder.{}", 2 * i);
        g.conv(&name, c, c_in, 3);
        g.bias(&name, c);
        c_in = c;
    }
    let dec_ch = [
        AE_CHANNELS[2],
        AE_CHANNELS[1],
        AE_CHANNELS[0],
        AE_IN_CHANNELS,
    ];
    for i in 0..3 {
        let name = format!("decoder.{}", 2 * i);
        let (ci, co) = (dec_ch[i], dec_ch[i + 1]);
        // PyTorch's ConvTranspose2d layout [C_in, C_out, k, k]; fan-in of an output is about
        // C_in·9/4 at stride 2.
        let s = (2.0 / (ci as f64 * 9.0 / 4.0)).sqrt() * if i == 2 { 0.5 } else { 1.0 };
        let v = (0..ci * co * 9)
            .map(|_| (s * g.rng.normal()) as f32)
            .collect();
        g.out
            .tensors
            .insert(format!("{name}.weight"), (vec![ci, co, 3, 3], v));
        g.bias(&name, co);
    }
    g.out
}

// ---------------------------------------------------------------------------------------------
// k-means

/// Result of [`kmeans`].
#[derive(Clone, Debug, PartialEq)]
pub struct KMeans {
    /// `k` centroids of the points' dimension.
    pub centroids: Vec<Vec<f64>>,
    /// The centroid index of each point.
    pub assignments: Vec<usize>,
    /// Sum over points of the squared distance to their centroid.
    pub inertia: f64,
    /// Lloyd iterations run.
    pub iterations: usize,
    /// Whether the assignments stopped changing before `max_iter`.
    pub converged: bool,
}

fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Index and squared distance of the centroid nearest to `p` (ties: the lowest index).
fn nearest(p: &[f64], centroids: &[Vec<f64>]) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (j, c) in centroids.iter().enumerate() {
        let d = dist2(p, c);
        if d < best.1 {
            best = (j, d);
        }
    }
    best
}

/// Options of [`kmeans`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KMeansOptions {
    /// Clusters, 1..=number of points.
    pub k: usize,
    /// Lloyd iterations at most, per run (>= 1).
    pub max_iter: usize,
    /// Independent seedings; the run with the lowest inertia is kept (>= 1; scikit-learn's
    /// `n_init`).
    pub n_init: usize,
    pub seed: u64,
}

impl KMeansOptions {
    /// `k` clusters, 300 iterations, 10 seedings, seed 0.
    pub fn new(k: usize) -> Self {
        KMeansOptions {
            k,
            max_iter: 300,
            n_init: 10,
            seed: 0,
        }
    }
}

/// k-means of `points` (each of the same dimension >= 1, finite) into `o.k` clusters, in f64
/// on the CPU, deterministic in `o.seed`. Each of `o.n_init` runs seeds with greedy k-means++
/// (first centroid uniform; each next one the best, by the resulting potential, of
/// `2 + ⌊ln k⌋` candidates drawn with probability ∝ the squared distance to the nearest chosen
/// centroid, as scikit-learn does) from a SplitMix64, then runs Lloyd iterations (assign each
/// point to its nearest centroid, lowest index on ties; move each centroid to its points' mean;
/// a cluster left empty takes the point farthest from its centroid) until the assignments stop
/// changing or `o.max_iter`. The run with the lowest inertia is returned. Errors: no points,
/// `k` = 0 or > the number of points, `max_iter` or `n_init` = 0, ragged or empty dimensions,
/// non-finite values.
pub fn kmeans(points: &[Vec<f64>], o: &KMeansOptions) -> Result<KMeans> {
    let n = points.len();
    if n == 0 {
        return Err(invalid(KM, "points", "no points".into()));
    }
    let k = o.k;
    if k == 0 || k > n {
        return Err(invalid(
            KM,
            "k",
            format!("{k}; expected 1 <= k <= {n} (the number of points)"),
        ));
    }
    if o.max_iter == 0 {
        return Err(invalid(KM, "max_iter", "0; expected >= 1".into()));
    }
    if o.n_init == 0 {
        return Err(invalid(KM, "n_init", "0; expected >= 1".into()));
    }
    let d = points[0].len();
    if d == 0 {
        return Err(invalid(KM, "points", "dimension 0".into()));
    }
    for (i, p) in points.iter().enumerate() {
        if p.len() != d {
            return Err(invalid(
                KM,
                "points",
                format!(
                    "point {i} has dimension {}, point 0 has {d} (ragged)",
                    p.len()
                ),
            ));
        }
        if let Some(j) = p.iter().position(|v| !v.is_finite()) {
            return Err(invalid(
                KM,
                "points",
                format!("point {i} has a non-finite value {} at {j}", p[j]),
            ));
        }
    }
    let mut rng = Rng::new(o.seed);
    let mut best: Option<KMeans> = None;
    for _ in 0..o.n_init {
        let centroids = seed_plus_plus(points, k, &mut rng);
        let r = lloyd(points, centroids, o.max_iter);
        if best.as_ref().is_none_or(|b| r.inertia < b.inertia) {
            best = Some(r);
        }
    }
    best.ok_or_else(|| invalid(KM, "n_init", "no run".into()))
}

/// Greedy k-means++ seeding.
fn seed_plus_plus(points: &[Vec<f64>], k: usize, rng: &mut Rng) -> Vec<Vec<f64>> {
    let n = points.len();
    let trials = 2 + (k as f64).ln().floor() as usize;
    let mut centroids: Vec<Vec<f64>> = Vec::with_capacity(k);
    centroids.push(points[(rng.next_u64() % n as u64) as usize].clone());
    let mut dmin: Vec<f64> = points.iter().map(|p| dist2(p, &centroids[0])).collect();
    while centroids.len() < k {
        let total: f64 = dmin.iter().sum();
        let mut best: Option<(f64, usize, Vec<f64>)> = None;
        for _ in 0..trials {
            let pick = if total > 0.0 {
                let mut r = rng.uniform() * total;
                let mut pick = None;
                for (i, &w) in dmin.iter().enumerate() {
                    if w > 0.0 && r < w {
                        pick = Some(i);
                        break;
                    }
                    r -= w;
                }
                // Rounding ran past the end: the last point with weight.
                pick.or_else(|| dmin.iter().rposition(|&w| w > 0.0))
                    .unwrap_or(0)
            } else {
                // Every point coincides with a centroid (duplicates): any point.
                (rng.next_u64() % n as u64) as usize
            };
            let nd: Vec<f64> = points
                .iter()
                .zip(&dmin)
                .map(|(p, &m)| m.min(dist2(p, &points[pick])))
                .collect();
            let pot: f64 = nd.iter().sum();
            if best.as_ref().is_none_or(|b| pot < b.0) {
                best = Some((pot, pick, nd));
            }
        }
        let Some((_, pick, nd)) = best else { break };
        dmin = nd;
        centroids.push(points[pick].clone());
    }
    centroids
}

/// Lloyd iterations from `centroids`.
fn lloyd(points: &[Vec<f64>], mut centroids: Vec<Vec<f64>>, max_iter: usize) -> KMeans {
    let (n, k, d) = (points.len(), centroids.len(), points[0].len());
    let mut assignments = vec![usize::MAX; n];
    let mut iterations = 0;
    let mut converged = false;
    // Set when an empty cluster took a point: the centroids must be recomputed once more
    // before unchanged assignments mean convergence.
    let mut reseeded = false;
    while iterations < max_iter {
        iterations += 1;
        let mut changed = false;
        for (i, p) in points.iter().enumerate() {
            let (j, _) = nearest(p, &centroids);
            if assignments[i] != j {
                assignments[i] = j;
                changed = true;
            }
        }
        if !changed && !reseeded {
            converged = true;
            break;
        }
        let mut sums = vec![vec![0.0; d]; k];
        let mut counts = vec![0usize; k];
        for (p, &j) in points.iter().zip(&assignments) {
            counts[j] += 1;
            for (s, v) in sums[j].iter_mut().zip(p) {
                *s += v;
            }
        }
        for j in 0..k {
            if counts[j] > 0 {
                centroids[j] = sums[j].iter().map(|s| s / counts[j] as f64).collect();
            }
        }
        // Empty clusters take the point farthest from its centroid (from a cluster of >= 2),
        // if that point is not on its centroid: when every point is (fewer distinct points
        // than k, e.g. identical frames) moving one cannot lower the inertia, would move
        // back at the next assignment, and the loop would never converge; the cluster stays
        // empty instead.
        reseeded = false;
        for j in 0..k {
            if counts[j] == 0 {
                let far = points
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| counts[assignments[*i]] > 1)
                    .map(|(i, p)| (i, dist2(p, &centroids[assignments[i]])))
                    .fold(
                        (None, 0.0),
                        |b, (i, w)| if w > b.1 { (Some(i), w) } else { b },
                    )
                    .0;
                let Some(far) = far else { continue };
                reseeded = true;
                centroids[j] = points[far].clone();
                counts[assignments[far]] -= 1;
                assignments[far] = j;
                counts[j] = 1;
            }
        }
    }
    let inertia = points
        .iter()
        .zip(&assignments)
        .map(|(p, &j)| dist2(p, &centroids[j]))
        .sum();
    KMeans {
        centroids,
        assignments,
        inertia,
        iterations,
        converged,
    }
}

/// k-means of the rows of a codes tensor `[N, D]` (any float dtype and device; read to the
/// host): [`kmeans`] on the autoencoder's bottleneck codes.
pub fn kmeans_codes(codes: &Tensor, o: &KMeansOptions) -> Result<KMeans> {
    let s = codes.shape();
    if s.len() != 2 || !codes.dtype().is_float() {
        return Err(Error::Shape {
            op: KM,
            arg: "codes",
            got: s.to_vec(),
            expected: format!("[N, D] float (got {})", codes.dtype()),
        });
    }
    let v = codes.to_host()?.to_f64();
    let d = s[1].max(1);
    let points: Vec<Vec<f64>> = v.chunks(d).map(<[f64]>::to_vec).collect();
    kmeans(&points, o)
}
