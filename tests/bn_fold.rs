//! BatchNorm folding (`src/ops/bn_fold.rs`, host only): hand-computed fold, argument errors,
//! and `conv(x, w') + b' == BN(conv(x, w) + b)` through a naive NHWC convolution written here,
//! for random shapes, with and without a conv bias, f32/f16/bf16 weights.

mod common;
use approx::assert_relative_eq;
use common::*;
use medkern::ops::bn_fold::{
    BatchNorm, batchnorm_channels_last, batchnorm_scale_shift, fold_batchnorm,
};
use medkern::{DType, Error, HostTensor};
use proptest::prelude::*;

fn t(shape: &[usize], v: &[f64], dt: DType) -> HostTensor {
    host(shape, v, dt)
}

#[test]
fn fold_hand_computed() {
    // Two output channels, weight [2, 1, 1, 2]; γ = (2, 1), β = (1, -1), μ = (0.5, 0),
    // var = (3, 0.25) with ε = 1 → s = (2/2, 1/√1.25); bias (1, 2).
    let w = t(&[2, 1, 1, 2], &[1.0, 2.0, -4.0, 8.0], DType::F32);
    let b = t(&[2], &[1.0, 2.0], DType::F32);
    let (gamma, beta, mean, var) = (
        t(&[2], &[2.0, 1.0], DType::F32),
        t(&[2], &[1.0, -1.0], DType::F32),
        t(&[2], &[0.5, 0.0], DType::F32),
        t(&[2], &[3.0, 0.25], DType::F32),
    );
    let bn = BatchNorm {
        gamma: &gamma,
        beta: &beta,
        running_mean: &mean,
        running_var: &var,
        eps: 1.0,
    };
    let f = fold_batchnorm(&w, Some(&b), &bn, DType::F32).unwrap();
    let s1 = 1.0 / 1.25f64.sqrt();
    let wf = f.weight.to_f64();
    assert_eq!(&wf[..2], &[1.0, 2.0]);
    assert_eq!(wf[2], (-4.0 * s1) as f32 as f64);
    assert_eq!(wf[3], (8.0 * s1) as f32 as f64);
    // b' = (b − μ)·s + β = (0.5·1 + 1, 2·s1 − 1).
    let bf = f.bias.to_f64();
    assert_eq!(bf[0], 1.5);
    assert_relative_eq!(bf[1], 2.0 * s1 - 1.0, max_relative = 1e-7);
    // Pair form: (s, shift) with shift = b'.
    let (sc, sh) = batchnorm_scale_shift(2, Some(&b), &bn).unwrap();
    assert_eq!(sc.to_f64()[0], 1.0);
    assert_eq!(sh.to_f64(), bf);
    // Without a conv bias: shift = β − μ·s.
    let (_, sh) = batchnorm_scale_shift(2, None, &bn).unwrap();
    assert_eq!(sh.to_f64()[0], 0.5);
    // The weight keeps its dtype; the bias takes the one asked for.
    let w16 = t(&[2, 1, 1, 2], &[1.0, 2.0, -4.0, 8.0], DType::F16);
    let f16 = fold_batchnorm(&w16, None, &bn, DType::BF16).unwrap();
    assert_eq!(
        (f16.weight.dtype(), f16.bias.dtype()),
        (DType::F16, DType::BF16)
    );
}

#[test]
fn bad_inputs_are_errors() {
    let w = t(&[3, 2], &[1.0; 6], DType::F32);
    let ones = t(&[3], &[1.0; 3], DType::F32);
    let short = t(&[2], &[1.0; 2], DType::F32);
    let bn = |mean: &'static HostTensor| BatchNorm {
        gamma: mean,
        beta: mean,
        running_mean: mean,
        running_var: mean,
        eps: 1e-5,
    };
    let ones: &'static HostTensor = Box::leak(Box::new(ones));
    let short: &'static HostTensor = Box::leak(Box::new(short));
    assert!(fold_batchnorm(&w, None, &bn(ones), DType::F32).is_ok());
    let e = fold_batchnorm(&w, None, &bn(short), DType::F32).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "bn_fold",
                arg: "gamma",
                ..
            }
        ) && e.to_string().contains("[3]"),
        "{e}"
    );
    let e = fold_batchnorm(&w, Some(short), &bn(ones), DType::F32).unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "bias", .. }), "{e}");
    let neg = t(&[3], &[1.0, -2.0, 1.0], DType::F32);
    let e = fold_batchnorm(
        &w,
        None,
        &BatchNorm {
            running_var: &neg,
            ..bn(ones)
        },
        DType::F32,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                arg: "running_var",
                ..
            }
        ) && e.to_string().contains("channel 1"),
        "{e}"
    );
    let e = fold_batchnorm(
        &w,
        None,
        &BatchNorm {
            eps: f64::NAN,
            ..bn(ones)
        },
        DType::F32,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Invalid { arg: "eps", .. }), "{e}");
    let wi = t(&[3, 2], &[1.0; 6], DType::I8);
    let e = fold_batchnorm(&wi, None, &bn(ones), DType::F32).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "weight", .. }), "{e}");
    let e = fold_batchnorm(&w, None, &bn(ones), DType::I32).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                arg: "bias_dtype",
                ..
            }
        ),
        "{e}"
    );
}

/// Naive NHWC convolution, stride 1, no padding: `x [h, w, ic]`, `w [oc, kh, kw, ic]`.
fn conv(
    x: &[f64],
    (h, wd, ic): (usize, usize, usize),
    w: &[f64],
    (oc, kh, kw): (usize, usize, usize),
    b: Option<&[f64]>,
) -> Vec<f64> {
    let (oh, ow) = (h - kh + 1, wd - kw + 1);
    let mut y = vec![0.0; oh * ow * oc];
    for i in 0..oh {
        for j in 0..ow {
            for o in 0..oc {
                let mut acc = b.map_or(0.0, |b| b[o]);
                for a in 0..kh {
                    for c in 0..kw {
                        for k in 0..ic {
                            acc += x[((i + a) * wd + j + c) * ic + k]
                                * w[((o * kh + a) * kw + c) * ic + k];
                        }
                    }
                }
                y[(i * ow + j) * oc + o] = acc;
            }
        }
    }
    y
}

#[test]
fn folded_conv_equals_conv_then_batchnorm() {
    // The input is (kh + dh) × (kw + dw).
    let strategy = (
        value_seed(),
        0..3usize,
        any::<bool>(),
        (1..=9usize, 1..=7usize),
        (1..=3usize, 1..=3usize, 0..5usize, 0..5usize),
    );
    check(
        file!(),
        48,
        &strategy,
        |(seed, di, with_bias, (oc, ic), (kh, kw, dh, dw))| {
            let mut rng = SeedRng::new(seed);
            let dt = DType::FLOATS[di];
            let (h, w) = (kh + dh, kw + dw);
            let x = random_values(&mut rng, h * w * ic, 1.0, DType::F32);
            let wv = random_values(&mut rng, oc * kh * kw * ic, 0.5, dt);
            let bv = random_values(&mut rng, oc, 0.5, DType::F32);
            let gamma = random_values(&mut rng, oc, 1.0, DType::F32);
            let beta = random_values(&mut rng, oc, 1.0, DType::F32);
            let mean = random_values(&mut rng, oc, 1.0, DType::F32);
            // Variances from tiny (ε matters) to large.
            let var: Vec<f64> = (0..oc)
                .map(|_| DType::F32.round(10f64.powf(rng.uniform() * 8.0 - 6.0)))
                .collect();
            let eps = 1e-5;
            let ht = |v: &[f64]| host(&[oc], v, DType::F32);
            let (gt, bt, mt, vt, biast) = (ht(&gamma), ht(&beta), ht(&mean), ht(&var), ht(&bv));
            let bn = BatchNorm {
                gamma: &gt,
                beta: &bt,
                running_mean: &mt,
                running_var: &vt,
                eps,
            };
            let wt = host(&[oc, kh, kw, ic], &wv, dt);
            let bias = with_bias.then_some(&biast);
            let f = fold_batchnorm(&wt, bias, &bn, DType::F32)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(f.weight.shape(), wt.shape());
            let b_opt = with_bias.then_some(bv.as_slice());
            let want = batchnorm_channels_last(
                &conv(&x, (h, w, ic), &wv, (oc, kh, kw), b_opt),
                &gamma,
                &beta,
                &mean,
                &var,
                eps,
            );
            let wf = f.weight.to_f64();
            let got = conv(&x, (h, w, ic), &wf, (oc, kh, kw), Some(&f.bias.to_f64()));
            // Rounding w' (dt) and b' (f32) once: |Δ| <= u_dt·Σ|x·w'| + u_f32·|b'|.
            let absx: Vec<f64> = x.iter().map(|v| v.abs()).collect();
            let absw: Vec<f64> = wf.iter().map(|v| v.abs()).collect();
            let mag = conv(&absx, (h, w, ic), &absw, (oc, kh, kw), None);
            let bfold = f.bias.to_f64();
            check_close(
                &format!("bn fold {dt} oc {oc} ic {ic} k {kh}x{kw} bias {with_bias}"),
                &got,
                &want,
                &|i| {
                    1.01 * (dt.unit_roundoff() * mag[i]
                        + DType::F32.unit_roundoff() * bfold[i % oc].abs())
                        + 1e-12
                },
                1e-12,
            )
            .map_err(TestCaseError::fail)?;
            Ok(())
        },
    );
}
