//! The machine code (SASS) of the embedded CUBINs, read with NVIDIA's disassembler `nvdisasm`
//! (from the pinned wheels scripts/setup-nvrtc installs, or a CUDA toolkit); no GPU needed.
//! It gives `medkern info` its per-kernel instruction mix and tests/sass.rs its checks: what
//! the kernel table says a kernel is built on ([`Features`]) must be in its sm_90 SASS, and no
//! kernel may touch local memory. Counts are static (instructions in the binary, not executed).

use super::kernels::{Features, MODULES, Mma};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// NVIDIA's CUBIN disassembler, found on this machine.
#[derive(Clone, Debug)]
pub struct Disassembler {
    path: PathBuf,
}

/// The SASS of one function of a CUBIN: how often each opcode (with its modifiers, as
/// `LDG.E.128` or `HMMA.16816.F32.BF16`) occurs in its code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelSass {
    /// The `kernels/*.cu` module whose CUBIN holds it.
    pub module: &'static str,
    pub kernel: String,
    pub opcodes: BTreeMap<String, u32>,
}

/// The instructions `medkern info` reports per kernel, counted in the SASS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstructionMix {
    /// Tensor-core ops by kind (`HMMA`, `HMMA.SP`, `IMMA`, `IMMA.SP`, `HGMMA`, ...).
    pub tensor: BTreeMap<String, u32>,
    /// Global loads (`LDG`) by access width in bits.
    pub global_loads: BTreeMap<u32, u32>,
    /// Global stores (`STG`) by access width in bits.
    pub global_stores: BTreeMap<u32, u32>,
    /// `cp.async` global-to-shared copies (`LDGSTS`).
    pub cp_async: u32,
    /// TMA tensor loads (`UTMALDG`, Hopper).
    pub tma: u32,
    /// Shared-memory loads (`LDS`, any width).
    pub shared_loads: u32,
    /// `ldmatrix` shared-memory loads (`LDSM`).
    pub ldmatrix: u32,
    /// Shared-memory stores (`STS`).
    pub shared_stores: u32,
    /// Block barriers (`BAR.*`, i.e. `__syncthreads`).
    pub barriers: u32,
    /// Local-memory loads and stores (`LDL`, `STL`): spills or stack arrays.
    pub local: u32,
}

/// The opcode without its modifiers: `LDG` for `LDG.E.128`.
fn head(opcode: &str) -> &str {
    opcode.split('.').next().unwrap_or(opcode)
}

fn has_modifier(opcode: &str, m: &str) -> bool {
    opcode.split('.').skip(1).any(|x| x == m)
}

/// Tensor-core MMA opcodes (Ampere `mma.sync` forms and Hopper's warpgroup `HGMMA`).
fn is_tensor(opcode: &str) -> bool {
    matches!(
        head(opcode),
        "HMMA" | "IMMA" | "BMMA" | "DMMA" | "HGMMA" | "IGMMA" | "QGMMA" | "BGMMA"
    )
}

/// True when `opcode` is the SASS spelling of `mma` on sm_80/sm_90, as read from NVRTC 13.0's
/// output: `HMMA.16816.F32[.BF16]`, `IMMA.16832.S8.S8`, and `.SP` after the opcode for 2:4
/// sparsity (`HMMA.SP.16832.F32`, `IMMA.SP.16864.S8.S8`).
pub fn is_mma(opcode: &str, mma: Mma) -> bool {
    let sparse = has_modifier(opcode, "SP");
    let bf16 = has_modifier(opcode, "BF16");
    let int8 = has_modifier(opcode, "S8") || has_modifier(opcode, "U8");
    let half = head(opcode) == "HMMA" && !has_modifier(opcode, "TF32");
    let imma = head(opcode) == "IMMA" && int8;
    let hgmma = head(opcode) == "HGMMA" && has_modifier(opcode, "F32");
    sparse == mma.sparse()
        && match mma {
            Mma::F16 | Mma::SparseF16 => half && !bf16,
            Mma::Bf16 | Mma::SparseBf16 => half && bf16,
            Mma::I8 | Mma::SparseI8 => imma,
            Mma::WgmmaF16 => hgmma && !bf16,
            Mma::WgmmaBf16 => hgmma && bf16,
        }
}

/// The access width in bits of a load or store opcode: `.128`/`.64` as written, `.U8`/`.S8`
/// 8, `.U16`/`.S16` 16, otherwise 32.
fn width(opcode: &str) -> u32 {
    for m in opcode.split('.').skip(1) {
        match m {
            "128" => return 128,
            "64" => return 64,
            "U16" | "S16" => return 16,
            "U8" | "S8" => return 8,
            _ => {}
        }
    }
    32
}

impl KernelSass {
    /// How many instructions satisfy `pred` (given the opcode with modifiers).
    pub fn count(&self, pred: impl Fn(&str) -> bool) -> u32 {
        self.opcodes
            .iter()
            .filter(|(op, _)| pred(op))
            .map(|(_, n)| *n)
            .sum()
    }

    /// The opcodes that satisfy `pred`, with counts, as `LDL×2 STL×3` (for messages).
    fn list(&self, pred: impl Fn(&str) -> bool) -> String {
        self.opcodes
            .iter()
            .filter(|(op, _)| pred(op))
            .map(|(op, n)| format!("{op}×{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Local-memory loads and stores (`LDL`, `STL`).
    pub fn local_memory(&self) -> u32 {
        self.count(|op| matches!(head(op), "LDL" | "STL"))
    }

    pub fn mix(&self) -> InstructionMix {
        let mut m = InstructionMix::default();
        for (op, &n) in &self.opcodes {
            match head(op) {
                _ if is_tensor(op) => {
                    let kind = if has_modifier(op, "SP") {
                        format!("{}.SP", head(op))
                    } else {
                        head(op).to_string()
                    };
                    *m.tensor.entry(kind).or_default() += n;
                }
                "LDG" => *m.global_loads.entry(width(op)).or_default() += n,
                "STG" => *m.global_stores.entry(width(op)).or_default() += n,
                "LDGSTS" => m.cp_async += n,
                "UTMALDG" => m.tma += n,
                "LDS" => m.shared_loads += n,
                "LDSM" => m.ldmatrix += n,
                "STS" => m.shared_stores += n,
                "BAR" => m.barriers += n,
                "LDL" | "STL" => m.local += n,
                _ => {}
            }
        }
        m
    }

    /// What in this SASS contradicts `features` (the kernel table's row) or touches local
    /// memory; empty when it all holds. Each entry is one sentence naming the opcodes.
    pub fn check(&self, features: Features) -> Vec<String> {
        let mut bad = Vec::new();
        if self.local_memory() > 0 {
            bad.push(format!(
                "touches local memory (spill or stack array): {}",
                self.list(|op| matches!(head(op), "LDL" | "STL"))
            ));
        }
        let tensor = self.count(is_tensor);
        match features.mma {
            Some(mma) => {
                if self.count(|op| is_mma(op, mma)) == 0 {
                    bad.push(format!(
                        "the table says {mma:?} tensor-core MMA but the SASS has none{}",
                        if tensor > 0 {
                            format!(" (it has {})", self.list(is_tensor))
                        } else {
                            String::new()
                        }
                    ));
                } else if self.count(|op| is_tensor(op) && !is_mma(op, mma)) > 0 {
                    bad.push(format!(
                        "the table says {mma:?} tensor-core MMA but the SASS also has {}",
                        self.list(|op| is_tensor(op) && !is_mma(op, mma))
                    ));
                }
            }
            None if tensor > 0 => bad.push(format!(
                "the table says no tensor cores but the SASS has {}",
                self.list(is_tensor)
            )),
            None => {}
        }
        let ldgsts = self.count(|op| head(op) == "LDGSTS");
        match (features.cp_async, ldgsts) {
            (true, 0) => bad.push(
                "the table says cp.async-pipelined but the SASS has no LDGSTS (the copies became \
                 plain loads and stores)"
                    .into(),
            ),
            (false, n) if n > 0 => bad.push(format!(
                "the table says no cp.async but the SASS has {n} LDGSTS"
            )),
            _ => {}
        }
        let utmaldg = self.count(|op| head(op) == "UTMALDG");
        match (features.tma, utmaldg) {
            (true, 0) => bad.push("the table says TMA-fed but the SASS has no UTMALDG".into()),
            (false, n) if n > 0 => bad.push(format!(
                "the table says no TMA but the SASS has {n} UTMALDG"
            )),
            _ => {}
        }
        bad
    }
}

impl fmt::Display for InstructionMix {
    /// `HMMA×32 | LDG 16b×64 32b×64 | STG 32b×64 64b×32 | LDGSTS×56 | LDS×96 LDSM×12 | BAR×1`,
    /// leaving out what is absent; `-` when nothing is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by_width = |name: &str, m: &BTreeMap<u32, u32>| {
            (!m.is_empty()).then(|| {
                let w: Vec<String> = m.iter().map(|(b, n)| format!("{b}b×{n}")).collect();
                format!("{name} {}", w.join(" "))
            })
        };
        let counts = |parts: &[(&str, u32)]| {
            let v: Vec<String> = parts
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(s, n)| format!("{s}×{n}"))
                .collect();
            (!v.is_empty()).then(|| v.join(" "))
        };
        let tensor: Vec<(&str, u32)> = self.tensor.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        let groups: Vec<String> = [
            counts(&tensor),
            by_width("LDG", &self.global_loads),
            by_width("STG", &self.global_stores),
            counts(&[("LDGSTS", self.cp_async), ("UTMALDG", self.tma)]),
            counts(&[
                ("LDS", self.shared_loads),
                ("LDSM", self.ldmatrix),
                ("STS", self.shared_stores),
            ]),
            counts(&[("BAR", self.barriers)]),
            counts(&[("LDL/STL", self.local)]),
        ]
        .into_iter()
        .flatten()
        .collect();
        if groups.is_empty() {
            f.write_str("-")
        } else {
            f.write_str(&groups.join(" | "))
        }
    }
}

/// Reads `nvdisasm -c` output: one [`KernelSass`] per `.text.<function>` section, counting the
/// opcode of every instruction line (`/*0a30*/  @!P0 LDG.E.128 R4, desc[UR4][R2.64] ;`).
pub fn parse(module: &'static str, listing: &str) -> Vec<KernelSass> {
    let mut out: Vec<KernelSass> = Vec::new();
    let mut current: Option<usize> = None;
    for line in listing.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix(".section") {
            let section = rest.trim_start().split(',').next().unwrap_or("");
            current = section.strip_prefix(".text.").map(|name| {
                out.push(KernelSass {
                    module,
                    kernel: name.to_string(),
                    opcodes: BTreeMap::new(),
                });
                out.len() - 1
            });
            continue;
        }
        let Some((addr, insn)) = t.strip_prefix("/*").and_then(|r| r.split_once("*/")) else {
            continue;
        };
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let mut tokens = insn.split_whitespace();
        let mut op = tokens.next().unwrap_or("");
        if op.starts_with('@') {
            op = tokens.next().unwrap_or("");
        }
        let op = op.trim_end_matches(';');
        if !op.starts_with(|c: char| c.is_ascii_uppercase()) {
            continue;
        }
        if let Some(k) = current.and_then(|i| out.get_mut(i)) {
            *k.opcodes.entry(op.to_string()).or_default() += 1;
        }
    }
    out
}

/// A CUBIN written to a fresh file of its own under the temp dir, removed on drop.
struct TempCubin(PathBuf);

impl TempCubin {
    fn new(bytes: &[u8]) -> Result<TempCubin> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let io = |path: &Path, source| Error::Io {
            op: "sass: write CUBIN",
            path: path.display().to_string(),
            source,
        };
        loop {
            let path = std::env::temp_dir().join(format!(
                "medkern-sass-{}-{}.cubin",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            // create_new: never follow or reuse a file someone else placed there.
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    let file = TempCubin(path);
                    f.write_all(bytes).map_err(|e| io(&file.0, e))?;
                    return Ok(file);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(&path, e)),
            }
        }
    }
}

impl Drop for TempCubin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Disassembler {
    /// Finds `nvdisasm`: next to the NVRTC of `MEDKERN_NVRTC_LIB` (`<lib>/../bin`, where
    /// scripts/setup-nvrtc puts it), then under CUDA_HOME, CUDA_PATH, /usr/local/cuda, then on
    /// PATH. None when there is none (`medkern info` then says "no disassembler").
    pub fn find() -> Option<Disassembler> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(lib) = std::env::var_os("MEDKERN_NVRTC_LIB") {
            dirs.push(PathBuf::from(lib).join("..").join("bin"));
        }
        for var in ["CUDA_HOME", "CUDA_PATH"] {
            if let Some(root) = std::env::var_os(var) {
                dirs.push(PathBuf::from(root).join("bin"));
            }
        }
        dirs.push("/usr/local/cuda/bin".into());
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        dirs.into_iter()
            .map(|d| d.join("nvdisasm"))
            .find(|p| p.is_file())
            .map(|p| Disassembler {
                path: p.canonicalize().unwrap_or(p),
            })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tool's release line, e.g. `Cuda compilation tools, release 13.2, V13.2.86`.
    pub fn version(&self) -> Option<String> {
        let out = Command::new(&self.path).arg("--version").output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains("release"))
            .map(|l| l.trim().to_string())
    }

    /// Disassembles one CUBIN (`nvdisasm -c`: code sections only) into per-function counts.
    pub fn disassemble(&self, module: &'static str, cubin: &[u8]) -> Result<Vec<KernelSass>> {
        let file = TempCubin::new(cubin)?;
        let fail = |detail: String| Error::Io {
            op: "sass: nvdisasm",
            path: self.path.display().to_string(),
            source: std::io::Error::other(format!("module {module}: {detail}")),
        };
        let out = Command::new(&self.path)
            .arg("-c")
            .arg(&file.0)
            .output()
            .map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            return Err(fail(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(parse(module, &String::from_utf8_lossy(&out.stdout)))
    }

    /// The SASS of every embedded CUBIN for `sm_<arch>`, one module per thread (the large
    /// modules take seconds each). Empty when the build embedded none for that arch.
    pub fn disassemble_embedded(&self, arch: u32) -> Result<Vec<KernelSass>> {
        let jobs: Vec<(&'static str, &'static [u8])> = MODULES
            .iter()
            .filter_map(|m| {
                m.cubins
                    .iter()
                    .find(|(a, _)| *a == arch)
                    .map(|(_, c)| (m.name, *c))
            })
            .collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(jobs.len())
            .max(1);
        let next = AtomicUsize::new(0);
        let done: Vec<Vec<(usize, Result<Vec<KernelSass>>)>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&(module, cubin)) = jobs.get(i) else {
                                break;
                            };
                            mine.push((i, self.disassemble(module, cubin)));
                        }
                        mine
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        vec![(
                            usize::MAX,
                            Err(Error::Io {
                                op: "sass: nvdisasm",
                                path: self.path.display().to_string(),
                                source: std::io::Error::other("disassembler thread panicked"),
                            }),
                        )]
                    })
                })
                .collect()
        });
        let mut results: Vec<(usize, Result<Vec<KernelSass>>)> =
            done.into_iter().flatten().collect();
        results.sort_by_key(|(i, _)| *i);
        let mut all = Vec::new();
        for (_, r) in results {
            all.extend(r?);
        }
        Ok(all)
    }
}
