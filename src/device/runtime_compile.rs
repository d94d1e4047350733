//! Run-time NVRTC compilation, used only when build.rs had no NVRTC: compiles the embedded
//! source for the GPU's exact arch and caches the CUBIN on disk, keyed by source hash, arch
//! and NVRTC version, so the cost is paid once per machine.

use super::nvrtc_compile;
use super::{Arch, kernels::EmbeddedModule};
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Finds and loads NVRTC once: `MEDKERN_NVRTC_LIB` at run time, CUDA_HOME, CUDA_PATH,
/// /usr/local/cuda, then the system loader. Returns the library dir if known. No path of the
/// build machine is compiled in: on a deployment host, whoever could write to that path (often
/// under /tmp) would get their library loaded.
pub fn load_nvrtc() -> Result<Option<PathBuf>> {
    static FOUND: OnceLock<Option<Option<PathBuf>>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(d) = std::env::var_os("MEDKERN_NVRTC_LIB") {
            dirs.push(d.into());
        }
        for var in ["CUDA_HOME", "CUDA_PATH"] {
            if let Some(r) = std::env::var_os(var) {
                let r = PathBuf::from(r);
                dirs.push(r.join("lib64"));
                dirs.push(r.join("lib"));
            }
        }
        dirs.push("/usr/local/cuda/lib64".into());
        for d in dirs {
            if nvrtc_compile::preload_nvrtc(&d) {
                return Some(Some(d));
            }
        }
        nvrtc_compile::nvrtc_present().then_some(None)
    });
    found.clone().ok_or_else(|| {
        Error::Nvrtc(
            "no NVRTC library found (set MEDKERN_NVRTC_LIB, CUDA_HOME, or install the CUDA 13.0 \
             NVRTC; scripts/setup-nvrtc installs the pinned wheels)"
                .into(),
        )
    })
}

/// NVRTC's version if it can be loaded.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    load_nvrtc()
        .ok()
        .and_then(|_| nvrtc_compile::nvrtc_version())
}

fn include_dirs(lib: Option<&PathBuf>) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("MEDKERN_CUDA_INCLUDE") {
        roots.push(d.into());
    }
    if let Some(l) = lib {
        roots.push(l.join("..").join("include"));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(r) = std::env::var_os(var) {
            roots.push(PathBuf::from(r).join("include"));
        }
    }
    roots.push("/usr/local/cuda/include".into());
    let mut out: Vec<PathBuf> = Vec::new();
    for r in roots.into_iter().map(|r| r.canonicalize().unwrap_or(r)) {
        if !r.join("cuda_fp16.h").exists() || out.contains(&r) {
            continue;
        }
        let cccl = r.join("cccl");
        out.push(r);
        if cccl.exists() {
            out.push(cccl);
        }
    }
    out
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MEDKERN_CACHE_DIR") {
        return Some(d.into());
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("medkern"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("medkern"))
}

/// Returns a CUBIN of `module` for `arch`, from the disk cache or freshly compiled.
pub fn cubin_for(module: &EmbeddedModule, arch: Arch) -> Result<Vec<u8>> {
    cubin_cached_in(module, arch, cache_dir())
}

/// [`cubin_for`] with an explicit cache directory (None: no caching).
pub fn cubin_cached_in(
    module: &EmbeddedModule,
    arch: Arch,
    cache: Option<PathBuf>,
) -> Result<Vec<u8>> {
    let lib = load_nvrtc()?;
    let (maj, min) = nvrtc_compile::nvrtc_version().unwrap_or((0, 0));
    // An sm_90a module (first line `// medkern-targets: sm_90a`) compiles for the
    // arch-specific target, which only compute capability 9.0 runs.
    let specific = if module.source.starts_with("// medkern-targets: sm_90a") {
        "a"
    } else {
        ""
    };
    let file = format!(
        "{}-{:016x}-sm_{}{}{specific}-nvrtc{maj}.{min}.cubin",
        module.name, module.source_hash, arch.major, arch.minor
    );
    let cached = cache.map(|d| d.join(&file));
    if let Some(image) = cached
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|bytes| verified(&bytes).map(<[u8]>::to_vec))
    {
        return Ok(image);
    }
    let target = format!("sm_{}{}{specific}", arch.major, arch.minor);
    let compiled = nvrtc_compile::compile(
        &format!("{}.cu", module.name),
        module.source,
        super::kernels::HEADERS,
        &target,
        &include_dirs(lib.as_ref()),
    )
    .map_err(Error::Nvrtc)?;
    if let Some(p) = cached {
        // A cache that cannot be written only costs a recompile next time.
        if let Some(parent) = p.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, sealed(&compiled.image)).is_ok() {
            let _ = std::fs::rename(&tmp, &p);
        }
    }
    Ok(compiled.image)
}

/// A cache file: this magic, the SHA-256 of the CUBIN, the CUBIN.
const CACHE_MAGIC: &[u8; 8] = b"MKCUBIN1";

fn sealed(image: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::with_capacity(40 + image.len());
    out.extend_from_slice(CACHE_MAGIC);
    out.extend_from_slice(&Sha256::digest(image));
    out.extend_from_slice(image);
    out
}

/// The CUBIN of a cache file whose hash matches; None for a truncated, corrupted or foreign
/// file (recompiled and rewritten then), so the driver never loads bytes the compiler did
/// not produce for this key.
fn verified(file: &[u8]) -> Option<&[u8]> {
    use sha2::{Digest, Sha256};
    let rest = file.strip_prefix(CACHE_MAGIC.as_slice())?;
    if rest.len() < 32 {
        return None;
    }
    let (hash, image) = rest.split_at(32);
    (Sha256::digest(image).as_slice() == hash && !image.is_empty()).then_some(image)
}
