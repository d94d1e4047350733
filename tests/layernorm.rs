//! LayerNorm (`kernels/layernorm.cu`, `src/ops/layernorm.rs`): GPU against the f64 reference,
//! with and without the fused residual, short (warp) and long (block) rows, outliers.

mod common;
use approx::assert_abs_diff_eq;
use common::*;
use medkern::ops;
use medkern::reference::layernorm as reference;
use medkern::{DType, Device, Error, Tensor};
use proptest::prelude::*;

const U_F32: f64 = f32::EPSILON as f64 / 2.0;

#[test]
fn reference_normalises() {
    // Row [1, 2, 3, 4]: mean 2.5, biased variance 1.25.
    let x = [1.0, 2.0, 3.0, 4.0];
    let (y, h) = reference::layernorm(&x, None, &[1.0; 4], &[0.0; 4], 0.0, 4, DType::F32);
    assert_eq!(h, x);
    let s = 1.25f64.sqrt();
    for (yi, xi) in y.iter().zip(x) {
        assert_abs_diff_eq!(*yi, (xi - 2.5) / s, epsilon = 1e-15);
    }
    // gamma/beta apply per column; the residual is added (and rounded to the dtype) first.
    let (y2, h2) = reference::layernorm(
        &x,
        Some(&[1.0, 1.0, 1.0, 1.0]),
        &[2.0; 4],
        &[0.5; 4],
        0.0,
        4,
        DType::F16,
    );
    assert_eq!(h2, vec![2.0, 3.0, 4.0, 5.0]);
    assert_abs_diff_eq!(y2[0], 0.5 + 2.0 * (-1.5 / s), epsilon = 1e-15);
}

#[test]
fn bad_inputs_are_errors() {
    let cpu = Device::Cpu;
    let x = Tensor::new(&cpu, &[2, 4], vec![half::f16::ONE; 8]).unwrap();
    let g32 = Tensor::new(&cpu, &[4], vec![1.0f32; 4]).unwrap();
    let g = Tensor::new(&cpu, &[4], vec![half::f16::ONE; 4]).unwrap();
    let g3 = Tensor::new(&cpu, &[3], vec![half::f16::ONE; 3]).unwrap();
    let e = ops::layernorm(&x, None, &g32, &g, 1e-5).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                op: "layernorm",
                arg: "gamma",
                got: DType::F32,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("f16"), "{e}");
    let e = ops::layernorm(&x, None, &g, &g3, 1e-5).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "layernorm",
                arg: "beta",
                ..
            }
        ),
        "{e}"
    );
    let r = Tensor::new(&cpu, &[4, 2], vec![half::f16::ONE; 8]).unwrap();
    let e = ops::layernorm(&x, Some(&r), &g, &g, 1e-5).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                arg: "residual",
                ..
            }
        ),
        "{e}"
    );
    let e = ops::layernorm(&x, None, &g, &g, 0.0).unwrap_err();
    assert!(matches!(e, Error::Invalid { arg: "eps", .. }), "{e}");
}

#[test]
fn layernorm_gpu_matches_reference() {
    let Some(dev) = test_device("layernorm_gpu_matches_reference") else {
        return;
    };
    let strategy = (
        value_seed(),
        0..3usize,
        any::<bool>(),
        any::<bool>(),
        (interesting_dim(200), interesting_dim(5000)),
    );
    check_covering(
        file!(),
        96,
        &strategy,
        |(seed, di, with_res, want_h, (rows, n)), cover| {
            // (dtype, kernel) are the variants: rows longer than 1024 take the block kernel,
            // shorter ones the warp kernel (src/ops/layernorm.rs).
            cover.admit([di, usize::from(n > 1024)], [3, 2])?;
            let mut rng = SeedRng::new(seed);
            let dt = DType::FLOATS[di];
            let shape = [rows, n];
            // A per-row offset far from zero tests the stability of the variance.
            let offset = dt.round(rng.normal() * 50.0);
            let x: Vec<f64> = random_values(&mut rng, rows * n, 2.0, dt)
                .into_iter()
                .map(|v| dt.round(v + offset))
                .collect();
            let r = random_values(&mut rng, rows * n, 1.0, dt);
            let g = random_values(&mut rng, n, 1.0, dt);
            let b = random_values(&mut rng, n, 0.5, dt);
            let eps = 1e-5f32;
            let (xt, rt) = (upload(&dev, &shape, &x, dt), upload(&dev, &shape, &r, dt));
            let (gt, bt) = (upload(&dev, &[n], &g, dt), upload(&dev, &[n], &b, dt));
            let mut y = poisoned(&dev, &shape, dt);
            let mut h = poisoned(&dev, &shape, dt);
            let want_h = with_res && want_h;
            ops::layernorm_into(
                &xt,
                with_res.then_some(&rt),
                &gt,
                &bt,
                eps,
                &mut y,
                want_h.then_some(&mut h),
            )
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (wy, wh) = reference::layernorm(
                &x,
                with_res.then_some(&r[..]),
                &g,
                &b,
                f64::from(eps),
                n,
                dt,
            );
            // Normalised values z carry f32 statistics error scaled by |z|+1 and the row offset.
            let atol = |i: usize| {
                let c = i % n;
                let z = if g[c] != 0.0 {
                    ((wy[i] - b[c]) / g[c]).abs()
                } else {
                    0.0
                };
                min_step(dt)
                    + 256.0
                        * U_F32
                        * (g[c].abs() * (z + 1.0) * (1.0 + offset.abs() / 8.0) + b[c].abs())
            };
            let rtol = 2.0 * dt.unit_roundoff();
            let gy = y.to_host().unwrap().to_f64();
            check_close(
                &format!("layernorm {dt} {shape:?} res={with_res}"),
                &gy,
                &wy,
                &atol,
                rtol,
            )
            .map_err(TestCaseError::fail)?;
            check_row_scale(&gy, &wy, &b, n, dt, offset).map_err(TestCaseError::fail)?;
            if want_h {
                check_close(
                    "layernorm h_out",
                    &h.to_host().unwrap().to_f64(),
                    &wh,
                    &|_| 0.0,
                    0.0,
                )
                .map_err(TestCaseError::fail)?;
            }
            Ok(())
        },
    );
}

/// A systematic scale error per row (the variance divided by n − 1 instead of n scales every
/// output by ~1 − 1/2n) hides inside the f16/bf16 elementwise tolerance for long rows; it shows
/// in the least-squares scale of (y − β) against the reference, whose rounding noise averages
/// down as 1/√n. Rows shorter than 64 are left to the elementwise check.
fn check_row_scale(
    got: &[f64],
    want: &[f64],
    beta: &[f64],
    n: usize,
    dt: DType,
    offset: f64,
) -> Result<(), String> {
    if n < 64 {
        return Ok(());
    }
    for (r, (g, w)) in got.chunks(n).zip(want.chunks(n)).enumerate() {
        let (mut num, mut den, mut var) = (0.0, 0.0, 0.0);
        for c in 0..n {
            let t = w[c] - beta[c];
            num += (g[c] - beta[c]) * t;
            den += t * t;
            // Rounding to dt: uniform within half an ulp (sd ≤ 0.6·u·|y|); f32 arithmetic below.
            let sd = 0.6 * dt.unit_roundoff() * w[c].abs()
                + 4.0 * U_F32 * (t.abs() + beta[c].abs())
                + min_step(dt);
            var += sd * sd * t * t;
        }
        if den == 0.0 {
            continue;
        }
        let scale = num / den;
        // Five standard deviations of the rounding noise, plus the f32 statistics' own error.
        let limit = 5.0 * var.sqrt() / den + 64.0 * U_F32 * (1.0 + offset.abs() / 8.0);
        if (scale - 1.0).abs() > limit {
            return Err(format!(
                "layernorm {dt} row {r} of length {n}: outputs scaled by {scale} against the reference (|scale - 1| > {limit:e}): a biased variance?"
            ));
        }
    }
    Ok(())
}
