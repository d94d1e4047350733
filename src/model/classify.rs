//! medkern's three image classifiers behind one type, from a decoded image to a JSON answer:
//! the sepsis ResNet (2 classes), the EfficientNet-B7 chest X-ray triage (one abnormal logit)
//! and EfficientNet-Lite0 (ImageNet, 1000 named classes). `medkern classify` and the server's
//! `POST /classify` both answer through it, so the two give the same numbers and fields.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::input::RawImage;
use crate::model::efficientnet::{self as en, EfficientNet, EfficientNetConfig};
use crate::model::sepsis::{self, SepsisNet};
use crate::model::{imagenet, softmax};
use crate::ops::Preprocess;
use crate::tensor::{Device, HostTensor, Tensor};
use serde_json::{Value, json};
use std::path::Path;

const OP: &str = "classify";

/// The seed of the deterministic random weights used when no checkpoint is given (demos and
/// tests; the answers are then not meaningful).
pub const RANDOM_SEED: u64 = 0;

/// Which image classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageModel {
    /// Sepsis classifier on sublingual microcirculation frames (ResNet-18 stem + layer1 +
    /// layer2 → 128-d → 2 classes), 224×224, ImageNet normalisation.
    Sepsis,
    /// Chest X-ray triage: EfficientNet-B7 with one abnormal logit, 600×600.
    Cxr,
    /// EfficientNet-Lite0 ImageNet classifier (1000 classes), 224×224.
    Lite0,
}

impl ImageModel {
    pub const ALL: [ImageModel; 3] = [ImageModel::Sepsis, ImageModel::Cxr, ImageModel::Lite0];

    /// The short name (`sepsis`, `cxr`, `lite0`), as the CLI and the server spell it.
    pub fn name(self) -> &'static str {
        match self {
            ImageModel::Sepsis => "sepsis",
            ImageModel::Cxr => "cxr",
            ImageModel::Lite0 => "lite0",
        }
    }

    /// The model from its short name.
    pub fn parse(s: &str) -> Result<ImageModel> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                invalid(
                    "model",
                    format!("{s:?}; expected one of \"sepsis\", \"cxr\", \"lite0\""),
                )
            })
    }

    /// One line saying what the model is.
    pub fn describe(self) -> &'static str {
        match self {
            ImageModel::Sepsis => "sepsis (ResNet-18 stem + layer1 + layer2, 128-d, 2 classes)",
            ImageModel::Cxr => "cxr (EfficientNet-B7, abnormal logit)",
            ImageModel::Lite0 => "lite0 (EfficientNet-Lite0, ImageNet 1000 classes)",
        }
    }
}

fn invalid(arg: &'static str, detail: String) -> Error {
    Error::Invalid {
        op: OP,
        arg,
        detail,
    }
}

enum Net {
    Sepsis(Box<SepsisNet>),
    Effnet(Box<EfficientNet>),
}

/// A loaded image classifier with its preprocessing.
pub struct ImageClassifier {
    kind: ImageModel,
    net: Net,
    prep: Preprocess<'static>,
    device: Device,
    dtype: DType,
    random_weights: bool,
}

impl ImageClassifier {
    /// Loads `kind` from a safetensors checkpoint with torchvision names, or with `None` the
    /// deterministic random weights of [`RANDOM_SEED`].
    pub fn load(
        kind: ImageModel,
        weights: Option<&Path>,
        device: &Device,
        dtype: DType,
    ) -> Result<ImageClassifier> {
        let (net, prep) = match kind {
            ImageModel::Sepsis => {
                let m = match weights {
                    Some(p) => SepsisNet::load(p, device, dtype)?,
                    None => SepsisNet::from_safetensors(
                        &sepsis::random_sepsis(RANDOM_SEED).to_safetensors()?,
                        device,
                        dtype,
                    )?,
                };
                (Net::Sepsis(Box::new(m)), Preprocess::imagenet((224, 224)))
            }
            ImageModel::Cxr | ImageModel::Lite0 => {
                let cfg = if kind == ImageModel::Cxr {
                    EfficientNetConfig::b(7)?.with_head(en::Head::ChestXray)
                } else {
                    EfficientNetConfig::lite(0)?
                };
                let prep = cfg.preprocess();
                let m = match weights {
                    Some(p) => EfficientNet::load(p, cfg, device, dtype)?,
                    None => EfficientNet::from_bytes(
                        &en::to_safetensors(&en::random_weights(&cfg, RANDOM_SEED)?)?,
                        cfg,
                        device,
                        dtype,
                    )?,
                };
                (Net::Effnet(Box::new(m)), prep)
            }
        };
        Ok(ImageClassifier {
            kind,
            net,
            prep,
            device: device.clone(),
            dtype,
            random_weights: weights.is_none(),
        })
    }

    pub fn kind(&self) -> ImageModel {
        self.kind
    }

    /// True when loaded without a checkpoint (the answers are not meaningful).
    pub fn random_weights(&self) -> bool {
        self.random_weights
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The EfficientNet behind `cxr` and `lite0` (class activation maps need it).
    pub fn efficientnet(&self) -> Option<&EfficientNet> {
        match &self.net {
            Net::Effnet(m) => Some(m),
            Net::Sepsis(_) => None,
        }
    }

    /// The ResNet behind `sepsis` (its logits, probabilities and features).
    pub fn sepsis(&self) -> Option<&SepsisNet> {
        match &self.net {
            Net::Sepsis(m) => Some(m),
            Net::Effnet(_) => None,
        }
    }

    /// The model's input for an image already cropped as wanted: resized, normalised, grey
    /// repeated over RGB, on the model's device and in its dtype (`[1, H, W, 3]`).
    pub fn prepare(&self, raw: &RawImage) -> Result<Tensor> {
        let p = Preprocess {
            grey_to_rgb: raw.channels() == 1,
            ..self.prep
        };
        raw.preprocess(&self.device, &p, self.dtype)
    }

    /// Classifies one image as ImageNet evaluation does: the central square, resized. See
    /// [`ImageClassifier::classify`] for the answer.
    pub fn classify_image(&self, raw: RawImage, top: usize, features: bool) -> Result<Value> {
        let x = self.prepare(&raw.center_crop_square()?)?;
        self.classify(&x, top, features)
    }

    /// Classifies one prepared input ([`ImageClassifier::prepare`]). The answer is JSON:
    /// sepsis `{"logits", "probabilities": {"no_sepsis", "sepsis"}, "class"}`; cxr
    /// `{"abnormal_logit", "abnormal_probability", "class": "abnormal" | "normal"}`; lite0
    /// `{"top": [{"class", "name", "logit", "probability"}]}` with the `top` best classes;
    /// with `features`, also the pooled feature vector. Non-finite outputs (an overflow in
    /// the model) are an error, never a class.
    pub fn classify(&self, x: &Tensor, top: usize, features: bool) -> Result<Value> {
        self.answers(x, top, features)?
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(invalid("input", "an empty batch; expected 1 image".into())))
    }

    /// Classifies several images in ONE forward pass: each is centre-cropped and prepared
    /// alone (an image that cannot be gets its own error), then they are stacked into one
    /// `[N, H, W, 3]` batch. One answer per image, in order, each as
    /// [`ImageClassifier::classify`] gives it for that image alone.
    pub fn classify_images(
        &self,
        raws: Vec<RawImage>,
        top: usize,
        features: bool,
    ) -> Vec<Result<Value>> {
        let prepared: Vec<Result<Tensor>> = raws
            .into_iter()
            .map(|r| self.prepare(&r.center_crop_square()?))
            .collect();
        let ok: Vec<&Tensor> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
        let answers = match ok.as_slice() {
            [] => Ok(Vec::new()),
            [one] => self.answers(one, top, features),
            many => stack(many, &self.device).and_then(|x| self.answers(&x, top, features)),
        };
        let mut answers = match answers {
            Ok(a) => a.into_iter(),
            // The batch failed as a whole: every image that reached it gets the error.
            Err(e) => {
                let msg = e.to_string();
                return prepared
                    .into_iter()
                    .map(|p| p.and_then(|_| Err(invalid("batch", msg.clone()))))
                    .collect();
            }
        };
        prepared
            .into_iter()
            .map(|p| match p {
                Ok(_) => answers
                    .next()
                    .unwrap_or_else(|| Err(invalid("output", "fewer rows than images".into()))),
                Err(e) => Err(e),
            })
            .collect()
    }

    /// One answer per row of a prepared batch `[N, H, W, 3]`.
    fn answers(&self, x: &Tensor, top: usize, features: bool) -> Result<Vec<Result<Value>>> {
        match &self.net {
            Net::Sepsis(m) => {
                let o = m.forward(x)?;
                let logits = rows(&o.logits)?;
                let probs = rows(&o.probs)?;
                let feats = if features {
                    Some(rows(&o.features)?)
                } else {
                    None
                };
                Ok(logits
                    .into_iter()
                    .zip(probs)
                    .enumerate()
                    .map(|(i, (l, p))| {
                        let mut v = sepsis_value(l, p)?;
                        if let Some(f) = feats.as_ref().and_then(|f| f.get(i)) {
                            v["features"] = json!(f);
                        }
                        Ok(v)
                    })
                    .collect())
            }
            Net::Effnet(m) => {
                let logits = m.logits(x)?;
                let feats = if features {
                    Some(rows(&m.features(x)?)?)
                } else {
                    None
                };
                Ok(logits
                    .iter()
                    .enumerate()
                    .map(|(i, l)| {
                        let mut v = self.from_logits(l, top)?;
                        if let Some(f) = feats.as_ref().and_then(|f| f.get(i)) {
                            v["features"] = json!(f);
                        }
                        Ok(v)
                    })
                    .collect())
            }
        }
    }

    /// The answer of an EfficientNet model (cxr, lite0) from its logits, for callers that
    /// computed them another way (with a class activation map). Sepsis answers come from
    /// [`ImageClassifier::classify`] only.
    pub fn from_logits(&self, logits: &[f32], top: usize) -> Result<Value> {
        match self.kind {
            ImageModel::Cxr => {
                let logit = logits.first().copied().unwrap_or(f32::NAN);
                let p = en::sigmoid(logit);
                finite("abnormal probability", &[p])?;
                Ok(json!({
                    "abnormal_logit": logit,
                    "abnormal_probability": p,
                    "class": if p >= 0.5 { "abnormal" } else { "normal" },
                }))
            }
            ImageModel::Lite0 => {
                let probs = softmax(logits);
                finite("probabilities", &probs)?;
                let top: Vec<Value> = en::top_k(logits, top)
                    .into_iter()
                    .map(|i| {
                        json!({
                            "class": i,
                            "name": imagenet::class_name(i),
                            "logit": logits[i],
                            "probability": probs[i],
                        })
                    })
                    .collect();
                Ok(json!({ "top": top }))
            }
            ImageModel::Sepsis => Err(invalid(
                "model",
                "sepsis answers come from classify(); from_logits is for cxr and lite0".into(),
            )),
        }
    }
}

/// The rows of a `[N, K]` tensor (a batch of logits or features) as f32, on the host.
pub fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let k = t.shape().last().copied().unwrap_or(1).max(1);
    Ok(t.to_host()?
        .to_f64()
        .chunks(k)
        .map(|r| r.iter().map(|&x| x as f32).collect())
        .collect())
}

/// Stacks prepared `[1, H, W, C]` inputs into one `[N, H, W, C]` batch on `device` (through
/// the host; exact, whatever the dtype).
fn stack(xs: &[&Tensor], device: &Device) -> Result<Tensor> {
    let first = xs
        .first()
        .ok_or_else(|| invalid("input", "no image to stack".into()))?;
    let (shape, dtype) = (first.shape().to_vec(), first.dtype());
    let mut data = Vec::new();
    for x in xs {
        if x.shape() != shape.as_slice() || x.dtype() != dtype {
            return Err(invalid(
                "input",
                format!(
                    "{:?} {} among {shape:?} {dtype}; expected prepared inputs of one size",
                    x.shape(),
                    x.dtype()
                ),
            ));
        }
        data.extend(x.to_host()?.to_f64());
    }
    let mut s = shape;
    s[0] = xs.len();
    HostTensor::from_f64(&s, &data, dtype)?.into_device(device)
}

/// A sepsis answer from one row of logits and probabilities.
fn sepsis_value(logits: Vec<f32>, probs: Vec<f32>) -> Result<Value> {
    finite("probabilities", &probs)?;
    let [p0, p1] = probs[..] else {
        return Err(invalid(
            "output",
            format!("{} probabilities; expected 2", probs.len()),
        ));
    };
    Ok(json!({
        "logits": logits,
        "probabilities": {"no_sepsis": p0, "sepsis": p1},
        "class": if p1 > p0 { "sepsis" } else { "no_sepsis" },
    }))
}

/// An error when any of `values` is not finite.
fn finite(what: &str, values: &[f32]) -> Result<()> {
    if values.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    Err(invalid(
        "output",
        format!("non-finite {what} {values:?} (an overflow in the model); no class"),
    ))
}

#[cfg(test)]
mod tests {
    use super::ImageModel;

    #[test]
    fn names_round_trip_and_unknown_is_an_error() {
        for m in ImageModel::ALL {
            assert_eq!(ImageModel::parse(m.name()).ok(), Some(m));
        }
        let e = ImageModel::parse("resnet50")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("classify") && e.contains("resnet50"), "{e}");
    }
}
