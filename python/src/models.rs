//! The model classes and `compress`.

use crate::{PyDevice, PyTensor, device_arg, dtype_arg, err, json_to_py, out, py_to_json};
use medkern::input::{InputLimits, RawImage};
use medkern::model::classify::{ImageClassifier, ImageModel};
use medkern::model::encoder::{EncoderOptions, TextEncoder, normalize_unit};
use medkern::ops::preprocess::PixelRange;
use medkern::{DType, Device, HostTensor, Tensor};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBert>()?;
    m.add_class::<PyEfficientNet>()?;
    m.add_class::<PySepsisNet>()?;
    m.add_class::<PyResNet>()?;
    m.add_class::<PyAutoencoder>()?;
    m.add_class::<PyExam>()?;
    m.add_function(wrap_pyfunction!(compress, m)?)?;
    Ok(())
}

fn invalid(msg: String) -> PyErr {
    crate::InvalidInputError::new_err(msg)
}

fn is_numpy(x: &Bound<'_, PyAny>) -> PyResult<bool> {
    let np = x.py().import("numpy")?;
    x.is_instance(&np.getattr("ndarray")?)
}

/// `x` as a C-contiguous numpy array (of `dtype` when given) that DLPack can export: numpy
/// refuses to export a read-only array (medkern's own outputs are read-only views), so such
/// an array is copied.
fn contiguous<'py>(x: &Bound<'py, PyAny>, dtype: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
    let np = x.py().import("numpy")?;
    let a = match dtype {
        Some(d) => np.call_method1("ascontiguousarray", (x, d))?,
        None => np.call_method1("ascontiguousarray", (x,))?,
    };
    if a.getattr("flags")?
        .getattr("writeable")?
        .extract::<bool>()?
    {
        Ok(a)
    } else {
        a.call_method0("copy")
    }
}

/// A model input: a medkern.Tensor (moved to the model's device when elsewhere), a numpy
/// array or nested lists (converted to the model's dtype, C-contiguous), or any DLPack
/// producer (torch / cupy: read in place on its GPU). Also says whether the answer should be
/// numpy (numpy or list in) or a medkern.Tensor (Tensor or DLPack in).
fn input(x: &Bound<'_, PyAny>, dev: &PyDevice, dtype: DType) -> PyResult<(Arc<Tensor>, bool)> {
    let py = x.py();
    if let Ok(t) = x.cast::<PyTensor>() {
        let t = t.get().t.clone();
        if crate::is_on(&t, &dev.dev) {
            return Ok((t, false));
        }
        let moved = dev.run(py, move || crate::copy_to(&t, &dev.dev))?;
        return Ok((Arc::new(moved), false));
    }
    let numpy = is_numpy(x)? || !x.hasattr("__dlpack__")?;
    let x = if numpy {
        let np_dtype = match dtype {
            DType::F32 => "float32",
            DType::F16 => "float16",
            other => {
                return Err(invalid(format!(
                    "input: a numpy array for a {other} model; numpy has no {other}, pass a \
                     medkern.Tensor or a torch tensor of that dtype"
                )));
            }
        };
        contiguous(x, Some(np_dtype))?
    } else {
        x.clone()
    };
    let t = crate::dlpack::import(py, &x, Some(&dev.dev))?;
    Ok((Arc::new(t), numpy))
}

/// A raw image from a path (str / os.PathLike: PNG, JPEG or DICOM by content), the bytes of
/// such a file, or a uint8 array `[H, W]`, `[H, W, 1]` or `[H, W, 3]` (uint16 grey: the full
/// 16-bit range as the window). Decoded under `limits`.
fn raw_image(x: &Bound<'_, PyAny>, limits: &InputLimits) -> PyResult<RawImage> {
    let py = x.py();
    if let Ok(b) = x.cast::<PyBytes>() {
        let bytes = b.as_bytes();
        return py
            .detach(|| medkern::input::decode(bytes, Path::new("<bytes>"), limits))
            .map_err(err);
    }
    if let Ok(b) = x.cast::<PyByteArray>() {
        let bytes = b.to_vec();
        return py
            .detach(|| medkern::input::decode(&bytes, Path::new("<bytes>"), limits))
            .map_err(err);
    }
    if x.is_instance_of::<PyString>() || x.hasattr("__fspath__")? {
        let p: PathBuf = x.extract()?;
        return py
            .detach(|| medkern::input::load_with(&p, limits))
            .map_err(err);
    }
    let a = contiguous(x, None)?;
    let t = crate::dlpack::import(py, &a, Some(&Device::Cpu))?;
    let Tensor::Host(h) = t else {
        return Err(invalid("image: expected host pixels".into()));
    };
    let s = h.shape().to_vec();
    let (hh, ww, c) = match s.as_slice() {
        [h, w] => (*h, *w, 1),
        [h, w, c] if *c == 1 || *c == 3 => (*h, *w, *c),
        _ => {
            return Err(invalid(format!(
                "image: an array of shape {s:?}; expected [H, W], [H, W, 1] or [H, W, 3]"
            )));
        }
    };
    let pixels = (hh as u64).saturating_mul(ww as u64);
    if pixels == 0 || pixels > limits.max_pixels {
        return Err(invalid(format!(
            "image: {hh}x{ww} pixels; expected 1 to {} pixels",
            limits.max_pixels
        )));
    }
    let range = match (h.dtype(), c) {
        (DType::U8, _) => PixelRange::Scale(255.0),
        (DType::U16, 1) => PixelRange::Window {
            lo: 0.0,
            hi: 65535.0,
        },
        (d, _) => {
            return Err(invalid(format!(
                "image: an array of dtype {d} with {c} channel(s); expected uint8 (grey or RGB) or uint16 grey"
            )));
        }
    };
    let pixels = match h.data() {
        medkern::HostData::U8(v) => HostTensor::new(&[1, hh, ww, c], v.clone()),
        medkern::HostData::U16(v) => HostTensor::new(&[1, hh, ww, c], v.clone()),
        _ => unreachable_dtype(),
    }
    .map_err(err)?;
    Ok(RawImage {
        pixels,
        range,
        source: "<array>".into(),
    })
}

fn unreachable_dtype() -> medkern::Result<HostTensor> {
    Err(medkern::Error::Invalid {
        op: "image",
        arg: "dtype",
        detail: "checked above".into(),
    })
}

/// One image or a list of them.
fn images(x: &Bound<'_, PyAny>, limits: &InputLimits) -> PyResult<(Vec<RawImage>, bool)> {
    if let Ok(l) = x.cast::<PyList>() {
        medkern::input::check_batch("classify", "images", l.len(), limits.max_batch)
            .map_err(err)?;
        let v = l
            .iter()
            .enumerate()
            .map(|(k, i)| raw_image(&i, limits).map_err(|e| invalid(format!("image {k}: {e}"))))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok((v, true));
    }
    Ok((vec![raw_image(x, limits)?], false))
}

/// Loads a model on the caller's device (default: the best) in the caller's dtype (default:
/// the device's), without the GIL: what every `load` shares.
fn load_on<T: Send>(
    py: Python<'_>,
    device: Option<&Bound<'_, PyAny>>,
    dtype: Option<&str>,
    f: impl FnOnce(&Device, DType) -> medkern::Result<T> + Send,
) -> PyResult<(T, PyDevice, DType)> {
    let dev = device_arg(device, "best")?;
    let dt = dtype_arg(dtype, &dev.dev)?;
    let d = dev.dev.clone();
    let m = dev.run(py, move || f(&d, dt))?;
    Ok((m, dev, dt))
}

/// Named output tensors as a dict (numpy arrays for numpy input, else medkern.Tensors).
fn outputs(py: Python<'_>, items: Vec<(&str, Tensor)>, numpy: bool) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    for (k, t) in items {
        d.set_item(k, out(py, t, numpy)?)?;
    }
    Ok(d.into_any().unbind())
}

fn image_model(
    kind: ImageModel,
    weights: Option<PathBuf>,
    device: Option<&Bound<'_, PyAny>>,
    dtype: Option<&str>,
    py: Python<'_>,
) -> PyResult<(ImageClassifier, PyDevice)> {
    let (m, dev, _) = load_on(py, device, dtype, move |d, dt| {
        ImageClassifier::load(kind, weights.as_deref(), d, dt)
    })?;
    Ok((m, dev))
}

/// `classify` of the image classifiers: answers as medkern classify gives them (dicts).
fn classify_with(
    py: Python<'_>,
    m: &ImageClassifier,
    dev: &PyDevice,
    images_in: &Bound<'_, PyAny>,
    top: usize,
    features: bool,
) -> PyResult<Py<PyAny>> {
    let (raws, many) = images(images_in, &InputLimits::default())?;
    let answers = dev.run(py, move || Ok(m.classify_images(raws, top, features)))?;
    let mut outv = Vec::with_capacity(answers.len());
    for (i, a) in answers.into_iter().enumerate() {
        let v = a.map_err(|e| {
            let e = err(e);
            if many {
                invalid(format!("image {i}: {e}"))
            } else {
                e
            }
        })?;
        outv.push(json_to_py(py, &v)?);
    }
    if many {
        Ok(PyList::new(py, outv)?.into_any().unbind())
    } else {
        Ok(outv.into_iter().next().unwrap_or_else(|| py.None()))
    }
}

fn prepare_with(
    py: Python<'_>,
    m: &ImageClassifier,
    dev: &PyDevice,
    image: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let raw = raw_image(image, &InputLimits::default())?;
    let t = dev.run(py, move || m.prepare(&raw.center_crop_square()?))?;
    out(py, t, true)
}

/// A BERT-family text encoder (BERT, DistilBERT, ALBERT, MobileBERT, compressed or not):
/// a model folder or a hub id in the local hub cache.
#[pyclass(frozen, name = "BertModel", module = "medkern")]
pub struct PyBert {
    enc: TextEncoder,
    dev: PyDevice,
}

fn pooling_arg(p: &str) -> PyResult<medkern::model::bert::Pooling> {
    use medkern::model::bert::Pooling;
    match p {
        "mean" => Ok(Pooling::Mean),
        "cls" => Ok(Pooling::Cls),
        "max" => Ok(Pooling::Max),
        _ => Err(invalid(format!(
            "pooling: {p:?}; expected \"mean\", \"cls\" or \"max\""
        ))),
    }
}

fn str_list(x: &Bound<'_, PyAny>, what: &str) -> PyResult<(Vec<String>, bool)> {
    if let Ok(s) = x.extract::<String>() {
        return Ok((vec![s], false));
    }
    let v: Vec<String> = x
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("{what}: expected a str or a list of str")))?;
    Ok((v, true))
}

#[pymethods]
impl PyBert {
    /// Loads a model folder (config.json, model.safetensors, tokenizer.json) or a hub id
    /// already in the local hub cache. `pooling` / `normalize` / `max_len` default to the
    /// folder's sentence-transformers settings.
    #[staticmethod]
    #[pyo3(signature = (path, device = None, dtype = None, pooling = None, normalize = None, max_len = None, revision = None, max_batch = medkern::input::DEFAULT_MAX_BATCH))]
    #[allow(clippy::too_many_arguments)]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        device: Option<&Bound<'_, PyAny>>,
        dtype: Option<&str>,
        pooling: Option<&str>,
        normalize: Option<bool>,
        max_len: Option<usize>,
        revision: Option<String>,
        max_batch: usize,
    ) -> PyResult<Self> {
        let opts = EncoderOptions {
            pooling: pooling.map(pooling_arg).transpose()?,
            normalize,
            max_len,
            max_batch,
        };
        let (enc, dev, _) = load_on(py, device, dtype, move |d, dt| {
            TextEncoder::load_revision(&path, revision.as_deref(), d, dt, &opts)
        })?;
        Ok(PyBert { enc, dev })
    }

    /// Embeddings `[n, dim]` float32 (numpy). One str gives `[dim]`.
    #[pyo3(signature = (texts, pooling = None, normalize = None))]
    fn embed(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        pooling: Option<&str>,
        normalize: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        let (texts, many) = str_list(texts, "texts")?;
        let pooling = pooling
            .map(pooling_arg)
            .transpose()?
            .unwrap_or(self.enc.pooling);
        let normalize = normalize.unwrap_or(self.enc.normalize);
        let enc = &self.enc;
        let rows = self.dev.run(py, move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let ids = enc.encode(&refs)?;
            let mut e = enc.model.embed(&ids, pooling)?;
            if normalize {
                e.iter_mut().for_each(|v| normalize_unit(v));
            }
            Ok(e)
        })?;
        matrix(py, rows, self.enc.model.dim(), many)
    }

    /// The classification head's logits `[n, labels]` float32 (numpy): for texts (a sequence
    /// of str) or sentence pairs (a sequence of 2-element tuples or lists of str, a
    /// cross-encoder's input). One str, or one pair given as a tuple `(a, b)`, gives
    /// `[labels]`.
    fn classify(&self, py: Python<'_>, inputs: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let width = self.enc.model.labels().len().max(1);
        let enc = &self.enc;
        let pair = |x: &Bound<'_, PyAny>| -> Option<(String, String)> {
            if x.is_instance_of::<PyString>() {
                return None;
            }
            x.extract::<(String, String)>()
                .ok()
                .or_else(|| match x.extract::<Vec<String>>() {
                    Ok(v) if v.len() == 2 => Some((v[0].clone(), v[1].clone())),
                    _ => None,
                })
        };
        let run_pairs = |pairs: Vec<(String, String)>, many: bool| -> PyResult<Py<PyAny>> {
            let rows = self.dev.run(py, move || {
                let refs: Vec<(&str, &str)> = pairs
                    .iter()
                    .map(|(a, b)| (a.as_str(), b.as_str()))
                    .collect();
                enc.classify_pairs(&refs)
            })?;
            matrix(py, rows, width, many)
        };
        if let Ok(t) = inputs.cast::<pyo3::types::PyTuple>()
            && t.len() == 2
            && let Some(p) = pair(inputs)
        {
            return run_pairs(vec![p], false);
        }
        if !inputs.is_instance_of::<PyString>()
            && let Ok(items) = inputs.extract::<Vec<Bound<'_, PyAny>>>()
            && let Some(first) = items.first()
            && !first.is_instance_of::<PyString>()
        {
            let pairs: Vec<(String, String)> = items
                .iter()
                .map(|x| {
                    pair(x).ok_or_else(|| {
                        PyTypeError::new_err(
                            "classify: a sequence of pairs must hold only (str, str) pairs",
                        )
                    })
                })
                .collect::<PyResult<_>>()?;
            return run_pairs(pairs, true);
        }
        let (texts, many) = str_list(inputs, "classify")?;
        let rows = self.dev.run(py, move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            enc.classify_ids(&enc.encode(&refs)?)
        })?;
        matrix(py, rows, width, many)
    }

    /// Token ids per text ([CLS] ... [SEP], truncated to `max_len`).
    fn tokenize(&self, py: Python<'_>, texts: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<u32>>> {
        let (texts, _) = str_list(texts, "texts")?;
        let enc = &self.enc;
        py.detach(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            enc.encode(&refs)
        })
        .map_err(err)
    }

    /// The classification head's label names (empty without a head).
    #[getter]
    fn labels(&self) -> Vec<String> {
        self.enc.model.labels()
    }
    /// The embedding width.
    #[getter]
    fn dim(&self) -> usize {
        self.enc.model.dim()
    }
    /// Tokens kept per text.
    #[getter]
    fn max_len(&self) -> usize {
        self.enc.max_len()
    }
    #[getter]
    fn pooling(&self) -> &'static str {
        use medkern::model::bert::Pooling;
        match self.enc.pooling {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
        }
    }
    #[getter]
    fn normalize(&self) -> bool {
        self.enc.normalize
    }
    #[getter]
    fn device(&self) -> PyDevice {
        self.dev.clone()
    }
}

/// Rows of equal width as a float32 numpy matrix (or the one row as a vector).
fn matrix(py: Python<'_>, rows: Vec<Vec<f32>>, width: usize, many: bool) -> PyResult<Py<PyAny>> {
    let n = rows.len();
    let w = rows.first().map_or(width, Vec::len);
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    let shape: Vec<usize> = if many { vec![n, w] } else { vec![w] };
    let t = HostTensor::new(&shape, flat).map_err(err)?;
    out(py, Tensor::Host(t), true)
}

/// EfficientNet: `variant="lite0"` (ImageNet, 1000 classes, 224×224) or `"cxr"` (B7 chest
/// X-ray triage, one abnormal logit, 600×600). `weights=None` loads deterministic random
/// weights (for tests; the answers mean nothing).
#[pyclass(frozen, name = "EfficientNet", module = "medkern")]
pub struct PyEfficientNet {
    m: ImageClassifier,
    dev: PyDevice,
}

#[pymethods]
impl PyEfficientNet {
    #[staticmethod]
    #[pyo3(signature = (weights = None, variant = "lite0", device = None, dtype = None))]
    fn load(
        py: Python<'_>,
        weights: Option<PathBuf>,
        variant: &str,
        device: Option<&Bound<'_, PyAny>>,
        dtype: Option<&str>,
    ) -> PyResult<Self> {
        let kind = match variant {
            "lite0" => ImageModel::Lite0,
            "cxr" | "b7" => ImageModel::Cxr,
            _ => {
                return Err(invalid(format!(
                    "EfficientNet.load: variant {variant:?}; expected \"lite0\" or \"cxr\""
                )));
            }
        };
        let (m, dev) = image_model(kind, weights, device, dtype, py)?;
        Ok(PyEfficientNet { m, dev })
    }

    /// Classifies images (paths, file bytes or uint8 arrays; one or a list) in one forward
    /// pass: the central square, resized and normalised as the model was trained. One dict
    /// per image, as `medkern classify` prints it.
    #[pyo3(signature = (images, top = 5, features = false))]
    fn classify(
        &self,
        py: Python<'_>,
        images: &Bound<'_, PyAny>,
        top: usize,
        features: bool,
    ) -> PyResult<Py<PyAny>> {
        classify_with(py, &self.m, &self.dev, images, top, features)
    }

    /// The model's input for one image: `[1, H, W, 3]` (numpy, the model's dtype).
    fn preprocess(&self, py: Python<'_>, image: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        prepare_with(py, &self.m, &self.dev, image)
    }

    /// Logits `[N, classes]` float32 of a prepared batch `[N, H, W, 3]` (numpy in: numpy
    /// out; a medkern.Tensor or torch/cupy tensor in: a medkern.Tensor out).
    fn forward(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let net = self.net()?;
        let (t, numpy) = input(x, &self.dev, self.m.dtype())?;
        let y = self.dev.run(py, move || net.forward(&t))?;
        out(py, y, numpy)
    }

    /// The pooled features `[N, channels]` (the classifier's input) of a prepared batch.
    fn features(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let net = self.net()?;
        let (t, numpy) = input(x, &self.dev, self.m.dtype())?;
        let y = self.dev.run(py, move || net.features(&t))?;
        out(py, y, numpy)
    }

    #[getter]
    fn device(&self) -> PyDevice {
        self.dev.clone()
    }
    #[getter]
    fn dtype(&self) -> &'static str {
        crate::dtype_name(self.m.dtype())
    }
}

impl PyEfficientNet {
    fn net(&self) -> PyResult<&medkern::model::efficientnet::EfficientNet> {
        self.m
            .efficientnet()
            .ok_or_else(|| invalid("EfficientNet: no EfficientNet loaded".into()))
    }
}

/// The sepsis classifier (ResNet-18 stem + layer1 + layer2 → 128-d → no_sepsis / sepsis),
/// 224×224. `weights=None`: deterministic random weights (tests).
#[pyclass(frozen, name = "SepsisNet", module = "medkern")]
pub struct PySepsisNet {
    m: ImageClassifier,
    dev: PyDevice,
}

#[pymethods]
impl PySepsisNet {
    #[staticmethod]
    #[pyo3(signature = (weights = None, device = None, dtype = None))]
    fn load(
        py: Python<'_>,
        weights: Option<PathBuf>,
        device: Option<&Bound<'_, PyAny>>,
        dtype: Option<&str>,
    ) -> PyResult<Self> {
        let (m, dev) = image_model(ImageModel::Sepsis, weights, device, dtype, py)?;
        Ok(PySepsisNet { m, dev })
    }

    /// As EfficientNet.classify: one dict per image (`logits`, `probabilities`, `class`).
    #[pyo3(signature = (images, features = false))]
    fn classify(
        &self,
        py: Python<'_>,
        images: &Bound<'_, PyAny>,
        features: bool,
    ) -> PyResult<Py<PyAny>> {
        classify_with(py, &self.m, &self.dev, images, 2, features)
    }

    fn preprocess(&self, py: Python<'_>, image: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        prepare_with(py, &self.m, &self.dev, image)
    }

    /// `{"logits": [N, 2], "probabilities": [N, 2], "features": [N, 128]}` of a prepared batch.
    fn forward(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let net = self
            .m
            .sepsis()
            .ok_or_else(|| invalid("SepsisNet: no sepsis model loaded".into()))?;
        let (t, numpy) = input(x, &self.dev, self.m.dtype())?;
        let o = self.dev.run(py, move || net.forward(&t))?;
        let items = vec![
            ("logits", o.logits),
            ("probabilities", o.probs),
            ("features", o.features),
        ];
        outputs(py, items, numpy)
    }

    #[getter]
    fn device(&self) -> PyDevice {
        self.dev.clone()
    }
}

/// ResNet-18/34 with torchvision's tensor names. `weights=None`: deterministic random
/// weights (tests).
#[pyclass(frozen, name = "ResNet", module = "medkern")]
pub struct PyResNet {
    m: medkern::model::resnet::ResNet,
    dev: PyDevice,
    dtype: DType,
}

#[pymethods]
impl PyResNet {
    #[staticmethod]
    #[pyo3(signature = (weights = None, depth = 18, num_classes = 1000, device = None, dtype = None))]
    fn load(
        py: Python<'_>,
        weights: Option<PathBuf>,
        depth: usize,
        num_classes: usize,
        device: Option<&Bound<'_, PyAny>>,
        dtype: Option<&str>,
    ) -> PyResult<Self> {
        use medkern::model::resnet::{ResNet, ResNetConfig, random_resnet};
        let config = match depth {
            18 => ResNetConfig::resnet18(num_classes),
            34 => ResNetConfig::resnet34(num_classes),
            _ => {
                return Err(invalid(format!(
                    "ResNet.load: depth {depth}; expected 18 or 34"
                )));
            }
        };
        let (m, dev, dtype) = load_on(py, device, dtype, move |d, dt| match weights {
            Some(p) => ResNet::load(&p, config, d, dt),
            None => ResNet::from_safetensors(
                &random_resnet(&config, 0).to_safetensors()?,
                config,
                d,
                dt,
            ),
        })?;
        Ok(PyResNet { m, dev, dtype })
    }

    /// `{"logits": [N, classes], "features": [N, 512]}` of a batch `[N, H, W, 3]`
    /// (ImageNet-normalised).
    fn forward(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let (t, numpy) = input(x, &self.dev, self.dtype)?;
        let m = &self.m;
        let o = self.dev.run(py, move || m.forward(&t))?;
        outputs(
            py,
            vec![("logits", o.logits), ("features", o.features)],
            numpy,
        )
    }

    #[getter]
    fn device(&self) -> PyDevice {
        self.dev.clone()
    }
}

/// The sepsis convolutional autoencoder (96×96 RGB, 1152-d codes). `weights=None`:
/// deterministic random weights (tests).
#[pyclass(frozen, name = "Autoencoder", module = "medkern")]
pub struct PyAutoencoder {
    m: medkern::model::sepsis::Autoencoder,
    dev: PyDevice,
    dtype: DType,
}

#[pymethods]
impl PyAutoencoder {
    #[staticmethod]
    #[pyo3(signature = (weights = None, device = None, dtype = None))]
    fn load(
        py: Python<'_>,
        weights: Option<PathBuf>,
        device: Option<&Bound<'_, PyAny>>,
        dtype: Option<&str>,
    ) -> PyResult<Self> {
        use medkern::model::sepsis::{Autoencoder, random_autoencoder};
        let (m, dev, dtype) = load_on(py, device, dtype, move |d, dt| match weights {
            Some(p) => Autoencoder::load(&p, d, dt),
            None => Autoencoder::from_safetensors(&random_autoencoder(0).to_safetensors()?, d, dt),
        })?;
        Ok(PyAutoencoder { m, dev, dtype })
    }

    /// `{"reconstruction": [N, H, W, 3], "mse": [N] float64, "codes": [N, 1152]}` of a
    /// batch `[N, H, W, 3]` with values in [0, 1].
    fn forward(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let (t, numpy) = input(x, &self.dev, self.dtype)?;
        let m = &self.m;
        let o = self.dev.run(py, move || m.forward(&t))?;
        let d = outputs(
            py,
            vec![("reconstruction", o.reconstruction), ("codes", o.codes)],
            numpy,
        )?;
        let mse = py
            .import("numpy")?
            .call_method1("asarray", (o.mse, "float64"))?;
        d.bind(py).set_item("mse", mse)?;
        Ok(d)
    }

    #[getter]
    fn device(&self) -> PyDevice {
        self.dev.clone()
    }
}

/// The EXAM model: a chest X-ray and an EMR record → P(more than low-flow oxygen) at 24 h
/// and 72 h and the ordinal oxygen class. `weights=None`: deterministic random weights.
#[pyclass(frozen, name = "ExamModel", module = "medkern")]
pub struct PyExam {
    m: medkern::model::exam::ExamModel,
    dev: PyDevice,
    dtype: DType,
}

#[pymethods]
impl PyExam {
    #[staticmethod]
    #[pyo3(signature = (weights = None, device = None, dtype = None))]
    fn load(
        py: Python<'_>,
        weights: Option<PathBuf>,
        device: Option<&Bound<'_, PyAny>>,
        dtype: Option<&str>,
    ) -> PyResult<Self> {
        use medkern::model::exam::{ExamConfig, ExamModel};
        let (m, dev, dtype) = load_on(py, device, dtype, move |d, dt| match weights {
            Some(p) => ExamModel::load(&p, d, dt),
            None => ExamModel::random(&ExamConfig::default(), 0, d, dt),
        })?;
        Ok(PyExam { m, dev, dtype })
    }

    /// One patient: the image (a path, file bytes or a uint8/uint16 array) and the EMR record
    /// (a dict keyed by the model's EMR feature names). The answer is `medkern exam`'s dict.
    fn assess(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        emr: &Bound<'_, PyDict>,
    ) -> PyResult<Py<PyAny>> {
        let record = py_to_json(emr.as_any())?;
        let raw = raw_image(image, &InputLimits::default())?;
        let m = &self.m;
        let dt = self.dtype;
        let v = self.dev.run(py, move || m.assess(&raw, &record, dt))?;
        json_to_py(py, &v)
    }

    /// The EMR feature names a record may carry.
    #[getter]
    fn emr_features(&self) -> Vec<String> {
        self.m
            .head
            .config
            .emr
            .features
            .iter()
            .map(|f| f.key.clone())
            .collect()
    }

    #[getter]
    fn device(&self) -> PyDevice {
        self.dev.clone()
    }
}

/// Compresses the dense model folder `model` into `out` (offline) and returns the quality
/// report as a dict, as `medkern compress` prints it.
#[pyfunction]
#[pyo3(signature = (model, out, *, heads = None, prune_heads = None, layers = None, sparse24 = false, int8 = false, low_rank = None, bits = None, budget = None, embeddings = None, sentences = None, device = None, dtype = None, max_batch = medkern::input::DEFAULT_MAX_BATCH))]
#[allow(clippy::too_many_arguments)]
fn compress(
    py: Python<'_>,
    model: PathBuf,
    out: PathBuf,
    heads: Option<std::collections::BTreeMap<usize, Vec<usize>>>,
    prune_heads: Option<usize>,
    layers: Option<&Bound<'_, PyAny>>,
    sparse24: bool,
    int8: bool,
    low_rank: Option<&Bound<'_, PyAny>>,
    bits: Option<&Bound<'_, PyAny>>,
    budget: Option<&str>,
    embeddings: Option<&str>,
    sentences: Option<Vec<String>>,
    device: Option<&Bound<'_, PyAny>>,
    dtype: Option<&str>,
    max_batch: usize,
) -> PyResult<Py<PyAny>> {
    use medkern::model::compress::{Bits, Budget, CompressOptions, KeepLayers, Rank};
    let layers = match layers {
        None => None,
        Some(l) if l.is_none() => None,
        Some(l) => Some(match l.extract::<String>() {
            Ok(s) if s == "every-other" => KeepLayers::EveryOther,
            Ok(s) => {
                return Err(invalid(format!(
                    "compress: layers {s:?}; expected \"every-other\" or a list of layer indices"
                )));
            }
            Err(_) => KeepLayers::List(l.extract()?),
        }),
    };
    let low_rank = match low_rank {
        None => None,
        Some(r) if r.is_none() => None,
        Some(r) if r.is_instance_of::<pyo3::types::PyBool>() => {
            return Err(PyTypeError::new_err(
                "compress: low_rank: expected an int rank or a float energy fraction, not a bool",
            ));
        }
        Some(r) => Some(match r.extract::<usize>() {
            Ok(n) => Rank::Fixed(n),
            Err(_) => Rank::Energy(r.extract::<f64>().map_err(|_| {
                PyTypeError::new_err(
                    "compress: low_rank: expected an int rank or a float energy fraction",
                )
            })?),
        }),
    };
    let bits = match (bits, budget) {
        (None, None) => None,
        (Some(b), budget) => {
            let s = b.str()?.to_string();
            match (s.as_str(), budget) {
                ("4", None) => Some(Bits::Four),
                ("8", None) => Some(Bits::Eight),
                ("auto", Some(bu)) => Some(Bits::Auto(Budget::parse(bu).map_err(err)?)),
                ("auto", None) => {
                    return Err(invalid(
                        "compress: bits=\"auto\" needs a budget (e.g. \"12MB\" or \"6x\")".into(),
                    ));
                }
                (_, Some(_)) if s == "4" || s == "8" => {
                    return Err(invalid(
                        "compress: a budget applies to bits=\"auto\" only".into(),
                    ));
                }
                _ => {
                    return Err(invalid(format!(
                        "compress: bits {s:?}; expected 4, 8 or \"auto\""
                    )));
                }
            }
        }
        (None, Some(_)) => {
            return Err(invalid(
                "compress: a budget applies to bits=\"auto\" only".into(),
            ));
        }
    };
    let embeddings = match embeddings {
        None => None,
        Some("int8") => Some(DType::I8),
        Some("f16" | "float16") => Some(DType::F16),
        Some(e) => {
            return Err(invalid(format!(
                "compress: embeddings {e:?}; expected \"int8\" or \"f16\""
            )));
        }
    };
    if sentences
        .as_ref()
        .is_some_and(|v| v.iter().all(|t| t.trim().is_empty()))
    {
        return Err(invalid(
            "compress: sentences holds no sentence with text; expected at least one (None: the 8 built-in sentences)".into(),
        ));
    }
    let opts = CompressOptions {
        heads,
        prune_heads,
        layers,
        sparse24,
        int8,
        low_rank,
        embeddings,
        bits,
        sentences: sentences.unwrap_or_default(),
        max_batch,
    };
    let dev = device_arg(device, "best")?;
    let dt = dtype_arg(dtype, &dev.dev)?;
    let d = dev.dev.clone();
    let report = dev.run(py, move || {
        medkern::model::compress::compress_folder(&model, &out, &opts, &d, dt, &mut |_| {})
    })?;
    json_to_py(py, &report)
}
