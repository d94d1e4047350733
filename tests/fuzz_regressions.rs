//! Replays the fuzz targets (fuzz/src/targets.rs, included here) on their seed corpus, the
//! committed corpus (fuzz/corpus/TARGET) and every kept finding (fuzz/regressions/TARGET), so
//! each crash `scripts/fuzz` ever found stays fixed without a fuzzer. `MEDKERN_FUZZ_REPLAY=FILE`
//! with `MEDKERN_FUZZ_TARGET=NAME` replays one file (a fresh finding under fuzz/artifacts/).
//! The targets needing the MiniLM tokenizer are a counted SKIP without the models.
// This file needs the readers the fuzz targets reach (`dicom`, `image`, `tokenizers`).
#![cfg(all(feature = "dicom", feature = "image", feature = "tokenizers"))]

mod common;

#[path = "../fuzz/src/alloc.rs"]
mod alloc;
#[path = "../fuzz/src/targets.rs"]
mod targets;

#[global_allocator]
static ALLOC: alloc::Capped = alloc::Capped;

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file());
    v.sort();
    v
}

fn needs_models(target: &str) -> bool {
    matches!(target, "tokenizer" | "capi")
}

#[test]
fn fuzz_targets_replay_seeds_corpus_and_findings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    if let (Some(file), Some(name)) = (
        std::env::var_os("MEDKERN_FUZZ_REPLAY"),
        std::env::var("MEDKERN_FUZZ_TARGET").ok(),
    ) {
        let f = targets::TARGETS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("MEDKERN_FUZZ_TARGET={name}: no such target"));
        let data = std::fs::read(&file).expect("MEDKERN_FUZZ_REPLAY");
        (f.1)(&data);
        return;
    }
    let mut replayed = 0;
    for (name, run) in targets::TARGETS {
        if needs_models(name) && targets::minilm_dir().is_none() {
            assert!(
                std::env::var("MEDKERN_SKIP_MODELS").is_ok_and(|v| v == "1"),
                "fuzz target {name}: all-MiniLM-L6-v2 is not installed in {}: run \
                 scripts/setup-models (or set MEDKERN_SKIP_MODELS=1 to skip it)",
                targets::models_dir().display()
            );
            common::skip(
                &format!("fuzz_regressions::{name}"),
                &format!(
                    "no all-MiniLM-L6-v2 in {} (MEDKERN_SKIP_MODELS=1)",
                    targets::models_dir().display()
                ),
            );
            continue;
        }
        let seeds = targets::seeds(name);
        assert!(!seeds.is_empty(), "{name}: no seeds");
        for s in &seeds {
            run(s);
        }
        let mut kept = files(&root.join("corpus").join(name));
        kept.extend(files(&root.join("regressions").join(name)));
        for f in &kept {
            let data = std::fs::read(f).expect("read");
            println!("fuzz_regressions: {name}: {}", f.display());
            run(&data);
        }
        replayed += seeds.len() + kept.len();
    }
    println!("fuzz_regressions: {replayed} inputs replayed");
}
