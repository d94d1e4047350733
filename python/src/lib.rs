//! medkern from Python (`import medkern`): devices, tensors exchanged through DLPack, the
//! BERT-family encoders, the clinical CNNs, the EXAM model and offline compression. Every
//! forward releases the GIL; every medkern error is raised as `medkern.MedkernError` (or its
//! subclass `medkern.InvalidInputError` for bad input) carrying medkern's message.

mod dlpack;
mod models;

use medkern::{DType, Device, Tensor};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::sync::{Arc, Mutex};

pyo3::create_exception!(
    _native,
    MedkernError,
    pyo3::exceptions::PyRuntimeError,
    "An error medkern reported (its message names the op, what was given and what was expected)."
);
pyo3::create_exception!(
    _native,
    InvalidInputError,
    MedkernError,
    "Bad input: a wrong shape, dtype, device, value, or a corrupt or missing file."
);

/// medkern's error as a Python exception.
pub fn err(e: medkern::Error) -> PyErr {
    use medkern::Error as E;
    match e {
        E::Shape { .. }
        | E::DType { .. }
        | E::Device { .. }
        | E::Invalid { .. }
        | E::Corrupt { .. }
        | E::BufferTooSmall { .. }
        | E::Io { .. }
        | E::NoDevice { .. } => InvalidInputError::new_err(e.to_string()),
        _ => MedkernError::new_err(e.to_string()),
    }
}

/// Where medkern runs: `"cpu"` (the f64-accumulating reference), `"gpu"` / `"gpu:N"` /
/// `"cuda:N"`, `"emu"` (the emulated GPU: the GPU path with the kernels run on the CPU), or
/// `"best"` (GPU 0 when it starts, else the CPU).
#[pyclass(frozen, name = "Device", module = "medkern")]
#[derive(Clone)]
pub struct PyDevice {
    pub dev: Device,
    /// Serialises calls on a GPU (real or emulated) across Python threads; the CPU backend
    /// runs them concurrently.
    pub lock: Option<Arc<Mutex<()>>>,
}

impl PyDevice {
    pub fn new(dev: Device) -> Self {
        let lock = match dev {
            Device::Cpu => None,
            Device::Gpu(_) => Some(Arc::new(Mutex::new(()))),
        };
        PyDevice { dev, lock }
    }

    /// Runs `f` without the GIL (and under the device's lock on a GPU).
    pub fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce() -> medkern::Result<T> + Send,
    ) -> PyResult<T> {
        let lock = self.lock.clone();
        py.detach(move || {
            let _g = lock
                .as_ref()
                .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()));
            f()
        })
        .map_err(err)
    }
}

/// One `Gpu` (its stream and kernel cache) and one lock per GPU ordinal, and one emulated
/// GPU, for the whole process: `Device("gpu:0")` twice, a model's device and a DLPack import
/// from that GPU are the same device, so tensors move between them without a copy and calls
/// take turns under one lock.
static GPUS: Mutex<Vec<(usize, PyDevice)>> = Mutex::new(Vec::new());
const EMU: usize = usize::MAX;

fn cached(key: usize, make: impl FnOnce() -> PyResult<Device>) -> PyResult<PyDevice> {
    let mut g = GPUS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, d)) = g.iter().find(|(k, _)| *k == key) {
        return Ok(d.clone());
    }
    let d = PyDevice::new(make()?);
    g.push((key, d.clone()));
    Ok(d)
}

/// GPU `ordinal`, shared by every caller in the process.
pub fn gpu_device(ordinal: usize) -> PyResult<PyDevice> {
    cached(ordinal, || Device::gpu(ordinal).map_err(err))
}

/// The device `dev` is, with its shared lock (a GPU made elsewhere gets a lock of its own).
pub fn known(dev: Device) -> PyDevice {
    if let Device::Gpu(g) = &dev {
        let cache = GPUS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, d)) = cache
            .iter()
            .find(|(_, d)| matches!(&d.dev, Device::Gpu(h) if Arc::ptr_eq(g, h)))
        {
            return d.clone();
        }
    }
    PyDevice::new(dev)
}

pub fn parse_device(spec: &str) -> PyResult<PyDevice> {
    let s = spec.trim().to_ascii_lowercase();
    let gpu = |n: &str| -> PyResult<PyDevice> {
        let i = n.parse::<usize>().map_err(|_| {
            InvalidInputError::new_err(format!(
                "Device: {spec:?}; expected cpu, gpu, gpu:N, cuda:N, emu or best"
            ))
        })?;
        gpu_device(i)
    };
    match s.as_str() {
        "cpu" => Ok(PyDevice::new(Device::Cpu)),
        "emu" | "emulated" => cached(EMU, || Device::emulated().map_err(err)),
        "best" => gpu_device(0).or_else(|_| Ok(PyDevice::new(Device::Cpu))),
        "gpu" | "cuda" => gpu("0"),
        _ => match s.split_once(':') {
            Some(("gpu" | "cuda", n)) => gpu(n),
            _ => Err(InvalidInputError::new_err(format!(
                "Device: {spec:?}; expected cpu, gpu, gpu:N, cuda:N, emu or best"
            ))),
        },
    }
}

#[pymethods]
impl PyDevice {
    #[new]
    #[pyo3(signature = (spec = "best"))]
    fn py_new(spec: &str) -> PyResult<Self> {
        parse_device(spec)
    }

    /// `"cpu"`, `"gpu"` or `"emu"`.
    #[getter]
    fn kind(&self) -> &'static str {
        match &self.dev {
            Device::Cpu => "cpu",
            Device::Gpu(g) if g.is_emulated() => "emu",
            Device::Gpu(_) => "gpu",
        }
    }

    /// The GPU's ordinal (None on the CPU).
    #[getter]
    fn ordinal(&self) -> Option<usize> {
        match &self.dev {
            Device::Cpu => None,
            Device::Gpu(g) => Some(g.ordinal()),
        }
    }

    /// The GPU's name and compute capability, or "cpu".
    #[getter]
    fn name(&self) -> String {
        self.dev.describe()
    }

    /// Waits for the work queued on the device.
    fn synchronize(&self, py: Python<'_>) -> PyResult<()> {
        match &self.dev {
            Device::Cpu => Ok(()),
            Device::Gpu(g) => {
                let g = g.clone();
                py.detach(move || g.synchronize()).map_err(err)
            }
        }
    }

    fn __repr__(&self) -> String {
        format!("medkern.Device({:?})", self.dev.describe())
    }

    fn __eq__(&self, other: &Self) -> bool {
        match (&self.dev, &other.dev) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Gpu(a), Device::Gpu(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// A device given as a `Device`, a string, or None (`default`).
pub fn device_arg(d: Option<&Bound<'_, PyAny>>, default: &str) -> PyResult<PyDevice> {
    match d {
        None => parse_device(default),
        Some(d) if d.is_none() => parse_device(default),
        Some(d) => {
            if let Ok(p) = d.cast::<PyDevice>() {
                return Ok(p.get().clone());
            }
            let s: String = d.extract().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err(
                    "device: expected a medkern.Device or a string such as \"cpu\", \"gpu:0\", \"emu\"",
                )
            })?;
            parse_device(&s)
        }
    }
}

/// A dtype name ("float32"/"f32", "float16"/"f16", "bfloat16"/"bf16"), or the device's
/// default (f16 on a GPU, f32 on the CPU).
pub fn dtype_arg(d: Option<&str>, dev: &Device) -> PyResult<DType> {
    match d.map(|s| s.to_ascii_lowercase()) {
        None => Ok(medkern::model::bert::default_dtype(dev)),
        Some(s) => match s.as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "float16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            _ => Err(InvalidInputError::new_err(format!(
                "dtype: {s:?}; expected float32, float16 or bfloat16"
            ))),
        },
    }
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::I8 => "int8",
        DType::I32 => "int32",
        DType::U8 => "uint8",
        DType::U16 => "uint16",
    }
}

/// A medkern tensor on the CPU or a GPU. It speaks DLPack both ways: `np.from_dlpack(t)`,
/// `torch.from_dlpack(t)` and `cupy.from_dlpack(t)` read it without a copy, and
/// `Tensor.from_dlpack(x)` reads theirs (CUDA memory in place; host memory copied).
#[pyclass(frozen, name = "Tensor", module = "medkern")]
pub struct PyTensor {
    pub t: Arc<Tensor>,
    /// Exported writable: a fresh result handed straight to one consumer (numpy) and held by
    /// nobody else. A Tensor the caller holds exports read-only.
    writable: bool,
}

impl PyTensor {
    pub fn new(t: Tensor) -> Self {
        PyTensor {
            t: Arc::new(t),
            writable: false,
        }
    }
}

#[pymethods]
impl PyTensor {
    /// Reads any DLPack producer (numpy, torch, cupy, a medkern.Tensor) onto `device`
    /// (default: where the data is).
    #[staticmethod]
    #[pyo3(signature = (obj, device = None))]
    fn from_dlpack(
        py: Python<'_>,
        obj: &Bound<'_, PyAny>,
        device: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let dev = match device {
            Some(d) if !d.is_none() => Some(device_arg(Some(d), "cpu")?.dev),
            _ => None,
        };
        Ok(PyTensor::new(dlpack::import(py, obj, dev.as_ref())?))
    }

    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.t.shape())
    }

    /// "float32", "float16", "bfloat16", "int8", "int32", "uint8" or "uint16".
    #[getter]
    fn dtype(&self) -> &'static str {
        dtype_name(self.t.dtype())
    }

    #[getter]
    fn device(&self) -> PyDevice {
        known(self.t.device())
    }

    /// A copy on `device` (a `Device` or a string).
    fn to(&self, py: Python<'_>, device: &Bound<'_, PyAny>) -> PyResult<Self> {
        let dev = device_arg(Some(device), "cpu")?;
        let t = self.t.clone();
        let d = dev.dev.clone();
        let out = dev.run(py, move || copy_to(&t, &d))?;
        Ok(PyTensor::new(out))
    }

    /// The values as a numpy array (copied from a GPU; a CPU tensor is shared, not copied).
    fn numpy(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let host = match &*slf.get().t {
            Tensor::Host(_) => slf.clone().into_any().unbind(),
            Tensor::Device(d) => {
                let h = py.detach(|| d.download()).map_err(err)?;
                // A fresh copy nobody else holds: handed out writable.
                let fresh = PyTensor {
                    t: Arc::new(Tensor::Host(h)),
                    writable: true,
                };
                Py::new(py, fresh)?.into_any()
            }
        };
        Ok(py
            .import("numpy")?
            .call_method1("from_dlpack", (host,))?
            .unbind())
    }

    #[pyo3(signature = (*, stream = None, max_version = None, dl_device = None, copy = None))]
    fn __dlpack__(
        &self,
        py: Python<'_>,
        stream: Option<i64>,
        max_version: Option<&Bound<'_, PyAny>>,
        dl_device: Option<&Bound<'_, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        let versioned = match max_version.filter(|v| !v.is_none()) {
            Some(v) => v.extract::<(u32, u32)>()?.0 >= 1,
            None => false,
        };
        if let Some(d) = dl_device.filter(|d| !d.is_none()) {
            let want: (i32, i32) = d.extract()?;
            if want != dlpack::device_of(&self.t)? {
                return Err(pyo3::exceptions::PyBufferError::new_err(format!(
                    "Tensor.__dlpack__: dl_device {want:?} is not where the tensor is; copy it with .to() first"
                )));
            }
        }
        if copy == Some(true) {
            return Err(pyo3::exceptions::PyBufferError::new_err(
                "Tensor.__dlpack__: copy=True is not supported; the tensor is shared without a copy",
            ));
        }
        dlpack::export(py, &self.t, stream, versioned, self.writable)
    }

    fn __dlpack_device__(&self) -> PyResult<(i32, i32)> {
        dlpack::device_of(&self.t)
    }

    fn __len__(&self) -> PyResult<usize> {
        self.t
            .shape()
            .first()
            .copied()
            .ok_or_else(|| pyo3::exceptions::PyTypeError::new_err("len() of a 0-d tensor"))
    }

    fn __repr__(&self) -> String {
        format!(
            "medkern.Tensor(shape={:?}, dtype={}, device={:?})",
            self.t.shape(),
            dtype_name(self.t.dtype()),
            self.t.device().describe()
        )
    }
}

/// Whether `t` is on `dev` (the same GPU, or both on the CPU).
pub fn is_on(t: &Tensor, dev: &Device) -> bool {
    match (t, dev) {
        (Tensor::Host(_), Device::Cpu) => true,
        (Tensor::Device(d), Device::Gpu(g)) => Arc::ptr_eq(d.gpu(), g),
        _ => false,
    }
}

/// `t` on `dev`: itself when already there, else copied through the host.
pub fn place(t: Tensor, dev: &Device) -> medkern::Result<Tensor> {
    if is_on(&t, dev) {
        return Ok(t);
    }
    match t {
        Tensor::Host(h) => h.into_device(dev),
        Tensor::Device(d) => d.download()?.into_device(dev),
    }
}

/// A copy of `t` on `dev`.
pub fn copy_to(t: &Tensor, dev: &Device) -> medkern::Result<Tensor> {
    t.to_host()?.into_device(dev)
}

/// A numpy array over a host tensor (no copy; writable, as the array is its only holder), or
/// a medkern.Tensor for one on a GPU.
pub fn out(py: Python<'_>, t: Tensor, numpy: bool) -> PyResult<Py<PyAny>> {
    let t = if numpy {
        match t {
            Tensor::Host(h) => Tensor::Host(h),
            Tensor::Device(d) => Tensor::Host(py.detach(|| d.download()).map_err(err)?),
        }
    } else {
        t
    };
    if !numpy {
        return Ok(Py::new(py, PyTensor::new(t))?.into_any());
    }
    let obj = Py::new(
        py,
        PyTensor {
            t: Arc::new(t),
            writable: true,
        },
    )?;
    Ok(py
        .import("numpy")?
        .call_method1("from_dlpack", (obj,))?
        .unbind())
}

/// JSON (as medkern answers) to Python objects.
pub fn json_to_py(py: Python<'_>, v: &serde_json::Value) -> PyResult<Py<PyAny>> {
    let s = serde_json::to_string(v).map_err(|e| MedkernError::new_err(e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (s,))?.unbind())
}

/// Python objects (dicts, lists, numbers, strings) to JSON.
pub fn py_to_json(obj: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let s: String = obj
        .py()
        .import("json")?
        .call_method1("dumps", (obj,))?
        .extract()?;
    serde_json::from_str(&s).map_err(|e| InvalidInputError::new_err(e.to_string()))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("MedkernError", py.get_type::<MedkernError>())?;
    m.add("InvalidInputError", py.get_type::<InvalidInputError>())?;
    m.add_class::<PyDevice>()?;
    m.add_class::<PyTensor>()?;
    models::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
