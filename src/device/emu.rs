//! The emulated GPU's host side (feature `emu`): device memory as guarded host mappings and the
//! one call into the emulator (emu/runtime.cpp), which runs the kernels of `kernels/*.cu`
//! compiled for the CPU by build.rs. Everything above this module — the kernel table, the arch
//! check, grid/block/shared-memory computation, the parameter bytes — is the GPU path itself.

use crate::error::{Error, Result};
use std::ffi::c_void;
#[cfg(medkern_emu)]
use std::ffi::{CStr, CString, c_char};
use std::ptr::NonNull;

#[cfg(medkern_emu)]
unsafe extern "C" {
    fn mk_emu_alloc(bytes: usize) -> *mut c_void;
    fn mk_emu_free(p: *mut c_void);
    fn mk_emu_mark_init(p: *mut c_void, n: usize);
    fn mk_emu_set_checks(mask: i32);
    fn mk_emu_launch(
        kernel: *const c_char,
        grid: *const u32,
        block: *const u32,
        smem: u32,
        args: *mut *mut c_void,
        nargs: u32,
        sizes: *const u32,
        seed: u64,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn mk_emu_kernel_name(i: u32) -> *const c_char;
}

/// True when this build contains the emulator (feature `emu` with the CUDA headers present).
pub fn available() -> bool {
    cfg!(medkern_emu)
}

#[cfg(not(medkern_emu))]
fn unavailable(op: &'static str) -> Error {
    Error::Invalid {
        op,
        arg: "device",
        detail: "this build of medkern has no emulated GPU (feature `emu` off, or built without \
                 the CUDA headers: run scripts/setup-nvrtc and rebuild)"
            .into(),
    }
}

/// Emulated device memory: a 256-byte aligned host mapping whose (256-rounded) end abuts a
/// guard page, filled with 0xFF at allocation.
pub struct EmuBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone; access goes through &self / &mut self.
unsafe impl Send for EmuBuf {}
// SAFETY: shared references only read (or hand the address to a launch, which the caller
// orders like a GPU stream).
unsafe impl Sync for EmuBuf {}

impl EmuBuf {
    pub fn alloc(len: usize) -> Result<EmuBuf> {
        #[cfg(medkern_emu)]
        {
            // SAFETY: plain allocation call; null on failure.
            let p = unsafe { mk_emu_alloc(len) };
            NonNull::new(p.cast::<u8>())
                .map(|ptr| EmuBuf { ptr, len })
                .ok_or_else(|| Error::Invalid {
                    op: "EmuBuf::alloc",
                    arg: "bytes",
                    detail: format!("cannot map {len} bytes of emulated device memory"),
                })
        }
        #[cfg(not(medkern_emu))]
        {
            let _ = len;
            Err(unavailable("EmuBuf::alloc"))
        }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping holds at least `len` readable bytes for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    /// Copies `bytes` to the start of the buffer (an upload). Those bytes count as written
    /// for the emulator's initcheck.
    pub fn write_prefix(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.len);
        self.mark_init(n);
        // SAFETY: the mapping holds at least `len` writable bytes, &mut self is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), n) }
            .copy_from_slice(&bytes[..n]);
    }
    /// Sets every byte (a fill); all of them count as written for initcheck.
    pub fn fill(&mut self, byte: u8) {
        self.mark_init(self.len);
        // SAFETY: as in write_prefix.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }.fill(byte);
    }
    fn mark_init(&mut self, n: usize) {
        #[cfg(medkern_emu)]
        // SAFETY: [ptr, ptr + n) lies inside this live allocation.
        unsafe {
            mk_emu_mark_init(self.ptr.as_ptr().cast(), n)
        };
        #[cfg(not(medkern_emu))]
        let _ = n;
    }
}

impl Drop for EmuBuf {
    fn drop(&mut self) {
        #[cfg(medkern_emu)]
        // SAFETY: the pointer came from mk_emu_alloc and is freed once.
        unsafe {
            mk_emu_free(self.ptr.as_ptr().cast())
        };
    }
}

/// Runs `kernel` on the emulator. `params` are cuLaunchKernel's parameter pointers and
/// `sizes` their byte sizes (checked against the kernel's signature).
///
/// # Safety
/// As cuLaunchKernel: every pointer inside the parameters must be a live [`EmuBuf`] address
/// (or null where the kernel allows it) sized for what the kernel touches; the emulator
/// catches many violations (guard pages) but not all.
pub unsafe fn launch(
    kernel: &'static str,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    smem: u32,
    params: &mut [*mut c_void],
    sizes: &[u32],
    seed: u64,
) -> Result<()> {
    #[cfg(medkern_emu)]
    {
        let name = CString::new(kernel).map_err(|_| Error::UnknownKernel {
            kernel: kernel.to_string(),
        })?;
        let g = [grid.0, grid.1, grid.2];
        let b = [block.0, block.1, block.2];
        let mut err = vec![0 as c_char; 512];
        // SAFETY: the arrays outlive the call; the caller vouches for the parameters.
        let rc = unsafe {
            mk_emu_launch(
                name.as_ptr(),
                g.as_ptr(),
                b.as_ptr(),
                smem,
                params.as_mut_ptr(),
                params.len() as u32,
                sizes.as_ptr(),
                seed,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            // SAFETY: the emulator writes a NUL-terminated message into `err`.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            return Err(Error::Launch {
                kernel,
                detail: msg,
            });
        }
        Ok(())
    }
    #[cfg(not(medkern_emu))]
    {
        let _ = (grid, block, smem, params, sizes, seed, kernel);
        Err(unavailable("emu::launch"))
    }
}

/// The emulator's shadow-memory checks (emu/runtime.cpp): all on unless `MEDKERN_EMU_CHECKS`
/// says otherwise (`none`, or a comma list of `memcheck,initcheck,racecheck`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checks(pub i32);
impl Checks {
    /// Accesses past an allocation's exact end or the launched dynamic shared size.
    pub const MEMCHECK: Checks = Checks(1);
    /// Reads of device memory nobody wrote since allocation, and of shared memory the block
    /// never wrote.
    pub const INITCHECK: Checks = Checks(2);
    /// Shared-memory accesses of two threads, one a write, with no barrier between, and
    /// cp.async destinations touched before their wait_group.
    pub const RACECHECK: Checks = Checks(4);
}

/// Runs `f` with only `checks` on for the emulated launches this thread makes (then back to
/// `MEDKERN_EMU_CHECKS`): tests switch a check off to see what a GPU would compute.
pub fn with_checks<R>(checks: Checks, f: impl FnOnce() -> R) -> R {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            #[cfg(medkern_emu)]
            // SAFETY: sets a thread-local integer.
            unsafe {
                mk_emu_set_checks(-1)
            };
        }
    }
    #[cfg(medkern_emu)]
    // SAFETY: as above.
    unsafe {
        mk_emu_set_checks(checks.0)
    };
    #[cfg(not(medkern_emu))]
    let _ = checks;
    let _restore = Restore;
    f()
}

/// The kernels the emulator was built with: one per kernel of the table, then the
/// self-test kernels of emu/selftest.cu (names starting `mk_selftest_`).
pub fn kernel_names() -> Vec<&'static str> {
    #[cfg_attr(not(medkern_emu), allow(unused_mut))]
    let mut v = Vec::new();
    #[cfg(medkern_emu)]
    for i in 0u32.. {
        // SAFETY: returns a static NUL-terminated name, or null past the end.
        let p = unsafe { mk_emu_kernel_name(i) };
        if p.is_null() {
            break;
        }
        // SAFETY: static strings generated by build.rs.
        if let Ok(s) = unsafe { CStr::from_ptr(p) }.to_str() {
            v.push(s);
        }
    }
    v
}
