//! The CNN commands of the CLI: `exam` (chest X-ray + EMR → oxygen need), printed as JSON.

use super::{DTypeArg, DeviceArg};
use medkern::input::{self, RawImage, dicom};
use medkern::model::exam::{ExamConfig, ExamModel, ORDINAL_CLASSES};
use medkern::{DType, Device, Error, Result};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// The seed of the random weights used without `--weights`.
pub const RANDOM_SEED: u64 = 0;

pub fn device_of(d: Option<DeviceArg>) -> Result<Device> {
    Ok(match d {
        None => Device::best(),
        Some(DeviceArg::Cpu) => Device::Cpu,
        Some(DeviceArg::Gpu) => Device::gpu(0)?,
    })
}

/// The CNN compute dtype: f16 on a GPU, f32 on the CPU, unless given.
pub fn dtype_of(d: Option<DTypeArg>, dev: &Device) -> DType {
    match d {
        Some(DTypeArg::F16) => DType::F16,
        Some(DTypeArg::Bf16) => DType::BF16,
        Some(DTypeArg::F32) => DType::F32,
        None => match dev {
            Device::Cpu => DType::F32,
            Device::Gpu(_) => DType::F16,
        },
    }
}

fn cli_err(arg: &'static str, detail: String) -> Error {
    Error::Invalid {
        op: "medkern",
        arg,
        detail,
    }
}

pub fn print_json(v: &Value) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| cli_err("output", e.to_string()))?;
    println!("{s}");
    Ok(())
}

/// Reads an image file (PNG, JPEG or DICOM by content) with an optional DICOM window, and a
/// JSON description of what was read.
pub fn read_image(path: &Path, window: Option<(f64, f64)>) -> Result<(RawImage, Value)> {
    if dicom::is_dicom(path)? {
        let opts = dicom::DicomOptions {
            window: match window {
                Some((center, width)) => dicom::WindowChoice::Given { center, width },
                None => dicom::WindowChoice::File,
            },
        };
        let d = dicom::read(path, &opts)?;
        let info = json!({
            "format": "dicom",
            "transfer_syntax": d.transfer_syntax,
            "rows": d.rows,
            "columns": d.cols,
            "bits_allocated": d.bits_allocated,
            "bits_stored": d.bits_stored,
            "signed": d.signed,
            "photometric": if d.monochrome1 { "MONOCHROME1" } else { "MONOCHROME2" },
            "rescale": {"slope": d.slope, "intercept": d.intercept},
            "window": {"center": d.window.0, "width": d.window.1},
        });
        Ok((d.into_raw(), info))
    } else {
        if window.is_some() {
            return Err(cli_err(
                "window",
                format!(
                    "{}: --window-center/--window-width apply to DICOM files only",
                    path.display()
                ),
            ));
        }
        let r = input::image::read(path)?;
        let (h, w) = r.size();
        let info = json!({
            "format": "image",
            "height": h,
            "width": w,
            "channels": r.channels(),
            "bits": if r.pixels.dtype() == DType::U16 { 16 } else { 8 },
        });
        Ok((r, info))
    }
}

pub struct ExamArgs {
    pub image: PathBuf,
    pub emr: PathBuf,
    pub weights: Option<PathBuf>,
    pub device: Option<DeviceArg>,
    pub dtype: Option<DTypeArg>,
    pub window: Option<(f64, f64)>,
}

pub fn exam(a: ExamArgs) -> Result<()> {
    let dev = device_of(a.device)?;
    let dtype = dtype_of(a.dtype, &dev);
    let model = match &a.weights {
        Some(p) => ExamModel::load(p, &dev, dtype)?,
        None => ExamModel::random(&ExamConfig::default(), RANDOM_SEED, &dev, dtype)?,
    };
    let emr_cfg = &model.head.config.emr;
    let text = std::fs::read_to_string(&a.emr).map_err(|e| Error::Io {
        op: "medkern exam",
        path: a.emr.display().to_string(),
        source: e,
    })?;
    let record: Value = serde_json::from_str(&text)
        .map_err(|e| cli_err("emr", format!("{}: not valid JSON: {e}", a.emr.display())))?;
    let emr = emr_cfg
        .encode(&record)
        .map_err(|e| cli_err("emr", format!("{}: {e}", a.emr.display())))?;
    let present: Vec<&str> = emr_cfg
        .features
        .iter()
        .filter(|f| record.get(&f.key).is_some_and(|v| !v.is_null()))
        .map(|f| f.key.as_str())
        .collect();
    let missing: Vec<&str> = emr_cfg
        .features
        .iter()
        .map(|f| f.key.as_str())
        .filter(|k| !present.contains(k))
        .collect();
    let (raw, image_info) = read_image(&a.image, a.window)?;
    let x = raw.to_model_input(&dev, model.trunk.input_size(), dtype)?;
    let emr_t = medkern::HostTensor::new(&[1, emr_cfg.dim()], emr)?.to_device(&dev)?;
    let out = model.forward(&x, &emr_t)?;
    let o = &out[0];
    let mut v = json!({
        "image": a.image.display().to_string(),
        "image_input": image_info,
        "emr": a.emr.display().to_string(),
        "emr_present": present,
        "emr_missing": missing,
        "weights": a.weights.as_ref().map(|p| p.display().to_string()),
        "random_weights": a.weights.is_none(),
        "device": dev.describe(),
        "dtype": dtype.to_string(),
        "image_trunk": model.trunk.describe(),
        "oxygen_24h": o.oxygen_24h,
        "oxygen_72h": o.oxygen_72h,
        "ordinal": {
            "class": o.class_name(),
            "score": o.ordinal_score,
            "classes": ORDINAL_CLASSES,
            "probabilities": o.ordinal_probs,
        },
    });
    if a.weights.is_none() {
        v["note"] = json!(format!(
            "no --weights: deterministic random weights (seed {RANDOM_SEED}); the scores are \
             not clinically meaningful"
        ));
    }
    print_json(&v)
}
