//! The CNN commands of the CLI: `exam` (chest X-ray + EMR → oxygen need), printed as JSON.

use super::{DTypeArg, DeviceArg};
use medkern::input::{self, RawImage, dicom};
use medkern::model::exam::{ExamConfig, ExamModel};
use medkern::{DType, Device, Error, Result};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// The seed of the random weights used without `--weights`.
pub const RANDOM_SEED: u64 = 0;

pub fn device_of(d: Option<DeviceArg>) -> Result<Device> {
    Ok(match d {
        None => {
            // No --device: GPU 0 when it starts; otherwise say why before running on the CPU.
            let (dev, why) = Device::best_or_why();
            if let Some(e) = why {
                eprintln!(
                    "medkern: running on the CPU (no --device given, and the GPU did not start: {e})"
                );
            }
            dev
        }
        Some(DeviceArg::Cpu) => Device::Cpu,
        Some(DeviceArg::Gpu) => Device::gpu(0)?,
        Some(DeviceArg::Emu) => Device::emulated()?,
    })
}

/// The CNN compute dtype: f16 on a GPU, f32 on the CPU, unless given.
pub fn dtype_of(d: Option<DTypeArg>, dev: &Device) -> DType {
    match d {
        Some(DTypeArg::F16) => DType::F16,
        Some(DTypeArg::Bf16) => DType::BF16,
        Some(DTypeArg::F32) => DType::F32,
        None => medkern::model::bert::default_dtype(dev),
    }
}

pub fn cli_err(arg: &'static str, detail: String) -> Error {
    Error::Invalid {
        op: "cli",
        arg,
        detail,
    }
}

pub fn print_json(v: &Value) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| cli_err("output", e.to_string()))?;
    print_line(&s)
}

/// Writes `s` and a newline to stdout and flushes. A closed pipe (`| head`) is not an error
/// of ours: the rest of the output is dropped quietly. Any other failure (`> /dev/full`) is an
/// error naming stdout, never a panic as `println!` would give.
pub fn print_line(s: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{s}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Io {
            op: "cli",
            path: "stdout".into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// The input limits of this run (`--max-file-bytes`, `--max-pixels`, `--max-alloc-bytes`,
/// `--max-dicom-depth`, `--max-batch`; the library's defaults otherwise).
static INPUT_LIMITS: std::sync::OnceLock<input::InputLimits> = std::sync::OnceLock::new();

pub fn set_input_limits(l: input::InputLimits) {
    let _ = INPUT_LIMITS.set(l);
}

pub fn input_limits() -> input::InputLimits {
    INPUT_LIMITS.get().copied().unwrap_or_default()
}

/// Reads an image file (PNG, JPEG or DICOM by content) with an optional DICOM window, and a
/// JSON description of what was read. The file is read once, under the input limits, and
/// decoded from those bytes: opening it again to decode could read another file (replaced in
/// between) than the one whose format was checked.
pub fn read_image(path: &Path, window: Option<(f64, f64)>) -> Result<(RawImage, Value)> {
    let limits = input_limits();
    let bytes = input::read_file(path, limits.max_file_bytes)?;
    if dicom::has_dicom_magic(&bytes) {
        let opts = dicom::DicomOptions {
            window: match window {
                Some((center, width)) => dicom::WindowChoice::Given { center, width },
                None => dicom::WindowChoice::File,
            },
            limits,
        };
        let d = dicom::from_bytes(&bytes, path, &opts)?;
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
        let r = input::image::from_bytes(&bytes, path, &limits)?;
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
    // The image first: a bad or over-limit file fails before the model is built.
    let (raw, image_info) = read_image(&a.image, a.window)?;
    let dev = device_of(a.device)?;
    let dtype = dtype_of(a.dtype, &dev);
    let model = match &a.weights {
        Some(p) => ExamModel::load(p, &dev, dtype)?,
        None => ExamModel::random(&ExamConfig::default(), RANDOM_SEED, &dev, dtype)?,
    };
    let text = String::from_utf8(input::read_regular(
        "medkern exam",
        &a.emr,
        "a JSON EMR record",
    )?)
    .map_err(|e| cli_err("emr", format!("{}: not UTF-8 text: {e}", a.emr.display())))?;
    let record: Value = serde_json::from_str(&text)
        .map_err(|e| cli_err("emr", format!("{}: not valid JSON: {e}", a.emr.display())))?;
    let assessed = model.assess(&raw, &record, dtype).map_err(|e| match e {
        Error::Invalid { op: "emr", .. } => cli_err("emr", format!("{}: {e}", a.emr.display())),
        e => e,
    })?;
    let mut v = json!({
        "image": a.image.display().to_string(),
        "image_input": image_info,
        "emr": a.emr.display().to_string(),
        "weights": a.weights.as_ref().map(|p| p.display().to_string()),
        "random_weights": a.weights.is_none(),
        "device": dev.describe(),
        "dtype": dtype.to_string(),
    });
    if let (Some(o), Value::Object(m)) = (v.as_object_mut(), assessed) {
        o.extend(m);
    }
    if a.weights.is_none() {
        v["note"] = json!(format!(
            "no --weights: deterministic random weights (seed {RANDOM_SEED}); the scores are \
             not clinically meaningful"
        ));
    }
    print_json(&v)
}

/// The files to process: each file as given, each folder's images (`.png`, `.jpg`, `.jpeg`,
/// `.dcm`, `.dicom`, any case) sorted by name; true when a folder was among them; and the
/// folder entries left out, each `{"file", "reason"}` (for the JSON's "skipped"). An image
/// name that is not a regular file (a dangling link, a link loop, a FIFO, a folder) is kept,
/// so that it is reported as a failed image with its reason rather than dropped silently.
/// More files than `--max-batch` is an error, found while the folders are listed (before any
/// file is read or the model loaded).
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<(Vec<PathBuf>, bool, Vec<Value>)> {
    let max_batch = input_limits().max_batch;
    let too_many = |n: usize| input::check_batch("cli", "images", n, max_batch);
    too_many(inputs.len())?;
    let mut files = Vec::new();
    let mut folder = false;
    let mut skipped = Vec::new();
    for p in inputs {
        if p.is_dir() {
            folder = true;
            let rd = std::fs::read_dir(p).map_err(|e| Error::Io {
                op: "medkern",
                path: p.display().to_string(),
                source: e,
            })?;
            let mut found = Vec::new();
            for e in rd {
                let f = e
                    .map_err(|e| Error::Io {
                        op: "medkern",
                        path: p.display().to_string(),
                        source: e,
                    })?
                    .path();
                let image_name = f.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(
                        e.to_ascii_lowercase().as_str(),
                        "png" | "jpg" | "jpeg" | "dcm" | "dicom"
                    )
                });
                if image_name {
                    too_many(files.len() + found.len() + 1)?;
                    found.push(f);
                } else {
                    skipped.push(json!({
                        "file": f.display().to_string(),
                        "reason": "not an image name (.png, .jpg, .jpeg, .dcm or .dicom)",
                    }));
                }
            }
            found.sort();
            if found.is_empty() {
                return Err(cli_err(
                    "input",
                    format!(
                        "{}: no .png, .jpg, .jpeg, .dcm or .dicom files in the folder",
                        p.display()
                    ),
                ));
            }
            files.extend(found);
        } else {
            files.push(p.clone());
        }
        too_many(files.len())?;
    }
    skipped.sort_by(|a, b| a["file"].as_str().cmp(&b["file"].as_str()));
    Ok((files, folder, skipped))
}

fn progress(n: usize, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(n as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} images ({per_sec}, eta {eta}) {msg}",
    ) {
        pb.set_style(style);
    }
    pb
}

/// The models of `medkern classify`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ClassifyModel {
    /// Sepsis classifier on sublingual microcirculation frames (ResNet-18 stem + layer1 +
    /// layer2 → 128-d → 2 classes), 224×224, ImageNet normalisation.
    Sepsis,
    /// Chest X-ray triage: EfficientNet-B7 with one abnormal logit, 600×600, ImageNet
    /// normalisation.
    Cxr,
    /// EfficientNet-Lite0 ImageNet classifier (1000 classes), 224×224, TF-Lite normalisation.
    Lite0,
}

/// `medkern classify` arguments.
#[derive(clap::Args)]
pub struct ClassifyArgs {
    #[arg(long, value_enum)]
    pub model: ClassifyModel,
    /// A safetensors checkpoint with torchvision names for the model.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub device: Option<DeviceArg>,
    /// Compute dtype; default: f16 on a GPU, f32 on the CPU.
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// Classes listed per image (lite0).
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Also print each image's pooled feature vector (sepsis: the 128-d t-SNE feature).
    #[arg(long)]
    pub features: bool,
    /// Write each image's class activation map (cxr, lite0) into this folder (created if
    /// missing): `{index}-{stem}.cam.png`, the map in the Turbo colormap over the image as
    /// the model saw it (centre crop, model size; a DICOM through the window used).
    #[arg(long, value_name = "DIR")]
    pub cam: Option<PathBuf>,
    /// The class the maps are for (default: each image's top class; cxr has class 0).
    #[arg(long, requires = "cam")]
    pub cam_class: Option<usize>,
    #[command(flatten)]
    pub tsne: TsneArgs,
    /// Image files or folders.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// Softmax of one row of logits (the library's, shared with the server).
pub use medkern::model::softmax;

pub fn classify(a: ClassifyArgs) -> Result<()> {
    use medkern::model::classify::{ImageClassifier, ImageModel};
    if a.tsne.wanted() && !matches!(a.model, ClassifyModel::Sepsis) {
        return Err(cli_err(
            "tsne",
            "--tsne / --tsne-json map the sepsis model's 128-d features: use --model sepsis".into(),
        ));
    }
    let dev = device_of(a.device)?;
    let dtype = dtype_of(a.dtype, &dev);
    let (files, folder, skipped) = expand_inputs(&a.inputs)?;
    a.tsne.check(&files)?;
    let cam_names = cam_setup(&a, &files)?;
    let kind = match a.model {
        ClassifyModel::Sepsis => ImageModel::Sepsis,
        ClassifyModel::Cxr => ImageModel::Cxr,
        ClassifyModel::Lite0 => ImageModel::Lite0,
    };
    let model = ImageClassifier::load(kind, a.weights.as_deref(), &dev, dtype)?;
    let name = kind.describe();
    let pb = progress(files.len(), folder);
    let mut results = Vec::with_capacity(files.len());
    let mut failed = 0usize;
    // Per classified image (sepsis, with --tsne): its file, pooled feature and class index.
    let mut mapped: Vec<(String, Vec<f64>, usize)> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let cam_png = a.cam.as_ref().zip(cam_names.get(i)).map(|(d, n)| d.join(n));
        pb.set_message(
            f.file_name()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default(),
        );
        let mut mapped_here = None;
        let mut one = || -> Result<Value> {
            // ImageNet evaluation: the central square, then the resize.
            let raw = input::load_with(f, &input_limits())?.center_crop_square()?;
            let x = model.prepare(&raw)?;
            let in_file = |e: Error| cli_err("output", format!("{}: {e}", f.display()));
            let mut v = match model.efficientnet() {
                Some(m) if cam_png.is_some() => {
                    let (logits, cam) =
                        effnet_logits(m, &x, &raw, cam_png.as_deref(), a.cam_class, &dev)?;
                    let mut v = model.from_logits(&logits, a.top).map_err(in_file)?;
                    if let Some(c) = cam {
                        v["cam"] = c;
                    }
                    if a.features {
                        let rows = medkern::model::classify::rows(&m.features(&x)?)?;
                        v["features"] = json!(rows.into_iter().next().unwrap_or_default());
                    }
                    v
                }
                _ => model
                    .classify(&x, a.top, a.features || a.tsne.wanted())
                    .map_err(in_file)?,
            };
            if a.tsne.wanted() {
                let feat: Vec<f64> = v["features"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_f64).collect())
                    .unwrap_or_default();
                let class = usize::from(v["class"] == "sepsis");
                mapped_here = Some((f.display().to_string(), feat, class));
                if !a.features {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("features");
                    }
                }
            }
            let mut out = json!({"file": f.display().to_string()});
            if let (Some(o), Value::Object(m)) = (out.as_object_mut(), v) {
                o.extend(m);
            }
            Ok(out)
        };
        match one() {
            Ok(v) => {
                results.push(v);
                mapped.extend(mapped_here);
            }
            Err(e) => {
                failed += 1;
                results.push(json!({"file": f.display().to_string(), "error": e.to_string()}));
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let mut v = json!({
        "model": name,
        "weights": a.weights.as_ref().map(|p| p.display().to_string()),
        "random_weights": a.weights.is_none(),
        "device": dev.describe(),
        "dtype": dtype.to_string(),
        "images": files.len(),
        "failed": failed,
        "skipped": skipped,
        "results": results,
    });
    let mut also = None;
    if a.tsne.wanted() {
        let classes = ["no_sepsis".to_string(), "sepsis".to_string()];
        let title = "t-SNE of the sepsis model's 128-d features, coloured by predicted class";
        match a.tsne.run(mapped, 128, &classes, title) {
            Ok(t) => v["tsne"] = t,
            Err(e) => {
                v["tsne_error"] = json!(e.to_string());
                also = Some(("tsne", format!("t-SNE failed: {e}")));
            }
        }
    }
    finish(v, a.weights.is_none(), failed, files.len(), also)
}

/// Prints the JSON via [`report`]; an extra failure (clustering, t-SNE) with no failed image
/// is an error of its own after the output.
fn finish(
    v: Value,
    random: bool,
    failed: usize,
    images: usize,
    also: Option<(&'static str, String)>,
) -> Result<()> {
    match (failed, also) {
        (0, Some((arg, e))) => {
            report(v, random, 0, images, None)?;
            Err(cli_err(arg, e))
        }
        (_, also) => report(v, random, failed, images, also.map(|a| a.1)),
    }
}

/// Checks `--cam` / `--cam-class` against the model (before it is loaded), creates the folder
/// and names one picture per input (empty without `--cam`).
fn cam_setup(a: &ClassifyArgs, files: &[PathBuf]) -> Result<Vec<String>> {
    let Some(dir) = &a.cam else {
        return Ok(Vec::new());
    };
    let outputs = match a.model {
        ClassifyModel::Sepsis => {
            return Err(cli_err(
                "cam",
                "--cam applies to the EfficientNet models (cxr, lite0), not sepsis".into(),
            ));
        }
        ClassifyModel::Cxr => 1,
        ClassifyModel::Lite0 => medkern::model::imagenet::NUM_CLASSES,
    };
    if let Some(k) = a.cam_class.filter(|&k| k >= outputs) {
        return Err(cli_err(
            "cam-class",
            format!("{k}; expected a class below {outputs} for this model"),
        ));
    }
    medkern::viz::create_dir(dir)?;
    Ok(medkern::viz::picture_names(files, ".cam"))
}

/// One image's logits from an EfficientNet; with `png`, from the forward of its class
/// activation map, which is written there over the image as the model saw it: the same
/// crop, resize and (DICOM) window, without the normalisation. Returns the map's JSON entry.
fn effnet_logits(
    m: &medkern::model::efficientnet::EfficientNet,
    x: &medkern::Tensor,
    raw: &RawImage,
    png: Option<&Path>,
    class: Option<usize>,
    dev: &Device,
) -> Result<(Vec<f32>, Option<Value>)> {
    use medkern::viz;
    let Some(png) = png else {
        return Ok((m.logits(x)?.remove(0), None));
    };
    let ca = m.class_activation_map(x, class)?;
    let s = x.shape();
    let (h, w) = (s[1], s[2]);
    let background = raw.display(dev, (h, w))?;
    let pic = viz::cam_picture(&background.to_host()?, &ca.map.to_host()?)?;
    viz::save_png(png, &pic.image)?;
    let k = ca.classes.first().copied().unwrap_or(0);
    let name = match m.config().head {
        medkern::model::efficientnet::Head::ChestXray => Some("abnormal"),
        _ => medkern::model::imagenet::class_name(k),
    };
    let low = ca.low_res.shape();
    let v = json!({
        "file": png.display().to_string(),
        "class": k,
        "name": name,
        "size": [h, w],
        "feature_map": [low.get(1), low.get(2)],
        "min": pic.min,
        "max": pic.max,
        "colormap": viz::CAM_COLORMAP,
        "alpha": viz::CAM_ALPHA,
        "heat": "(cam - min) / (max - min), cam = sum over channels of the class's classifier weights times the last feature map, upsampled bilinearly",
    });
    Ok((ca.logits.into_iter().next().unwrap_or_default(), Some(v)))
}

/// Prints a batch command's JSON (noting random weights) and fails when any image failed.
fn report(
    mut v: Value,
    random_weights: bool,
    failed: usize,
    images: usize,
    also: Option<String>,
) -> Result<()> {
    if random_weights {
        v["note"] = json!(format!(
            "no --weights: deterministic random weights (seed {RANDOM_SEED}); the outputs are \
             not meaningful"
        ));
    }
    print_json(&v)?;
    if failed > 0 {
        return Err(cli_err(
            "input",
            format!(
                "{failed} of {images} image(s) failed (see \"error\" in the output){}",
                also.map(|e| format!("; {e}")).unwrap_or_default()
            ),
        ));
    }
    Ok(())
}

/// `medkern autoencode` arguments.
#[derive(clap::Args)]
pub struct AutoencodeArgs {
    /// A safetensors checkpoint (encoder.{0,2,4}, decoder.{0,2,4}).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub device: Option<DeviceArg>,
    /// Compute dtype; default: f16 on a GPU, f32 on the CPU.
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// Print each image's 1152-d code.
    #[arg(long)]
    pub codes: bool,
    /// Cluster the codes with k-means into this many clusters (with --tsne and no
    /// --clusters: round(sqrt(n / 2)) clusters, 1 to 10, for n encoded images).
    #[arg(long)]
    pub clusters: Option<usize>,
    /// Write each image's input | reconstruction | absolute error (96×96 panels) as a PNG
    /// into this folder (created if missing): `{index}-{stem}.recon.png`; the error panel is
    /// scaled so that white is the image's largest error (`error_scale` in the output).
    #[arg(long, value_name = "DIR")]
    pub save_reconstructions: Option<PathBuf>,
    #[command(flatten)]
    pub tsne: TsneArgs,
    /// Image files or folders.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// Writes one frame's input | reconstruction | |error| picture to `png`; its JSON entry.
fn save_reconstruction(
    png: &Path,
    x: &medkern::Tensor,
    reconstruction: &medkern::Tensor,
) -> Result<Value> {
    let pic = medkern::viz::reconstruction_picture(&x.to_host()?, &reconstruction.to_host()?)?;
    medkern::viz::save_png(png, &pic.image)?;
    Ok(json!({
        "file": png.display().to_string(),
        "panels": ["input", "reconstruction", "abs_error"],
        "error_scale": pic.error_scale,
    }))
}

pub fn autoencode(a: AutoencodeArgs) -> Result<()> {
    use medkern::model::sepsis::{self, AE_SIZE, Autoencoder, KMeansOptions};
    use medkern::ops::Preprocess;
    let dev = device_of(a.device)?;
    let dtype = dtype_of(a.dtype, &dev);
    let (files, folder, skipped) = expand_inputs(&a.inputs)?;
    a.tsne.check(&files)?;
    let recon_names = match &a.save_reconstructions {
        Some(dir) => {
            medkern::viz::create_dir(dir)?;
            medkern::viz::picture_names(&files, ".recon")
        }
        None => Vec::new(),
    };
    let model = match &a.weights {
        Some(p) => Autoencoder::load(p, &dev, dtype)?,
        None => Autoencoder::from_safetensors(
            &sepsis::random_autoencoder(RANDOM_SEED).to_safetensors()?,
            &dev,
            dtype,
        )?,
    };
    let pb = progress(files.len(), folder);
    let mut results = Vec::with_capacity(files.len());
    let mut codes: Vec<Vec<f64>> = Vec::new();
    let mut coded: Vec<usize> = Vec::new();
    let mut failed = 0usize;
    for (i, f) in files.iter().enumerate() {
        let recon_png = (a.save_reconstructions.as_ref())
            .zip(recon_names.get(i))
            .map(|(d, n)| d.join(n));
        let one = || -> Result<(f64, Vec<f64>, Option<Value>)> {
            let raw = input::load_with(f, &input_limits())?;
            let p = Preprocess {
                out_size: (AE_SIZE, AE_SIZE),
                range: raw.range,
                mean: &[0.0; 3],
                std: &[1.0; 3],
                grey_to_rgb: raw.channels() == 1,
            };
            let x = raw.preprocess(&dev, &p, dtype)?;
            let o = model.forward(&x)?;
            let recon = match &recon_png {
                Some(png) => Some(save_reconstruction(png, &x, &o.reconstruction)?),
                None => None,
            };
            Ok((o.mse[0], o.codes.to_host()?.to_f64(), recon))
        };
        match one() {
            Ok((mse, c, recon)) => {
                let mut v = json!({"file": f.display().to_string(), "mse": mse});
                if let Some(r) = recon {
                    v["reconstruction"] = r;
                }
                if a.codes {
                    v["code"] = json!(c.iter().map(|&x| x as f32).collect::<Vec<f32>>());
                }
                results.push(v);
                codes.push(c);
                coded.push(i);
            }
            Err(e) => {
                failed += 1;
                results.push(json!({"file": f.display().to_string(), "error": e.to_string()}));
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let mut v = json!({
        "model": "autoencoder (3 conv + 3 transposed conv, 96x96, 1152-d code)",
        "weights": a.weights.as_ref().map(|p| p.display().to_string()),
        "random_weights": a.weights.is_none(),
        "device": dev.describe(),
        "dtype": dtype.to_string(),
        "images": files.len(),
        "failed": failed,
        "skipped": skipped,
    });
    // A k-means failure (e.g. k above the number of encoded images) is reported with the
    // per-file results rather than instead of them.
    let mut clusters_error = None;
    let mut assignments = None;
    let k_default = || (codes.len() as f64 / 2.0).sqrt().round().clamp(1.0, 10.0) as usize;
    let k = match a.clusters {
        Some(k) => Some(k),
        None if a.tsne.wanted() => Some(k_default().min(codes.len()).max(1)),
        None => None,
    };
    if let Some(k) = k {
        match sepsis::kmeans(&codes, &KMeansOptions::new(k)) {
            Ok(km) => {
                for (j, &i) in coded.iter().enumerate() {
                    results[i]["cluster"] = json!(km.assignments[j]);
                }
                assignments = Some((k, km.assignments.clone()));
                v["kmeans"] = json!({
                    "k": k,
                    "inertia": km.inertia,
                    "iterations": km.iterations,
                    "converged": km.converged,
                });
            }
            Err(e) => {
                let msg = format!(
                    "k-means with k = {k} over {} encoded image(s): {e}",
                    codes.len()
                );
                v["clusters_error"] = json!(msg);
                clusters_error = Some(("clusters", format!("clustering failed: {msg}")));
            }
        }
    }
    v["results"] = json!(results);
    if a.tsne.wanted() {
        // Coloured by k-means cluster; one class for all when clustering failed.
        let (classes, labels): (Vec<String>, Vec<usize>) = match assignments {
            Some((k, asg)) => ((0..k).map(|c| format!("cluster {c}")).collect(), asg),
            None => (vec!["all images".to_string()], vec![0; codes.len()]),
        };
        let mapped = coded
            .iter()
            .zip(codes)
            .zip(labels)
            .map(|((&i, c), l)| (files[i].display().to_string(), c, l))
            .collect();
        let title = "t-SNE of the autoencoder's 1152-d codes, coloured by k-means cluster";
        match a.tsne.run(mapped, sepsis::AE_CODE_DIM, &classes, title) {
            Ok(t) => v["tsne"] = t,
            Err(e) => {
                v["tsne_error"] = json!(e.to_string());
                let msg = format!("t-SNE failed: {e}");
                clusters_error = Some(match clusters_error {
                    Some((arg, c)) => (arg, format!("{c}; {msg}")),
                    None => ("tsne", msg),
                });
            }
        }
    }
    finish(v, a.weights.is_none(), failed, files.len(), clusters_error)
}

/// The t-SNE options shared by `classify` and `autoencode`.
#[derive(clap::Args)]
pub struct TsneArgs {
    /// Draw a t-SNE map of the images' features (Barnes-Hut, 2-d) into this file: .png or
    /// .svg. Needs 4 or more images.
    #[arg(long)]
    pub tsne: Option<PathBuf>,
    /// Write the t-SNE coordinates as JSON: {"seed", "perplexity", "points": [{"file", "x",
    /// "y", "class"}]}, one point per image that ran.
    #[arg(long)]
    pub tsne_json: Option<PathBuf>,
    /// Seed of the t-SNE layout (equal seeds and images give equal maps).
    #[arg(long, default_value_t = medkern::viz::tsne::DEFAULT_TSNE_SEED)]
    pub tsne_seed: u64,
}

impl TsneArgs {
    pub fn wanted(&self) -> bool {
        self.tsne.is_some() || self.tsne_json.is_some()
    }

    /// Checks before any image is read: at most `MAX_TSNE_POINTS` images, a map named .png
    /// or .svg, and neither output one of the input images.
    pub fn check(&self, inputs: &[PathBuf]) -> Result<()> {
        if !self.wanted() {
            return Ok(());
        }
        let max = medkern::viz::tsne::MAX_TSNE_POINTS;
        if inputs.len() > max {
            return Err(cli_err(
                "tsne",
                format!("{} images; a t-SNE map takes at most {max}", inputs.len()),
            ));
        }
        if let Some(p) = &self.tsne {
            medkern::viz::Format::from_path(p)?;
        }
        for out in self.tsne.iter().chain(&self.tsne_json) {
            let Ok(o) = out.canonicalize() else { continue };
            if inputs
                .iter()
                .any(|i| i.canonicalize().is_ok_and(|i| i == o))
            {
                return Err(cli_err(
                    "tsne",
                    format!(
                        "{}: is one of the input images; not overwritten",
                        out.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Embeds `points` (file, feature of `dims` values, class index into `classes`), draws
    /// and writes the outputs asked for, and returns their summary for the JSON.
    fn run(
        &self,
        points: Vec<(String, Vec<f64>, usize)>,
        dims: usize,
        classes: &[String],
        title: &str,
    ) -> Result<Value> {
        use medkern::viz::tsne;
        let n = points.len();
        if !(tsne::MIN_TSNE_POINTS..=tsne::MAX_TSNE_POINTS).contains(&n) {
            return Err(cli_err(
                "tsne",
                format!(
                    "{n} image(s) ran; the t-SNE map needs {}..={}",
                    tsne::MIN_TSNE_POINTS,
                    tsne::MAX_TSNE_POINTS
                ),
            ));
        }
        let flat: Vec<f64> = points.iter().flat_map(|p| p.1.iter().copied()).collect();
        let opts = tsne::TsneOptions {
            seed: self.tsne_seed,
            ..tsne::TsneOptions::default()
        };
        let xy = tsne::tsne_with(&flat, dims, &opts)?;
        let perplexity = tsne::effective_perplexity(opts.perplexity, n);
        let labels: Vec<usize> = points.iter().map(|p| p.2).collect();
        let mut out = json!({
            "points": n,
            "dims": dims,
            "seed": self.tsne_seed,
            "perplexity": perplexity,
        });
        if let Some(path) = &self.tsne {
            let title = format!("{title} ({n} images)");
            let s = medkern::viz::Scatter {
                title: &title,
                points: &xy,
                labels: &labels,
                classes,
            };
            medkern::viz::save(&s, path, (900, 700))?;
            out["map"] = json!(path.display().to_string());
        }
        if let Some(path) = &self.tsne_json {
            let pts: Vec<Value> = points
                .iter()
                .zip(&xy)
                .map(|(p, c)| json!({"file": p.0, "x": c[0], "y": c[1], "class": classes[p.2]}))
                .collect();
            let doc = json!({
                "seed": self.tsne_seed,
                "perplexity": perplexity,
                "dims": dims,
                "classes": classes,
                "points": pts,
            });
            let text = serde_json::to_string_pretty(&doc)
                .map_err(|e| cli_err("tsne_json", e.to_string()))?;
            medkern::viz::write_atomic(path, text.as_bytes())?;
            out["json"] = json!(path.display().to_string());
        }
        Ok(out)
    }
}
