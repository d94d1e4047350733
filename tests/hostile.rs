//! Issue 15's hostile-input sweep: every hostile case is generated here, in a temporary
//! folder (decompression bombs, truncated and corrupted files, NaN weights, deep nesting,
//! closed pipes, FIFOs, devices, link loops, output onto input, an 8 MB text), and the
//! `medkern` binary runs on each under a 3 GiB address-space cap and a wall-clock limit.
//! Each case must end in a normal exit (no signal, no hang) with the documented status (1 for
//! an error, 0 where success is right), a message that names the file or the limit and no
//! panic, and the user's files it could have overwritten byte-identical. All cases run, the
//! failures are reported together, and a table of case → outcome is printed.
//!
//! The C ABI reaches the same loaders in-process (no cap can be set on one call there); its
//! hostile cases are tests/capi.rs's (corrupt checkpoints, non-finite BERT weights).
//!
//! Unix only: FIFOs, links, /dev/full, `ulimit -v` and exit signals are what it checks.
#![cfg(unix)]
// This file runs the `medkern` binary (feature `cli`).
#![cfg(feature = "cli")]

mod common;
use common::model_or_skip;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The address-space cap, in KiB (`ulimit -v`): 3 GiB, the issue's.
const CAP_KIB: u64 = 3 * 1024 * 1024;
/// A case still running after this long is a hang: it is killed and fails.
const HANG: Duration = Duration::from_secs(60);

/// A command line of mixed `&str` and path arguments.
macro_rules! args {
    ($($a:expr),* $(,)?) => { vec![$(OsString::from($a)),*] };
}

/// Where the child's stdout goes.
#[derive(Clone, Copy, PartialEq)]
enum Stdout {
    Captured,
    /// A pipe whose reader has gone before anything is written (`| head -c0`).
    Closed,
    /// `/dev/full`: every write fails with ENOSPC.
    Full,
}

/// A command line of string literals.
fn strs(a: &[&str]) -> Vec<OsString> {
    a.iter().map(OsString::from).collect()
}

/// One hostile case and what it must end in.
struct Case {
    name: String,
    args: Vec<OsString>,
    stdout: Stdout,
    code: i32,
    /// Each must appear in stderr.
    err_has: Vec<String>,
    /// Each must appear in stdout (a batch command reports each image's error in its JSON).
    out_has: Vec<String>,
    /// Folders or files that must be byte-identical after the run (the user's own).
    keep: Vec<PathBuf>,
    /// Paths that must not exist after the run.
    absent: Vec<PathBuf>,
}

impl Case {
    /// A case that must fail with status 1.
    fn new(name: &str, args: Vec<OsString>) -> Case {
        Case {
            name: name.into(),
            args,
            stdout: Stdout::Captured,
            code: 1,
            err_has: vec![],
            out_has: vec![],
            keep: vec![],
            absent: vec![],
        }
    }
    fn code(mut self, c: i32) -> Case {
        self.code = c;
        self
    }
    fn err(mut self, has: &[&str]) -> Case {
        self.err_has.extend(has.iter().map(|s| s.to_string()));
        self
    }
    fn out(mut self, has: &[&str]) -> Case {
        self.out_has.extend(has.iter().map(|s| s.to_string()));
        self
    }
    fn stdout(mut self, s: Stdout) -> Case {
        self.stdout = s;
        self
    }
    fn keep(mut self, p: &Path) -> Case {
        self.keep.push(p.to_path_buf());
        self
    }
    fn absent(mut self, p: &Path) -> Case {
        self.absent.push(p.to_path_buf());
        self
    }
}

/// How a run ended.
struct Run {
    /// None: killed after [`HANG`].
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    secs: f64,
    /// The largest resident set seen while it ran (polled: a lower bound), in MiB.
    peak_mib: u64,
}

/// `cmd args…` under the address-space cap (through `sh`'s `ulimit -v`, which fails the run
/// if the cap cannot be set), killed after `limit`.
fn run_capped(cmd: &Path, args: &[OsString], stdout: Stdout, limit: Duration) -> Run {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit -v {CAP_KIB} && exec \"$@\""))
        .arg("sh")
        .arg(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so that a hang is ended with everything it started.
        .process_group(0);
    match stdout {
        Stdout::Captured | Stdout::Closed => c.stdout(Stdio::piped()),
        Stdout::Full => c.stdout(Stdio::from(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .expect("open /dev/full"),
        )),
    };
    let t0 = Instant::now();
    let mut child = c.spawn().expect("spawn sh");
    let out = child.stdout.take();
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            String::from_utf8_lossy(&b).into_owned()
        })
    };
    let out = match (stdout, out) {
        (Stdout::Captured, Some(o)) => Some(reader(Box::new(o))),
        // Closed: the read end is dropped here, before the child writes anything.
        _ => None,
    };
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if t0.elapsed() > limit {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        if let Ok(s) = std::fs::read_to_string(&status_file) {
            let hwm = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
            peak_kib = peak_kib.max(hwm.unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: out
            .map(|t| t.join().expect("stdout reader"))
            .unwrap_or_default(),
        stderr: err.join().expect("stderr reader"),
        secs: t0.elapsed().as_secs_f64(),
        peak_mib: peak_kib / 1024,
    }
}

/// What a folder (or file) holds: each path under it, with the SHA-256 of a file's bytes, a
/// link's target, or "dir"; links are not followed.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    use sha2::{Digest, Sha256};
    let mut m = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            m.insert(p, "missing".into());
            continue;
        };
        let v = if meta.file_type().is_symlink() {
            format!(
                "link -> {}",
                std::fs::read_link(&p).expect("readlink").display()
            )
        } else if meta.is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir") {
                todo.push(e.expect("entry").path());
            }
            "dir".into()
        } else if meta.is_file() {
            let bytes = std::fs::read(&p).expect("read");
            format!("{:x}", Sha256::digest(&bytes))
        } else {
            format!("{:?}", meta.file_type())
        };
        m.insert(p, v);
    }
    m
}

/// Runs `case`; the list of what went wrong (empty when it ended as it must) and a one-line
/// outcome for the table.
fn check(bin: &Path, case: &Case) -> (Vec<String>, String) {
    let before: Vec<_> = case.keep.iter().map(|p| snapshot(p)).collect();
    let r = run_capped(bin, &case.args, case.stdout, HANG);
    let mut bad = Vec::new();
    let ended = match r.status {
        None => {
            bad.push(format!("hung: killed after {}s", HANG.as_secs()));
            "HANG".to_string()
        }
        Some(s) => match (s.code(), s.signal()) {
            (_, Some(sig)) => {
                bad.push(format!("killed by signal {sig}"));
                format!("signal {sig}")
            }
            (Some(c), _) => {
                if c != case.code {
                    bad.push(format!("exit {c}, expected {}", case.code));
                }
                format!("exit {c}")
            }
            (None, None) => "?".into(),
        },
    };
    if r.stderr.contains("panicked") {
        bad.push("panicked".into());
    }
    if case.code != 0 && !r.stderr.contains("medkern") {
        bad.push("no error message on stderr".into());
    }
    for s in &case.err_has {
        if !r.stderr.contains(s.as_str()) {
            bad.push(format!("stderr lacks {s:?}"));
        }
    }
    for s in &case.out_has {
        if !r.stdout.contains(s.as_str()) {
            bad.push(format!("stdout lacks {s:?}"));
        }
    }
    for (p, b) in case.keep.iter().zip(before) {
        let after = snapshot(p);
        if after != b {
            let changed: Vec<_> = b
                .keys()
                .chain(after.keys())
                .filter(|k| b.get(*k) != after.get(*k))
                .map(|k| k.display().to_string())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            bad.push(format!("changed: {}", changed.join(", ")));
        }
    }
    for p in &case.absent {
        if std::fs::symlink_metadata(p).is_ok() {
            bad.push(format!("{} was created", p.display()));
        }
    }
    // The message the case ended with: a batch's first per-image error, else the last line
    // of stderr, else of stdout.
    let said = r
        .stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("\"error\":"))
        .into_iter()
        .chain(r.stderr.lines().rev().chain(r.stdout.lines().rev()))
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let said: String = said.chars().take(110).collect();
    let outcome = format!(
        "{:<8} {:>6.1}s {:>5} MiB  {said}",
        ended, r.secs, r.peak_mib
    );
    if !bad.is_empty() {
        bad.push(format!("stderr: {}", r.stderr.trim()));
        if !r.stdout.is_empty() {
            let out: String = r.stdout.chars().take(2000).collect();
            bad.push(format!("stdout: {}", out.trim()));
        }
    }
    (bad, outcome)
}

// ---------------------------------------------------------------------------------------------
// Generated hostile files.

fn write(p: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::write(p, bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    p.to_path_buf()
}

fn mkfifo(p: &Path) -> Option<PathBuf> {
    Command::new("mkfifo")
        .arg(p)
        .status()
        .is_ok_and(|s| s.success())
        .then(|| p.to_path_buf())
}

/// CRC-32 (IEEE) of a PNG chunk's type and data.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A 16×16 PNG whose IHDR claims `w`×`h` (CRC fixed): a few hundred bytes.
fn png_claiming(p: &Path, w: u32, h: u32) -> PathBuf {
    image::GrayImage::from_fn(16, 16, |x, y| image::Luma([(x + y) as u8]))
        .save(p)
        .expect("save png");
    let mut b = std::fs::read(p).expect("read");
    assert_eq!(&b[12..16], b"IHDR");
    b[16..20].copy_from_slice(&w.to_be_bytes());
    b[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    write(p, &b)
}

/// A 16×16 JPEG whose frame header (SOF0) claims `w`×`h`.
fn jpeg_claiming(p: &Path, w: u16, h: u16) -> PathBuf {
    image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 16, y as u8 * 16, 9]))
        .save(p)
        .expect("save jpeg");
    let mut b = std::fs::read(p).expect("read");
    let sof = b
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("SOF0 marker");
    // FF C0, length (2), precision (1), height (2), width (2).
    b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    write(p, &b)
}

/// A noisy 128×96 RGB JPEG, so that its scan data are most of the file (tests/input.rs's).
fn noisy_jpeg(p: &Path) -> Vec<u8> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    image::RgbImage::from_fn(128, 96, |x, y| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let n = (s % 64) as u32;
        image::Rgb([
            ((x * 2 + n) % 256) as u8,
            ((y * 2 + n) % 256) as u8,
            ((x + y + n) % 256) as u8,
        ])
    })
    .save(p)
    .expect("save jpeg");
    std::fs::read(p).expect("read")
}

/// `good` with 20 bytes of its scan data XOR-ed (tests/input.rs's seed 7, which breaks the
/// JPEG syntax; the lenient decoder still returns an image for it).
fn flipped_jpeg(good: &[u8]) -> Vec<u8> {
    let sos = good
        .windows(2)
        .position(|m| m == [0xFF, 0xDA])
        .expect("SOS marker");
    let mut bad = good.to_vec();
    let mut r = 7u64;
    for _ in 0..20 {
        r = r
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let at = sos + 20 + (r >> 33) as usize % (good.len() - sos - 22);
        bad[at] ^= ((r >> 20) as u8) | 1;
    }
    bad
}

/// A valid 4×5 16-bit MONOCHROME2 DICOM (explicit VR little endian) with `insert` placed at
/// the start of its data set.
fn dicom_with(p: &Path, insert: &[u8]) -> PathBuf {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::{InMemDicomObject, meta::FileMetaTableBuilder};
    let mut obj = InMemDicomObject::new_empty();
    let mut put = |tag, vr, v: PrimitiveValue| obj.put(DataElement::new(tag, vr, v));
    put(
        tags::SOP_CLASS_UID,
        VR::UI,
        "1.2.840.10008.5.1.4.1.1.1.1".into(),
    );
    put(tags::SOP_INSTANCE_UID, VR::UI, "2.25.1234".into());
    put(tags::MODALITY, VR::CS, "DX".into());
    put(tags::ROWS, VR::US, PrimitiveValue::from(4u16));
    put(tags::COLUMNS, VR::US, PrimitiveValue::from(5u16));
    put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
    put(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2".into(),
    );
    put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
    put(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16));
    put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16));
    put(
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(0u16),
    );
    let px: Vec<u8> = (0..20u16).flat_map(|w| (w * 3000).to_le_bytes()).collect();
    put(tags::PIXEL_DATA, VR::OW, px.into());
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1"))
        .expect("meta")
        .write_to_file(p)
        .expect("write dicom");
    let mut b = std::fs::read(p).expect("read");
    assert_eq!(&b[128..132], b"DICM");
    let at = 144 + u32::from_le_bytes(b[140..144].try_into().expect("4 bytes")) as usize;
    b.splice(at..at, insert.iter().copied());
    write(p, &b)
}

fn le(v: &[u16], len: u32) -> Vec<u8> {
    let mut b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    b.extend(len.to_le_bytes());
    b
}

/// 20,000 nested sequences of undefined length, each with one item of undefined length
/// (400 KB): (0008,1115) SQ, then the item and delimitation tags.
fn deep_sequences(depth: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..depth {
        v.extend([8u8, 0, 0x15, 0x11]);
        v.extend(b"SQ\0\0");
        v.extend(u32::MAX.to_le_bytes());
        v.extend(le(&[0xFFFE, 0xE000], u32::MAX));
    }
    for _ in 0..depth {
        v.extend(le(&[0xFFFE, 0xE00D], 0));
        v.extend(le(&[0xFFFE, 0xE0DD], 0));
    }
    v
}

/// A private OB element declaring 0xFFFFFFF0 bytes, 8 present.
fn huge_element() -> Vec<u8> {
    let mut v = vec![9u8, 0, 0x10, 0x10];
    v.extend(b"OB\0\0");
    v.extend(0xFFFF_FFF0u32.to_le_bytes());
    v.extend([1, 2, 3, 4, 5, 6, 7, 8]);
    v
}

/// `dir/name`: a copy of the safetensors file `src` with `spoil` applied to the f32 values of
/// tensor `tensor`.
fn spoiled_safetensors(src: &Path, dst: &Path, tensor: &str, spoil: impl Fn(&mut [f32])) {
    use safetensors::tensor::{Dtype, SafeTensors, TensorView};
    let bytes = std::fs::read(src).expect("read safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor(tensor).expect("tensor");
    assert_eq!(t.dtype(), Dtype::F32, "{tensor}");
    let mut v: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    spoil(&mut v);
    let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let shape = t.shape().to_vec();
    let mut views: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != tensor)
        .collect();
    views.push((
        tensor.into(),
        TensorView::new(Dtype::F32, shape, &data).expect("view"),
    ));
    write(
        dst,
        &safetensors::serialize(views, None).expect("serialize"),
    );
}

/// A model folder `dst` with `src`'s files linked in, except those given, which are written.
fn model_dir(src: &Path, dst: &Path, own: &[(&str, Vec<u8>)]) -> PathBuf {
    std::fs::create_dir_all(dst).expect("mkdir");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.txt",
    ] {
        match own.iter().find(|(n, _)| *n == f) {
            Some((_, b)) => {
                write(&dst.join(f), b);
            }
            None => std::os::unix::fs::symlink(src.join(f), dst.join(f)).expect("link"),
        }
    }
    dst.to_path_buf()
}

/// JSON text nested `depth` arrays deep.
fn deep_json(depth: usize) -> Vec<u8> {
    let mut v = vec![b'['; depth];
    v.extend(vec![b']'; depth]);
    v
}

/// A one-layer BERT of width 32 (2 heads, 64 inner) in `dst`, with deterministic small
/// weights under MiniLM's tensor names and MiniLM's tokenizer (linked).
fn tiny_bert(minilm: &Path, dst: &Path) -> PathBuf {
    use safetensors::tensor::{Dtype, SafeTensors, TensorView};
    let bytes = std::fs::read(minilm.join("model.safetensors")).expect("read MiniLM");
    let st = SafeTensors::deserialize(&bytes).expect("MiniLM safetensors");
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        if !(name.starts_with("embeddings.") || name.starts_with("encoder.layer.0.")) {
            continue;
        }
        let shape: Vec<usize> = view
            .shape()
            .iter()
            .map(|&n| match n {
                384 => 32,
                1536 => 64,
                n => n,
            })
            .collect();
        let len: usize = shape.iter().product();
        let ln_weight = name.contains("LayerNorm.weight");
        let values: Vec<u8> = (0..len)
            .flat_map(|i| {
                let v = if ln_weight {
                    1.0
                } else {
                    0.05 * ((i as f32) * 0.7 + name.len() as f32).sin()
                };
                v.to_le_bytes()
            })
            .collect();
        tensors.push((name, shape, values));
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, v)| {
            let view = TensorView::new(Dtype::F32, s.clone(), v).expect("view");
            (n.clone(), view)
        })
        .collect();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(minilm.join("config.json")).expect("config"))
            .expect("config JSON");
    cfg["hidden_size"] = 32.into();
    cfg["num_attention_heads"] = 2.into();
    cfg["intermediate_size"] = 64.into();
    cfg["num_hidden_layers"] = 1.into();
    let weights = safetensors::serialize(views, None).expect("serialize");
    model_dir(
        minilm,
        dst,
        &[
            ("config.json", cfg.to_string().into_bytes()),
            ("model.safetensors", weights),
        ],
    )
}

// ---------------------------------------------------------------------------------------------

/// The harness itself: the cap is in force in the child, and a signal, a hang and a wrong
/// status are each reported (so a sweep that passes has checked what it claims).
#[test]
fn the_harness_sets_the_cap_and_catches_signals_and_hangs() {
    let sh = Path::new("/bin/sh");
    let r = run_capped(
        Path::new("/bin/cat"),
        &strs(&["/proc/self/limits"]),
        Stdout::Captured,
        HANG,
    );
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("Max address space"))
        .unwrap_or_else(|| panic!("no address-space line: {}", r.stdout));
    let bytes = (CAP_KIB * 1024).to_string();
    assert_eq!(
        line.split_whitespace().nth(3),
        Some(bytes.as_str()),
        "{line}"
    );
    let r = run_capped(sh, &strs(&["-c", "kill -SEGV $$"]), Stdout::Captured, HANG);
    assert_eq!(r.status.and_then(|s| s.signal()), Some(11));
    let r = run_capped(
        sh,
        &strs(&["-c", "sleep 30"]),
        Stdout::Captured,
        Duration::from_secs(1),
    );
    assert!(r.status.is_none() && r.secs < 10.0, "{}s", r.secs);
    let bin = Path::new(env!("CARGO_BIN_EXE_medkern"));
    let (bad, _) = check(bin, &Case::new("no-such-subcommand", args!["nope"]).code(0));
    assert!(
        bad.iter().any(|b| b.contains("exit 2, expected 0")),
        "{bad:?}"
    );
}

/// Issue 15's "Done when": every hostile case ends with a clear error (or the right success),
/// no signal, no hang, no panic, under a 3 GB address-space cap, and nothing a user had is
/// lost. The cases needing MiniLM or Lite0 are a counted SKIP each when those are missing
/// (`MEDKERN_SKIP_MODELS=1`).
#[test]
fn hostile_inputs_end_in_clear_errors_under_a_3gb_cap() {
    let test = "hostile::hostile_inputs_end_in_clear_errors_under_a_3gb_cap";
    let bin = Path::new(env!("CARGO_BIN_EXE_medkern"));
    let tmp = common::TempDir::new("hostile");
    let d = tmp.path();
    let t0 = Instant::now();
    let mut cases: Vec<Case> = Vec::new();
    let classify = |p: &Path| args!["classify", "--model", "sepsis", "--device", "cpu", p];

    // Images: bombs, truncations, corruption, things that are not files.
    let good_png = d.join("good.png");
    image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 100]))
        .save(&good_png)
        .expect("save");
    let p = png_claiming(&d.join("bomb.png"), 20_000, 20_000);
    assert!(std::fs::metadata(&p).expect("meta").len() < 1000);
    cases.push(
        Case::new("PNG header claiming 20000x20000", classify(&p))
            .out(&["bomb.png", "20000x20000", "max_pixels"])
            .err(&["1 of 1 image(s) failed"]),
    );
    let p = jpeg_claiming(&d.join("bomb.jpg"), 12_000, 12_000);
    cases.push(
        Case::new("JPEG frame claiming 12000x12000", classify(&p))
            .out(&["bomb.jpg", "12000x12000", "max_pixels"])
            .err(&["1 of 1 image(s) failed"]),
    );
    let p = jpeg_claiming(&d.join("wide.jpg"), 8000, 8000);
    cases.push(
        Case::new("JPEG claiming 8000x8000 (in limits)", classify(&p))
            .out(&["wide.jpg", "forged frame size"])
            .err(&["1 of 1 image(s) failed"]),
    );
    // Controls for the frame-size check: the most compressible JPEGs (one flat colour, RGB and
    // grey) are legal at any size and classify.
    let flat = d.join("flat.jpg");
    image::RgbImage::from_pixel(2048, 2048, image::Rgb([90, 120, 150]))
        .save(&flat)
        .expect("save");
    cases.push(Case::new("flat 2048x2048 RGB JPEG (legal)", classify(&flat)).code(0));
    let flat = d.join("flat_grey.jpg");
    image::GrayImage::from_pixel(2048, 2048, image::Luma([77]))
        .save(&flat)
        .expect("save");
    cases.push(Case::new("flat 2048x2048 grey JPEG (legal)", classify(&flat)).code(0));
    let good_jpg = noisy_jpeg(&d.join("noisy.jpg"));
    let p = write(&d.join("tenth.jpg"), &good_jpg[..good_jpg.len() / 10]);
    cases.push(
        Case::new("JPEG truncated to its first 10%", classify(&p))
            .out(&["tenth.jpg", "decode"])
            .err(&["1 of 1 image(s) failed"]),
    );
    let p = write(&d.join("flipped.jpg"), &flipped_jpeg(&good_jpg));
    cases.push(
        Case::new("JPEG with 20 flipped bytes", classify(&p))
            .out(&["flipped.jpg", "corrupt"])
            .err(&["1 of 1 image(s) failed"]),
    );
    let png = std::fs::read(&good_png).expect("read");
    let p = write(&d.join("half.png"), &png[..png.len() / 2]);
    cases.push(
        Case::new("PNG truncated to half", classify(&p))
            .out(&["half.png", "decode"])
            .err(&["1 of 1 image(s) failed"]),
    );
    let p = write(&d.join("empty.png"), b"");
    cases.push(
        Case::new("empty .png file", classify(&p))
            .out(&["empty.png"])
            .err(&["1 of 1 image(s) failed"]),
    );
    let p = dicom_with(&d.join("huge_len.dcm"), &huge_element());
    assert!(std::fs::metadata(&p).expect("meta").len() < 1000);
    cases.push(
        Case::new("DICOM element of 0xFFFFFFF0 bytes", classify(&p))
            .out(&["huge_len.dcm", "declares 4294967280 bytes"])
            .err(&["1 of 1 image(s) failed"]),
    );
    let deep_dcm = dicom_with(&d.join("deep.dcm"), &deep_sequences(20_000));
    cases.push(
        Case::new("DICOM 20000 nested sequences", classify(&deep_dcm))
            .out(&["deep.dcm", "nested deeper than 64", "max_dicom_depth"])
            .err(&["1 of 1 image(s) failed"]),
    );
    if let Some(fifo) = mkfifo(&d.join("pipe.png")) {
        cases.push(
            Case::new("FIFO given as an image", classify(&fifo))
                .out(&["pipe.png", "FIFO"])
                .err(&["1 of 1 image(s) failed"]),
        );
    } else {
        common::skip(test, "no mkfifo (FIFO cases)");
    }
    cases.push(
        Case::new(
            "/dev/zero given as an image",
            classify(Path::new("/dev/zero")),
        )
        .out(&["/dev/zero", "a device"])
        .err(&["1 of 1 image(s) failed"]),
    );
    let folder = d.join("folder");
    std::fs::create_dir(&folder).expect("mkdir");
    std::fs::copy(&good_png, folder.join("good.png")).expect("copy");
    std::os::unix::fs::symlink(folder.join("nowhere.png"), folder.join("dangling.png"))
        .expect("link");
    std::os::unix::fs::symlink(folder.join("loop.png"), folder.join("loop.png")).expect("link");
    let (fifo_in_folder, failing) = match mkfifo(&folder.join("pipe.png")) {
        Some(_) => (vec!["pipe.png", "FIFO"], "3 of 4 image(s) failed"),
        None => (vec![], "2 of 3 image(s) failed"),
    };
    cases.push(
        Case::new("folder: dangling link, link loop, FIFO", classify(&folder))
            .out(&[
                "dangling.png",
                "loop.png",
                "symbolic link that cannot be followed",
            ])
            .out(&fifo_in_folder)
            .err(&[failing]),
    );
    cases.push(
        Case::new("classify onto a closed pipe", classify(&good_png))
            .stdout(Stdout::Closed)
            .code(0),
    );
    cases.push(
        Case::new("classify onto /dev/full", classify(&good_png))
            .stdout(Stdout::Full)
            .err(&["stdout"]),
    );

    // EXAM: the DICOM path, the EMR file.
    let emr = write(&d.join("emr.json"), br#"{"age": 64, "spo2": 93}"#);
    let exam =
        |img: &Path, emr: &Path| args!["exam", "--device", "cpu", "--image", img, "--emr", emr];
    cases.push(
        Case::new("exam: DICOM 20000 nested sequences", exam(&deep_dcm, &emr))
            .err(&["deep.dcm", "nested deeper than 64"]),
    );
    let p = write(&d.join("deep_emr.json"), &deep_json(100_000));
    cases.push(
        Case::new("exam: EMR JSON nested 100000 deep", exam(&good_png, &p))
            .err(&["deep_emr.json", "recursion limit"]),
    );
    if let Some(fifo) = mkfifo(&d.join("emr_pipe.json")) {
        cases.push(
            Case::new("exam: FIFO given as the EMR", exam(&good_png, &fifo))
                .err(&["emr_pipe.json", "FIFO"]),
        );
    }
    cases.push(
        Case::new(
            "exam: /dev/zero given as the EMR",
            exam(&good_png, Path::new("/dev/zero")),
        )
        .err(&["/dev/zero", "is a device"]),
    );

    // Checkpoints that are not what they claim.
    let with_weights = |w: &Path| {
        args![
            "classify",
            "--model",
            "sepsis",
            "--device",
            "cpu",
            "--weights",
            w,
            &good_png
        ]
    };
    let mut header_bomb = (1u64 << 40).to_le_bytes().to_vec();
    header_bomb.extend(b"{}");
    let p = write(&d.join("header_bomb.safetensors"), &header_bomb);
    cases.push(
        Case::new("safetensors header length 2^40", with_weights(&p))
            .err(&["invalid weights", "header too large"]),
    );
    let sparse = d.join("sparse4g.safetensors");
    std::fs::File::create(&sparse)
        .and_then(|f| f.set_len(4 << 30))
        .expect("sparse file");
    cases.push(
        Case::new("4 GiB (sparse) checkpoint", with_weights(&sparse))
            .err(&["sparse4g.safetensors", "limit of 2147483648"]),
    );
    cases.push(
        Case::new(
            "checkpoint over --max-model-bytes 5",
            args![
                "--max-model-bytes",
                "5",
                "classify",
                "--model",
                "sepsis",
                "--device",
                "cpu",
                "--weights",
                &p,
                &good_png
            ],
        )
        .err(&["header_bomb.safetensors", "limit of 5"]),
    );
    if let Some(fifo) = mkfifo(&d.join("weights_pipe.safetensors")) {
        cases.push(
            Case::new("FIFO given as --weights", with_weights(&fifo))
                .err(&["weights_pipe.safetensors", "FIFO"]),
        );
    }
    cases.push(
        Case::new(
            "/dev/zero given as --weights",
            with_weights(Path::new("/dev/zero")),
        )
        .err(&["/dev/zero", "is a device"]),
    );

    if let Some(lite0) = model_or_skip(test, "efficientnet-lite0/model.safetensors") {
        let p = d.join("lite0_nan.safetensors");
        // The stem convolution's weight (torchvision's name).
        let name = "features.0.0.weight";
        spoiled_safetensors(&lite0, &p, name, |v| v[3] = f32::NAN);
        cases.push(
            Case::new(
                "Lite0 checkpoint with one NaN weight",
                args![
                    "classify",
                    "--model",
                    "lite0",
                    "--device",
                    "cpu",
                    "--weights",
                    &p,
                    &good_png
                ],
            )
            .err(&[name, "non-finite"]),
        );
    }

    // BERT: NaN weights, mismatched config, nested JSON, output onto input, closed pipes,
    // an 8 MB text.
    if let Some(minilm) = model_or_skip(test, "all-MiniLM-L6-v2") {
        let st = minilm.join("model.safetensors");
        let embed = |m: &Path| {
            args![
                "embed",
                "--device",
                "cpu",
                "--model",
                m,
                "Chest pain.",
                "No fever."
            ]
        };
        let word = "embeddings.word_embeddings.weight";
        let m = model_dir(&minilm, &d.join("nan_words"), &[]);
        std::fs::remove_file(m.join("model.safetensors")).expect("unlink");
        spoiled_safetensors(&st, &m.join("model.safetensors"), word, |v| {
            v.fill(f32::NAN)
        });
        cases.push(Case::new("BERT all-NaN word embeddings", embed(&m)).err(&[word, "non-finite"]));
        let query = "encoder.layer.0.attention.self.query.weight";
        let m = model_dir(&minilm, &d.join("nan_query"), &[]);
        std::fs::remove_file(m.join("model.safetensors")).expect("unlink");
        spoiled_safetensors(&st, &m.join("model.safetensors"), query, |v| {
            v[17] = f32::NAN
        });
        cases.push(
            Case::new("BERT one NaN in a query weight", embed(&m)).err(&[query, "non-finite"]),
        );
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(minilm.join("config.json")).expect("config"))
                .expect("config JSON");
        cfg["num_hidden_layers"] = 3.into();
        let m = model_dir(
            &minilm,
            &d.join("three_layers"),
            &[("config.json", cfg.to_string().into_bytes())],
        );
        cases.push(
            Case::new("config of 3 layers, checkpoint of 6", embed(&m))
                .err(&["unexpected tensor encoder.layer.", "3 layers"]),
        );
        let m = model_dir(
            &minilm,
            &d.join("deep_config"),
            &[("config.json", deep_json(100_000))],
        );
        cases.push(
            Case::new("config.json nested 100000 deep", embed(&m))
                .err(&["config.json", "recursion limit"]),
        );
        // tokenizer.json's "decoder" nested past serde_json's recursion limit, or cut short
        // inside it: tokenizers 0.22 panicked on both (exit 101).
        let tok_text = std::fs::read_to_string(minilm.join("tokenizer.json")).expect("tokenizer");
        let mut tok: serde_json::Value = serde_json::from_str(&tok_text).expect("tokenizer JSON");
        tok["decoder"] = "@DEEP@".into();
        let deep = String::from_utf8(deep_json(100_000)).expect("ASCII");
        let deep_tok = tok.to_string().replace("\"@DEEP@\"", &deep);
        let m = model_dir(
            &minilm,
            &d.join("deep_tokenizer"),
            &[("tokenizer.json", deep_tok.into_bytes())],
        );
        cases.push(
            Case::new("tokenizer.json decoder nested 100000 deep", embed(&m))
                .err(&["tokenizer.json", "recursion limit"]),
        );
        let cut = tok_text.find("\"decoder\"").expect("a decoder") + 25;
        let m = model_dir(
            &minilm,
            &d.join("cut_tokenizer"),
            &[("tokenizer.json", tok_text.as_bytes()[..cut].to_vec())],
        );
        cases.push(
            Case::new("tokenizer.json cut inside its decoder", embed(&m))
                .err(&["tokenizer.json", "EOF while parsing"]),
        );
        let m = d.join("fifo_config");
        model_dir(&minilm, &m, &[("config.json", vec![])]);
        std::fs::remove_file(m.join("config.json")).expect("unlink");
        if mkfifo(&m.join("config.json")).is_some() {
            cases.push(Case::new("FIFO as config.json", embed(&m)).err(&["config.json", "FIFO"]));
        }
        let looped = d.join("loop_model");
        std::os::unix::fs::symlink(&looped, &looped).expect("link");
        cases.push(Case::new("model folder is a link loop", embed(&looped)).err(&["loop_model"]));
        cases.push(
            Case::new("embed onto a closed pipe", embed(&minilm))
                .stdout(Stdout::Closed)
                .code(0),
        );
        cases.push(
            Case::new("embed onto /dev/full", embed(&minilm))
                .stdout(Stdout::Full)
                .err(&["stdout"]),
        );

        // compress: the output onto the model, a link to it, inside it, around it, onto a
        // user's folder. The model is a real copy: these cases could destroy it.
        let root = d.join("compress");
        let model = root.join("model");
        std::fs::create_dir_all(&model).expect("mkdir");
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "vocab.txt",
        ] {
            std::fs::copy(minilm.join(f), model.join(f)).expect("copy");
        }
        let link = root.join("link-to-model");
        std::os::unix::fs::symlink(&model, &link).expect("link");
        let mine = root.join("mine");
        std::fs::create_dir(&mine).expect("mkdir");
        write(&mine.join("notes.txt"), b"keep me");
        let compress = |out: &Path| {
            args![
                "compress", "--device", "cpu", "--int8", "--model", &model, "--out", out
            ]
        };
        for (name, out, why) in [
            (
                "compress --out is --model",
                model.clone(),
                "is the model folder",
            ),
            (
                "compress --out is a link to --model",
                link.clone(),
                "is the model folder",
            ),
            (
                "compress --out inside --model",
                model.join("compressed"),
                "is inside the model folder",
            ),
            (
                "compress --out contains --model",
                root.clone(),
                "contains the model folder",
            ),
        ] {
            cases.push(
                Case::new(name, compress(&out))
                    .err(&[why])
                    .keep(&root)
                    .absent(&model.join("compressed")),
            );
        }
        cases.push(
            Case::new("compress --out is a user's folder", compress(&mine))
                .err(&["notes.txt"])
                .keep(&root),
        );
        // An 8 MB text: sentences (only a prefix is tokenised), and one "word" of 8 MB. On a
        // one-layer BERT of width 32 with MiniLM's tokenizer: the CPU reference would take
        // minutes over MiniLM's 512 tokens, and the text is what this case is about.
        let tiny = tiny_bert(&minilm, &d.join("tiny"));
        let weights = std::fs::read(tiny.join("model.safetensors")).expect("read");
        let m = model_dir(
            &tiny,
            &d.join("cut_weights"),
            &[("model.safetensors", weights[..weights.len() / 2].to_vec())],
        );
        cases.push(Case::new("model.safetensors cut in half", embed(&m)).err(&["weights"]));
        let compress_tiny = |out: &Path, sentences: &Path| {
            args![
                "compress",
                "--device",
                "cpu",
                "--int8",
                "--model",
                &tiny,
                "--out",
                out,
                "--sentences",
                sentences
            ]
        };
        let text = "Chest pain radiating to the left arm. ".repeat((8 << 20) / 38);
        let p = write(&d.join("8mb.txt"), text.as_bytes());
        let out = d.join("compressed-8mb");
        cases.push(
            Case::new(
                "compress --sentences: an 8 MB line",
                compress_tiny(&out, &p),
            )
            .code(0)
            .out(&["\"sentences\": 1"])
            .keep(&tiny),
        );
        let p = write(&d.join("8mb_x.txt"), &vec![b'x'; 8 << 20]);
        cases.push(
            Case::new(
                "compress --sentences: 8 MB without a break",
                compress_tiny(&d.join("compressed-8mb-x"), &p),
            )
            .err(&["max_text_bytes", "8388608 bytes"])
            .absent(&d.join("compressed-8mb-x")),
        );
        if let Some(fifo) = mkfifo(&d.join("sentences_pipe.txt")) {
            let mut a = compress(&d.join("compressed-fifo"));
            a.extend(args!["--sentences", &fifo]);
            cases.push(
                Case::new("compress --sentences is a FIFO", a).err(&["sentences_pipe.txt", "FIFO"]),
            );
        }
        let mut a = compress(&d.join("compressed-zero"));
        a.extend(args!["--sentences", "/dev/zero"]);
        cases.push(
            Case::new("compress --sentences is /dev/zero", a).err(&["/dev/zero", "is a device"]),
        );
    }

    // Run them all, then report every failure together.
    let mut failures = Vec::new();
    println!(
        "\n{:<42} {:<8} {:>7} {:>9}  message",
        "case", "ended", "time", "RSS seen"
    );
    for case in &cases {
        let (bad, outcome) = check(bin, case);
        println!(
            "{:<42} {outcome}{}",
            case.name,
            if bad.is_empty() { "" } else { "   <-- FAILED" }
        );
        if !bad.is_empty() {
            failures.push(format!("{}:\n    {}", case.name, bad.join("\n    ")));
        }
    }
    println!(
        "{} cases, {} failed, {:.1}s",
        cases.len(),
        failures.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases did not end cleanly:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
