//! GPUs: one [`Gpu`] per device ordinal, holding its context, its stream and a lazily filled
//! module/function cache. A missing driver, a missing GPU or a GPU too old for a kernel is an
//! [`Error`], never a panic (cudarc itself panics when libcuda is absent, so we probe first).

pub mod kernels;
#[allow(dead_code)]
pub(crate) mod nvrtc_compile;
pub mod runtime_compile;

use crate::error::{Error, Result, driver};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, sys};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A compute capability, e.g. 9.0 for H100/H200.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Arch {
    pub major: u32,
    pub minor: u32,
}

impl Arch {
    pub const fn new(major: u32, minor: u32) -> Self {
        Arch { major, minor }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sm_{}{}", self.major, self.minor)
    }
}

/// True when the CUDA driver library can be loaded (no GPU needed to answer).
pub fn driver_present() -> bool {
    // SAFETY: only tries dlopen by name; never panics.
    unsafe { sys::is_culib_present() }
}

/// Number of GPUs, or [`Error::NoDriver`] when there is no driver.
pub fn gpu_count() -> Result<usize> {
    if !driver_present() {
        return Err(Error::NoDriver {
            op: "gpu_count",
            detail: "libcuda could not be loaded".into(),
        });
    }
    let n = CudaContext::device_count().map_err(|e| Error::NoDriver {
        op: "gpu_count",
        detail: format!("cuInit/cuDeviceGetCount failed: {e}"),
    })?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// One GPU: context, default stream, and the kernels loaded on it so far.
pub struct Gpu {
    ordinal: usize,
    name: String,
    arch: Arch,
    total_memory: usize,
    driver_version: (i32, i32),
    sm_count: u32,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
}

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gpu({}: {} {})", self.ordinal, self.name, self.arch)
    }
}

impl Gpu {
    /// Opens GPU `ordinal`. Errors: no driver, no such GPU, or a driver call failure.
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>> {
        let count = gpu_count()?;
        if ordinal >= count {
            return Err(Error::NoDevice {
                op: "Gpu::new",
                ordinal,
                count,
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("Gpu::new"))?;
        let (maj, min) = ctx.compute_capability().map_err(driver("Gpu::new"))?;
        let name = ctx.name().map_err(driver("Gpu::new"))?;
        let total_memory = ctx.total_mem().map_err(driver("Gpu::new"))?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver("Gpu::new"))?;
        let mut v = 0i32;
        // SAFETY: out-pointer to a local; the driver is loaded (gpu_count succeeded).
        unsafe { sys::cuDriverGetVersion(&mut v) }
            .result()
            .map_err(driver("Gpu::new"))?;
        let stream = ctx.default_stream();
        Ok(Arc::new(Gpu {
            ordinal,
            name,
            arch: Arch::new(maj as u32, min as u32),
            total_memory,
            driver_version: (v / 1000, (v % 1000) / 10),
            sm_count: sm_count.max(1) as u32,
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        }))
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn arch(&self) -> Arch {
        self.arch
    }
    pub fn total_memory(&self) -> usize {
        self.total_memory
    }
    /// CUDA driver API version as (major, minor), e.g. (13, 0).
    pub fn driver_version(&self) -> (i32, i32) {
        self.driver_version
    }
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The stream every medkern op on this GPU is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// A new stream on this GPU, for callers that overlap work (ops queue on [`Gpu::stream`]).
    pub fn new_stream(&self) -> Result<Arc<CudaStream>> {
        self.ctx.new_stream().map_err(driver("Gpu::new_stream"))
    }
    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver("Gpu::synchronize"))
    }

    /// The loaded function for `kernel`, after checking the arch; loads its module on first use.
    pub fn function(&self, kernel: &'static str) -> Result<CudaFunction> {
        let info = kernels::check_arch(kernel, self.arch)?;
        let mut fns = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = fns.get(kernel) {
            return Ok(f.clone());
        }
        let module = self.module(info.module)?;
        let f = module.load_function(info.name).map_err(|e| Error::Driver {
            op: info.name,
            source: e,
        })?;
        fns.insert(info.name, f.clone());
        Ok(f)
    }

    /// [`Gpu::function`] for a kernel that takes `dynamic_smem` bytes of dynamic shared memory:
    /// the first load opts it in above the default 48 KiB limit.
    pub fn function_with_smem(
        &self,
        kernel: &'static str,
        dynamic_smem: u32,
    ) -> Result<CudaFunction> {
        let f = self.function(kernel)?;
        if dynamic_smem > 48 * 1024 {
            f.set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                dynamic_smem as i32,
            )
            .map_err(driver(kernel))?;
        }
        Ok(f)
    }

    fn module(&self, name: &'static str) -> Result<Arc<CudaModule>> {
        let mut mods = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = mods.get(name) {
            return Ok(m.clone());
        }
        let embedded = kernels::module(name)?;
        let image = self.image_for(embedded)?;
        let m = self.ctx.load_module(image).map_err(driver(embedded.name))?;
        mods.insert(embedded.name, m.clone());
        Ok(m)
    }

    /// Picks the best image: a CUBIN of the same major arch not newer than the GPU, else the
    /// PTX fallback (JIT by the driver), else a run-time NVRTC compile.
    fn image_for(&self, m: &kernels::EmbeddedModule) -> Result<cudarc::nvrtc::Ptx> {
        let own = self.arch.major * 10 + self.arch.minor;
        let cubin = m
            .cubins
            .iter()
            .filter(|(a, _)| a / 10 == self.arch.major && *a <= own)
            .max_by_key(|(a, _)| *a);
        if let Some((_, bytes)) = cubin {
            return Ok(cudarc::nvrtc::Ptx::from_binary(bytes.to_vec()));
        }
        if let Some(ptx) = m.ptx.filter(|_| own >= 80) {
            return Ok(cudarc::nvrtc::Ptx::from_src(ptx));
        }
        let bytes = runtime_compile::cubin_for(m, self.arch)?;
        Ok(cudarc::nvrtc::Ptx::from_binary(bytes))
    }
}
