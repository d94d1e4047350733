//! DLPack: medkern tensors out to numpy / PyTorch / CuPy without a copy, and theirs in
//! (without a copy for 256-byte-aligned CUDA memory; host memory is copied into medkern's own
//! host tensor). Both capsule kinds: `dltensor_versioned` (DLPack 1.x, with the read-only
//! flag) for consumers that ask for it through `max_version`, else `dltensor` (v0.8).

use medkern::{DType, Device, DeviceTensor, HostTensor, Tensor};
use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::{CStr, c_void};
use std::sync::Arc;

pub const CPU: i32 = 1;
pub const CUDA: i32 = 2;
pub const CUDA_HOST: i32 = 3;

const NAME: &CStr = c"dltensor";
const USED: &CStr = c"used_dltensor";
const VNAME: &CStr = c"dltensor_versioned";
const VUSED: &CStr = c"used_dltensor_versioned";
/// DLManagedTensorVersioned::flags: the consumer must not write.
const READ_ONLY: u64 = 1;

/// The most dimensions accepted from a producer (medkern's ops use at most 4).
pub const MAX_NDIM: usize = 8;

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLPackVersion {
    major: u32,
    minor: u32,
}

#[repr(C)]
struct DLManagedTensorVersioned {
    version: DLPackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DLTensor,
}

fn dl_dtype(d: DType) -> DLDataType {
    let (code, bits) = match d {
        DType::F32 => (2, 32),
        DType::F16 => (2, 16),
        DType::BF16 => (4, 16),
        DType::I8 => (0, 8),
        DType::I32 => (0, 32),
        DType::U8 => (1, 8),
        DType::U16 => (1, 16),
    };
    DLDataType {
        code,
        bits,
        lanes: 1,
    }
}

fn from_dl_dtype(t: DLDataType) -> Option<DType> {
    Some(match (t.code, t.bits, t.lanes) {
        (2, 32, 1) => DType::F32,
        (2, 16, 1) => DType::F16,
        (4, 16, 1) => DType::BF16,
        (0, 8, 1) => DType::I8,
        (0, 32, 1) => DType::I32,
        (1, 8, 1) => DType::U8,
        (1, 16, 1) => DType::U16,
        _ => return None,
    })
}

/// What an exported capsule keeps alive: the tensor and its shape in DLPack's i64.
struct ExportCtx {
    tensor: Arc<Tensor>,
    _shape: Vec<i64>,
}

impl Drop for ExportCtx {
    /// The consumer may still have work queued on its own stream that reads a CUDA tensor;
    /// medkern frees on its stream only, so the next allocation could reuse the memory under
    /// that work. Wait for the whole context first (the consumer's streams included).
    fn drop(&mut self) {
        if let Tensor::Device(d) = &*self.tensor
            && !d.gpu().is_emulated()
            && let Ok(ctx) = d.gpu().context()
        {
            let _ = ctx.bind_to_thread();
            let _ = ctx.synchronize();
        }
    }
}

unsafe extern "C" fn export_deleter(m: *mut DLManagedTensor) {
    if m.is_null() {
        return;
    }
    // SAFETY: `m` and its context were made by Box::into_raw in `export` and are freed once:
    // by the consumer through this deleter, or by the capsule's destructor if never consumed.
    unsafe {
        let m = Box::from_raw(m);
        drop(Box::from_raw(m.manager_ctx.cast::<ExportCtx>()));
    }
}

unsafe extern "C" fn export_deleter_v(m: *mut DLManagedTensorVersioned) {
    if m.is_null() {
        return;
    }
    // SAFETY: as in `export_deleter`.
    unsafe {
        let m = Box::from_raw(m);
        drop(Box::from_raw(m.manager_ctx.cast::<ExportCtx>()));
    }
}

unsafe extern "C" fn capsule_destructor_v(cap: *mut ffi::PyObject) {
    // SAFETY: as in `capsule_destructor`, for the versioned capsule.
    unsafe {
        if ffi::PyCapsule_IsValid(cap, VNAME.as_ptr()) == 1 {
            let m =
                ffi::PyCapsule_GetPointer(cap, VNAME.as_ptr()).cast::<DLManagedTensorVersioned>();
            if let Some(d) = m.as_ref().and_then(|m| m.deleter) {
                d(m);
            }
        }
    }
}

unsafe extern "C" fn capsule_destructor(cap: *mut ffi::PyObject) {
    // SAFETY: called by Python with the capsule; a consumed capsule was renamed
    // (`used_dltensor`) and its consumer owns the tensor, so only an unconsumed one is freed.
    unsafe {
        if ffi::PyCapsule_IsValid(cap, NAME.as_ptr()) == 1 {
            let m = ffi::PyCapsule_GetPointer(cap, NAME.as_ptr()).cast::<DLManagedTensor>();
            if let Some(d) = m.as_ref().and_then(|m| m.deleter) {
                d(m);
            }
        }
    }
}

/// The DLPack device of a tensor: (kind, id).
pub fn device_of(t: &Tensor) -> PyResult<(i32, i32)> {
    match t {
        Tensor::Host(_) => Ok((CPU, 0)),
        Tensor::Device(d) if d.gpu().is_emulated() => Err(PyBufferError::new_err(
            "Tensor.__dlpack__: the tensor is on the emulated GPU, whose memory no DLPack \
             consumer can address; expected a CPU or CUDA tensor (call .to(\"cpu\") first)",
        )),
        Tensor::Device(d) => Ok((CUDA, d.gpu().ordinal() as i32)),
    }
}

/// A capsule over `t`'s memory (no copy): `dltensor_versioned` when the consumer's
/// `max_version` major is at least 1 (read-only unless `writable`: a fresh result nobody else
/// holds), else `dltensor`. A CUDA tensor's queued work is finished first unless the consumer
/// passed `stream = -1` (no synchronisation wanted).
pub fn export(
    py: Python<'_>,
    t: &Arc<Tensor>,
    stream: Option<i64>,
    versioned: bool,
    writable: bool,
) -> PyResult<Py<PyAny>> {
    let (kind, id) = device_of(t)?;
    // The unversioned capsule cannot say "read-only": a host tensor the caller still holds goes
    // out as a copy, so a consumer's writes cannot reach it (a GPU tensor goes out as it is,
    // as every CUDA producer's does).
    let copied;
    let t = match &**t {
        Tensor::Host(h) if !versioned && !writable => {
            copied = Arc::new(Tensor::Host(h.clone()));
            &copied
        }
        _ => t,
    };
    let data = match &**t {
        Tensor::Host(h) => h.bytes().as_ptr() as *mut c_void,
        Tensor::Device(d) => {
            if stream != Some(-1) {
                let gpu = d.gpu().clone();
                py.detach(move || gpu.synchronize()).map_err(crate::err)?;
            }
            d.addr() as usize as *mut c_void
        }
    };
    let mut shape: Vec<i64> = t.shape().iter().map(|&s| s as i64).collect();
    let shape_ptr = shape.as_mut_ptr();
    let ctx = Box::into_raw(Box::new(ExportCtx {
        tensor: t.clone(),
        _shape: shape,
    }));
    let dl_tensor = DLTensor {
        data,
        device: DLDevice {
            device_type: kind,
            device_id: id,
        },
        ndim: t.shape().len() as i32,
        dtype: dl_dtype(t.dtype()),
        shape: shape_ptr,
        // Row-major contiguous (DLPack's null strides).
        strides: std::ptr::null_mut(),
        byte_offset: 0,
    };
    // SAFETY: each capsule holds a valid managed tensor; its destructor frees it unless a
    // consumer took it (renamed the capsule), and a failed PyCapsule_New frees it here.
    unsafe {
        let cap = if versioned {
            let m = Box::into_raw(Box::new(DLManagedTensorVersioned {
                version: DLPackVersion { major: 1, minor: 0 },
                manager_ctx: ctx.cast(),
                deleter: Some(export_deleter_v),
                flags: if writable { 0 } else { READ_ONLY },
                dl_tensor,
            }));
            let cap = ffi::PyCapsule_New(m.cast(), VNAME.as_ptr(), Some(capsule_destructor_v));
            if cap.is_null() {
                export_deleter_v(m);
            }
            cap
        } else {
            let m = Box::into_raw(Box::new(DLManagedTensor {
                dl_tensor,
                manager_ctx: ctx.cast(),
                deleter: Some(export_deleter),
            }));
            let cap = ffi::PyCapsule_New(m.cast(), NAME.as_ptr(), Some(capsule_destructor));
            if cap.is_null() {
                export_deleter(m);
            }
            cap
        };
        Ok(Bound::from_owned_ptr_or_err(py, cap)?.unbind())
    }
}

/// An imported DLManagedTensor medkern owns: its deleter runs on drop (DLPack's deleters are
/// callable from any thread and take the GIL themselves where they need it).
enum Managed {
    Legacy(*mut DLManagedTensor),
    Versioned(*mut DLManagedTensorVersioned),
}

impl Managed {
    /// The producer's tensor description (valid until the deleter runs, on drop).
    fn tensor(&self) -> &DLTensor {
        // SAFETY: both pointers come from a capsule whose producer keeps them valid until
        // its deleter, which only our drop calls.
        unsafe {
            match self {
                Managed::Legacy(m) => &(**m).dl_tensor,
                Managed::Versioned(m) => &(**m).dl_tensor,
            }
        }
    }
}

// SAFETY: the pointer is only dereferenced to call the deleter, which DLPack requires to be
// thread-safe.
unsafe impl Send for Managed {}
unsafe impl Sync for Managed {}

impl Drop for Managed {
    fn drop(&mut self) {
        // SAFETY: the producer's tensor, owned here since the capsule was renamed.
        unsafe {
            match *self {
                Managed::Legacy(m) => {
                    if let Some(d) = m.as_ref().and_then(|x| x.deleter) {
                        d(m);
                    }
                }
                Managed::Versioned(m) => {
                    if let Some(d) = m.as_ref().and_then(|x| x.deleter) {
                        d(m);
                    }
                }
            }
        }
    }
}

fn bad(detail: String) -> PyErr {
    crate::InvalidInputError::new_err(format!("Tensor.from_dlpack: {detail}"))
}

/// Reads a producer's object through `__dlpack__` into a medkern tensor on `target` (default:
/// where the data is: the CPU, or the GPU it is on). CUDA memory is read where it is when
/// it is 256-byte aligned (see [`DeviceTensor::from_foreign`]); host memory is copied.
pub fn import(py: Python<'_>, obj: &Bound<'_, PyAny>, target: Option<&Device>) -> PyResult<Tensor> {
    if !obj.hasattr("__dlpack__")? {
        return Err(PyTypeError::new_err(format!(
            "Tensor.from_dlpack: a {} has no __dlpack__; expected a numpy array, a torch or \
             cupy tensor, or a medkern.Tensor",
            obj.get_type().name()?
        )));
    }
    let (kind, id): (i32, i32) = obj.call_method0("__dlpack_device__")?.extract()?;
    let (capsule, gpu) = match kind {
        CPU | CUDA_HOST => match ask(obj, None) {
            Ok(c) => (c, None),
            // An older producer will not export a read-only array through the unversioned
            // capsule (numpy before 2.1): read a copy of it instead.
            Err(e) if e.is_instance_of::<PyBufferError>(py) && obj.hasattr("copy")? => {
                (ask(&obj.call_method0("copy")?, None)?, None)
            }
            Err(e) => return Err(e),
        },
        CUDA => {
            let gpu = match target {
                Some(Device::Gpu(g)) if !g.is_emulated() => {
                    if g.ordinal() as i32 != id {
                        return Err(bad(format!(
                            "the tensor is on cuda:{id}, the target is gpu:{}; expected the \
                             same GPU (move it first)",
                            g.ordinal()
                        )));
                    }
                    g.clone()
                }
                Some(other) => {
                    return Err(bad(format!(
                        "the tensor is on cuda:{id}, the target is {}; expected a target on \
                         that GPU",
                        other.describe()
                    )));
                }
                None => match crate::gpu_device(id as usize)?.dev {
                    Device::Gpu(g) => g,
                    Device::Cpu => return Err(bad("no GPU".into())),
                },
            };
            // The producer orders its pending work before ours: our stream is the consumer's.
            let stream = gpu.stream().map_err(crate::err)?.cu_stream() as usize;
            (ask(obj, Some(stream))?, Some(gpu))
        }
        other => {
            return Err(bad(format!(
                "DLPack device type {other}; expected the CPU (1), CUDA (2) or CUDA host (3)"
            )));
        }
    };
    // SAFETY: a capsule named `dltensor_versioned` / `dltensor` holds the matching managed
    // tensor; renaming it (`used_...`) takes ownership: the producer's capsule destructor then
    // leaves it to us.
    let managed = unsafe {
        let cap = capsule.as_ptr();
        if ffi::PyCapsule_IsValid(cap, VNAME.as_ptr()) == 1 {
            let p =
                ffi::PyCapsule_GetPointer(cap, VNAME.as_ptr()).cast::<DLManagedTensorVersioned>();
            let major = p.as_ref().map_or(0, |m| m.version.major);
            if major != 1 {
                return Err(PyBufferError::new_err(format!(
                    "Tensor.from_dlpack: DLPack version {major}.x; expected 1.x"
                )));
            }
            if ffi::PyCapsule_SetName(cap, VUSED.as_ptr()) != 0 {
                return Err(PyErr::fetch(py));
            }
            Managed::Versioned(p)
        } else if ffi::PyCapsule_IsValid(cap, NAME.as_ptr()) == 1 {
            let p = ffi::PyCapsule_GetPointer(cap, NAME.as_ptr()).cast::<DLManagedTensor>();
            if ffi::PyCapsule_SetName(cap, USED.as_ptr()) != 0 {
                return Err(PyErr::fetch(py));
            }
            Managed::Legacy(p)
        } else {
            return Err(bad(
                "__dlpack__ returned no unused `dltensor` or `dltensor_versioned` capsule".into(),
            ));
        }
    };
    let t = managed.tensor();
    if (t.device.device_type, t.device.device_id) != (kind, id) {
        return Err(bad(format!(
            "the capsule's device ({}, {}) is not the one __dlpack_device__ reported ({kind}, {id})",
            t.device.device_type, t.device.device_id
        )));
    }
    let dtype = from_dl_dtype(t.dtype).ok_or_else(|| {
        bad(format!(
            "dtype code {} bits {} lanes {}; expected float32, float16, bfloat16, int8, int32, \
             uint8 or uint16",
            t.dtype.code, t.dtype.bits, t.dtype.lanes
        ))
    })?;
    let ndim = usize::try_from(t.ndim).unwrap_or(usize::MAX);
    if ndim > MAX_NDIM {
        return Err(bad(format!(
            "{} dimensions; expected at most {MAX_NDIM}",
            t.ndim
        )));
    }
    // SAFETY: DLPack guarantees `ndim` shape entries (and strides when not null).
    let dims: &[i64] = if ndim == 0 {
        &[]
    } else {
        unsafe { std::slice::from_raw_parts(t.shape, ndim) }
    };
    let shape: Vec<usize> = dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| bad(format!("shape {dims:?} has a negative size")))
        })
        .collect::<PyResult<_>>()?;
    if !t.strides.is_null() && !dims.contains(&0) {
        // SAFETY: as above.
        let strides = unsafe { std::slice::from_raw_parts(t.strides, ndim) };
        let mut want = 1i64;
        for (&d, &s) in dims.iter().zip(strides).rev() {
            if d != 1 && s != want {
                return Err(bad(format!(
                    "strides {strides:?} for shape {dims:?}; expected a C-contiguous tensor \
                     (call .contiguous() / np.ascontiguousarray first)"
                )));
            }
            want = want.saturating_mul(d);
        }
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {dims:?}: too many elements")))?;
    let nbytes = numel
        .checked_mul(dtype.size())
        .ok_or_else(|| bad(format!("shape {dims:?}: too many bytes")))?;
    let data = (t.data as usize)
        .checked_add(t.byte_offset as usize)
        .ok_or_else(|| bad("data pointer + byte_offset overflows".into()))?;
    match gpu {
        Some(gpu) => {
            // SAFETY: the producer's CUDA memory (on this GPU, checked above), ordered before
            // our stream by `__dlpack__(stream=...)`, alive until `managed` drops.
            // Without the GIL: an unaligned tensor is copied and the stream waited for.
            let data = data as u64;
            py.detach(move || {
                // SAFETY: as above.
                let d = unsafe {
                    DeviceTensor::from_foreign(&gpu, &shape, dtype, data, Box::new(managed))
                }?;
                let t = Tensor::Device(d);
                match target {
                    Some(dev) => crate::place(t, dev),
                    None => Ok(t),
                }
            })
            .map_err(crate::err)
        }
        None => {
            let bytes: &[u8] = if nbytes == 0 {
                &[]
            } else {
                // SAFETY: `nbytes` bytes of host memory the producer keeps until its deleter.
                unsafe { std::slice::from_raw_parts(data as *const u8, nbytes) }
            };
            let host = host_from_bytes(&shape, dtype, bytes).map_err(crate::err)?;
            drop(managed);
            let t = Tensor::Host(host);
            match target {
                Some(dev) => py.detach(|| crate::place(t, dev)).map_err(crate::err),
                None => Ok(t),
            }
        }
    }
}

/// `obj.__dlpack__(...)` asking for a versioned capsule (DLPack 1.x) and, for CUDA, ordering
/// the producer's work before `stream`; a producer that predates `max_version` is asked again
/// without it.
fn ask<'py>(obj: &Bound<'py, PyAny>, stream: Option<usize>) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let kw = pyo3::types::PyDict::new(py);
    if let Some(s) = stream {
        kw.set_item("stream", s)?;
    }
    kw.set_item("max_version", (1, 0))?;
    match obj.call_method("__dlpack__", (), Some(&kw)) {
        Err(e) if e.is_instance_of::<PyTypeError>(py) => {
            kw.del_item("max_version")?;
            obj.call_method("__dlpack__", (), Some(&kw))
        }
        r => r,
    }
}

fn host_from_bytes(shape: &[usize], dtype: DType, b: &[u8]) -> medkern::Result<HostTensor> {
    use bytemuck::pod_collect_to_vec as v;
    match dtype {
        DType::F32 => HostTensor::new(shape, v::<u8, f32>(b)),
        DType::F16 => HostTensor::new(shape, v::<u8, half::f16>(b)),
        DType::BF16 => HostTensor::new(shape, v::<u8, half::bf16>(b)),
        DType::I8 => HostTensor::new(shape, v::<u8, i8>(b)),
        DType::I32 => HostTensor::new(shape, v::<u8, i32>(b)),
        DType::U8 => HostTensor::new(shape, v::<u8, u8>(b)),
        DType::U16 => HostTensor::new(shape, v::<u8, u16>(b)),
    }
}
