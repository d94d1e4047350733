//! Shared bench setup: the GPU (or a counted SKIP), seeded inputs, short criterion settings
//! so the whole suite fits a GPU session. Each timed iteration ends with a stream sync.
#![allow(dead_code)]

#[path = "../tests/common/mod.rs"]
mod harness;
pub use harness::*;

use criterion::Criterion;
use std::time::Duration;

pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .without_plots()
        .configure_from_args()
}

/// BERT-shaped activations: (batch·seq, hidden) for BERT-base and its FFN.
pub const BERT_ROWS_COLS: [(usize, usize); 4] =
    [(128, 768), (4096, 768), (16384, 768), (4096, 3072)];

/// Ragged BERT lengths: `batch` integers uniform in [seq/4, seq], from `SeedRng::new(1000·seq +
/// batch)`. Shared by benches/attention.rs and benches/bert.rs; scripts/peer_bench.py
/// `ragged_lens` is the same generator, so the PyTorch peers time the same batches.
pub fn ragged_lens(batch: usize, seq: usize) -> Vec<usize> {
    let mut rng = SeedRng::new((1000 * seq + batch) as u64);
    let lo = seq / 4;
    (0..batch)
        .map(|_| lo + rng.below((seq - lo + 1) as u64) as usize)
        .collect()
}

/// Prints what criterion's wall-clock samples do not separate, for one call of `f` after a
/// warm-up: kernels launched, host (enqueue) time and GPU time between CUDA events. The line
/// starts with `forward:` and the bench id, for scripts/bench_report.py and readers.
pub fn report_forward<T>(gpu: &medkern::Gpu, id: &str, mut f: impl FnMut() -> medkern::Result<T>) {
    let mut run = || -> medkern::Result<medkern::Timing> {
        f()?;
        gpu.synchronize()?;
        gpu.timed(|| f().map(|_| ()))
    };
    match run() {
        Ok(t) => println!(
            "forward: {id}: {} launches, host {:.3} ms, GPU {} per forward",
            t.launches,
            t.host_ms,
            t.device_ms
                .map_or("(no timing on this device)".into(), |ms| format!(
                    "{ms:.3} ms"
                ))
        ),
        Err(e) => println!("forward: {id}: failed: {e}"),
    }
}
