//! Compiles every `kernels/*.cu` through NVRTC into a CUBIN for sm_80 and sm_90 plus a
//! compute_80 PTX fallback, keeps each kernel's resource report, and embeds it all in
//! `$OUT_DIR/kernels_gen.rs`. With no NVRTC the sources are embedded alone and compiled at
//! run time (see `src/device/runtime_compile.rs`), unless `MEDKERN_REQUIRE_NVRTC=1`.

#[path = "src/device/nvrtc_compile.rs"]
#[allow(dead_code)]
mod nvrtc_compile;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Targets built ahead of time: CUBINs for sm_80 and sm_90 and the compute_80 PTX every newer
/// GPU JITs from. `MEDKERN_TARGETS` (comma-separated) narrows it, e.g. to `sm_90` for a bundle
/// that only has to run on H100/H200.
const DEFAULT_TARGETS: &str = "sm_80,sm_90,compute_80";

fn fnv1a(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed={name}");
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn sorted_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("medkern build: cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some(ext))
        .collect();
    v.sort();
    v
}

/// Finds NVRTC: the project variable, then CUDA_HOME / CUDA_PATH, then the system loader.
fn locate_nvrtc() -> Option<Option<PathBuf>> {
    let mut dirs = Vec::new();
    if let Some(d) = env_path("MEDKERN_NVRTC_LIB") {
        dirs.push(d);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env_path(var) {
            dirs.push(root.join("lib64"));
            dirs.push(root.join("lib"));
        }
    }
    for d in dirs {
        if nvrtc_compile::preload_nvrtc(&d) {
            return Some(Some(d));
        }
    }
    nvrtc_compile::nvrtc_present().then_some(None)
}

fn include_dirs(lib_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(d) = env_path("MEDKERN_CUDA_INCLUDE") {
        roots.push(d);
    }
    if let Some(l) = lib_dir {
        roots.push(l.join("..").join("include"));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            roots.push(PathBuf::from(root).join("include"));
        }
    }
    roots.push(PathBuf::from("/usr/local/cuda/include"));
    let mut out: Vec<PathBuf> = Vec::new();
    for r in roots {
        let r = r.canonicalize().unwrap_or(r);
        if r.join("cuda_fp16.h").exists() && !out.contains(&r) {
            let cccl = r.join("cccl");
            out.push(r);
            if cccl.exists() {
                out.push(cccl);
            }
        }
    }
    out
}

fn fail_with_log(msg: &str) -> ! {
    for line in msg.lines() {
        println!("cargo:warning={line}");
        eprintln!("{line}");
    }
    std::process::exit(1);
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let kdir = root.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=src/device/nvrtc_compile.rs");
    println!("cargo:rerun-if-env-changed=MEDKERN_REQUIRE_NVRTC");
    println!("cargo:rerun-if-env-changed=MEDKERN_LINEINFO");
    println!("cargo:rerun-if-env-changed=MEDKERN_TARGETS");
    let target_list =
        std::env::var("MEDKERN_TARGETS").unwrap_or_else(|_| DEFAULT_TARGETS.to_string());
    let targets: Vec<String> = target_list
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if targets
        .iter()
        .any(|t| !(t.starts_with("sm_") || t.starts_with("compute_")))
    {
        fail_with_log(&format!(
            "medkern build: MEDKERN_TARGETS={target_list:?}: expected sm_XX or compute_XX names"
        ));
    }
    let require = std::env::var("MEDKERN_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    kernel_consts(&root, &out);

    let modules = sorted_files(&kdir, "cu");
    let header_paths = sorted_files(&kdir.join("common"), "cuh");
    let headers: Vec<(String, String)> = header_paths
        .iter()
        .map(|p| {
            let name = format!(
                "common/{}",
                p.file_name().and_then(|n| n.to_str()).unwrap_or("")
            );
            let text =
                std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            (name, text)
        })
        .collect();
    let header_refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();

    let nvrtc = locate_nvrtc();
    let incs = include_dirs(nvrtc.as_ref().and_then(|d| d.as_deref()));
    let version = nvrtc.as_ref().and_then(|_| nvrtc_compile::nvrtc_version());
    match (&nvrtc, require) {
        (None, true) => fail_with_log(
            "medkern build: MEDKERN_REQUIRE_NVRTC=1 but no NVRTC was found (MEDKERN_NVRTC_LIB, \
             CUDA_HOME, CUDA_PATH, system). Run scripts/setup-nvrtc.",
        ),
        (None, false) => println!(
            "cargo:warning=medkern: no NVRTC found at build time; kernels will be compiled at run \
             time (run scripts/setup-nvrtc to precompile)"
        ),
        (Some(_), _) if incs.is_empty() => fail_with_log(
            "medkern build: NVRTC found but no CUDA headers (cuda_fp16.h); set MEDKERN_CUDA_INCLUDE",
        ),
        (Some(_), _) => {}
    }

    let mut code = String::new();
    let mut spills = Vec::new();
    code.push_str("// @generated by build.rs\n");
    let _ = writeln!(
        code,
        "pub const BUILD_NVRTC: Option<(i32, i32)> = {version:?};"
    );
    let built: &[String] = if nvrtc.is_some() { &targets } else { &[] };
    let _ = writeln!(code, "pub const BUILD_TARGETS: &[&str] = &{built:?};");
    code.push_str("pub static HEADERS: &[(&str, &str)] = &[\n");
    for p in &header_paths {
        let name = format!(
            "common/{}",
            p.file_name().and_then(|n| n.to_str()).unwrap_or("")
        );
        let _ = writeln!(
            code,
            "    ({name:?}, include_str!({:?})),",
            p.display().to_string()
        );
    }
    code.push_str("];\npub static MODULES: &[EmbeddedModule] = &[\n");

    for m in &modules {
        let stem = m
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        let source =
            std::fs::read_to_string(m).unwrap_or_else(|e| panic!("read {}: {e}", m.display()));
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        fnv1a(&mut hash, source.as_bytes());
        for (n, t) in &headers {
            fnv1a(&mut hash, n.as_bytes());
            fnv1a(&mut hash, t.as_bytes());
        }
        let mtargets = module_targets(&source, &targets);
        let mut cubins = String::new();
        let mut ptx = "None".to_string();
        let mut resources = String::new();
        if nvrtc.is_some() {
            // Reuse the images of an unchanged module (same sources, NVRTC, options) from an
            // earlier build of this OUT_DIR; compile the others' targets in parallel.
            let lineinfo = std::env::var("MEDKERN_LINEINFO").is_ok_and(|v| v == "1");
            let key =
                format!("{hash:016x}-{version:?}-{lineinfo}").replace([' ', '(', ')', ','], "");
            let cached = |t: &String| -> Option<nvrtc_compile::Compiled> {
                let image = std::fs::read(out.join(format!("{stem}.{t}.{key}.img"))).ok()?;
                let log =
                    std::fs::read_to_string(out.join(format!("{stem}.{t}.{key}.log"))).ok()?;
                Some(nvrtc_compile::Compiled { image, log })
            };
            let results: Vec<Result<nvrtc_compile::Compiled, String>> = std::thread::scope(|s| {
                let hs = &header_refs;
                let handles: Vec<_> = mtargets
                    .iter()
                    .map(|t| {
                        let (stem, source, incs) = (&stem, &source, &incs);
                        let hit = cached(t);
                        s.spawn(move || match hit {
                            Some(c) => Ok(c),
                            None => {
                                nvrtc_compile::compile(&format!("{stem}.cu"), source, hs, t, incs)
                            }
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err("NVRTC thread panicked".into()))
                    })
                    .collect()
            });
            for (t, r) in mtargets.iter().zip(&results) {
                if let Ok(c) = r {
                    let _ = std::fs::write(out.join(format!("{stem}.{t}.{key}.img")), &c.image);
                    let _ = std::fs::write(out.join(format!("{stem}.{t}.{key}.log")), &c.log);
                }
            }
            for (target, res) in mtargets.iter().zip(results) {
                let compiled =
                    res.unwrap_or_else(|log| fail_with_log(&format!("medkern build: {log}")));
                let is_cubin = target.starts_with("sm_");
                let file = out.join(format!(
                    "{stem}.{target}.{}",
                    if is_cubin { "cubin" } else { "ptx" }
                ));
                std::fs::write(&file, &compiled.image)
                    .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
                if is_cubin {
                    let arch: u32 = target
                        .trim_start_matches("sm_")
                        .trim_end_matches('a')
                        .parse()
                        .unwrap_or(0);
                    let _ = write!(
                        cubins,
                        "({arch}, include_bytes!({:?}).as_slice()), ",
                        file.display().to_string()
                    );
                    // ptxas serialises wgmma it cannot keep asynchronous (an accumulator
                    // touched between issue and wait): correct but slow, so a failure here.
                    for l in compiled
                        .log
                        .lines()
                        .filter(|l| l.contains("are serialized"))
                    {
                        spills.push(format!("{stem} on sm_{arch}: {}", l.trim()));
                    }
                    for r in nvrtc_compile::parse_resources(&compiled.log) {
                        if r.stack_bytes > 0 {
                            println!(
                                "cargo:warning=medkern: {} on sm_{arch} uses a {}-byte stack frame (local memory)",
                                r.kernel, r.stack_bytes
                            );
                        }
                        if r.spill_stores > 0 || r.spill_loads > 0 {
                            spills.push(format!(
                                "{} on sm_{arch}: {} bytes spill stores, {} bytes spill loads",
                                r.kernel, r.spill_stores, r.spill_loads
                            ));
                        }
                        let _ = write!(
                            resources,
                            "KernelResources {{ kernel: {:?}, arch: {arch}, registers: {}, shared_bytes: {}, \
                             stack_bytes: {}, spill_stores: {}, spill_loads: {} }},\n            ",
                            r.kernel,
                            r.registers,
                            r.shared_bytes,
                            r.stack_bytes,
                            r.spill_stores,
                            r.spill_loads
                        );
                    }
                } else {
                    ptx = format!("Some(include_str!({:?}))", file.display().to_string());
                }
            }
        }
        let _ = writeln!(
            code,
            "    EmbeddedModule {{\n        name: {stem:?},\n        source: include_str!({:?}),\n        \
             source_hash: 0x{hash:016x},\n        cubins: &[{cubins}],\n        ptx: {ptx},\n        \
             resources: &[\n            {resources}],\n    }},",
            m.display().to_string()
        );
    }
    code.push_str("];\n");

    if !spills.is_empty() {
        let msg = format!(
            "medkern build: kernels spill registers (or ptxas serialised their wgmma):\n{}",
            spills.join("\n")
        );
        if require {
            fail_with_log(&msg);
        }
        for l in msg.lines() {
            println!("cargo:warning={l}");
        }
    }
    let dst = out.join("kernels_gen.rs");
    std::fs::write(&dst, code).unwrap_or_else(|e| panic!("write {}: {e}", dst.display()));

    println!("cargo::rustc-check-cfg=cfg(medkern_emu)");
    if std::env::var_os("CARGO_FEATURE_EMU").is_some() {
        build_emu(&root, &out, &incs, require);
    }
}

/// The targets one module is built for: the build's, unless its first line is
/// `// medkern-targets: sm_90a` (arch-specific instructions such as wgmma, which no other
/// target accepts): then the listed targets whose family the build includes (sm_90a when
/// sm_90 is built), and no PTX.
fn module_targets(source: &str, targets: &[String]) -> Vec<String> {
    let Some(list) = source
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("// medkern-targets:"))
    else {
        return targets.to_vec();
    };
    list.split(',')
        .map(str::trim)
        .filter(|t| {
            let family = t.trim_end_matches('a');
            targets.iter().any(|b| b.trim_end_matches('a') == family)
        })
        .map(str::to_string)
        .collect()
}

/// The launch constants the kernels and their Rust launchers share: each `MK_CONST`, `MK_LIST`
/// and `MK_FN2` line of kernels/common/consts.cuh (the one place they are defined; its head
/// comment gives the syntax) as Rust in `$OUT_DIR/kernel_consts.rs`, included as
/// `crate::ops::consts`. A line this cannot read fails the build.
fn kernel_consts(root: &Path, out: &Path) {
    const REL: &str = "kernels/common/consts.cuh";
    println!("cargo:rerun-if-changed={REL}");
    let path = root.join(REL);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| fail_with_log(&format!("medkern build: read {REL}: {e}")));
    let mut code = format!("// @generated by build.rs from {REL}\n");
    let mut consts: Vec<String> = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    let mut doc: Vec<String> = Vec::new();
    let ident = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    for (i, raw) in text.lines().enumerate() {
        let fail = |why: String| -> ! {
            fail_with_log(&format!(
                "medkern build: {REL}:{}: {why}\n    {raw}\n(each definition is one line of \
                 MK_CONST(NAME, expr), MK_LIST(NAME, expr, ...) or MK_FN2(NAME, A, B, expr); \
                 expr: decimal integers, earlier names, + - * / % and parentheses)",
                i + 1
            ))
        };
        let (line, comment) = match raw.split_once("//") {
            Some((l, c)) => (l.trim(), Some(c.trim())),
            None => (raw.trim(), None),
        };
        if line.is_empty() {
            match comment {
                Some(c) => doc.push(c.to_string()),
                None => doc.clear(),
            }
            continue;
        }
        if line.starts_with('#') || line == "namespace mk {" || line == "}" {
            doc.clear();
            continue;
        }
        let Some((kind, rest)) = line.split_once('(') else {
            fail("not a definition".into())
        };
        let Some(body) = rest.strip_suffix(')') else {
            fail("expected the definition to end the line with ')'".into())
        };
        // Arguments split at top-level commas.
        let mut args: Vec<&str> = Vec::new();
        let (mut depth, mut start) = (0i32, 0usize);
        for (j, ch) in body.char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    args.push(body[start..j].trim());
                    start = j + 1;
                }
                _ => {}
            }
            if depth < 0 {
                fail("unbalanced parentheses".into());
            }
        }
        args.push(body[start..].trim());
        let name = args[0];
        if !ident(name) || taken.iter().any(|t| t == name) {
            fail(format!("{name:?} is not a new identifier"));
        }
        // An expression Rust and C++ read alike: integers, known names, + - * / % ( ).
        let check = |e: &str, params: &[&str]| -> String {
            if e.is_empty() {
                fail("empty expression".into());
            }
            let mut tok = String::new();
            let mut depth = 0i32;
            for ch in e.chars().chain([' ']) {
                if ch.is_ascii_alphanumeric() || ch == '_' {
                    tok.push(ch);
                    continue;
                }
                if !tok.is_empty() {
                    let number = tok.chars().all(|c| c.is_ascii_digit());
                    if !(number || consts.contains(&tok) || params.contains(&tok.as_str())) {
                        fail(format!(
                            "{tok:?} is neither a decimal integer nor a name defined above"
                        ));
                    }
                    tok.clear();
                }
                match ch {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    '+' | '-' | '*' | '/' | '%' | ' ' => {}
                    _ => fail(format!("unsupported character {ch:?} in {e:?}")),
                }
                if depth < 0 {
                    fail("unbalanced parentheses".into());
                }
            }
            if depth != 0 {
                fail("unbalanced parentheses".into());
            }
            e.split_whitespace().collect::<Vec<_>>().join(" ")
        };
        doc.extend(comment.map(str::to_string));
        for d in doc.drain(..) {
            let _ = writeln!(code, "/// {d}");
        }
        match (kind, args.len()) {
            ("MK_CONST", 2) => {
                let e = check(args[1], &[]);
                let _ = writeln!(code, "pub const {name}: usize = {e};");
                consts.push(name.to_string());
            }
            ("MK_LIST", n) if n >= 2 => {
                let items: Vec<String> = args[1..].iter().map(|e| check(e, &[])).collect();
                let _ = writeln!(
                    code,
                    "pub const {name}: [usize; {}] = [{}];",
                    items.len(),
                    items.join(", ")
                );
            }
            ("MK_FN2", 4) => {
                let (a, b) = (args[1], args[2]);
                if !ident(a)
                    || !ident(b)
                    || a == b
                    || [a, b].iter().any(|p| consts.iter().any(|c| c == p))
                {
                    fail(format!(
                        "parameters {a:?}, {b:?}: expected two new identifiers"
                    ));
                }
                let e = check(args[3], &[a, b]);
                let _ = writeln!(
                    code,
                    "pub const fn {name}({a}: usize, {b}: usize) -> usize {{\n    {e}\n}}"
                );
            }
            _ => fail(format!("{kind} with {} arguments", args.len())),
        }
        taken.push(name.to_string());
    }
    let dst = out.join("kernel_consts.rs");
    std::fs::write(&dst, code).unwrap_or_else(|e| panic!("write {}: {e}", dst.display()));
}

/// The kernel table of src/device/kernels.rs as (module, kernel names): the emulated GPU gets
/// one entry per kernel, so a kernel in the table that no `.cu` defines fails this build.
fn kernel_table(root: &Path) -> Vec<(String, Vec<String>)> {
    let path = root.join("src/device/kernels.rs");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("medkern build: read {}: {e}", path.display()));
    let start = text
        .find("pub static KERNELS")
        .unwrap_or_else(|| panic!("medkern build: no KERNELS table in {}", path.display()));
    let body = &text[start..];
    let end = body.find("];\n").unwrap_or(body.len());
    let body = &body[..end];
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.find(" @ ") {
        let head = &rest[..at];
        let module = head
            .rsplit('"')
            .nth(1)
            .unwrap_or_else(|| panic!("medkern build: malformed kernel table near {head:?}"))
            .to_string();
        let open = rest[at..]
            .find('[')
            .map(|i| at + i + 1)
            .unwrap_or(rest.len());
        let close = rest[open..]
            .find(']')
            .map(|i| open + i)
            .unwrap_or(rest.len());
        let names: Vec<String> = rest[open..close]
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        // A module may take several rows (one per feature set): one entry per module.
        match out.iter_mut().find(|(m, _)| *m == module) {
            Some((_, known)) => known.extend(names),
            None => out.push((module, names)),
        }
        rest = &rest[close..];
    }
    out
}

/// The emulated GPU (feature `emu`): every `kernels/*.cu`, unchanged, compiled by the host C++
/// compiler under `emu/emu.h`, one translation unit per module wrapped in its own namespace,
/// plus a registry of one trampoline per kernel of the table (emu/runtime.cpp).
/// GCC flags that instrument the emulated kernels' memory accesses (see build_emu).
const TSAN_FLAGS: [&str; 3] = [
    "-fsanitize=thread",
    "--param=tsan-instrument-func-entry-exit=0",
    "--param=tsan-distinguish-volatile=0",
];

fn build_emu(root: &Path, out: &Path, incs: &[PathBuf], require: bool) {
    println!("cargo:rerun-if-changed=emu");
    println!("cargo:rerun-if-changed=src/device/kernels.rs");
    let x86_linux = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "x86_64")
        && std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|o| o == "linux");
    if !x86_linux || incs.is_empty() {
        let why = if x86_linux {
            "no CUDA headers (cuda_fp16.h) found; run scripts/setup-nvrtc"
        } else {
            "the emulator's fibers are written for x86-64 Linux"
        };
        if require {
            fail_with_log(&format!(
                "medkern build: cannot build the emulated GPU: {why}"
            ));
        }
        println!(
            "cargo:warning=medkern: emulated GPU not built ({why}); Device::emulated() will return an error"
        );
        return;
    }
    let edir = out.join("emu");
    std::fs::create_dir_all(&edir).unwrap_or_else(|e| panic!("mkdir {}: {e}", edir.display()));
    let cache = edir.join("cache");
    std::fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("mkdir {}: {e}", cache.display()));
    let mut table = kernel_table(root);
    // emu/selftest.cu: deliberately wrong kernels the emulator must report (emu_tests) and
    // tensor-core layout probes (emu_layout_tests).
    table.push((
        "selftest".to_string(),
        [
            "mk_selftest_static_smem",
            "mk_selftest_divergence",
            "mk_selftest_deadlock",
            "mk_selftest_static_oob",
            "mk_selftest_race_raw",
            "mk_selftest_race_war",
            "mk_selftest_cp_async_early_read",
            "mk_selftest_cp_async_waited",
            "mk_selftest_mma_f16",
            "mk_selftest_mma_bf16",
            "mk_selftest_mma_s8",
            "mk_selftest_ldmatrix",
            "mk_selftest_ldmatrix_trans",
            "mk_selftest_wgmma",
            "mk_selftest_tma",
            "mk_selftest_mbar_uninit",
            "mk_selftest_mbar_never_completes",
            "mk_selftest_mbar_phases",
            "mk_selftest_wgmma_unfenced",
            "mk_selftest_wgmma_unwaited",
        ]
        .map(String::from)
        .to_vec(),
    ));
    let module_source = |module: &str| {
        if module == "selftest" {
            root.join("emu/selftest.cu")
        } else {
            root.join("kernels").join(format!("{module}.cu"))
        }
    };
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++20")
        .opt_level(2)
        .debug(false)
        .warnings(false)
        .flag("-include")
        .flag(root.join("emu/emu.h").display().to_string())
        .flag("-fvisibility=hidden")
        .flag("-fno-strict-aliasing")
        .flag("-Wno-unknown-pragmas")
        .flag("-U_FORTIFY_SOURCE")
        .include(root.join("kernels"))
        .include(root.join("emu"));
    for i in incs {
        b.include(i);
    }
    // Objects are cached by the hash of everything they include, so a change to one kernel
    // (or a planted bug, scripts/emu-mutants) recompiles one translation unit, not all.
    let mut shared = 0xcbf2_9ce4_8422_2325u64;
    fnv1a(&mut shared, TSAN_FLAGS.join(" ").as_bytes());
    for f in sorted_files(&root.join("kernels/common"), "cuh")
        .into_iter()
        .chain([root.join("emu/emu.h")])
    {
        fnv1a(&mut shared, &std::fs::read(&f).unwrap_or_default());
    }
    let mut sources = Vec::new();
    // Every kernel source, read once: param_structs looks up C parameter structs in it.
    let kernel_text: String = sorted_files(&root.join("kernels"), "cu")
        .into_iter()
        .chain(sorted_files(&root.join("kernels/common"), "cuh"))
        .map(|f| std::fs::read_to_string(&f).unwrap_or_default() + "\n")
        .collect();
    let mut registry = String::from("// @generated by build.rs\n#include <cstring>\n");
    let mut finds = String::new();
    let mut field_finds = String::new();
    let mut rust_fields = String::from(
        "// @generated by build.rs: (struct, field, offset, size, fields) of each kernel parameter struct\n\
         pub const RUST_PARAM_FIELDS: &[(&str, &str, usize, usize, usize)] = &[\n",
    );
    for (module, names) in &table {
        let ns = format!("mk_emu_mod_{module}");
        let cu = module_source(module);
        let mut tu = format!(
            "// @generated by build.rs: kernels/{module}.cu under the emulation\nnamespace {ns} {{\n#include \"{}\"\n",
            cu.display()
        );
        let bounds = launch_bounds(&b, &edir, &cache, shared, module, &tu, &cu, names);
        tu.push_str("extern const ::mk_emu::Entry table[] = {\n");
        for n in names {
            let lb = bounds.get(n.as_str()).map_or("1024", String::as_str);
            let _ = writeln!(tu, "    MK_EMU_ENTRY({n}, {lb}),");
        }
        tu.push_str("};\nextern const unsigned count = sizeof(table) / sizeof(table[0]);\n");
        // The C offsets of each parameter struct the module's Rust launcher passes by value;
        // src/device/emu_tests.rs compares them with Rust's offset_of! (rust_fields below).
        tu.push_str("extern const ::mk_emu::Field fields[] = {\n");
        for (name, c_fields, r_fields) in param_structs(root, &kernel_text, module) {
            for (c, r) in c_fields.iter().zip(&r_fields) {
                let _ = writeln!(
                    tu,
                    "    {{\"{name}\", \"{c}\", offsetof(mk::{name}, {c}), sizeof(mk::{name}), {}}},",
                    c_fields.len()
                );
                let _ = writeln!(
                    rust_fields,
                    "    (\"{name}\", \"{r}\", ::std::mem::offset_of!(crate::ops::{module}::{name}, {r}), \
                     ::std::mem::size_of::<crate::ops::{module}::{name}>(), {}),",
                    r_fields.len()
                );
            }
        }
        tu.push_str("    {nullptr, nullptr, 0, 0, 0}};\n}\n");
        let _ = writeln!(
            field_finds,
            "    for (unsigned i = 0; {ns}::fields[i].strct; ++i) {{ if (k == 0) return &{ns}::fields[i]; --k; }}"
        );
        let file = edir.join(format!("{module}.cpp"));
        std::fs::write(&file, tu).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        sources.push(file);
        let _ = writeln!(
            registry,
            "namespace {ns} {{ extern const ::mk_emu::Entry table[]; extern const unsigned count; \
             extern const ::mk_emu::Field fields[]; }}"
        );
        let _ = writeln!(
            finds,
            "    for (unsigned i = 0; i < {ns}::count; ++i) {{ if (k == 0) return &{ns}::table[i]; --k; }}"
        );
    }
    let _ = write!(
        registry,
        "static const ::mk_emu::Entry* nth(unsigned k) {{\n{finds}    return nullptr;\n}}\n\
         extern \"C\" const ::mk_emu::Entry* mk_emu_find(const char* name) {{\n\
         \x20   for (unsigned i = 0;; ++i) {{ const ::mk_emu::Entry* e = nth(i); if (!e) return nullptr;\n\
         \x20       if (std::strcmp(e->name, name) == 0) return e; }}\n}}\n\
         extern \"C\" const char* mk_emu_kernel_name(unsigned i) {{ const ::mk_emu::Entry* e = nth(i); return e ? e->name : nullptr; }}\n\
         extern \"C\" const ::mk_emu::Field* mk_emu_param_field(unsigned k) {{\n{field_finds}    return nullptr;\n}}\n"
    );
    rust_fields.push_str("];\n");
    let rf = out.join("param_fields_gen.rs");
    std::fs::write(&rf, rust_fields).unwrap_or_else(|e| panic!("write {}: {e}", rf.display()));
    let reg = edir.join("registry.cpp");
    std::fs::write(&reg, registry).unwrap_or_else(|e| panic!("write {}: {e}", reg.display()));
    sources.push(reg);
    sources.push(root.join("emu/runtime.cpp"));
    let mut objects = Vec::new();
    let mut todo = Vec::new();
    for src in &sources {
        let mut h = shared;
        fnv1a(&mut h, &std::fs::read(src).unwrap_or_default());
        let stem = src.file_stem().and_then(|s| s.to_str()).unwrap_or("tu");
        if let Some((_, names)) = table.iter().find(|(m, _)| m == stem) {
            fnv1a(
                &mut h,
                &std::fs::read(module_source(stem)).unwrap_or_default(),
            );
            fnv1a(&mut h, names.join(",").as_bytes());
        }
        let obj = cache.join(format!("{stem}-{h:016x}.o"));
        if !obj.exists() {
            todo.push((src.clone(), obj.clone()));
        }
        objects.push(obj);
    }
    // The kernel translation units get GCC's ThreadSanitizer instrumentation (a call before
    // every load and store) without its runtime: emu/runtime.cpp implements the hooks as the
    // emulator's memcheck/initcheck/racecheck. The runtime and the registry stay plain.
    let (plain, instrumented): (Vec<_>, Vec<_>) = todo.iter().partition(|(s, _)| {
        s.file_stem()
            .is_some_and(|n| n == "runtime" || n == "registry")
    });
    for (group, flags) in [(plain, &[][..]), (instrumented, &TSAN_FLAGS[..])] {
        if group.is_empty() {
            continue;
        }
        let mut bb = b.clone();
        for f in flags {
            bb.flag(f);
        }
        let srcs: Vec<&PathBuf> = group.iter().map(|(s, _)| s).collect();
        let built = bb.files(srcs).compile_intermediates();
        for ((_, obj), o) in group.iter().zip(built) {
            std::fs::copy(&o, obj).unwrap_or_else(|e| panic!("copy {}: {e}", o.display()));
        }
    }
    cc::Build::new()
        .cpp(true)
        .objects(&objects)
        .compile("medkern_emu");
    println!("cargo:rustc-cfg=medkern_emu");
}

/// Each kernel's `__launch_bounds__` maximum, as a C++ expression, read from the module
/// preprocessed with `MK_EMU_SCAN` (emu.h then leaves `MK_EMU_LB(args)` before each bounded
/// kernel's name; macro-generated names and constants are expanded by then). Cached like the
/// objects, by the hash of what the module includes.
#[allow(clippy::too_many_arguments)]
fn launch_bounds(
    b: &cc::Build,
    edir: &Path,
    cache: &Path,
    shared: u64,
    module: &str,
    tu: &str,
    cu: &Path,
    names: &[String],
) -> HashMap<String, String> {
    let mut h = shared;
    fnv1a(&mut h, tu.as_bytes());
    fnv1a(&mut h, &std::fs::read(cu).unwrap_or_default());
    fnv1a(&mut h, names.join(",").as_bytes());
    let memo = cache.join(format!("{module}-{h:016x}.lb"));
    let text = match std::fs::read_to_string(&memo) {
        Ok(t) => t,
        Err(_) => {
            let scan = edir.join(format!("{module}.scan.cpp"));
            std::fs::write(&scan, format!("{tu}}}\n"))
                .unwrap_or_else(|e| panic!("write {}: {e}", scan.display()));
            let pre = b
                .clone()
                .define("MK_EMU_SCAN", "1")
                .file(&scan)
                .try_expand()
                .unwrap_or_else(|e| panic!("medkern build: preprocessing {}: {e}", scan.display()));
            let pre = String::from_utf8_lossy(&pre);
            let mut t = String::new();
            let mut rest = &pre[..];
            while let Some(i) = rest.find("MK_EMU_LB(") {
                rest = &rest[i + "MK_EMU_LB(".len()..];
                // The first argument: up to the top-level ',' or the closing ')'.
                let (mut depth, mut end, mut first) = (0i32, rest.len(), None);
                for (j, ch) in rest.char_indices() {
                    match ch {
                        '(' | '<' | '[' => depth += 1,
                        ')' | '>' | ']' if depth > 0 => depth -= 1,
                        ',' if depth == 0 && first.is_none() => first = Some(j),
                        ')' => {
                            end = j;
                            break;
                        }
                        _ => {}
                    }
                }
                let expr = rest[..first.unwrap_or(end)]
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                rest = &rest[(end + 1).min(rest.len())..];
                let name: String = rest
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && !expr.is_empty() {
                    let _ = writeln!(t, "{name}\t{expr}");
                }
            }
            std::fs::write(&memo, &t).unwrap_or_else(|e| panic!("write {}: {e}", memo.display()));
            t
        }
    };
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, e)| (n.to_string(), format!("({e})")))
        .collect()
}

/// The kernel parameter structs of one module: for each `struct_param!(Name)` in
/// src/ops/{module}.rs, the field names of C's `struct Name` (in `c_text`, all of kernels/) and
/// of Rust's, in order.
fn param_structs(
    root: &Path,
    c_text: &str,
    module: &str,
) -> Vec<(String, Vec<String>, Vec<String>)> {
    let rs = std::fs::read_to_string(root.join("src/ops").join(format!("{module}.rs")))
        .unwrap_or_default();
    let body = |text: &str, head: &str| -> Option<String> {
        let at = text.find(head)? + head.len();
        let end = text[at..].find('}')? + at;
        Some(
            text[at..end]
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join(" "),
        )
    };
    let mut out = Vec::new();
    let mut rest = rs.as_str();
    while let Some(i) = rest.find("struct_param!(") {
        rest = &rest[i + "struct_param!(".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let r = body(&rs, &format!("struct {name} {{")).unwrap_or_else(|| {
            panic!("medkern build: no Rust struct {name} in src/ops/{module}.rs")
        });
        let r_fields: Vec<String> = r
            .split(',')
            .filter_map(|d| d.split(':').next())
            .map(|d| d.split_whitespace().last().unwrap_or("").to_string())
            // `_pad` fields spell out C's tail padding (the size check covers them).
            .filter(|d| !d.is_empty() && !d.starts_with('_'))
            .collect();
        let c = body(c_text, &format!("struct {name} {{")).unwrap_or_else(|| {
            panic!("medkern build: no C struct {name} in kernels/ for src/ops/{module}.rs")
        });
        let ident = |s: &str| s.trim().trim_start_matches('*').trim().to_string();
        let c_fields: Vec<String> = c
            .split(';')
            .filter(|d| !d.trim().is_empty())
            .flat_map(|d| {
                let mut parts = d.split(',');
                let first = parts.next().unwrap_or("");
                let last = first
                    .rsplit(|c: char| c.is_whitespace() || c == '*')
                    .next()
                    .unwrap_or("");
                std::iter::once(ident(last))
                    .chain(parts.map(ident))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.push((name, c_fields, r_fields));
    }
    out
}
