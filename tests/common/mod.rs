//! Shared test harness: GPU acquisition with counted SKIPs, seeded random inputs with planted
//! outliers, output poisoning, and `tol + |ref|·eps(dtype)` comparison.
#![allow(dead_code)]

use medkern::{DType, Device, Gpu, HostTensor, Tensor};
use std::io::Write;
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

/// Row lengths and counts tests draw from: the tail sizes the brief names plus random ones.
pub fn interesting_len(rng: &mut SeedRng, max: usize) -> usize {
    const TAILS: [usize; 9] = [1, 7, 8, 33, 64, 257, 768, 1025, 2048];
    if rng.below(2) == 0 {
        TAILS[rng.below(TAILS.len() as u64) as usize].min(max)
    } else {
        1 + rng.below(max as u64) as usize
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

/// GEMM sizes in CUTLASS's testbed manner: multiples of the alignment, just off them, tails.
pub fn gemm_len(rng: &mut SeedRng, align: usize, max: usize) -> usize {
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
    let v = if rng.below(3) == 0 {
        1 + rng.below(max as u64) as usize
    } else {
        choices[rng.below(choices.len() as u64) as usize]
    };
    v.clamp(1, max)
}

/// Proptest config with `default` cases, overridable by `MEDKERN_CASES` (the CPU self-check in
/// scripts/test runs a few; a GPU session can run many).
pub fn cases(default: u32) -> proptest::test_runner::Config {
    let n = std::env::var("MEDKERN_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    proptest::test_runner::Config {
        cases: n,
        failure_persistence: None,
        ..Default::default()
    }
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

/// Walks a property test's first cases through every kernel variant: case `c < Π radix` takes
/// the mixed-radix digits of `c`, later cases keep what the strategy drew. Every variant then
/// runs at any case count >= Π radix (CI's counts included), on the GPU and the emulated GPU.
pub struct Cover(AtomicUsize);
impl Cover {
    pub const fn new() -> Self {
        Cover(AtomicUsize::new(0))
    }
    pub fn pick<const N: usize>(&self, drawn: [usize; N], radix: [usize; N]) -> [usize; N] {
        let c = self.0.fetch_add(1, Ordering::SeqCst);
        let total: usize = radix.iter().product();
        if c >= total {
            return drawn;
        }
        let mut rest = c;
        let mut out = [0; N];
        for (o, r) in out.iter_mut().zip(radix) {
            *o = rest % r;
            rest /= r;
        }
        out
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
