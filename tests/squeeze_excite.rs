//! Squeeze-and-excitation (`kernels/squeeze_excite.cu`, `src/ops/squeeze_excite.rs`): a
//! hand-computed block, argument errors, and GPU against the f64 reference over random NHWC
//! shapes (EfficientNet-B0's SE widths and odd ones), f32 or x-dtype weights, the one-kernel
//! and the split squeeze, with an error bound propagated through the two FCs.

mod common;
use approx::assert_relative_eq;
use common::*;
use medkern::ops::{self, SqueezeExcite};
use medkern::reference::pool::global_avg_pool;
use medkern::reference::squeeze_excite as reference;
use medkern::{DType, Device, Error, Tensor};
use proptest::prelude::*;

#[test]
fn reference_hand_computed() {
    // x [1, 1, 2, 2]: pixels (1, 2) and (3, 4) → pooled (2, 3).
    // FC1 w1 [[1, -1]], b1 0.5: z = -0.5, h = silu(-0.5) = -0.5/(1 + e^0.5).
    // FC2 w2 [[2], [0]], b2 (0, 1): s = (sigmoid(2h), sigmoid(1)).
    let x = [1.0, 2.0, 3.0, 4.0];
    let s = reference::se_scale_vector(
        &x,
        (1, 2, 2),
        &[1.0, -1.0],
        &[0.5],
        &[2.0, 0.0],
        &[0.0, 1.0],
    );
    assert_relative_eq!(
        reference::silu(-0.5),
        -0.188_770_334_399_072_7,
        max_relative = 1e-15
    );
    assert_relative_eq!(s[0], 0.406_720_194_520_228_73, max_relative = 1e-15);
    assert_relative_eq!(s[1], 0.731_058_578_630_004_9, max_relative = 1e-15);
    let y = reference::channel_scale(&x, (1, 2, 2), &s);
    assert_relative_eq!(y[3], 4.0 * 0.731_058_578_630_004_9, max_relative = 1e-15);
    // The CPU backend of the op gives the same (rounded to f32).
    let cpu = Device::Cpu;
    let t = |shape: &[usize], v: &[f64]| upload(&cpu, shape, v, DType::F32);
    let (w1, b1, w2, b2) = (
        t(&[1, 2], &[1.0, -1.0]),
        t(&[1], &[0.5]),
        t(&[2, 1], &[2.0, 0.0]),
        t(&[2], &[0.0, 1.0]),
    );
    let se = SqueezeExcite::new(&w1, &b1, &w2, &b2);
    let xt = t(&[1, 1, 2, 2], &x);
    let sv = ops::se_scale_vector(&xt, &se).unwrap();
    assert_eq!(sv.shape(), [1, 2]);
    assert_eq!(
        sv.to_host().unwrap().to_f64(),
        [s[0] as f32 as f64, s[1] as f32 as f64]
    );
    let yt = ops::squeeze_excite(&xt, &se).unwrap();
    assert_eq!(yt.shape(), [1, 1, 2, 2]);
    assert_eq!(yt.to_host().unwrap().to_f64()[3], (y[3] as f32) as f64);
}

#[test]
fn bad_inputs_are_errors() {
    let cpu = Device::Cpu;
    let z = |shape: &[usize], dt| upload(&cpu, shape, &vec![0.5; shape.iter().product()], dt);
    let x = z(&[2, 3, 3, 16], DType::F16);
    let (w1, b1, w2, b2) = (
        z(&[4, 16], DType::F32),
        z(&[4], DType::F32),
        z(&[16, 4], DType::F32),
        z(&[16], DType::F32),
    );
    assert!(ops::squeeze_excite(&x, &SqueezeExcite::new(&w1, &b1, &w2, &b2)).is_ok());
    // Channels mismatch: w1 [4, 8] for 16 channels.
    let w1_bad = z(&[4, 8], DType::F32);
    let e = ops::squeeze_excite(&x, &SqueezeExcite::new(&w1_bad, &b1, &w2, &b2)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "squeeze_excite",
                arg: "w1",
                ..
            }
        ) && e.to_string().contains("x has 16 channels"),
        "{e}"
    );
    // w2 with the wrong hidden width.
    let w2_bad = z(&[16, 5], DType::F32);
    let e = ops::squeeze_excite(&x, &SqueezeExcite::new(&w1, &b1, &w2_bad, &b2)).unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "w2", .. }), "{e}");
    // Weight dtypes: bf16 for an f16 x, or mixed.
    let w1_bf = z(&[4, 16], DType::BF16);
    let e = ops::squeeze_excite(&x, &SqueezeExcite::new(&w1_bf, &b1, &w2, &b2)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                arg: "w1",
                got: DType::BF16,
                ..
            }
        ),
        "{e}"
    );
    let b2_16 = z(&[16], DType::F16);
    let e = ops::squeeze_excite(&x, &SqueezeExcite::new(&w1, &b1, &w2, &b2_16)).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "b2", .. }), "{e}");
    // The scale vector: f32 [N, C].
    let mut s = z(&[2, 16], DType::F16);
    let e =
        ops::se_scale_vector_into(&x, &SqueezeExcite::new(&w1, &b1, &w2, &b2), &mut s).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "s", .. }), "{e}");
    let s_bad = z(&[1, 16], DType::F32);
    let e = ops::channel_scale(&x, &s_bad).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "channel_scale",
                arg: "s",
                ..
            }
        ),
        "{e}"
    );
    // Zero splits, too many channels, not NHWC.
    let mut se = SqueezeExcite::new(&w1, &b1, &w2, &b2);
    se.spatial_splits = Some(0);
    let e = ops::squeeze_excite(&x, &se).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                arg: "spatial_splits",
                ..
            }
        ),
        "{e}"
    );
    let wide = z(&[1, 1, 1, 4100], DType::F32);
    let (w1w, w2w, b2w) = (
        z(&[2, 4100], DType::F32),
        z(&[4100, 2], DType::F32),
        z(&[4100], DType::F32),
    );
    let b1w = z(&[2], DType::F32);
    let e = ops::squeeze_excite(&wide, &SqueezeExcite::new(&w1w, &b1w, &w2w, &b2w)).unwrap_err();
    assert!(e.to_string().contains("C <= 4096"), "{e}");
    let flat = z(&[3, 16], DType::F16);
    let e = ops::squeeze_excite(&flat, &SqueezeExcite::new(&w1, &b1, &w2, &b2)).unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "x", .. }), "{e}");
    if let Some(gpu) = gpu_or_skip("squeeze_excite bad_inputs_are_errors (device mismatch)") {
        let xg = upload(&Device::Gpu(gpu), &[2, 3, 3, 16], &[0.5; 288], DType::F16);
        let e = ops::squeeze_excite(&xg, &SqueezeExcite::new(&w1, &b1, &w2, &b2)).unwrap_err();
        assert!(matches!(e, Error::Device { arg: "w1", .. }), "{e}");
    }
}

/// Channel widths: EfficientNet-B0's SE inputs (32, 96, 144, 240, 480, 672, 1152), B7's widest
/// (3840, 1 in 20) and odd ones.
fn se_channels() -> Dim {
    Dim::default()
        .sizes(19, &[1, 3, 13, 32, 71, 96, 144, 240, 480, 672, 1152, 8])
        .sizes(12, &[3840])
}

/// Error bound of the GPU's f32 arithmetic for one image's scale vector, propagated through
/// the squeeze (f32 sums of depth <= HW/8 + 258), FC1 (C-term dot, SiLU: slope <= 1.1),
/// FC2 (Cse-term dot) and the sigmoid (slope <= 1/4).
#[allow(clippy::too_many_arguments)]
fn scale_bound(
    x: &[f64],
    (n, hw, c): (usize, usize, usize),
    w1: &[f64],
    b1: &[f64],
    w2: &[f64],
) -> Vec<f64> {
    let u = 2f64.powi(-24);
    let cse = b1.len();
    let pooled = global_avg_pool(x, n, hw, c);
    let absx: Vec<f64> = x.iter().map(|v| v.abs()).collect();
    let mag = global_avg_pool(&absx, n, hw, c);
    let depth = hw.div_ceil(8) as f64 + 258.0;
    let mut bound = vec![0.0; n * c];
    for b in 0..n {
        let p = &pooled[b * c..(b + 1) * c];
        let e_p: Vec<f64> = (0..c)
            .map(|k| depth * u * mag[b * c + k] + u * p[k].abs())
            .collect();
        let mut h = vec![0.0; cse];
        let mut e_h = vec![0.0; cse];
        for j in 0..cse {
            let row = &w1[j * c..(j + 1) * c];
            let z: f64 = row.iter().zip(p).map(|(w, v)| w * v).sum::<f64>() + b1[j];
            let absdot: f64 =
                row.iter().zip(p).map(|(w, v)| (w * v).abs()).sum::<f64>() + b1[j].abs();
            let e_z = row.iter().zip(&e_p).map(|(w, e)| w.abs() * e).sum::<f64>()
                + (c as f64 + 6.0) * u * absdot;
            h[j] = reference::silu(z);
            e_h[j] = 1.1 * e_z + 8.0 * u * h[j].abs() + 1e-30;
        }
        for k in 0..c {
            let row = &w2[k * cse..(k + 1) * cse];
            let absdot: f64 = row.iter().zip(&h).map(|(w, v)| (w * v).abs()).sum();
            let e_z = row.iter().zip(&e_h).map(|(w, e)| w.abs() * e).sum::<f64>()
                + (cse as f64 + 6.0) * u * absdot;
            bound[b * c + k] = 0.25 * e_z + 8.0 * u;
        }
    }
    bound
}

#[test]
fn squeeze_excite_gpu_matches_reference() {
    let Some(dev) = test_device("squeeze_excite_gpu_matches_reference") else {
        return;
    };
    // (dtype, f32 weights) are the kernel variants. Sides stop at 14 when C > 1000; the squeezed
    // width is at most C; spatial splits: the launcher's choice, 1, or 2..10.
    let side = || Dim::default().sizes(1, &[1, 7, 14, 33, 56]);
    let splits = prop_oneof![Just(None), Just(Some(1)), (2..=10usize).prop_map(Some)];
    let strategy = (
        value_seed(),
        (0..3usize, any::<bool>()),
        (se_channels(), 1..=3usize, side(), side(), 1..=48usize),
        splits,
    );
    check_covering(
        file!(),
        64,
        &strategy,
        |(seed, (di, w_f32), (c, n, h, w, cse), splits), cover| {
            cover.admit([di, usize::from(w_f32)], [3, 2])?;
            let mut rng = SeedRng::new(seed);
            let dt = DType::FLOATS[di];
            let wdt = if w_f32 { DType::F32 } else { dt };
            let side_max = if c > 1000 { 14 } else { 56 };
            let (h, w) = (h.min(side_max), w.min(side_max));
            let hw = h * w;
            let cse = cse.min(c.max(1));
            let x = random_values(&mut rng, n * hw * c, 2.0, dt);
            let w1 = random_values(&mut rng, cse * c, 1.0 / (c as f64).sqrt(), wdt);
            let b1 = random_values(&mut rng, cse, 0.5, wdt);
            let w2 = random_values(&mut rng, c * cse, 1.0 / (cse as f64).sqrt(), wdt);
            let b2 = random_values(&mut rng, c, 0.5, wdt);
            let xt = upload(&dev, &[n, h, w, c], &x, dt);
            let (w1t, b1t, w2t, b2t) = (
                upload(&dev, &[cse, c], &w1, wdt),
                upload(&dev, &[cse], &b1, wdt),
                upload(&dev, &[c, cse], &w2, wdt),
                upload(&dev, &[c], &b2, wdt),
            );
            let mut se = SqueezeExcite::new(&w1t, &b1t, &w2t, &b2t);
            se.spatial_splits = splits;
            let run = || -> Result<(Tensor, Tensor), TestCaseError> {
                let mut y = poisoned(&dev, &[n, h, w, c], dt);
                let mut s = poisoned(&dev, &[n, c], DType::F32);
                ops::squeeze_excite_into(&xt, &se, &mut y, Some(&mut s))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                Ok((y, s))
            };
            let (y, s) = run()?;
            let want_s = reference::se_scale_vector(&x, (n, hw, c), &w1, &b1, &w2, &b2);
            let bound = scale_bound(&x, (n, hw, c), &w1, &b1, &w2);
            let what = format!("se {dt} w {wdt} x[{n},{h},{w},{c}] cse {cse} splits {splits:?}");
            let got_s = s.to_host().unwrap().to_f64();
            check_close(&format!("{what} s"), &got_s, &want_s, &|i| bound[i], 0.0)
                .map_err(TestCaseError::fail)?;
            let want_y = reference::channel_scale(&x, (n, hw, c), &want_s);
            let got_y = y.to_host().unwrap().to_f64();
            let per = hw * c;
            check_close(
                &format!("{what} y"),
                &got_y,
                &want_y,
                &|i| x[i].abs() * (bound[(i / per) * c + i % c] + 2f64.powi(-24)) + min_step(dt),
                dt.unit_roundoff(),
            )
            .map_err(TestCaseError::fail)?;
            let (y2, s2) = run()?;
            prop_assert_eq!(s2.to_host().unwrap(), s.to_host().unwrap());
            prop_assert_eq!(y2.to_host().unwrap(), y.to_host().unwrap());
            Ok(())
        },
    );
}
