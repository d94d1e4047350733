//! Shared test harness: GPU acquisition with counted SKIPs, seeded random inputs with planted
//! outliers, output poisoning, `tol + |ref|·eps(dtype)` comparison, and the property-test runner.
//!
//! # Property tests
//!
//! A property test draws its *shapes* (sizes, channel counts, kernel windows) and its discrete
//! choices (dtype, activation, flags, tile) as proptest values, through [`Dim`] and proptest's
//! own strategies, plus one seed ([`value_seed`]) that only drives the element *values*
//! ([`SeedRng`], [`random_values`]). Run it through [`check`] (or [`check_covering`] when it
//! must reach every kernel variant), passing `file!()`:
//!
//! ```ignore
//! let strategy = (value_seed(), 0..3usize, interesting_dim(200));
//! check(file!(), 64, &strategy, |(seed, di, rows)| {
//!     let mut rng = SeedRng::new(seed);
//!     // ...
//!     Ok(())
//! });
//! ```
//!
//! A failing case then shrinks: proptest retries it with smaller shapes (and simpler choices)
//! while it still fails, and reports the smallest as `minimal failing input: ...`. It is also
//! saved: proptest appends its seed to `tests/<file>.proptest-regressions`, next to the test
//! source, and every later run of that test binary replays the saved cases first, before the
//! fresh draws. Commit a regression file that appears (with the fix, or with the bug report):
//! it keeps the case failing until fixed and checked afterwards. Delete an entry only when the
//! strategy it was drawn from changes (the seed then decodes to another case). A run without a
//! failure writes nothing. `PROPTEST_DISABLE_FAILURE_PERSISTENCE=1` turns saving and replay off
//! (scripts/emu-mutants does, as its planted bugs are meant to fail); so does running a test
//! binary from a directory without its `tests/<file>.rs` (the GPU bundle; cargo runs tests from
//! the package root). `PROPTEST_RNG_SEED` fixes the fresh draws (scripts/test's emulated-GPU
//! gate), `MEDKERN_CASES` their number.
#![allow(dead_code)]

use medkern::{DType, Device, Gpu, HostTensor, Tensor};
use proptest::prelude::Rng;
use proptest::strategy::{NewTree, Strategy, ValueTree};
use proptest::test_runner::{
    Config, FailurePersistence, FileFailurePersistence, TestCaseError, TestCaseResult, TestRunner,
};
use std::cell::{Cell, RefCell};
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

static SKIPS: AtomicUsize = AtomicUsize::new(0);

/// True when `MEDKERN_TEST_DEVICE=emu`: the GPU tests run on the emulated GPU (the same
/// launchers and kernel sources, executed on the CPU under memory checks).
pub fn emulated() -> bool {
    std::env::var("MEDKERN_TEST_DEVICE").is_ok_and(|v| v == "emu")
}

/// The first GPU (or the emulated GPU under `MEDKERN_TEST_DEVICE=emu`), or None after
/// printing a visible, counted `SKIP` line. With `MEDKERN_REQUIRE_GPU=1` a missing GPU fails
/// the test instead.
pub fn gpu_or_skip(test: &str) -> Option<Arc<Gpu>> {
    static GPU: OnceLock<Result<Arc<Gpu>, String>> = OnceLock::new();
    let open = || {
        if emulated() {
            Gpu::emulated().map_err(|e| e.to_string())
        } else {
            Gpu::new(0).map_err(|e| e.to_string())
        }
    };
    match GPU.get_or_init(open) {
        Ok(g) => Some(g.clone()),
        Err(e) => {
            if std::env::var("MEDKERN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: MEDKERN_REQUIRE_GPU=1 but no usable GPU: {e}");
            }
            skip(test, &format!("no GPU ({e})"));
            None
        }
    }
}

/// Prints a visible, counted `SKIP [k] <test>: <why>` line (what scripts/test counts).
pub fn skip(test: &str, why: &str) {
    let k = SKIPS.fetch_add(1, Ordering::SeqCst) + 1;
    // One write_all on the raw stderr handle: not hidden by libtest's capture and not
    // interleaved with its own output.
    let line = format!("\nSKIP [{k}] {test}: {why}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// SplitMix64: a tiny seeded generator so every proptest case is reproducible from its seed.
pub struct SeedRng(u64);
impl SeedRng {
    pub fn new(seed: u64) -> Self {
        SeedRng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// `len` values ~ N(0, sigma²) with about 1 in 50 replaced by a planted outlier of ±(8..40)·sigma,
/// already rounded to `dtype` (so CPU and GPU see identical inputs). Never all zeros.
pub fn random_values(rng: &mut SeedRng, len: usize, sigma: f64, dtype: DType) -> Vec<f64> {
    (0..len)
        .map(|_| {
            let mut v = rng.normal() * sigma;
            if rng.below(50) == 0 {
                let sign = if rng.below(2) == 0 { -1.0 } else { 1.0 };
                v = sign * (8.0 + 32.0 * rng.uniform()) * sigma;
            }
            dtype.round(v)
        })
        .collect()
}

/// The device the GPU property tests run on: the first GPU, or None after a counted SKIP.
/// `MEDKERN_TEST_BACKEND=cpu` runs them on the CPU backend instead: a self-check of the test
/// plumbing (shapes, tolerances) that needs no GPU and proves nothing about the kernels.
pub fn test_device(test: &str) -> Option<Device> {
    if std::env::var("MEDKERN_TEST_BACKEND").is_ok_and(|v| v == "cpu") {
        return Some(Device::Cpu);
    }
    gpu_or_skip(test).map(Device::Gpu)
}

pub fn host(shape: &[usize], values: &[f64], dtype: DType) -> HostTensor {
    HostTensor::from_f64(shape, values, dtype).expect("host tensor")
}

/// Puts values on `dev` as `dtype`.
pub fn upload(dev: &Device, shape: &[usize], values: &[f64], dtype: DType) -> Tensor {
    host(shape, values, dtype).to_device(dev).expect("upload")
}

/// An output filled with 0xFF bytes (NaN in f32/f16/bf16, -1 in integers): any element the
/// kernel does not write fails the comparison.
pub fn poisoned(dev: &Device, shape: &[usize], dtype: DType) -> Tensor {
    match dev {
        Device::Gpu(gpu) => {
            let mut t = medkern::DeviceTensor::alloc(gpu, shape, dtype).expect("alloc");
            t.fill_bytes(0xFF).expect("poison");
            Tensor::Device(t)
        }
        Device::Cpu => {
            let n: usize = shape.iter().product();
            let v = if dtype.is_float() { f64::NAN } else { -1.0 };
            Tensor::Host(HostTensor::from_f64(shape, &vec![v; n], dtype).expect("poison"))
        }
    }
}

/// Smallest positive step of the format (its subnormal spacing): the floor of any tolerance.
pub fn min_step(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2f64.powi(-24),
        DType::BF16 => 2f64.powi(-133),
        DType::F32 => 2f64.powi(-149),
        _ => 0.0,
    }
}

/// Checks `|got − want| ≤ atol[i] + rtol·|want|` elementwise (NaN in got always fails);
/// reports the first failures and the worst error.
pub fn check_close(
    what: &str,
    got: &[f64],
    want: &[f64],
    atol: &dyn Fn(usize) -> f64,
    rtol: f64,
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: got {} elements, want {}",
            got.len(),
            want.len()
        ));
    }
    let mut bad = Vec::new();
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let tol = atol(i) + rtol * w.abs();
        if err.is_nan() || err > tol {
            if bad.len() < 5 {
                bad.push(format!(
                    "[{i}] got {g:e} want {w:e} err {err:e} tol {tol:e}"
                ));
            }
            if err.is_nan() || err > worst.0 {
                worst = (if err.is_nan() { f64::INFINITY } else { err }, i);
            }
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{what}: mismatches (worst at {}: {:e}):\n  {}",
            worst.1,
            worst.0,
            bad.join("\n  ")
        ))
    }
}

/// Int8 values: mostly small (|v| ≤ 16, as quantised activations are), 1 in 50 a planted
/// extreme (±100..127 or -128).
pub fn random_i8(rng: &mut SeedRng, len: usize) -> Vec<i8> {
    (0..len)
        .map(|_| {
            if rng.below(50) == 0 {
                if rng.below(8) == 0 {
                    -128
                } else {
                    (100 + rng.below(28) as i32) as i8 * if rng.below(2) == 0 { -1 } else { 1 }
                }
            } else {
                rng.below(33) as i8 - 16
            }
        })
        .collect()
}

/// A dimension (size, length, channel count) as a proptest value: a weighted mix of uniform
/// ranges and listed sizes (the tails worth drawing often). It shrinks by binary search toward
/// the smallest size it can draw, so a failure reports the smallest dimension that still fails.
/// Built as `Dim::default().uniform(w, lo, hi).sizes(w, &[...])`; weights are relative.
#[derive(Clone, Debug, Default)]
pub struct Dim(Vec<(u32, usize, usize)>);

impl Dim {
    /// Also draws uniformly from `lo..=hi`, with weight `weight`.
    pub fn uniform(mut self, weight: u32, lo: usize, hi: usize) -> Dim {
        assert!(weight > 0 && lo <= hi, "Dim::uniform({weight}, {lo}, {hi})");
        self.0.push((weight, lo, hi));
        self
    }
    /// Also draws each of `sizes`, each with weight `weight` (a size listed twice, twice as often).
    pub fn sizes(mut self, weight: u32, sizes: &[usize]) -> Dim {
        assert!(weight > 0, "Dim::sizes: weight 0");
        self.0.extend(sizes.iter().map(|&s| (weight, s, s)));
        self
    }
}

impl Strategy for Dim {
    type Tree = proptest::num::usize::BinarySearch;
    type Value = usize;
    fn new_tree(&self, runner: &mut TestRunner) -> NewTree<Self> {
        let total: u64 = self.0.iter().map(|a| u64::from(a.0)).sum();
        assert!(total > 0, "Dim with nothing to draw");
        let rng = runner.rng();
        let mut w = rng.next_u64() % total;
        let &(_, lo, hi) = self
            .0
            .iter()
            .find(|a| {
                let hit = w < u64::from(a.0);
                w = w.wrapping_sub(u64::from(a.0));
                hit
            })
            .expect("weights sum to total");
        let v = lo + (rng.next_u64() % (hi - lo + 1) as u64) as usize;
        let floor = self.0.iter().map(|a| a.1).min().expect("not empty");
        Ok(proptest::num::usize::BinarySearch::new_above(floor, v))
    }
}

/// Row lengths and counts: half the time one of the tail sizes (capped at `max`), else uniform
/// in `1..=max`.
pub fn interesting_dim(max: usize) -> Dim {
    const TAILS: [usize; 9] = [1, 7, 8, 33, 64, 257, 768, 1025, 2048];
    Dim::default()
        .uniform(9, 1, max)
        .sizes(1, &TAILS.map(|t| t.min(max)))
}

/// GEMM sizes in CUTLASS's testbed manner: multiples of the alignment, just off them, tails
/// (two thirds of the draws, each clamped to `1..=max`), else uniform in `1..=max`.
pub fn gemm_dim(align: usize, max: usize) -> Dim {
    let choices = [
        align,
        2 * align,
        64 - align,
        128 + align,
        512 - 3 * align,
        1,
        7,
        33,
        257,
    ];
    Dim::default()
        .uniform(9, 1, max)
        .sizes(2, &choices.map(|v| v.clamp(1, max)))
}

/// The seed of a property test's element values: drawn, never shrunk (a smaller seed is not a
/// simpler case, only another one).
pub fn value_seed() -> impl Strategy<Value = u64> {
    proptest::prelude::any::<u64>().no_shrink()
}

/// Proptest config for the property tests in `source` (`file!()`): `default` cases, overridable
/// by `MEDKERN_CASES` (the CPU self-check in scripts/test runs a few; a GPU session can run
/// many), and failure persistence in `<source without .rs>.proptest-regressions` (see the module
/// doc). The rest, `PROPTEST_RNG_SEED` included, comes from proptest's environment variables.
pub fn cases(source: &'static str, default: u32) -> Config {
    let n = std::env::var("MEDKERN_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    let base = Config::default();
    // None under PROPTEST_DISABLE_FAILURE_PERSISTENCE; a binary run away from its sources (the
    // GPU bundle) has no file to put next to them.
    let persist = base.failure_persistence.is_some() && std::path::Path::new(source).is_file();
    Config {
        cases: n,
        source_file: Some(source),
        failure_persistence: persist.then(|| {
            Box::new(FileFailurePersistence::WithSource("proptest-regressions"))
                as Box<dyn FailurePersistence>
        }),
        // Cover's rejections (cheap: no kernel runs) must not abort the run.
        max_global_rejects: 1 << 16,
        ..base
    }
}

/// Runs a property test: `test` on `cases(source, default_cases)` values of `strategy`, saved
/// regressions first; a failure shrinks, is saved, and panics with proptest's report (the
/// reason and the minimal failing input), located at the caller.
#[track_caller]
pub fn check<S: Strategy>(
    source: &'static str,
    default_cases: u32,
    strategy: &S,
    test: impl Fn(S::Value) -> TestCaseResult,
) {
    check_covering(source, default_cases, strategy, |v, _| test(v));
}

/// [`check`] for a test that must run every kernel variant: `test` gets a [`Cover`] and calls
/// [`Cover::admit`] with the case's variant before any work.
#[track_caller]
pub fn check_covering<S: Strategy>(
    source: &'static str,
    default_cases: u32,
    strategy: &S,
    test: impl Fn(S::Value, &Cover) -> TestCaseResult,
) {
    let config = cases(source, default_cases);
    let replays = config
        .failure_persistence
        .as_ref()
        .map_or(0, |p| p.load_persisted_failures2(config.source_file).len());
    let cover = Cover::default();
    let calls = Cell::new(0usize);
    let mut runner = TestRunner::new(config);
    let result = runner.run(strategy, |v| {
        // Proptest replays the saved cases first, then draws; after a failure every call is a
        // shrinking step.
        cover.replaying.set(calls.get() < replays);
        calls.set(calls.get() + 1);
        let r = panic::catch_unwind(AssertUnwindSafe(|| test(v, &cover)));
        if !matches!(r, Ok(Ok(()) | Err(TestCaseError::Reject(_)))) {
            cover.shrinking.set(true);
        }
        r.unwrap_or_else(|p| panic::resume_unwind(p))
    });
    if let Err(e) = result {
        panic!("{source}: {e}");
    }
}

/// `n` values of `strategy` from proptest's deterministic RNG: the same draws on every run, for
/// the tests that run a few random cases everywhere.
pub fn sample<S: Strategy>(strategy: &S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).expect("strategy").current())
        .collect()
}

/// A fresh folder `<tmp>/medkern-<what>-<pid>`, removed with its contents when dropped (also
/// when the test panics), so test runs do not fill the disk (a CI run once died of it).
pub struct TempDir(std::path::PathBuf);
impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("medkern-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        TempDir(d)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Walks a property test's first cases through every kernel variant (a [`check_covering`]
/// test's mixed-radix `digits`, e.g. dtype × tile): while some variant has not run yet, a drawn
/// case of one that has is rejected and proptest draws another (a rejection costs no kernel
/// run and is no case), so the first Π radix cases run each variant once. Every variant then
/// runs at any case count >= Π radix (CI's counts included), on the GPU and the emulated GPU.
/// Each case's variant is part of its drawn value, so the case shrinks and replays as drawn
/// (forcing the variant by case number would change it under shrinking and on replay). Saved
/// cases being replayed and shrinking steps are always admitted.
#[derive(Default)]
pub struct Cover {
    seen: RefCell<Vec<bool>>,
    replaying: Cell<bool>,
    shrinking: Cell<bool>,
}

impl Cover {
    /// Ok to run this case of variant `digits` (each below its `radix`), or a rejection.
    pub fn admit<const N: usize>(
        &self,
        digits: [usize; N],
        radix: [usize; N],
    ) -> Result<(), TestCaseError> {
        let index = digits.iter().zip(radix).fold(0, |i, (&d, r)| {
            assert!(d < r, "variant digit {d} not below its radix {r}");
            i * r + d
        });
        let mut seen = self.seen.borrow_mut();
        if seen.is_empty() {
            seen.resize(radix.iter().product(), false);
        }
        assert_eq!(
            seen.len(),
            radix.iter().product::<usize>(),
            "one radix per test"
        );
        if seen[index] && !self.replaying.get() && !self.shrinking.get() && seen.contains(&false) {
            return Err(TestCaseError::reject(
                "variant already run while others have not",
            ));
        }
        seen[index] = true;
        Ok(())
    }
}

/// The device for cases that must reach the large-tile kernels: on the emulated GPU, one that
/// reports a single SM (so the tile choice takes the large tile at small shapes); elsewhere `dev`.
pub fn few_sm(dev: &Device) -> Device {
    match dev {
        Device::Gpu(g) if g.is_emulated() => {
            Device::Gpu(Gpu::emulated_as(g.arch(), 1).expect("emulated GPU"))
        }
        d => d.clone(),
    }
}

/// Where the installed models are: `MEDKERN_MODELS_DIR`, or `.models/` in the repository
/// (scripts/setup-models installs them).
pub fn models_dir() -> std::path::PathBuf {
    std::env::var_os("MEDKERN_MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".models"))
}

/// The installed model file or folder `rel` (under [`models_dir`]), or None after a counted
/// SKIP with `MEDKERN_SKIP_MODELS=1`; otherwise a missing model fails the test.
pub fn model_or_skip(test: &str, rel: &str) -> Option<std::path::PathBuf> {
    let p = models_dir().join(rel);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("MEDKERN_SKIP_MODELS").is_ok_and(|v| v == "1") {
        skip(
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

/// A small MobileBERT folder (random weights, seed 7: 2 layers, hidden 64, a two-class head
/// `normal`/`abnormal`) with MiniLM's WordPiece tokenizer: fast on the CPU backend, and run
/// through the same loaders as a real folder.
pub fn tiny_mobilebert_folder(
    minilm: &std::path::Path,
    what: &str,
    max_positions: usize,
) -> TempDir {
    tiny_mobilebert_with_labels(minilm, what, max_positions, &["normal", "abnormal"], 2)
}

/// [`tiny_mobilebert_folder`] with the head's `labels` (one label: a cross-encoder's single
/// relevance logit) and `type_vocab_size` token types (1: no second segment for pairs).
pub fn tiny_mobilebert_with_labels(
    minilm: &std::path::Path,
    what: &str,
    max_positions: usize,
    labels: &[&str],
    type_vocab_size: usize,
) -> TempDir {
    use medkern::model::mobilebert::{MobileBertConfig, random_checkpoint};
    let dir = TempDir::new(what);
    let id2label: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), serde_json::json!(l)))
        .collect();
    let config = serde_json::json!({
        "model_type": "mobilebert",
        "vocab_size": 30522,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "embedding_size": 16,
        "intra_bottleneck_size": 32,
        "num_feedforward_networks": 2,
        "max_position_embeddings": max_positions,
        "type_vocab_size": type_vocab_size,
        "id2label": id2label,
    });
    let cfg = MobileBertConfig::from_value(&config).expect("config");
    let weights = random_checkpoint(&cfg, labels.len(), 7).expect("weights");
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config.json");
    std::fs::write(dir.path().join("model.safetensors"), &weights).expect("weights");
    std::fs::copy(
        minilm.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .expect("tokenizer");
    dir
}

/// One dense GEMM case (tests/gemm.rs, tests/gemm_hopper.rs): the kernel variant and shape.
#[derive(Clone, Copy, Debug)]
pub struct GemmCase {
    pub dt: DType,
    pub odt: DType,
    pub act: medkern::ops::Activation,
    pub with_bias: bool,
    pub with_res: bool,
    /// `[batch, M, K] x [batch, N, K]` when batched, else `[M, K] x [N, K]` (batch 1).
    pub batched: bool,
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub tile: Option<medkern::ops::Tile>,
}

/// Runs `c` on `dev` with values drawn from `seed` (outliers planted, poisoned output) and
/// compares with the f64 reference: f32 accumulation of K products errs like sqrt(K) ulps of
/// Σ|x·w|, plus the output's rounding.
pub fn check_gemm_case(dev: &Device, seed: u64, c: &GemmCase) -> Result<(), String> {
    use medkern::ops::{self, Activation, Gemm};
    use medkern::reference::gemm::{self as reference, GemmDims};
    const U_F32: f64 = f32::EPSILON as f64 / 2.0;
    let GemmCase {
        dt,
        odt,
        act,
        with_bias,
        with_res,
        batched,
        batch,
        m,
        n,
        k,
        tile,
    } = *c;
    let mut rng = SeedRng::new(seed);
    let (xs, ws, ys) = if batched {
        (vec![batch, m, k], vec![batch, n, k], vec![batch, m, n])
    } else {
        (vec![m, k], vec![n, k], vec![m, n])
    };
    let d = GemmDims {
        batch,
        m,
        n,
        k,
        shared_w: !batched,
    };
    let x = random_values(&mut rng, batch * m * k, 1.0, dt);
    let w = random_values(&mut rng, ws.iter().product(), 0.5, dt);
    let b = random_values(&mut rng, n, 1.0, dt);
    let r = random_values(&mut rng, batch * m * n, 1.0, odt);
    let alpha = f64::from((0.25 + rng.uniform()) as f32);
    let (xt, wt, bt, rt) = (
        upload(dev, &xs, &x, dt),
        upload(dev, &ws, &w, dt),
        upload(dev, &[n], &b, dt),
        upload(dev, &ys, &r, odt),
    );
    let spec = Gemm {
        alpha: alpha as f32,
        bias: with_bias.then_some(&bt),
        act,
        residual: with_res.then_some(&rt),
        out_dtype: Some(odt),
        tile,
    };
    let mut out = poisoned(dev, &ys, odt);
    ops::gemm_into(&xt, &wt, &spec, &mut out).map_err(|e| e.to_string())?;
    let got = out.to_host().unwrap().to_f64();
    let want = reference::gemm(
        &x,
        &w,
        d,
        alpha,
        with_bias.then_some(&b[..]),
        act,
        with_res.then_some(&r[..]),
    );
    let ax: Vec<f64> = x.iter().map(|v| v.abs()).collect();
    let aw: Vec<f64> = w.iter().map(|v| v.abs()).collect();
    let mag = reference::gemm(&ax, &aw, d, alpha, None, Activation::Identity, None);
    let atol = |i: usize| {
        let extra =
            if with_bias { b[i % n].abs() } else { 0.0 } + if with_res { r[i].abs() } else { 0.0 };
        min_step(odt) + 8.0 * (k as f64).sqrt() * U_F32 * (mag[i] + extra + want[i].abs())
    };
    check_close(
        &format!(
            "gemm {dt}->{odt} {act:?} tile {tile:?} b{batch} batched={batched} m{m} n{n} k{k} \
             bias={with_bias} res={with_res}"
        ),
        &got,
        &want,
        &atol,
        2.0 * odt.unit_roundoff(),
    )
}
