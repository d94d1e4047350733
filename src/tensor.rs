//! Tensors: contiguous row-major host and device buffers with a shape and a dtype, and the
//! [`Device`] choice that lets every op run on the CPU reference backend or on a GPU.

use crate::device::Gpu;
use crate::device::KernelParam;
use crate::device::emu::EmuBuf;
use crate::dtype::{DType, Element};
use crate::error::{Error, Result, driver};
use cudarc::driver::{CudaSlice, DevicePtr};
use half::{bf16, f16};
use std::sync::Arc;

/// Where an op runs.
#[derive(Clone, Debug)]
pub enum Device {
    /// The f64-accumulating reference implementation.
    Cpu,
    Gpu(Arc<Gpu>),
}

impl Device {
    /// GPU `ordinal`, as an `Err` (not a panic) when there is no driver or no such GPU.
    pub fn gpu(ordinal: usize) -> Result<Device> {
        Ok(Device::Gpu(Gpu::new(ordinal)?))
    }
    /// The emulated GPU (feature `emu`): the GPU path of every op, with the kernels run on
    /// the CPU under memory checks. An `Err` when this build has no emulator.
    pub fn emulated() -> Result<Device> {
        Ok(Device::Gpu(Gpu::emulated()?))
    }
    /// The first GPU when one works, else the CPU.
    pub fn best() -> Device {
        Self::best_or_why().0
    }
    /// GPU 0 if it starts, else the CPU together with why the GPU did not start (no driver, no
    /// device, a context error...), so a caller can say why it runs on the CPU.
    pub fn best_or_why() -> (Device, Option<Error>) {
        match Gpu::new(0) {
            Ok(g) => (Device::Gpu(g), None),
            Err(e) => (Device::Cpu, Some(e)),
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            Device::Gpu(g) if g.is_emulated() => format!("emu ({})", g.name()),
            Device::Gpu(g) => format!("gpu:{} ({} {})", g.ordinal(), g.name(), g.arch()),
        }
    }
}

/// Host element storage, one variant per dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I8(Vec<i8>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    U16(Vec<u16>),
}

macro_rules! each_data {
    ($d:expr, |$v:ident| $body:expr) => {
        match $d {
            HostData::F32($v) => $body,
            HostData::F16($v) => $body,
            HostData::BF16($v) => $body,
            HostData::I8($v) => $body,
            HostData::I32($v) => $body,
            HostData::U8($v) => $body,
            HostData::U16($v) => $body,
        }
    };
}

/// Converts a typed Vec into the matching [`HostData`] variant.
pub trait IntoHostData: Element {
    fn into_data(v: Vec<Self>) -> HostData;
    fn slice(d: &HostData) -> Option<&[Self]>;
}
macro_rules! into_data {
    ($t:ty, $var:ident) => {
        impl IntoHostData for $t {
            fn into_data(v: Vec<Self>) -> HostData {
                HostData::$var(v)
            }
            fn slice(d: &HostData) -> Option<&[Self]> {
                match d {
                    HostData::$var(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
into_data!(f32, F32);
into_data!(f16, F16);
into_data!(bf16, BF16);
into_data!(i8, I8);
into_data!(i32, I32);
into_data!(u8, U8);
into_data!(u16, U16);

fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// A host tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    shape: Vec<usize>,
    data: HostData,
}

impl HostTensor {
    /// Wraps `data` with `shape`; the element count must match.
    pub fn new<T: IntoHostData>(shape: &[usize], data: Vec<T>) -> Result<Self> {
        check_len("HostTensor::new", shape, data.len())?;
        Ok(HostTensor {
            shape: shape.to_vec(),
            data: T::into_data(data),
        })
    }

    /// Rounds f64 values into a tensor of `dtype` (round to nearest, saturating integers).
    pub fn from_f64(shape: &[usize], values: &[f64], dtype: DType) -> Result<Self> {
        check_len("HostTensor::from_f64", shape, values.len())?;
        fn conv<T: Element>(v: &[f64]) -> Vec<T> {
            v.iter().map(|&x| T::from_f64(x)).collect()
        }
        let data = match dtype {
            DType::F32 => HostData::F32(conv(values)),
            DType::F16 => HostData::F16(conv(values)),
            DType::BF16 => HostData::BF16(conv(values)),
            DType::I8 => HostData::I8(conv(values)),
            DType::I32 => HostData::I32(conv(values)),
            DType::U8 => HostData::U8(conv(values)),
            DType::U16 => HostData::U16(conv(values)),
        };
        Ok(HostTensor {
            shape: shape.to_vec(),
            data,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn len(&self) -> usize {
        each_data!(&self.data, |v| v.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn data(&self) -> &HostData {
        &self.data
    }
    pub fn dtype(&self) -> DType {
        match self.data {
            HostData::F32(_) => DType::F32,
            HostData::F16(_) => DType::F16,
            HostData::BF16(_) => DType::BF16,
            HostData::I8(_) => DType::I8,
            HostData::I32(_) => DType::I32,
            HostData::U8(_) => DType::U8,
            HostData::U16(_) => DType::U16,
        }
    }
    /// The elements as `T`, or a dtype error.
    pub fn as_slice<T: IntoHostData>(&self) -> Result<&[T]> {
        T::slice(&self.data).ok_or_else(|| Error::DType {
            op: "HostTensor::as_slice",
            arg: "tensor",
            got: self.dtype(),
            expected: T::DTYPE.to_string(),
        })
    }
    /// Every element widened to f64 (exact for all dtypes).
    pub fn to_f64(&self) -> Vec<f64> {
        each_data!(&self.data, |v| v.iter().map(|x| x.to_f64()).collect())
    }
    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        each_data!(&self.data, |v| bytemuck::cast_slice(v))
    }
    fn from_bytes(shape: &[usize], dtype: DType, b: &[u8]) -> Self {
        let data = match dtype {
            DType::F32 => HostData::F32(bytemuck::pod_collect_to_vec(b)),
            DType::F16 => HostData::F16(bytemuck::pod_collect_to_vec(b)),
            DType::BF16 => HostData::BF16(bytemuck::pod_collect_to_vec(b)),
            DType::I8 => HostData::I8(bytemuck::pod_collect_to_vec(b)),
            DType::I32 => HostData::I32(bytemuck::pod_collect_to_vec(b)),
            DType::U8 => HostData::U8(b.to_vec()),
            DType::U16 => HostData::U16(bytemuck::pod_collect_to_vec(b)),
        };
        HostTensor {
            shape: shape.to_vec(),
            data,
        }
    }
}

impl HostTensor {
    /// The window of `rows × cols` pixels at `(top, left)` of each image of an NHWC tensor
    /// `[N, H, W, C]`, made in place: the window's rows move forward inside this tensor's own
    /// buffer, which is then truncated (its capacity is kept), so that cropping a large image
    /// costs no second copy of it.
    pub fn crop_nhwc(
        mut self,
        top: usize,
        left: usize,
        rows: usize,
        cols: usize,
    ) -> Result<HostTensor> {
        const OP: &str = "HostTensor::crop_nhwc";
        let (n, h, w, c) = match *self.shape() {
            [n, h, w, c] => (n, h, w, c),
            _ => {
                return Err(Error::Shape {
                    op: OP,
                    arg: "tensor",
                    got: self.shape.clone(),
                    expected: "[N, H, W, C] (NHWC images)".into(),
                });
            }
        };
        let fits = |a: usize, b: usize, whole: usize| a.checked_add(b).is_some_and(|e| e <= whole);
        if !fits(top, rows, h) || !fits(left, cols, w) {
            return Err(Error::Invalid {
                op: OP,
                arg: "window",
                detail: format!(
                    "{rows} x {cols} at ({top}, {left}); expected it inside the {h} x {w} image"
                ),
            });
        }
        let row = cols * c;
        // Destination offsets never pass the source's (rows <= h, cols <= w) and rows go in
        // increasing order, so a row is moved before anything overwrites it.
        each_data!(&mut self.data, |v| {
            for img in 0..n {
                for y in 0..rows {
                    let src = ((img * h + top + y) * w + left) * c;
                    let dst = (img * rows + y) * row;
                    v.copy_within(src..src + row, dst);
                }
            }
            v.truncate(n * rows * row);
        });
        self.shape = vec![n, rows, cols, c];
        Ok(self)
    }
}

fn check_len(op: &'static str, shape: &[usize], len: usize) -> Result<()> {
    match numel(shape) {
        Some(n) if n == len => Ok(()),
        _ => Err(Error::Shape {
            op,
            arg: "data",
            got: shape.to_vec(),
            expected: format!("a shape with {len} elements (the data length)"),
        }),
    }
}

/// Device memory: a CUDA allocation, the emulated GPU's guarded host mapping, or CUDA memory
/// another library owns (a DLPack import, [`DeviceTensor::from_foreign`]).
pub enum DevBuf {
    Cuda(CudaSlice<u8>),
    Emu(EmuBuf),
    Foreign(ForeignBuf),
}

/// CUDA memory medkern reads where it is but does not own (PyTorch's or CuPy's, through
/// DLPack). Dropping it waits for the GPU's stream first, so the owner gets its memory back
/// only after every kernel queued on it has finished, then drops `owner` (which returns it).
pub struct ForeignBuf {
    ptr: u64,
    len: usize,
    gpu: Arc<Gpu>,
    owner: Option<Box<dyn Send + Sync>>,
}

impl Drop for ForeignBuf {
    fn drop(&mut self) {
        self.gpu.bind_to_thread();
        // A failed wait leaves nothing better to do than return the memory: the error is the
        // stream's and shows at the next call on it.
        let _ = self.gpu.synchronize();
        drop(self.owner.take());
    }
}

impl DevBuf {
    /// The device address kernels receive.
    pub fn addr(&self) -> u64 {
        match self {
            DevBuf::Cuda(s) => {
                // Event tracking is off (one stream per GPU), so the guard records nothing.
                let (p, _sync) = s.device_ptr(s.stream());
                p
            }
            DevBuf::Emu(e) => e.addr(),
            DevBuf::Foreign(f) => f.ptr,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            DevBuf::Cuda(s) => s.len(),
            DevBuf::Emu(e) => e.len(),
            DevBuf::Foreign(f) => f.len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// SAFETY: a buffer is passed to a kernel as its 8-byte device address.
unsafe impl KernelParam for DevBuf {
    fn param_bytes(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.addr().to_ne_bytes());
    }
}

fn unreachable_foreign() -> Result<()> {
    Err(Error::Invalid {
        op: "DeviceTensor::upload",
        arg: "tensor",
        detail: "a new allocation is never foreign memory".into(),
    })
}

/// A contiguous device buffer. Allocations are 256-byte aligned (the driver's alignment, and
/// the emulated GPU's), which the vectorised kernels rely on.
pub struct DeviceTensor {
    shape: Vec<usize>,
    dtype: DType,
    buf: DevBuf,
    gpu: Arc<Gpu>,
}

impl std::fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceTensor({:?}, {}, {:?})",
            self.shape, self.dtype, self.gpu
        )
    }
}

impl Drop for DeviceTensor {
    /// The buffer is freed on its GPU's stream by cudarc, which does not make that GPU's context
    /// current: on a thread where another GPU's context (or none) is current, the free would go
    /// to the wrong context or fail. Bind ours first; the fields drop after this.
    fn drop(&mut self) {
        if matches!(self.buf, DevBuf::Cuda(_) | DevBuf::Foreign(_)) {
            self.gpu.bind_to_thread();
        }
    }
}

impl DeviceTensor {
    /// Allocates without initialising (every kernel writes all of its output; the emulated
    /// GPU fills new memory with 0xFF so a read of an unwritten element shows).
    pub fn alloc(gpu: &Arc<Gpu>, shape: &[usize], dtype: DType) -> Result<Self> {
        let n = numel(shape)
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| Error::Shape {
                op: "DeviceTensor::alloc",
                arg: "shape",
                got: shape.to_vec(),
                expected: "an element count that fits in memory".into(),
            })?;
        let buf = if gpu.is_emulated() {
            DevBuf::Emu(EmuBuf::alloc(n.max(1))?)
        } else {
            // SAFETY: u8 has no invalid bit patterns; the contents are unspecified until written.
            DevBuf::Cuda(
                unsafe { gpu.stream()?.alloc::<u8>(n.max(1)) }
                    .map_err(driver("DeviceTensor::alloc"))?,
            )
        };
        Ok(DeviceTensor {
            shape: shape.to_vec(),
            dtype,
            buf,
            gpu: gpu.clone(),
        })
    }

    /// A tensor over CUDA memory another library owns (a DLPack import): read where it is
    /// when `ptr` is 256-byte aligned (what medkern's vectorised kernels assume of every
    /// buffer), else copied into a new allocation on this GPU's stream. `owner` is dropped
    /// (returning the memory) once this GPU's stream has finished with it: when the tensor
    /// drops, or right after the copy.
    ///
    /// # Safety
    /// `ptr .. ptr + len·dtype.size()` must be device memory usable in `gpu`'s context,
    /// written before any work now queued on `gpu`'s stream runs (the caller orders the
    /// producer's stream before ours: DLPack's `stream` argument), and neither freed nor
    /// written until `owner` drops.
    pub unsafe fn from_foreign(
        gpu: &Arc<Gpu>,
        shape: &[usize],
        dtype: DType,
        ptr: u64,
        owner: Box<dyn Send + Sync>,
    ) -> Result<Self> {
        const OP: &str = "DeviceTensor::from_foreign";
        if gpu.is_emulated() {
            return Err(Error::Invalid {
                op: OP,
                arg: "device",
                detail: "the emulated GPU cannot read CUDA memory; expected a real GPU".into(),
            });
        }
        let len = numel(shape)
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| Error::Shape {
                op: OP,
                arg: "shape",
                got: shape.to_vec(),
                expected: "an element count that fits in memory".into(),
            })?;
        let foreign = ForeignBuf {
            ptr,
            len,
            gpu: gpu.clone(),
            owner: Some(owner),
        };
        if ptr % 256 == 0 {
            return Ok(DeviceTensor {
                shape: shape.to_vec(),
                dtype,
                buf: DevBuf::Foreign(foreign),
                gpu: gpu.clone(),
            });
        }
        let t = Self::alloc(gpu, shape, dtype)?;
        if len > 0 {
            let stream = gpu.stream()?;
            // SAFETY: both ranges hold `len` bytes of this GPU's memory (the caller's promise
            // and our allocation); `foreign` outlives the copy (its drop synchronises).
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(t.addr(), ptr, len, stream.cu_stream())
            }
            .map_err(driver(OP))?;
        }
        drop(foreign);
        Ok(t)
    }

    /// Copies a host tensor to the GPU.
    pub fn upload(gpu: &Arc<Gpu>, host: &HostTensor) -> Result<Self> {
        let mut t = Self::alloc(gpu, host.shape(), host.dtype())?;
        let bytes = host.bytes();
        if !bytes.is_empty() {
            match &mut t.buf {
                DevBuf::Cuda(b) => {
                    let mut view = b.slice_mut(0..bytes.len());
                    gpu.stream()?
                        .memcpy_htod(bytes, &mut view)
                        .map_err(driver("DeviceTensor::upload"))?;
                }
                DevBuf::Emu(e) => e.write_prefix(bytes),
                DevBuf::Foreign(_) => unreachable_foreign()?,
            }
        }
        Ok(t)
    }

    /// Copies back to the host (synchronises the stream).
    pub fn download(&self) -> Result<HostTensor> {
        let nbytes = self.len() * self.dtype.size();
        let mut bytes = vec![0u8; nbytes];
        if nbytes > 0 {
            match &self.buf {
                DevBuf::Cuda(b) => {
                    let view = b.slice(0..nbytes);
                    self.gpu
                        .stream()?
                        .memcpy_dtoh(&view, &mut bytes)
                        .map_err(driver("DeviceTensor::download"))?;
                    self.gpu.synchronize()?;
                }
                DevBuf::Emu(e) => bytes.copy_from_slice(&e.as_slice()[..nbytes]),
                DevBuf::Foreign(f) => {
                    let stream = self.gpu.stream()?;
                    // SAFETY: `f` covers `nbytes` bytes of this GPU's memory, kept alive by
                    // its owner until `f` drops; the copy completes before the synchronize.
                    unsafe {
                        cudarc::driver::result::memcpy_dtoh_async(
                            &mut bytes,
                            f.ptr,
                            stream.cu_stream(),
                        )
                    }
                    .map_err(driver("DeviceTensor::download"))?;
                    self.gpu.synchronize()?;
                }
            }
        }
        Ok(HostTensor::from_bytes(&self.shape, self.dtype, &bytes))
    }

    /// Sets every byte to `byte`: tests poison outputs (0xFF is NaN for every float dtype)
    /// so an element a kernel forgot to write cannot pass.
    pub fn fill_bytes(&mut self, byte: u8) -> Result<()> {
        match &mut self.buf {
            DevBuf::Cuda(b) => {
                let host = vec![byte; b.len()];
                self.gpu
                    .stream()?
                    .memcpy_htod(&host, b)
                    .map_err(driver("DeviceTensor::fill_bytes"))
            }
            DevBuf::Emu(e) => {
                e.fill(byte);
                Ok(())
            }
            DevBuf::Foreign(_) => Err(Error::Invalid {
                op: "DeviceTensor::fill_bytes",
                arg: "tensor",
                detail: "memory another library owns (a DLPack import) is read-only to medkern"
                    .into(),
            }),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        numel(&self.shape).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
    /// True when the device address is a multiple of `bytes` (the vectorised kernels need 16).
    pub fn is_aligned(&self, bytes: u64) -> bool {
        bytes != 0 && self.buf.addr() % bytes == 0
    }
    /// The device address, for parameter structs.
    pub fn addr(&self) -> u64 {
        self.buf.addr()
    }

    /// The raw buffer, for kernel launches.
    pub fn buffer(&self) -> &DevBuf {
        &self.buf
    }
    pub fn buffer_mut(&mut self) -> &mut DevBuf {
        &mut self.buf
    }
}

/// A tensor on the CPU or on a GPU: what ops take and return.
#[derive(Debug)]
pub enum Tensor {
    Host(HostTensor),
    Device(DeviceTensor),
}

impl From<HostTensor> for Tensor {
    fn from(h: HostTensor) -> Self {
        Tensor::Host(h)
    }
}
impl From<DeviceTensor> for Tensor {
    fn from(d: DeviceTensor) -> Self {
        Tensor::Device(d)
    }
}

impl Tensor {
    /// Builds a tensor on `device` from typed data.
    pub fn new<T: IntoHostData>(device: &Device, shape: &[usize], data: Vec<T>) -> Result<Self> {
        HostTensor::new(shape, data)?.to_device(device)
    }
    pub fn shape(&self) -> &[usize] {
        match self {
            Tensor::Host(h) => h.shape(),
            Tensor::Device(d) => d.shape(),
        }
    }
    pub fn dtype(&self) -> DType {
        match self {
            Tensor::Host(h) => h.dtype(),
            Tensor::Device(d) => d.dtype(),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Tensor::Host(h) => h.len(),
            Tensor::Device(d) => d.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn device(&self) -> Device {
        match self {
            Tensor::Host(_) => Device::Cpu,
            Tensor::Device(d) => Device::Gpu(d.gpu().clone()),
        }
    }
    /// The same elements viewed with another shape of equal element count (no copy): e.g. a
    /// QKV projection `[tokens, 3·heads·d]` as `[tokens, 3, heads, d]` for attention.
    pub fn reshape(self, shape: &[usize]) -> Result<Tensor> {
        check_len("Tensor::reshape", shape, self.len())?;
        Ok(match self {
            Tensor::Host(mut h) => {
                h.shape = shape.to_vec();
                Tensor::Host(h)
            }
            Tensor::Device(mut d) => {
                d.shape = shape.to_vec();
                Tensor::Device(d)
            }
        })
    }
    /// A host copy (downloads a device tensor).
    pub fn to_host(&self) -> Result<HostTensor> {
        match self {
            Tensor::Host(h) => Ok(h.clone()),
            Tensor::Device(d) => d.download(),
        }
    }
    /// An uninitialised tensor on `device` (zeros on the CPU).
    pub fn empty(device: &Device, shape: &[usize], dtype: DType) -> Result<Self> {
        match device {
            Device::Cpu => {
                let n = numel(shape).unwrap_or(0);
                Ok(Tensor::Host(HostTensor::from_f64(
                    shape,
                    &vec![0.0; n],
                    dtype,
                )?))
            }
            Device::Gpu(g) => Ok(Tensor::Device(DeviceTensor::alloc(g, shape, dtype)?)),
        }
    }
}

impl HostTensor {
    /// Copies onto `device`.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Ok(Tensor::Host(self.clone())),
            Device::Gpu(g) => Ok(Tensor::Device(DeviceTensor::upload(g, self)?)),
        }
    }

    /// Onto `device`: moved (no copy) for the CPU, uploaded for a GPU.
    pub fn into_device(self, device: &Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Ok(Tensor::Host(self)),
            Device::Gpu(g) => Ok(Tensor::Device(DeviceTensor::upload(g, &self)?)),
        }
    }
}
