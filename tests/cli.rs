//! The `medkern` command line as a user runs it: output onto a closed pipe or a full device
//! ends cleanly, with a message and an exit status, never a panic.
// This file runs the `medkern` binary (feature `cli`).
#![cfg(feature = "cli")]

mod common;
use common::models_dir;

/// The installed MiniLM folder, or None after a counted SKIP with `MEDKERN_SKIP_MODELS=1`.
fn minilm_or_skip(test: &str) -> Option<PathBuf> {
    common::model_or_skip(test, "all-MiniLM-L6-v2")
}

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn embed_cmd(model: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_medkern"));
    c.args(["embed", "--device", "cpu", "--model"])
        .arg(model)
        .args(["Chest pain radiating to the left arm.", "No fever."]);
    c
}

/// Issue 15, defect 8: `medkern embed … | head -c5` and `medkern embed … > /dev/full`
/// panicked in `println!` (exit 101). A closed pipe now ends quietly with status 0; a full
/// device is an error naming stdout, status 1.
#[test]
fn embed_onto_a_closed_pipe_or_a_full_device_does_not_panic() {
    let test = "cli::embed_onto_a_closed_pipe_or_a_full_device_does_not_panic";
    let Some(model) = minilm_or_skip(test) else {
        return;
    };
    // A reader that has gone before anything is written (what `| head -c5` becomes).
    let mut child = embed_cmd(&model)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn medkern");
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    let status = child.wait().expect("wait");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        status.code(),
        Some(0),
        "closed pipe: {status}; stderr: {err}"
    );

    // A full device.
    if std::path::Path::new("/dev/full").exists() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("open /dev/full");
        let out = embed_cmd(&model)
            .stdout(Stdio::from(full))
            .output()
            .expect("run medkern");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(out.status.code(), Some(1), "/dev/full: {err}");
        assert!(err.contains("stdout"), "{err}");
    } else {
        common::skip(test, "no /dev/full (full-device part)");
    }
}

/// Issue 15: `medkern kernels > /dev/full` panicked in `println!` (exit 101). It now prints
/// through the same writer as `embed`: a full device is an error naming stdout (status 1), a
/// reader that has gone ends quietly (status 0).
#[test]
fn kernels_onto_a_closed_pipe_or_a_full_device_does_not_panic() {
    let test = "cli::kernels_onto_a_closed_pipe_or_a_full_device_does_not_panic";
    let kernels = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_medkern"));
        c.arg("kernels");
        c
    };
    let mut child = kernels()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn medkern");
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    let status = child.wait().expect("wait");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        status.code(),
        Some(0),
        "closed pipe: {status}; stderr: {err}"
    );
    assert!(err.is_empty(), "closed pipe should end quietly: {err}");

    if std::path::Path::new("/dev/full").exists() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("open /dev/full");
        let out = kernels()
            .stdout(Stdio::from(full))
            .output()
            .expect("run medkern");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(out.status.code(), Some(1), "/dev/full: {err}");
        assert!(err.contains("stdout"), "{err}");
    } else {
        common::skip(test, "no /dev/full (full-device part)");
    }
}

/// Issue 15, defect 9: a folder's dangling links, link loops and FIFOs were dropped silently
/// ("images": 1, "failed": 0, exit 0), and a FIFO given as an image hung. Each image name in
/// a folder that is not a regular file is now a failed image with its reason, counted, and the
/// command fails; a FIFO given directly is an error, not a hang.
#[cfg(unix)]
#[test]
fn classify_reports_links_and_fifos_in_a_folder() {
    let dir = common::TempDir::new("cli-folder");
    let d = dir.path();
    image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 100]))
        .save(d.join("good.png"))
        .expect("save");
    std::os::unix::fs::symlink(d.join("nowhere.png"), d.join("dangling.png")).expect("link");
    std::os::unix::fs::symlink(d.join("loop.png"), d.join("loop.png")).expect("link");
    std::fs::write(d.join("notes.txt"), b"not an image").expect("write");
    let fifo = Command::new("mkfifo")
        .arg(d.join("pipe.png"))
        .status()
        .is_ok_and(|s| s.success());
    let run = |arg: &std::path::Path| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_medkern"))
            .args(["classify", "--model", "sepsis", "--device", "cpu"])
            .arg(arg)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn medkern");
        let (mut out, mut err) = (String::new(), String::new());
        let mut so = child.stdout.take().expect("stdout");
        let mut se = child.stderr.take().expect("stderr");
        let t = std::thread::spawn(move || {
            let _ = se.read_to_string(&mut err);
            err
        });
        let _ = so.read_to_string(&mut out);
        let err = t.join().expect("stderr thread");
        (child.wait().expect("wait"), out, err)
    };
    // Bounded: a hang fails the test instead of blocking it.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = d.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send((run(&path), run(&path.join("pipe.png"))));
    });
    let ((status, out, err), (fifo_status, fifo_out, fifo_err)) = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("medkern classify hangs");
    assert_eq!(status.code(), Some(1), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON output");
    let want = if fifo { 4 } else { 3 };
    assert_eq!(v["images"], serde_json::json!(want), "{out}");
    assert_eq!(v["failed"], serde_json::json!(want - 1), "{out}");
    let errors: Vec<String> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["error"].as_str().map(str::to_string))
        .collect();
    assert!(
        errors
            .iter()
            .filter(|e| e.contains("symbolic link that cannot be followed"))
            .count()
            == 2,
        "{errors:?}"
    );
    if fifo {
        assert!(errors.iter().any(|e| e.contains("FIFO")), "{errors:?}");
        assert_eq!(fifo_status.code(), Some(1), "{fifo_err}");
        assert!(fifo_out.contains("FIFO"), "{fifo_out}");
    }
    assert!(err.contains("3 of 4") || err.contains("2 of 3"), "{err}");
    // Entries that are not image names are listed as skipped, with the reason.
    let skipped = v["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 1, "{out}");
    assert!(
        skipped[0]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("notes.txt"))
            && skipped[0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("not an image")),
        "{out}"
    );
}

/// The input limits are command-line options (`--max-pixels` etc., on every command).
#[test]
fn input_limits_from_the_command_line() {
    let dir = common::TempDir::new("cli-limits");
    let png = dir.path().join("small.png");
    image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8, y as u8, 7]))
        .save(&png)
        .expect("save");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_medkern"))
            .args(["classify", "--model", "sepsis", "--device", "cpu"])
            .args(extra)
            .arg(&png)
            .output()
            .expect("run medkern")
    };
    let out = run(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (flag, value, limit) in [
        ("--max-pixels", "100", "max_pixels"),
        ("--max-file-bytes", "100", "max_file_bytes"),
        ("--max-alloc-bytes", "1000", "max_alloc_bytes"),
    ] {
        let out = run(&[flag, value]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{flag}: {stdout}");
        assert!(stdout.contains(limit), "{flag}: {stdout}");
    }
}

#[test]
fn without_device_the_cli_says_why_it_runs_on_the_cpu() {
    let dir = common::TempDir::new("cli-why-cpu");
    let img = dir.path().join("one.png");
    image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 100]))
        .save(&img)
        .expect("save");
    let out = Command::new(env!("CARGO_BIN_EXE_medkern"))
        .args(["classify", "--model", "sepsis"])
        .arg(&img)
        .output()
        .expect("run medkern");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    if medkern::Gpu::new(0).is_ok() {
        assert!(!err.contains("running on the CPU"), "{err}");
    } else {
        // The reason is the driver's, not a generic line.
        assert!(
            err.contains("running on the CPU") && err.contains("GPU did not start: "),
            "{err}"
        );
    }
    // And --device gpu without one fails loudly, naming the cause.
    if medkern::Gpu::new(0).is_err() {
        let out = Command::new(env!("CARGO_BIN_EXE_medkern"))
            .args(["classify", "--model", "sepsis", "--device", "gpu"])
            .arg(&img)
            .output()
            .expect("run medkern");
        assert!(!out.status.success());
        assert!(!String::from_utf8_lossy(&out.stderr).trim().is_empty());
    }
}

fn medkern_json(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_medkern"))
        .args(args)
        .output()
        .expect("run medkern");
    assert!(
        out.status.success(),
        "medkern {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    // `embed` prints a JSON array of one object per line, `classify` one document.
    serde_json::from_str::<serde_json::Value>(&text)
        .map(|v| match v {
            serde_json::Value::Array(a) => a,
            v => vec![v],
        })
        .expect("JSON")
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// The acceptance check: the CLI on the emulated GPU in f16 agrees with the CPU within
/// the GPU tests' bounds (tests/bert.rs `min_cosine`: embedding cosine ≥ 0.999 in f16;
/// tests/efficientnet.rs `low_precision_rel`: max |Δlogit| ≤ 0.02·max |logit| in f16).
#[test]
fn embed_and_classify_on_the_emulated_gpu_agree_with_the_cpu() {
    if medkern::Gpu::emulated().is_err() {
        common::skip(
            "embed_and_classify_on_the_emulated_gpu_agree_with_the_cpu",
            "this build has no emulated GPU",
        );
        return;
    }
    let Some(minilm) = minilm_or_skip("embed_and_classify_on_the_emulated_gpu_agree_with_the_cpu")
    else {
        return;
    };
    let texts = [
        "Chest pain radiating to the left arm.",
        "No fever.",
        "Patient denies shortness of breath.",
    ];
    let embed = |device: &str, dtype: &str| {
        let mut a = vec!["embed", "--device", device, "--dtype", dtype, "--model"];
        a.push(minilm.to_str().expect("path"));
        a.extend(texts);
        medkern_json(&a)
    };
    let (cpu, emu) = (embed("cpu", "f32"), embed("emu", "f16"));
    assert_eq!(cpu.len(), 3);
    for (c, e) in cpu.iter().zip(&emu) {
        let (c, e) = (floats(&c["embedding"]), floats(&e["embedding"]));
        let dot: f64 = c.iter().zip(&e).map(|(a, b)| a * b).sum();
        let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cos = dot / (n(&c) * n(&e));
        assert!(cos >= 0.999, "embed emu f16 vs cpu: cosine {cos}");
    }
    let lite0 = models_dir().join("efficientnet-lite0/model.safetensors");
    let photo = models_dir().join("images/chelsea.png");
    if !lite0.exists() || !photo.exists() {
        common::skip(
            "embed_and_classify_on_the_emulated_gpu_agree_with_the_cpu",
            "Lite0 weights or photographs missing (scripts/setup-models)",
        );
        return;
    }
    let classify = |device: &str, dtype: &str| {
        let w = lite0.to_str().expect("path");
        let p = photo.to_str().expect("path");
        let a = [
            "classify",
            "--model",
            "lite0",
            "--weights",
            w,
            "--top",
            "1000",
        ];
        let mut a = a.to_vec();
        a.extend(["--device", device, "--dtype", dtype, p]);
        let doc = medkern_json(&a).remove(0);
        let mut logits = vec![f64::NAN; 1000];
        for t in doc["results"][0]["top"].as_array().expect("top") {
            let c = t["class"].as_u64().expect("class") as usize;
            logits[c] = t["logit"].as_f64().expect("logit");
        }
        logits
    };
    let (cpu, emu) = (classify("cpu", "f32"), classify("emu", "f16"));
    let peak = cpu.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let worst = cpu
        .iter()
        .zip(&emu)
        .map(|(a, b)| (a - b).abs())
        .fold(
            0.0f64,
            |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        );
    assert!(
        worst <= 0.02 * peak,
        "classify lite0 emu f16 vs cpu: max |Δlogit| {worst} > 0.02·{peak}"
    );
}

/// Issue 15: the number of texts or images of one command was not bounded. Over the limit
/// (default 4096) the command fails before the model is loaded or a file read, naming
/// max_batch and the count given.
#[test]
fn batch_limit_from_the_command_line() {
    let dir = common::TempDir::new("cli-batch");
    let texts: Vec<String> = (0..4097).map(|i| format!("text {i}")).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_medkern"))
        .args(["embed", "--device", "cpu", "--model"])
        .arg(dir.path().join("no-model-here"))
        .args(&texts)
        .output()
        .expect("run medkern");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("max_batch") && err.contains("4097") && err.contains("4096"),
        "{err}"
    );
    // A folder of 4097 image names (empty files: none is read).
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).expect("folder");
    for i in 0..4097 {
        std::fs::write(imgs.join(format!("{i:05}.png")), b"").expect("file");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_medkern"))
        .args(["classify", "--model", "sepsis", "--device", "cpu"])
        .arg(&imgs)
        .output()
        .expect("run medkern");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("max_batch") && err.contains("4096"), "{err}");
    // --max-batch: 3 images over 2, then within 3.
    let few = dir.path().join("few");
    std::fs::create_dir(&few).expect("folder");
    for i in 0..3u8 {
        image::RgbImage::from_fn(16, 12, |x, y| {
            image::Rgb([x as u8 * 9, y as u8 * 9, i * 50])
        })
        .save(few.join(format!("{i}.png")))
        .expect("save");
    }
    let classify = |limit: &str| {
        Command::new(env!("CARGO_BIN_EXE_medkern"))
            .args([
                "classify",
                "--model",
                "sepsis",
                "--device",
                "cpu",
                "--max-batch",
                limit,
            ])
            .arg(&few)
            .output()
            .expect("run medkern")
    };
    let out = classify("2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("max_batch") && err.contains("at most 2"),
        "{err}"
    );
    let out = classify("3");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --max-len past the model's positions, and texts over --max-batch.
    let Some(minilm) = minilm_or_skip("batch_limit_from_the_command_line") else {
        return;
    };
    let out = embed_cmd(&minilm)
        .args(["--max-len", "100000"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("max_len") && err.contains("512"), "{err}");
    let out = embed_cmd(&minilm)
        .args(["--max-batch", "1"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("max_batch") && err.contains("2 in one batch"),
        "{err}"
    );
}

/// `medkern embed --classify` on a MobileBERT folder (config `"model_type": "mobilebert"`,
/// random HF-named weights from `mobilebert::random_checkpoint`, MiniLM's WordPiece tokenizer
/// for the 30522-token vocabulary) prints the library's embeddings, logits and id2label labels.
#[test]
fn embed_and_classify_a_mobilebert_folder() {
    use medkern::model::mobilebert::MobileBertModel;
    let test = "cli::embed_and_classify_a_mobilebert_folder";
    let Some(minilm) = minilm_or_skip(test) else {
        return;
    };
    let dir = common::tiny_mobilebert_folder(&minilm, "cli-mobilebert", 64);
    let texts = ["Chest pain radiating to the left arm.", "No fever."];
    let mut args = vec!["embed", "--device", "cpu", "--classify", "--model"];
    args.push(dir.path().to_str().expect("path"));
    args.extend(texts);
    let out = medkern_json(&args);
    assert_eq!(out.len(), 2);
    let ids = medkern::model::bert::BertTokenizer::load(dir.path(), 64)
        .expect("tokenizer")
        .encode(&texts)
        .expect("ids");
    let m = MobileBertModel::load(dir.path(), &medkern::Device::Cpu, medkern::DType::F32)
        .expect("model");
    let emb = m
        .embed(&ids, medkern::model::bert::Pooling::Mean)
        .expect("embed");
    let logits = m.classify(&ids).expect("classify");
    for (i, o) in out.iter().enumerate() {
        assert_eq!(o["tokens"].as_u64(), Some(ids[i].len() as u64));
        // The JSON holds each f32's shortest decimal: it parses back to the same f32.
        let f32s = |v: &serde_json::Value| -> Vec<f32> {
            floats(v).into_iter().map(|x| x as f32).collect()
        };
        assert_eq!(f32s(&o["embedding"]), emb[i], "text {i}: embedding");
        assert_eq!(f32s(&o["logits"]), logits[i], "text {i}: logits");
        let want = &logits[i];
        let label = if want[1] > want[0] {
            "abnormal"
        } else {
            "normal"
        };
        assert_eq!(o["label"].as_str(), Some(label));
    }
}

/// Runs medkern: (exit success, stdout as JSON or Null, stderr).
fn run_medkern(args: &[&std::ffi::OsStr]) -> (bool, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_medkern"))
        .args(args)
        .output()
        .expect("run medkern");
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn distinct_bytes(img: &image::RgbImage) -> usize {
    img.as_raw()
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// The files in a folder, sorted.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

/// Issue 18 item 5: `autoencode --save-reconstructions DIR` writes one PNG per input (input |
/// reconstruction | absolute error, 96×96 panels), into a folder it creates, with distinct names
/// for inputs that share a file stem, the error panel scaled to full range by `error_scale`.
#[test]
fn autoencode_saves_reconstruction_pictures() {
    let dir = common::TempDir::new("cli-recon");
    let d = dir.path();
    let mut inputs = Vec::new();
    for (sub, k) in [("a", 1u32), ("b", 2)] {
        std::fs::create_dir_all(d.join(sub)).expect("dir");
        let p = d.join(sub).join("frame.png");
        image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([
                (x * 4 + k * 50) as u8,
                (y * 5) as u8,
                ((x + y) * k * 2) as u8,
            ])
        })
        .save(&p)
        .expect("save");
        inputs.push(p);
    }
    let out = d.join("pictures/nested");
    let args = |_: ()| {
        let mut a: Vec<&std::ffi::OsStr> =
            ["autoencode", "--device", "cpu", "--save-reconstructions"]
                .iter()
                .map(|s| s.as_ref())
                .collect();
        a.push(out.as_os_str());
        a.extend(inputs.iter().map(|p| p.as_os_str()));
        a
    };
    for round in 0..2 {
        // The second run replaces the pictures in place (same names, nothing else left).
        let (ok, v, err) = run_medkern(&args(()));
        assert!(ok, "{err}");
        let results = v["results"].as_array().expect("results");
        assert_eq!(results.len(), 2);
        let files = listing(&out);
        assert_eq!(
            files,
            ["0-frame.recon.png", "1-frame.recon.png"],
            "round {round}"
        );
        let mut input_panels = Vec::new();
        for r in results {
            let rec = &r["reconstruction"];
            let path = PathBuf::from(rec["file"].as_str().expect("file"));
            assert!(path.starts_with(&out), "{path:?}");
            let scale = rec["error_scale"].as_f64().expect("error_scale");
            assert!(scale > 0.0 && scale <= 1.0, "{scale}");
            let img = image::open(&path).expect("open PNG").to_rgb8();
            assert_eq!(img.dimensions(), (3 * 96, 96));
            // Readable by others, not the temporary file's private mode.
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&path).expect("metadata").permissions(),
            );
            assert_eq!(mode & 0o777, 0o644, "{path:?}");
            let panel = |i: u32| image::imageops::crop_imm(&img, 96 * i, 0, 96, 96).to_image();
            let (inp, recon, errp) = (panel(0), panel(1), panel(2));
            assert!(distinct_bytes(&inp) > 20, "input panel nearly blank");
            assert!(distinct_bytes(&recon) > 2, "reconstruction panel blank");
            assert_ne!(inp, recon, "reconstruction panel equals the input");
            // |reconstruction − input| / error_scale at full range: the largest error is white,
            // and every pixel agrees with the two other panels (each rounded to 1/255).
            assert_eq!(errp.as_raw().iter().max(), Some(&255));
            let tol = 1.0 / scale + 1.0;
            for ((a, b), e) in inp.as_raw().iter().zip(recon.as_raw()).zip(errp.as_raw()) {
                let want = (f64::from(*b) - f64::from(*a)).abs() / scale;
                assert!(
                    (f64::from(*e) - want).abs() <= tol,
                    "error pixel {e}, panels give {want:.1} (tol {tol:.1})"
                );
            }
            input_panels.push(inp);
        }
        assert_ne!(input_panels[0], input_panels[1], "two inputs, one picture");
    }
}

/// Issue 18 items 6 and 7: `classify --model lite0 --cam DIR` writes one class activation map
/// per image over the image (224×224, Turbo at α 0.45, the map scaled to the full colormap), for
/// the top class or `--cam-class`; the top classes carry their ImageNet names.
#[test]
fn classify_writes_class_activation_maps() {
    let dir = common::TempDir::new("cli-cam");
    let d = dir.path();
    std::fs::create_dir_all(d.join("x")).expect("dir");
    std::fs::create_dir_all(d.join("y")).expect("dir");
    // A flat grey image: every overlay pixel is 0.55·200 + 0.45·turbo(heat).
    let grey = d.join("x/scan.png");
    image::RgbImage::from_pixel(80, 60, image::Rgb([200, 200, 200]))
        .save(&grey)
        .expect("save");
    let pattern = d.join("y/scan.png");
    image::RgbImage::from_fn(90, 70, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x * y) % 251) as u8])
    })
    .save(&pattern)
    .expect("save");
    let cams = d.join("cams");
    let run = |extra: &[&str]| {
        let mut a: Vec<&std::ffi::OsStr> =
            ["classify", "--model", "lite0", "--device", "cpu", "--cam"]
                .iter()
                .map(|s| s.as_ref())
                .collect();
        a.push(cams.as_os_str());
        a.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
        a.push(grey.as_os_str());
        a.push(pattern.as_os_str());
        run_medkern(&a)
    };
    let (ok, v, err) = run(&[]);
    assert!(ok, "{err}");
    assert_eq!(listing(&cams), ["0-scan.cam.png", "1-scan.cam.png"]);
    let results = v["results"].as_array().expect("results");
    for (i, r) in results.iter().enumerate() {
        let top = r["top"].as_array().expect("top");
        for t in top {
            let k = t["class"].as_u64().expect("class") as usize;
            assert_eq!(
                t["name"].as_str(),
                medkern::model::imagenet::class_name(k),
                "{t}"
            );
        }
        let cam = &r["cam"];
        assert_eq!(cam["class"], top[0]["class"], "{cam}");
        assert_eq!(cam["name"], top[0]["name"], "{cam}");
        assert_eq!(cam["colormap"], "turbo");
        assert!(cam["max"].as_f64().expect("max") > cam["min"].as_f64().expect("min"));
        let img = image::open(cam["file"].as_str().expect("file"))
            .expect("open PNG")
            .to_rgb8();
        assert_eq!(img.dimensions(), (224, 224));
        assert!(
            distinct_bytes(&img) > 20,
            "image {i}: CAM picture nearly blank"
        );
    }
    // Over flat grey both ends of Turbo appear blended at 0.45: d3's polynomial (what the
    // colormap is) gives (34.61, 23.31, 27.2) at the map's minimum, (144.06, 12.34, 0) at its
    // maximum.
    let img = image::open(results[0]["cam"]["file"].as_str().expect("file"))
        .expect("open")
        .to_rgb8();
    let blend = |c: [f64; 3]| c.map(|v| 0.55 * 200.0 + 0.45 * v);
    let near = |p: &image::Rgb<u8>, c: [f64; 3]| {
        p.0.iter()
            .zip(c)
            .all(|(&a, b)| (f64::from(a) - b).abs() <= 1.5)
    };
    for end in [[34.61, 23.31, 27.2], [144.06, 12.34, 0.0]] {
        let want = blend(end);
        assert!(
            img.pixels().any(|p| near(p, want)),
            "no pixel near {want:?}"
        );
    }
    // The other class asked for.
    let (ok, v, err) = run(&["--cam-class", "5"]);
    assert!(ok, "{err}");
    for r in v["results"].as_array().expect("results") {
        assert_eq!(r["cam"]["class"], 5);
        assert_eq!(
            r["cam"]["name"].as_str(),
            medkern::model::imagenet::class_name(5)
        );
    }
    // Bad uses fail before any picture is written.
    let (ok, _, err) = run(&["--cam-class", "1000"]);
    assert!(!ok && err.contains("1000"), "{err}");
    let (ok, _, err) = run_medkern(&[
        "classify".as_ref(),
        "--model".as_ref(),
        "sepsis".as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--cam".as_ref(),
        d.join("never").as_os_str(),
        grey.as_os_str(),
    ]);
    assert!(!ok && err.contains("--cam"), "{err}");
    assert!(!d.join("never").exists());
}
