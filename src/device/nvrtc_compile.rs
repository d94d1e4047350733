//! NVRTC compilation shared by `build.rs` (ahead of time) and the runtime fallback.
//!
//! This file is `include!`d by build.rs through `#[path]`, so it may depend only on std,
//! `libloading` and `cudarc::nvrtc::sys`, never on the rest of the crate.

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::{Path, PathBuf};

/// What NVRTC produced for one module and one target.
pub struct Compiled {
    /// CUBIN bytes for an `sm_XX` target, or NUL-free PTX text bytes for `compute_XX`.
    pub image: Vec<u8>,
    /// The full program log (warnings, ptxas `-v` resource report).
    pub log: String,
}

/// Registers, shared memory and spills of one kernel, parsed from ptxas `-v` output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub kernel: String,
    pub registers: u32,
    pub shared_bytes: u32,
    pub stack_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

/// Loads the NVRTC library from `dir` by full path (builtins first, which NVRTC dlopens by
/// bare name), so cudarc's later bare-name `dlopen` finds the already loaded copy.
/// Returns false when `dir` has no NVRTC.
pub fn preload_nvrtc(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    let has = |prefix: &str| {
        names
            .iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    let builtins = has("libnvrtc-builtins.so");
    let main: Vec<PathBuf> = has("libnvrtc.so");
    if main.is_empty() {
        return false;
    }
    for lib in builtins.iter().chain(main.iter()) {
        // SAFETY: loading NVIDIA's NVRTC shared objects runs only their initialisers; the
        // handles are leaked on purpose so the code stays mapped for the process lifetime.
        if let Ok(l) = unsafe { libloading::Library::new(lib) } {
            std::mem::forget(l);
        }
    }
    // SAFETY: only probes dlopen by name.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// True when some NVRTC can be opened by name (after `preload_nvrtc` or on the system path).
pub fn nvrtc_present() -> bool {
    // SAFETY: only probes dlopen by name; never panics.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's (major, minor) version. Call only when `nvrtc_present()`.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: out-pointers are valid locals; the library is present (caller's contract).
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (rc == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

fn check(rc: cudarc::nvrtc::sys::nvrtcResult, what: &str) -> Result<(), String> {
    if rc == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(format!("{what} failed: {rc:?}"))
    }
}

/// Compiles `source` (named `name`, with in-memory `headers` as (include name, text)) for
/// `target`: `sm_80`-style names give a CUBIN, `compute_80`-style names give PTX.
/// On failure the error carries NVRTC's whole log.
pub fn compile(
    name: &str,
    source: &str,
    headers: &[(&str, &str)],
    target: &str,
    include_dirs: &[PathBuf],
) -> Result<Compiled, String> {
    use cudarc::nvrtc::sys;
    let cstr = |s: &str| CString::new(s).map_err(|_| format!("{name}: NUL byte in {s:?}"));
    let src = cstr(source)?;
    let cname = cstr(name)?;
    let header_srcs: Vec<CString> = headers
        .iter()
        .map(|(_, t)| cstr(t))
        .collect::<Result<_, _>>()?;
    let header_names: Vec<CString> = headers
        .iter()
        .map(|(n, _)| cstr(n))
        .collect::<Result<_, _>>()?;
    let hs: Vec<*const c_char> = header_srcs.iter().map(|c| c.as_ptr()).collect();
    let hn: Vec<*const c_char> = header_names.iter().map(|c| c.as_ptr()).collect();

    let cubin = target.starts_with("sm_");
    let mut opts = vec![
        format!("--gpu-architecture={target}"),
        "--std=c++17".to_string(),
        "-DMEDKERN_NVRTC=1".to_string(),
    ];
    // Source line info (for ncu / compute-sanitizer reports) triples the image size: opt-in.
    if std::env::var("MEDKERN_LINEINFO").is_ok_and(|v| v == "1") {
        opts.push("--generate-line-info".to_string());
    }
    if cubin {
        opts.push("--ptxas-options=-v".to_string());
    }
    for d in include_dirs {
        opts.push(format!("--include-path={}", d.display()));
    }
    let copts: Vec<CString> = opts.iter().map(|o| cstr(o)).collect::<Result<_, _>>()?;
    let optp: Vec<*const c_char> = copts.iter().map(|c| c.as_ptr()).collect();

    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer refers to a live CString for the duration of the calls;
    // counts match the vectors' lengths; `prog` is destroyed on every path below.
    unsafe {
        check(
            sys::nvrtcCreateProgram(
                &mut prog,
                src.as_ptr(),
                cname.as_ptr(),
                hs.len() as c_int,
                hs.as_ptr(),
                hn.as_ptr(),
            ),
            "nvrtcCreateProgram",
        )?;
        let rc = sys::nvrtcCompileProgram(prog, optp.len() as c_int, optp.as_ptr());
        let log = program_log(prog);
        let result = if rc != sys::nvrtcResult::NVRTC_SUCCESS {
            Err(format!(
                "NVRTC could not compile {name} for {target} ({rc:?}); options {opts:?}; log:\n{log}"
            ))
        } else {
            fetch_image(prog, cubin).map(|image| Compiled { image, log })
        };
        let _ = sys::nvrtcDestroyProgram(&mut prog);
        result
    }
}

/// # Safety
/// `prog` must be a live program that has been compiled.
unsafe fn program_log(prog: cudarc::nvrtc::sys::nvrtcProgram) -> String {
    use cudarc::nvrtc::sys;
    let mut size = 0usize;
    // SAFETY: caller's contract; buffer sized by NVRTC.
    unsafe {
        if sys::nvrtcGetProgramLogSize(prog, &mut size) != sys::nvrtcResult::NVRTC_SUCCESS {
            return String::new();
        }
        let mut buf = vec![0 as c_char; size.max(1)];
        if sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr()) != sys::nvrtcResult::NVRTC_SUCCESS {
            return String::new();
        }
        CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
    }
}

/// # Safety
/// `prog` must be a live program that compiled successfully.
unsafe fn fetch_image(
    prog: cudarc::nvrtc::sys::nvrtcProgram,
    cubin: bool,
) -> Result<Vec<u8>, String> {
    use cudarc::nvrtc::sys;
    let mut size = 0usize;
    // SAFETY: caller's contract; the buffer is exactly the size NVRTC reports.
    unsafe {
        if cubin {
            check(sys::nvrtcGetCUBINSize(prog, &mut size), "nvrtcGetCUBINSize")?;
            let mut buf = vec![0u8; size];
            check(
                sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char),
                "nvrtcGetCUBIN",
            )?;
            Ok(buf)
        } else {
            check(sys::nvrtcGetPTXSize(prog, &mut size), "nvrtcGetPTXSize")?;
            let mut buf = vec![0u8; size];
            check(
                sys::nvrtcGetPTX(prog, buf.as_mut_ptr() as *mut c_char),
                "nvrtcGetPTX",
            )?;
            while buf.last() == Some(&0) {
                buf.pop();
            }
            Ok(buf)
        }
    }
}

/// Parses ptxas `-v` lines ("Function properties for K", "N bytes stack frame, N bytes spill
/// stores, N bytes spill loads", "Used N registers, ... N bytes smem") into one row per kernel.
pub fn parse_resources(log: &str) -> Vec<Resources> {
    let mut out: Vec<Resources> = Vec::new();
    let num_before = |line: &str, unit: &str| -> Option<u32> {
        let idx = line.find(unit)?;
        line[..idx].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            out.push(Resources {
                kernel: rest.trim().to_string(),
                ..Default::default()
            });
        } else if let Some(r) = out.last_mut() {
            if line.contains("stack frame") {
                r.stack_bytes = num_before(line, "bytes stack frame").unwrap_or(0);
                r.spill_stores = num_before(line, "bytes spill stores").unwrap_or(0);
                r.spill_loads = num_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used") && line.contains("registers") {
                r.registers = num_before(line, "registers").unwrap_or(0);
                r.shared_bytes = num_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}
