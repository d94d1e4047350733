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
use crate::tensor::{Device, Tensor};
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
        match &self.net {
            Net::Sepsis(m) => {
                let o = m.forward(x)?;
                let logits = first_row(&o.logits)?;
                let probs = first_row(&o.probs)?;
                finite("probabilities", &probs)?;
                let [p0, p1] = probs[..] else {
                    return Err(invalid(
                        "output",
                        format!("{} probabilities; expected 2", probs.len()),
                    ));
                };
                let mut v = json!({
                    "logits": logits,
                    "probabilities": {"no_sepsis": p0, "sepsis": p1},
                    "class": if p1 > p0 { "sepsis" } else { "no_sepsis" },
                });
                if features {
                    v["features"] = json!(first_row(&o.features)?);
                }
                Ok(v)
            }
            Net::Effnet(m) => {
                let logits =
                    m.logits(x)?.into_iter().next().ok_or_else(|| {
                        invalid("input", "an empty batch; expected 1 image".into())
                    })?;
                let mut v = self.from_logits(&logits, top)?;
                if features {
                    v["features"] = json!(first_row(&m.features(x)?)?);
                }
                Ok(v)
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

/// The first row of a `[N, K]` tensor as f32.
fn first_row(t: &Tensor) -> Result<Vec<f32>> {
    let k = t.shape().last().copied().unwrap_or(1).max(1);
    Ok(t.to_host()?
        .to_f64()
        .iter()
        .take(k)
        .map(|&x| x as f32)
        .collect())
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
