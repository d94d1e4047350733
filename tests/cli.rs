//! The `medkern` command line as a user runs it: output onto a closed pipe or a full device
//! ends cleanly, with a message and an exit status, never a panic.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn models_dir() -> PathBuf {
    std::env::var_os("MEDKERN_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".models"))
}

/// The installed MiniLM folder, or None after a counted SKIP with `MEDKERN_SKIP_MODELS=1`.
fn minilm_or_skip(test: &str) -> Option<PathBuf> {
    let p = models_dir().join("all-MiniLM-L6-v2");
    if p.exists() {
        return Some(p);
    }
    if std::env::var("MEDKERN_SKIP_MODELS").is_ok_and(|v| v == "1") {
        common::skip(
            test,
            &format!("{} missing (MEDKERN_SKIP_MODELS=1)", p.display()),
        );
        return None;
    }
    panic!(
        "{test}: {} is not installed: run scripts/setup-models (or MEDKERN_SKIP_MODELS=1)",
        p.display()
    );
}

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
