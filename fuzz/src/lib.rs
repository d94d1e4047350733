//! medkern's fuzz targets (bodies in `targets.rs`, shared with `tests/fuzz_regressions.rs`).

#[path = "alloc.rs"]
mod alloc;
pub mod targets;

#[global_allocator]
static ALLOC: alloc::Capped = alloc::Capped;

/// Runs before fuzzing: with `MEDKERN_FUZZ_WRITE_SEEDS=DIR`, writes the target's generated
/// seeds into DIR and exits (what `scripts/fuzz` does first); otherwise loads what the target
/// needs once, so that a missing model fails before the first input rather than as a finding.
pub fn init(target: &str) {
    if let Some(dir) = std::env::var_os("MEDKERN_FUZZ_WRITE_SEEDS") {
        let dir = std::path::PathBuf::from(dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("medkern-fuzz: {}: {e}", dir.display());
            std::process::exit(2);
        }
        for (i, s) in targets::seeds(target).iter().enumerate() {
            if let Err(e) = std::fs::write(dir.join(format!("seed-{i}")), s) {
                eprintln!("medkern-fuzz: {}: {e}", dir.display());
                std::process::exit(2);
            }
        }
        std::process::exit(0);
    }
}
