//! GPUs: one [`Gpu`] per device ordinal, holding its context, its stream and a lazily filled
//! module/function cache; or the emulated GPU ([`Gpu::emulated`], feature `emu`), which takes
//! the same launch path and runs the kernels on the CPU. A missing driver, a missing GPU or a GPU too old for a kernel is an
//! [`Error`], never a panic (cudarc itself panics when libcuda is absent, so we probe first).

pub mod emu;
#[cfg(all(test, medkern_emu))]
#[allow(clippy::unwrap_used, clippy::panic)]
mod emu_layout_tests;
#[cfg(all(test, medkern_emu))]
#[allow(clippy::unwrap_used, clippy::panic)]
mod emu_tests;
pub mod kernels;
#[allow(dead_code)]
pub(crate) mod nvrtc_compile;
pub mod runtime_compile;
pub mod sass;
pub mod tma;

use crate::error::{Error, Result, driver};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig, sys};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

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

/// Where a [`Gpu`]'s launches go.
enum Backend {
    Cuda(CudaParts),
    /// The emulated GPU: kernels compiled for the CPU (build.rs, emu/), run from the same
    /// launchers.
    Emu {
        seed: std::sync::atomic::AtomicU64,
    },
}

struct CudaParts {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

/// A kernel ready to launch: its function, or None on the emulated GPU (which runs kernels by
/// name), and the dynamic shared memory it was opted in to at its first fetch.
#[derive(Clone)]
struct Fetched {
    f: Option<CudaFunction>,
    /// The block's opt-in limit less the kernel's static shared memory: the most a launch may
    /// ask for (the driver refuses more).
    max_dynamic_smem: u32,
    static_smem: u32,
}

/// Values loaded once per key (a module, a kernel) and shared by every later caller. Each key
/// has its own slot, loaded outside the map's lock: a slow load (a driver JIT or NVRTC compile
/// of one module) never holds up a lookup of another key, and callers wanting the key being
/// loaded wait on its slot, so it loads once.
struct OnceMap<V> {
    map: Mutex<HashMap<&'static str, Arc<Slot<V>>>>,
}

struct Slot<V> {
    value: OnceLock<V>,
    /// Held while loading: one load per key at a time.
    loading: Mutex<()>,
}

impl<V: Clone> OnceMap<V> {
    fn new() -> Self {
        OnceMap {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The value for `key`, loading it first if no caller has; a failed load is not kept (the
    /// next caller retries).
    fn get_or_load(&self, key: &'static str, load: impl FnOnce() -> Result<V>) -> Result<V> {
        let slot = {
            let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(m.entry(key).or_insert_with(|| {
                Arc::new(Slot {
                    value: OnceLock::new(),
                    loading: Mutex::new(()),
                })
            }))
        };
        if let Some(v) = slot.value.get() {
            return Ok(v.clone());
        }
        let _loading = slot.loading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = slot.value.get() {
            return Ok(v.clone());
        }
        let v = load()?;
        Ok(slot.value.get_or_init(|| v).clone())
    }
}

/// Test hook: called with the module's name as each module load starts.
#[cfg(test)]
type LoadHook = Arc<dyn Fn(&'static str) + Send + Sync>;

/// One GPU (or the emulated GPU): its properties, default stream, and the kernels loaded so far.
pub struct Gpu {
    ordinal: usize,
    name: String,
    arch: Arch,
    total_memory: usize,
    driver_version: (i32, i32),
    sm_count: u32,
    /// Shared memory one block may opt in to (CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN;
    /// [`max_dynamic_smem`] of the arch on the emulated GPU), static and dynamic together.
    smem_optin: u32,
    backend: Backend,
    /// Loaded modules by file stem (None on the emulated GPU, whose kernels are linked in).
    modules: OnceMap<Option<Arc<CudaModule>>>,
    /// Fetched kernels by name.
    functions: OnceMap<Fetched>,
    /// Kernels launched so far ([`Gpu::launch_count`]).
    launches: std::sync::atomic::AtomicU64,
    /// Launchers pick the sm_90a kernels where one exists ([`Gpu::set_hopper_kernels`]).
    hopper: std::sync::atomic::AtomicBool,
    #[cfg(test)]
    load_hook: Mutex<Option<LoadHook>>,
}

/// What [`Gpu::timed`] measured of one call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// GPU time between CUDA events recorded on the stream before and after the call (None on
    /// the emulated GPU, whose timings mean nothing).
    pub device_ms: Option<f64>,
    /// Wall time the call took to return (enqueue time: host overhead, allocations included),
    /// without waiting for the GPU.
    pub host_ms: f64,
    /// Kernels the call launched.
    pub launches: u64,
}

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gpu({}: {} {})", self.ordinal, self.name, self.arch)
    }
}

/// `MEDKERN_HOPPER=1` on a compute capability 9.0 device: start with the Hopper kernels on.
fn hopper_from_env(arch: Arch) -> bool {
    arch == Arch::new(9, 0) && std::env::var("MEDKERN_HOPPER").is_ok_and(|v| v == "1")
}

/// The most dynamic shared memory one block may opt in to, by arch (CUDA C++ Programming
/// Guide, "Technical Specifications per Compute Capability"): what the driver refuses above.
pub fn max_dynamic_smem(arch: Arch) -> u32 {
    match (arch.major, arch.minor) {
        (9, _) | (10, _) => 227 * 1024,
        (8, 0) | (8, 7) => 163 * 1024,
        (8, _) | (12, _) => 99 * 1024,
        (7, 5) => 64 * 1024,
        _ => 48 * 1024,
    }
}

/// Dynamic shared memory a kernel may use without opting in.
pub const DEFAULT_DYNAMIC_SMEM: u32 = 48 * 1024;

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
        // Every medkern op on this GPU runs on one stream, so cudarc's per-buffer events
        // (recorded on every use) order nothing: turn them off before any allocation.
        // SAFETY: buffers allocated from here on are only used on this GPU's one stream.
        unsafe { ctx.disable_event_tracking() };
        let (maj, min) = ctx.compute_capability().map_err(driver("Gpu::new"))?;
        let name = ctx.name().map_err(driver("Gpu::new"))?;
        let total_memory = ctx.total_mem().map_err(driver("Gpu::new"))?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver("Gpu::new"))?;
        let smem_optin = ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(driver("Gpu::new"))?;
        let mut v = 0i32;
        // SAFETY: out-pointer to a local; the driver is loaded (gpu_count succeeded).
        unsafe { sys::cuDriverGetVersion(&mut v) }
            .result()
            .map_err(driver("Gpu::new"))?;
        // One non-blocking stream per Gpu (never the legacy NULL stream, which serialises with
        // every other stream of the context, other libraries' included).
        let stream = ctx.new_stream().map_err(driver("Gpu::new"))?;
        // Every buffer of this Gpu is allocated, used and freed on that one stream (ops refuse
        // tensors of another Gpu), so cudarc's per-buffer events order nothing: they only cost
        // two event records per op.
        // SAFETY: medkern never uses a buffer on another stream; `Gpu::new_stream` (unsafe)
        // hands that duty to its caller.
        unsafe { ctx.disable_event_tracking() };
        keep_pool_memory(&ctx);
        let arch = Arch::new(maj as u32, min as u32);
        Ok(Arc::new(Gpu {
            ordinal,
            name,
            arch,
            total_memory,
            driver_version: (v / 1000, (v % 1000) / 10),
            sm_count: sm_count.max(1) as u32,
            smem_optin: u32::try_from(smem_optin).unwrap_or(0),
            backend: Backend::Cuda(CudaParts { ctx, stream }),
            modules: OnceMap::new(),
            functions: OnceMap::new(),
            launches: std::sync::atomic::AtomicU64::new(0),
            hopper: std::sync::atomic::AtomicBool::new(hopper_from_env(arch)),
            #[cfg(test)]
            load_hook: Mutex::new(None),
        }))
    }

    /// The emulated GPU with H100's limits (sm_90, 132 SMs, 227 KiB opt-in shared memory).
    pub fn emulated() -> Result<Arc<Gpu>> {
        Self::emulated_as(Arch::new(9, 0), 132)
    }

    /// The emulated GPU posing as compute capability `arch` with `sm_count` SMs: it refuses
    /// what that arch's driver refuses (shared-memory opt-in limit, kernels needing a newer arch).
    pub fn emulated_as(arch: Arch, sm_count: u32) -> Result<Arc<Gpu>> {
        if !emu::available() {
            return Err(Error::Invalid {
                op: "Gpu::emulated",
                arg: "device",
                detail: "this build has no emulated GPU (feature `emu` off, or no CUDA headers at \
                         build time: run scripts/setup-nvrtc and rebuild)"
                    .into(),
            });
        }
        let seed = std::env::var("MEDKERN_EMU_SEED")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0x6d6b_656d_7531);
        Ok(Arc::new(Gpu {
            ordinal: 0,
            name: format!("medkern emulated GPU ({arch} limits)"),
            arch,
            total_memory: 16 << 30,
            driver_version: (0, 0),
            sm_count: sm_count.max(1),
            smem_optin: max_dynamic_smem(arch),
            backend: Backend::Emu {
                seed: std::sync::atomic::AtomicU64::new(seed),
            },
            modules: OnceMap::new(),
            functions: OnceMap::new(),
            launches: std::sync::atomic::AtomicU64::new(0),
            hopper: std::sync::atomic::AtomicBool::new(hopper_from_env(arch)),
            #[cfg(test)]
            load_hook: Mutex::new(None),
        }))
    }

    /// Whether the launchers pick the Hopper kernels (sm_90a: TMA, mbarrier pipelines, wgmma;
    /// today the dense f16/bf16 GEMM, kernels/gemm_hopper.cu) over the sm_80 ones where one
    /// exists. Off by default until they have passed on an H100/H200 (docs/GPU_VALIDATION.md);
    /// `MEDKERN_HOPPER=1` at device creation, or [`Gpu::set_hopper_kernels`], turns it on.
    pub fn hopper_kernels(&self) -> bool {
        self.hopper.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Chooses the Hopper kernels (true) or the sm_80 ones (false) for this device's later
    /// launches. The Hopper kernels run on compute capability 9.0 only: turning them on
    /// elsewhere is an error.
    pub fn set_hopper_kernels(&self, on: bool) -> Result<()> {
        if on && self.arch != Arch::new(9, 0) {
            return Err(Error::Invalid {
                op: "Gpu::set_hopper_kernels",
                arg: "on",
                detail: format!(
                    "the Hopper kernels are built for sm_90a and need compute capability 9.0; \
                     this GPU is {}",
                    self.arch
                ),
            });
        }
        self.hopper.store(on, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// True for the emulated GPU.
    pub fn is_emulated(&self) -> bool {
        matches!(self.backend, Backend::Emu { .. })
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
    /// CUDA driver API version as (major, minor), e.g. (13, 0); (0, 0) on the emulated GPU.
    pub fn driver_version(&self) -> (i32, i32) {
        self.driver_version
    }
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }
    fn cuda(&self, op: &'static str) -> Result<&CudaParts> {
        match &self.backend {
            Backend::Cuda(c) => Ok(c),
            Backend::Emu { .. } => Err(Error::Device {
                op,
                arg: "gpu",
                got: "the emulated GPU".into(),
                expected: "a CUDA GPU".into(),
            }),
        }
    }
    /// The CUDA context (an error on the emulated GPU).
    pub fn context(&self) -> Result<&Arc<CudaContext>> {
        Ok(&self.cuda("Gpu::context")?.ctx)
    }
    /// The stream every medkern op on this GPU is queued on (an error on the emulated GPU).
    pub fn stream(&self) -> Result<&Arc<CudaStream>> {
        Ok(&self.cuda("Gpu::stream")?.stream)
    }
    /// A new stream on this GPU, for callers that overlap work (ops queue on [`Gpu::stream`]).
    ///
    /// # Safety
    /// cudarc's per-buffer event tracking is off for medkern's context ([`Gpu::new`]): a
    /// buffer of this GPU used on the returned stream must be ordered against [`Gpu::stream`]
    /// by the caller (events or synchronisation) before it is read, written or freed there.
    pub unsafe fn new_stream(&self) -> Result<Arc<CudaStream>> {
        self.cuda("Gpu::new_stream")?
            .ctx
            .new_stream()
            .map_err(driver("Gpu::new_stream"))
    }
    /// Makes this GPU's context current on the calling thread (nothing for the emulated GPU):
    /// a [`crate::DeviceTensor`] dropped on another thread frees its buffer in the right context.
    pub(crate) fn bind_to_thread(&self) {
        if let Backend::Cuda(c) = &self.backend {
            // A failure here leaves the free to report its own error (cudarc records it).
            let _ = c.ctx.bind_to_thread();
        }
    }
    /// Waits for all queued work (the emulated GPU runs each launch to completion).
    pub fn synchronize(&self) -> Result<()> {
        match &self.backend {
            Backend::Cuda(c) => c.stream.synchronize().map_err(driver("Gpu::synchronize")),
            Backend::Emu { .. } => Ok(()),
        }
    }

    /// Kernels launched on this GPU so far (every op, every thread): launches per forward is
    /// the difference around it.
    pub fn launch_count(&self) -> u64 {
        self.launches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` between two CUDA events on this GPU's stream and returns the GPU time between
    /// them (waiting for it), the host time `f` took to return and the kernels it launched.
    /// Kernel time from events rather than wall time around a synchronize, which adds the
    /// launch and sync latency to every sample. Other threads' launches in the meantime are
    /// counted and timed too.
    pub fn timed(&self, f: impl FnOnce() -> Result<()>) -> Result<Timing> {
        const OP: &str = "Gpu::timed";
        let n0 = self.launch_count();
        let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let stream = match &self.backend {
            Backend::Cuda(c) => Some(&c.stream),
            Backend::Emu { .. } => None,
        };
        let start = stream
            .map(|s| s.record_event(timing))
            .transpose()
            .map_err(driver(OP))?;
        let t0 = std::time::Instant::now();
        f()?;
        let host_ms = t0.elapsed().as_secs_f64() * 1e3;
        let device_ms = match (stream, start) {
            (Some(s), Some(start)) => {
                let end = s.record_event(timing).map_err(driver(OP))?;
                Some(f64::from(start.elapsed_ms(&end).map_err(driver(OP))?))
            }
            _ => None,
        };
        Ok(Timing {
            device_ms,
            host_ms,
            launches: self.launch_count() - n0,
        })
    }

    /// Checks the arch and the dynamic shared memory against what `kernel` was opted in to at
    /// its first fetch; returns its function (None on the emulated GPU). Nothing is set here:
    /// a per-launch opt-in raced with other threads launching the same kernel at other sizes.
    fn prepare(&self, kernel: &'static str, dynamic_smem: u32) -> Result<Option<CudaFunction>> {
        kernels::check_arch(kernel, self.arch)?;
        let fetched = self.fetch(kernel)?;
        if dynamic_smem > fetched.max_dynamic_smem {
            return Err(Error::Launch {
                kernel,
                detail: format!(
                    "{dynamic_smem} bytes of dynamic shared memory exceed the {} bytes this \
                     kernel may use: the {} bytes a {} block may opt in to less its {} bytes of \
                     static shared memory (CUDA_ERROR_INVALID_VALUE)",
                    fetched.max_dynamic_smem, self.smem_optin, self.arch, fetched.static_smem
                ),
            });
        }
        match (&self.backend, fetched.f) {
            (Backend::Cuda(_), None) => Err(Error::Launch {
                kernel,
                detail: "no function loaded".into(),
            }),
            (_, f) => Ok(f),
        }
    }

    /// A launch of `kernel`: push its parameters in order, then [`Launch::launch`].
    pub(crate) fn launcher(&self, kernel: &'static str) -> Launch<'_> {
        Launch {
            gpu: self,
            kernel,
            arena: Vec::with_capacity(64),
            spans: Vec::with_capacity(12),
        }
    }
}

/// Raises the release threshold of the device's default memory pool (the one
/// `cuMemAllocAsync` draws from) to the maximum, so freed memory stays with the process for
/// the next forward instead of going back to the driver at every synchronisation. Best effort:
/// a device without memory pools keeps its behaviour.
fn keep_pool_memory(ctx: &Arc<CudaContext>) {
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: out-pointer to a local; the context is current (new_stream bound it).
    let got = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    if got != sys::CUresult::CUDA_SUCCESS || pool.is_null() {
        return;
    }
    let mut threshold = u64::MAX;
    // SAFETY: the attribute takes a cuuint64_t, given by pointer to a live local.
    let _ = unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    };
}

impl Gpu {
    /// `kernel` ready to launch, its module loaded on first use. Both backends take this path,
    /// so the emulated GPU exercises the CUDA path's caching and locking.
    fn fetch(&self, kernel: &'static str) -> Result<Fetched> {
        let info = kernels::kernel_info(kernel)?;
        self.functions.get_or_load(info.name, || {
            let module = self
                .modules
                .get_or_load(info.module, || self.load_module(info.module))?;
            let f = module
                .map(|m| m.load_function(info.name))
                .transpose()
                .map_err(|e| Error::Driver {
                    op: info.name,
                    source: e,
                })?;
            // Opt in once, to all the kernel may take: launches only compare against it.
            let static_smem = match &f {
                Some(f) => {
                    let n = f
                        .get_attribute(
                            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
                        )
                        .map_err(driver(info.name))?;
                    u32::try_from(n).unwrap_or(0)
                }
                None => reported_static_smem(info, self.arch)?,
            };
            let max_dynamic_smem = self.smem_optin.saturating_sub(static_smem);
            if let Some(f) = &f {
                f.set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    i32::try_from(max_dynamic_smem).unwrap_or(i32::MAX),
                )
                .map_err(driver(info.name))?;
            }
            Ok(Fetched {
                f,
                max_dynamic_smem,
                static_smem,
            })
        })
    }

    /// Loads module `name` (a driver JIT or an NVRTC compile when no CUBIN fits: seconds);
    /// nothing to load on the emulated GPU.
    fn load_module(&self, name: &'static str) -> Result<Option<Arc<CudaModule>>> {
        #[cfg(test)]
        {
            let hook = self
                .load_hook
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(h) = hook {
                h(name);
            }
        }
        match &self.backend {
            Backend::Cuda(c) => {
                let embedded = kernels::module(name)?;
                let image = image_for(embedded, self.arch)?;
                let m = c.ctx.load_module(image).map_err(driver(embedded.name))?;
                Ok(Some(m))
            }
            Backend::Emu { .. } => Ok(None),
        }
    }

    /// Test hook: `hook` runs at the start of every module load of this GPU (used by the
    /// emulator's tests only).
    #[cfg(all(test, medkern_emu))]
    pub(crate) fn set_load_hook(&self, hook: impl Fn(&'static str) + Send + Sync + 'static) {
        *self.load_hook.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(hook));
    }
}

/// `kernel`'s static shared memory as ptxas reported it at build time for the newest arch not
/// newer than `arch` (what the emulated GPU counts; 0 when build.rs had no NVRTC).
fn reported_static_smem(kernel: &kernels::KernelInfo, arch: Arch) -> Result<u32> {
    let own = arch.major * 10 + arch.minor;
    Ok(kernels::module(kernel.module)?
        .resources
        .iter()
        .filter(|r| r.kernel == kernel.name && r.arch <= own)
        .max_by_key(|r| r.arch)
        .map_or(0, |r| r.shared_bytes))
}

/// Picks the best image: a CUBIN of the same major arch not newer than the GPU, else the
/// PTX fallback (JIT by the driver), else a run-time NVRTC compile.
fn image_for(m: &kernels::EmbeddedModule, arch: Arch) -> Result<cudarc::nvrtc::Ptx> {
    let own = arch.major * 10 + arch.minor;
    let cubin = m
        .cubins
        .iter()
        .filter(|(a, _)| a / 10 == arch.major && *a <= own)
        .max_by_key(|(a, _)| *a);
    if let Some((_, bytes)) = cubin {
        return Ok(cudarc::nvrtc::Ptx::from_binary(bytes.to_vec()));
    }
    if let Some(ptx) = m.ptx.filter(|_| own >= 80) {
        return Ok(cudarc::nvrtc::Ptx::from_src(ptx));
    }
    let bytes = runtime_compile::cubin_for(m, arch)?;
    Ok(cudarc::nvrtc::Ptx::from_binary(bytes))
}

/// With `MEDKERN_EMU_COVERAGE=DIR`, the first emulated launch of each kernel in this process
/// appends its name to `DIR/<program>.<pid>.txt` (scripts/test counts the kernels the suite
/// ran and lists which test binaries ran each).
fn record_coverage(kernel: &'static str) {
    use std::collections::HashSet;
    use std::io::Write;
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let Some(dir) = DIR.get_or_init(|| std::env::var_os("MEDKERN_EMU_COVERAGE").map(Into::into))
    else {
        return;
    };
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if seen.get_or_insert_with(HashSet::new).insert(kernel) {
        // Test binaries are named `<stem>-<hash>`: keep the stem.
        let program = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .map(|s| match s.rsplit_once('-') {
                Some((stem, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => {
                    stem.to_owned()
                }
                _ => s,
            })
            .unwrap_or_else(|| "unknown".into());
        let path = dir.join(format!("{program}.{}.txt", std::process::id()));
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{kernel}");
        }
    }
}

/// A value passed to a kernel by value: its bytes are the parameter, as cuLaunchKernel reads it.
///
/// # Safety
/// `param_bytes` must be exactly the C layout of the kernel parameter it stands for.
pub(crate) unsafe trait KernelParam {
    fn param_bytes(&self, out: &mut Vec<u8>);
}

macro_rules! pod_param {
    ($($t:ty),*) => {$(
        // SAFETY: plain scalars, passed as their own bytes.
        unsafe impl KernelParam for $t {
            fn param_bytes(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(bytemuck::bytes_of(self));
            }
        }
    )*};
}
pod_param!(
    f32,
    f64,
    i32,
    u32,
    i64,
    u64,
    i8,
    u8,
    u16,
    half::f16,
    half::bf16
);

/// Implements [`KernelParam`] for a `#[repr(C)]` parameter struct with no padding.
macro_rules! struct_param {
    ($t:ty) => {
        // SAFETY: `$t` is #[repr(C)], Copy, and has no padding (size asserted next to it), so
        // its bytes are initialised and are the C struct's layout.
        unsafe impl $crate::device::KernelParam for $t {
            fn param_bytes(&self, out: &mut Vec<u8>) {
                let p = (self as *const $t).cast::<u8>();
                // SAFETY: reads size_of::<$t>() initialised bytes of self.
                out.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(p, std::mem::size_of::<$t>())
                });
            }
        }
    };
}
pub(crate) use struct_param;

/// One kernel launch being assembled: the parameter bytes in order (cuLaunchKernel's
/// `kernelParams`), then [`Launch::launch`] on the CUDA GPU or the emulated one.
pub(crate) struct Launch<'g> {
    gpu: &'g Gpu,
    kernel: &'static str,
    arena: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

impl Launch<'_> {
    /// Appends one parameter.
    pub fn arg<T: KernelParam + ?Sized>(&mut self, v: &T) -> &mut Self {
        // Each parameter starts 16-byte aligned in the arena (offsets; pointers are taken
        // only after the last push).
        let start = self.arena.len().div_ceil(16) * 16;
        self.arena.resize(start, 0);
        v.param_bytes(&mut self.arena);
        self.spans.push((start, self.arena.len() - start));
        self
    }

    /// Checks the configuration as the driver does, then launches.
    ///
    /// # Safety
    /// The parameters must match the kernel's signature and every device address in them
    /// must be a live allocation of this GPU, large enough for what the kernel accesses.
    pub unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<()> {
        let kernel = self.kernel;
        let (bx, by, bz) = cfg.block_dim;
        let (gx, gy, gz) = cfg.grid_dim;
        let threads = u64::from(bx) * u64::from(by) * u64::from(bz);
        let refuse = |detail: String| Err(Error::Launch { kernel, detail });
        if threads == 0 || threads > 1024 || bz > 64 {
            return refuse(format!(
                "block ({bx}, {by}, {bz}) = {threads} threads: the limit is 1 to 1024 (z <= 64) \
                 (CUDA_ERROR_INVALID_VALUE)"
            ));
        }
        if gx == 0 || gy == 0 || gz == 0 || gx > i32::MAX as u32 || gy > 65_535 || gz > 65_535 {
            return refuse(format!(
                "grid ({gx}, {gy}, {gz}): the limits are x <= 2^31-1, y and z <= 65535, none 0 \
                 (CUDA_ERROR_INVALID_VALUE)"
            ));
        }
        let f = self.gpu.prepare(kernel, cfg.shared_mem_bytes)?;
        self.gpu
            .launches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The arena no longer grows: parameter pointers into it stay valid for the call.
        let base = self.arena.as_mut_ptr();
        let mut params: Vec<*mut std::ffi::c_void> = self
            .spans
            .iter()
            // SAFETY: every span lies inside the arena.
            .map(|&(o, _)| unsafe { base.add(o) }.cast())
            .collect();
        match (&self.gpu.backend, f) {
            (Backend::Cuda(c), Some(f)) => {
                // SAFETY: the caller vouches for the parameters; the function belongs to this
                // context and the stream is its default stream.
                unsafe {
                    cudarc::driver::result::launch_kernel(
                        f.cu_function(),
                        cfg.grid_dim,
                        cfg.block_dim,
                        cfg.shared_mem_bytes,
                        c.stream.cu_stream(),
                        &mut params,
                    )
                }
                .map_err(driver(kernel))
            }
            (Backend::Emu { seed }, _) => {
                record_coverage(kernel);
                let sizes: Vec<u32> = self.spans.iter().map(|&(_, n)| n as u32).collect();
                let s = seed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // SAFETY: as for the CUDA launch; the caller vouches for the parameters.
                unsafe {
                    emu::launch(
                        kernel,
                        cfg.grid_dim,
                        cfg.block_dim,
                        cfg.shared_mem_bytes,
                        &mut params,
                        &sizes,
                        s,
                    )
                }
            }
            (Backend::Cuda(_), None) => refuse("no function loaded".into()),
        }
    }
}
