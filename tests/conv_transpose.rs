//! Transposed conv2d (`kernels/conv_transpose.cu`, `src/ops/conv_transpose.rs`): hand-computed
//! values, the reference as the exact adjoint of an independently written forward conv, PyTorch
//! weight conversion, bad input, and the GPU against the f64 reference over random NHWC shapes
//! (odd sizes, channels off multiples of 8, strides 1-3, padding, output_padding).

mod common;
use common::*;
use medkern::ops::conv_transpose::{self as ctr, ConvTranspose};
use medkern::ops::{self, Activation};
use medkern::reference::conv_transpose::{self as reference, TransposeGeom};
use medkern::{DType, Device, Error, HostTensor, Tensor};
use proptest::prelude::*;

const U_F32: f64 = f32::EPSILON as f64 / 2.0;

fn cpu(shape: &[usize], v: &[f64], dt: DType) -> Tensor {
    upload(&Device::Cpu, shape, v, dt)
}

fn geom(x: &[usize], w: &[usize], ct: &ConvTranspose) -> TransposeGeom {
    ctr::geometry(x, w, ct).unwrap()
}

#[test]
fn reference_hand_computed() {
    // k3, stride 2, padding 1, output_padding 1 (the usual 2× decoder layer), all-ones weight:
    // 2×2 → 4×4. Output row oh takes input rows {0}, {0, 1}, {1}, {1} (kh = oh + 1 − 2·ih in
    // 0..3), likewise for columns, so y = Σ of x over those rows × columns.
    let x = [1.0, 2.0, 3.0, 4.0];
    let ct = ConvTranspose {
        stride: (2, 2),
        padding: (1, 1),
        output_padding: (1, 1),
        ..Default::default()
    };
    let g = geom(&[1, 2, 2, 1], &[3, 3, 1, 1], &ct);
    assert_eq!((g.out_h, g.out_w), (4, 4));
    let y = reference::conv_transpose(&x, &[1.0; 9], &g, None, Activation::Identity);
    #[rustfmt::skip]
    let want = [
        1., 3., 2., 2.,
        4., 10., 6., 6.,
        3., 7., 4., 4.,
        3., 7., 4., 4.,
    ];
    assert_eq!(y, want);
    // k2 stride 2, no padding: each input pixel becomes a 2×2 block of x·w; 2 → 3 channels with
    // per-channel weights 1, 2, 3 and bias −1, then ReLU.
    let ct = ConvTranspose {
        stride: (2, 2),
        ..Default::default()
    };
    let g = geom(&[1, 1, 2, 2], &[2, 2, 2, 3], &ct);
    assert_eq!((g.out_h, g.out_w), (2, 4));
    // x: pixel 0 = (1, 0), pixel 1 = (0, 2); w[kh,kw,ci,co] = (co + 1)·(ci + 1).
    let w: Vec<f64> = (0..4)
        .flat_map(|_| (0..2).flat_map(|ci| (0..3).map(move |co| ((co + 1) * (ci + 1)) as f64)))
        .collect();
    let y = reference::conv_transpose(
        &[1.0, 0.0, 0.0, 2.0],
        &w,
        &g,
        Some(&[-1.0, -1.0, -1.0]),
        Activation::Relu,
    );
    // Pixel-0 blocks: (co+1) − 1 = 0, 1, 2; pixel-1 blocks: 2·2·(co+1) − 1 = 3, 7, 11.
    let row = [0., 1., 2., 0., 1., 2., 3., 7., 11., 3., 7., 11.];
    assert_eq!(&y[..12], &row);
    assert_eq!(&y[12..], &row);
}

/// A forward conv2d written independently of the reference: z[n,ih,iw,ci] =
/// Σ_{kh,kw,co} y[n, ih·s − p + kh, iw·s − p + kw, co]·w[kh,kw,ci,co] (in-range positions).
fn forward_conv(y: &[f64], w: &[f64], g: &TransposeGeom) -> Vec<f64> {
    let mut z = vec![0.0; g.n * g.in_h * g.in_w * g.c_in];
    for n in 0..g.n {
        for ih in 0..g.in_h {
            for iw in 0..g.in_w {
                for ci in 0..g.c_in {
                    let mut s = 0.0;
                    for kh in 0..g.k_h {
                        for kw in 0..g.k_w {
                            let oh = (ih * g.stride_h + kh).checked_sub(g.pad_h);
                            let ow = (iw * g.stride_w + kw).checked_sub(g.pad_w);
                            let (Some(oh), Some(ow)) = (oh, ow) else {
                                continue;
                            };
                            if oh >= g.out_h || ow >= g.out_w {
                                continue;
                            }
                            for co in 0..g.c_out {
                                s += y[((n * g.out_h + oh) * g.out_w + ow) * g.c_out + co]
                                    * w[((kh * g.k_w + kw) * g.c_in + ci) * g.c_out + co];
                            }
                        }
                    }
                    z[((n * g.in_h + ih) * g.in_w + iw) * g.c_in + ci] = s;
                }
            }
        }
    }
    z
}

#[test]
fn reference_is_the_adjoint_of_conv2d() {
    // <conv_transpose(x), y> = <x, conv2d(y)> for the same weights, over random geometry.
    let mut rng = SeedRng::new(3);
    for _ in 0..200 {
        let (h, w) = (1 + rng.below(6) as usize, 1 + rng.below(6) as usize);
        let (ci, co) = (1 + rng.below(4) as usize, 1 + rng.below(4) as usize);
        let (kh, kw) = (1 + rng.below(4) as usize, 1 + rng.below(4) as usize);
        let (sh, sw) = (1 + rng.below(3) as usize, 1 + rng.below(3) as usize);
        let ct = ConvTranspose {
            stride: (sh, sw),
            padding: (rng.below(3) as usize, rng.below(3) as usize),
            output_padding: (rng.below(sh as u64) as usize, rng.below(sw as u64) as usize),
            ..Default::default()
        };
        let Ok(g) = ctr::geometry(&[2, h, w, ci], &[kh, kw, ci, co], &ct) else {
            continue;
        };
        let x = random_values(&mut rng, 2 * h * w * ci, 1.0, DType::F32);
        let wt = random_values(&mut rng, kh * kw * ci * co, 1.0, DType::F32);
        let y = random_values(&mut rng, 2 * g.out_h * g.out_w * co, 1.0, DType::F32);
        let t = reference::conv_transpose(&x, &wt, &g, None, Activation::Identity);
        let z = forward_conv(&y, &wt, &g);
        let lhs: f64 = t.iter().zip(&y).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&z).map(|(a, b)| a * b).sum();
        let scale: f64 = t.iter().zip(&y).map(|(a, b)| (a * b).abs()).sum::<f64>() + 1.0;
        assert!((lhs - rhs).abs() <= 1e-12 * scale, "{g:?}: {lhs} vs {rhs}");
    }
}

#[test]
fn pytorch_weights_convert() {
    // [C_in=2, C_out=3, 1, 2] = 0..12 → [1, 2, 2, 3]: out[kw][ci][co] = pt[ci][co][kw].
    let v: Vec<f64> = (0..12).map(f64::from).collect();
    let pt = HostTensor::from_f64(&[2, 3, 1, 2], &v, DType::BF16).unwrap();
    let w = ctr::weights_from_pytorch(&pt).unwrap();
    assert_eq!(
        (w.shape(), w.dtype()),
        (&[1usize, 2, 2, 3][..], DType::BF16)
    );
    assert_eq!(
        w.to_f64(),
        vec![0., 2., 4., 6., 8., 10., 1., 3., 5., 7., 9., 11.]
    );
    assert!(matches!(
        ctr::weights_from_pytorch(&HostTensor::from_f64(&[2, 3], &[0.0; 6], DType::F32).unwrap()),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn bad_inputs_are_errors() {
    let dt = DType::F16;
    let x = cpu(&[1, 5, 5, 4], &[0.5; 100], dt);
    let w = cpu(&[3, 3, 4, 8], &[0.5; 288], dt);
    let s2 = ConvTranspose {
        stride: (2, 2),
        padding: (1, 1),
        ..Default::default()
    };
    let is = |e: &Error, arg: &str, needle: &str| {
        let s = e.to_string();
        s.starts_with("conv_transpose2d") && s.contains(arg) && s.contains(needle)
    };
    // Channel mismatch (a PyTorch-layout weight passed unconverted).
    let wpt = cpu(&[4, 8, 3, 3], &[0.5; 288], dt);
    let e = ops::conv_transpose2d(&x, &wpt, &s2).unwrap_err();
    assert!(
        matches!(e, Error::Shape { arg: "w", .. }) && is(&e, "w", "x has 4 channels"),
        "{e}"
    );
    let e = ops::conv_transpose2d(&x, &cpu(&[3, 3, 4], &[0.5; 36], dt), &s2).unwrap_err();
    assert!(is(&e, "w", "weights_from_pytorch"), "{e}");
    // output_padding must stay below the stride.
    let e = ops::conv_transpose2d(
        &x,
        &w,
        &ConvTranspose {
            output_padding: (2, 0),
            ..s2
        },
    )
    .unwrap_err();
    assert!(is(&e, "output_padding", "smaller than the stride 2"), "{e}");
    // Output size <= 0: one pixel, k1, padding 1.
    let e = ops::conv_transpose2d(
        &cpu(&[1, 1, 1, 4], &[0.5; 4], dt),
        &cpu(&[1, 1, 4, 8], &[0.5; 32], dt),
        &ConvTranspose {
            padding: (1, 0),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(is(&e, "padding", "output size <= 0"), "{e}");
    let e = ops::conv_transpose2d(
        &x,
        &w,
        &ConvTranspose {
            stride: (1, 0),
            ..s2
        },
    )
    .unwrap_err();
    assert!(is(&e, "stride", "stride 0"), "{e}");
    // Dtypes: w like x, bias f32 [C_out], out like x.
    let e =
        ops::conv_transpose2d(&x, &cpu(&[3, 3, 4, 8], &[0.5; 288], DType::F32), &s2).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                arg: "w",
                got: DType::F32,
                ..
            }
        ),
        "{e}"
    );
    let b16 = cpu(&[8], &[0.0; 8], dt);
    let e = ops::conv_transpose2d(
        &x,
        &w,
        &ConvTranspose {
            bias: Some(&b16),
            ..s2
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::DType { arg: "bias", .. }), "{e}");
    let b4 = cpu(&[4], &[0.0; 4], DType::F32);
    let e = ops::conv_transpose2d(
        &x,
        &w,
        &ConvTranspose {
            bias: Some(&b4),
            ..s2
        },
    )
    .unwrap_err();
    assert!(is(&e, "bias", "[8]"), "{e}");
    // (5 − 1)·2 + 3 − 2 = 9.
    let mut out = cpu(&[1, 10, 10, 8], &[0.0; 800], dt);
    let e = ops::conv_transpose2d_into(&x, &w, &s2, &mut out).unwrap_err();
    assert!(is(&e, "out", "[1, 9, 9, 8]"), "{e}");
    let xi = cpu(&[1, 5, 5, 4], &[1.0; 100], DType::I32);
    assert!(matches!(
        ops::conv_transpose2d(&xi, &w, &s2),
        Err(Error::DType { arg: "x", .. })
    ));
}

#[test]
fn operands_on_different_devices_are_errors() {
    let Some(gpu) = gpu_or_skip("conv_transpose operands_on_different_devices_are_errors") else {
        return;
    };
    let x = upload(&Device::Gpu(gpu), &[1, 2, 2, 8], &[1.0; 32], DType::F16);
    let w = cpu(&[2, 2, 8, 8], &[1.0; 256], DType::F16);
    let e = ops::conv_transpose2d(&x, &w, &ConvTranspose::default()).unwrap_err();
    assert!(matches!(e, Error::Device { arg: "w", .. }), "{e}");
}

#[test]
fn conv_transpose_gpu_matches_reference() {
    let Some(dev) = test_device("conv_transpose_gpu_matches_reference") else {
        return;
    };
    let size = || Dim::default().sizes(1, &[1, 2, 7, 8, 13]).uniform(1, 1, 20);
    let channels = || {
        Dim::default()
            .sizes(1, &[1, 3, 8, 16, 24, 32, 33])
            .uniform(1, 1, 40)
    };
    // Padding below the kernel size and output padding below the stride: u mod k (u in 0..60,
    // k in 1..=5) and u mod s (u in 0..6, s in 1..=3), uniform and shrinking toward 0.
    let strategy = (
        value_seed(),
        0..3usize,
        (1..=2usize, size(), size(), channels(), channels()),
        (1..=5usize, 1..=5usize, 1..=3usize, 1..=3usize),
        (0..60usize, 0..60usize, 0..6usize, 0..6usize),
        (any::<bool>(), 0..Activation::ALL.len()),
    );
    check(
        file!(),
        96,
        &strategy,
        |(seed, di, (n, h, w, ci, co), (kh, kw, sh, sw), (ph, pw, oph, opw), (with_bias, ai))| {
            let mut rng = SeedRng::new(seed);
            let dt = DType::FLOATS[di];
            let bias = with_bias.then(|| random_values(&mut rng, co, 1.0, DType::F32));
            let bt = bias.as_ref().map(|b| upload(&dev, &[co], b, DType::F32));
            let mut ct = ConvTranspose {
                stride: (sh, sw),
                padding: (ph % kh, pw % kw),
                output_padding: (oph % sh, opw % sw),
                bias: bt.as_ref(),
                act: Activation::ALL[ai],
            };
            let g = match ctr::geometry(&[n, h, w, ci], &[kh, kw, ci, co], &ct) {
                Ok(g) => g,
                Err(_) => {
                    ct.padding = (0, 0);
                    ctr::geometry(&[n, h, w, ci], &[kh, kw, ci, co], &ct).unwrap()
                }
            };
            let x = random_values(&mut rng, n * h * w * ci, 1.0, dt);
            let wv = random_values(&mut rng, kh * kw * ci * co, 0.3, dt);
            let xt = upload(&dev, &[n, h, w, ci], &x, dt);
            let wt = upload(&dev, &[kh, kw, ci, co], &wv, dt);
            let oshape = [n, g.out_h, g.out_w, co];
            let mut out = poisoned(&dev, &oshape, dt);
            ops::conv_transpose2d_into(&xt, &wt, &ct, &mut out)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got = out.to_host().unwrap().to_f64();
            let want = reference::conv_transpose(&x, &wv, &g, bias.as_deref(), ct.act);
            // f32 accumulation over at most C_in·k_h·k_w products: error ≲ (terms + 2)·u·Σ|x·w|
            // (that sum from the reference on |x|, |w|); the output rounds once to the dtype.
            let abs = |v: &[f64]| v.iter().map(|t| t.abs()).collect::<Vec<_>>();
            let mag =
                reference::conv_transpose(&abs(&x), &abs(&wv), &g, None, Activation::Identity);
            let terms = (ci * kh * kw) as f64;
            let atol = |i: usize| {
                let b = bias.as_ref().map_or(0.0, |b| b[i % co].abs());
                4.0 * (terms + 2.0) * U_F32 * (mag[i] + b) + min_step(dt)
            };
            check_close(
                &format!(
                    "conv_transpose {dt} {g:?} {:?} {:?}",
                    ct.output_padding, ct.act
                ),
                &got,
                &want,
                &atol,
                2.0 * dt.unit_roundoff() + 8.0 * U_F32,
            )
            .map_err(TestCaseError::fail)?;
            let mut again = poisoned(&dev, &oshape, dt);
            ops::conv_transpose2d_into(&xt, &wt, &ct, &mut again)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again.to_host().unwrap(), out.to_host().unwrap());
            Ok(())
        },
    );
}
