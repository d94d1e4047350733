//! Upsampling (`kernels/upsample.cu`, `src/ops/upsample.rs`): PyTorch `F.interpolate` values
//! computed by hand, bad input, and the GPU against the f64 reference over random NHWC shapes
//! and output sizes (integer and fractional factors, downsampling), every mode.

mod common;
use common::*;
use medkern::ops::{self, UpsampleMode};
use medkern::reference::upsample as reference;
use medkern::{DType, Device, Error, Tensor};
use proptest::prelude::*;

const U_F32: f64 = f32::EPSILON as f64 / 2.0;
const MODES: [UpsampleMode; 4] = [
    UpsampleMode::Nearest,
    UpsampleMode::NearestExact,
    UpsampleMode::Bilinear {
        align_corners: false,
    },
    UpsampleMode::Bilinear {
        align_corners: true,
    },
];

fn up(x: &[f64], [h, w]: [usize; 2], size: (usize, usize), mode: UpsampleMode) -> Vec<f64> {
    reference::upsample(x, [1, h, w, 1], size, mode)
}

#[test]
fn reference_matches_pytorch_by_hand() {
    let x = [1.0, 2.0, 3.0, 4.0];
    let bil = |align_corners| UpsampleMode::Bilinear { align_corners };
    // F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False).
    #[rustfmt::skip]
    let want = [
        1.0, 1.25, 1.75, 2.0,
        1.5, 1.75, 2.25, 2.5,
        2.5, 2.75, 3.25, 3.5,
        3.0, 3.25, 3.75, 4.0,
    ];
    assert_eq!(up(&x, [2, 2], (4, 4), bil(false)), want);
    // align_corners=True to 3×3: the corners stay, the rest are midpoints.
    let want = [1.0, 1.5, 2.0, 2.0, 2.5, 3.0, 3.0, 3.5, 4.0];
    assert_eq!(up(&x, [2, 2], (3, 3), bil(true)), want);
    // A single output with align_corners takes the first pixel.
    assert_eq!(up(&x, [2, 2], (1, 1), bil(true)), vec![1.0]);
    // nearest 2 → 3 (scale 2/3): sources 0, 0, 1; nearest-exact: 0, 1, 1.
    let n = up(&x, [2, 2], (3, 3), UpsampleMode::Nearest);
    assert_eq!(n, vec![1., 1., 2., 1., 1., 2., 3., 3., 4.]);
    let e = up(&x, [2, 2], (3, 3), UpsampleMode::NearestExact);
    assert_eq!(e, vec![1., 2., 2., 3., 4., 4., 3., 4., 4.]);
    // Fractional: nearest 1×3 → 1×5 (scale 0.6) picks 0, 0, 1, 1, 2.
    let r = up(&[5.0, 6.0, 7.0], [1, 3], (1, 5), UpsampleMode::Nearest);
    assert_eq!(r, vec![5., 5., 6., 6., 7.]);
    // Downsampling 1×4 → 1×2 bilinear (scale 2): sources 0.5 and 2.5, pair averages.
    let d = up(&[1.0, 2.0, 3.0, 4.0], [1, 4], (1, 2), bil(false));
    assert_eq!(d, vec![1.5, 3.5]);
    assert_eq!(ops::scaled_size(7, 1.5), 10);
}

#[test]
fn integer_nearest_repeats_pixels() {
    // 3× nearest upsampling of [1, 3, 2, 2] repeats every pixel (all channels) in a 3×3 block.
    let x: Vec<f64> = (0..12).map(f64::from).collect();
    let y = reference::upsample(&x, [1, 3, 2, 2], (9, 6), UpsampleMode::Nearest);
    for oh in 0..9 {
        for ow in 0..6 {
            for c in 0..2 {
                assert_eq!(y[(oh * 6 + ow) * 2 + c], x[((oh / 3) * 2 + ow / 3) * 2 + c]);
            }
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let cpu = Device::Cpu;
    let dt = DType::BF16;
    let x = upload(&cpu, &[2, 4, 4, 3], &[0.5; 96], dt);
    let e = ops::upsample(&x, (0, 8), UpsampleMode::Nearest).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                op: "upsample",
                arg: "size",
                ..
            }
        ) && e.to_string().contains("output size <= 0"),
        "{e}"
    );
    let x3 = upload(&cpu, &[4, 4, 3], &[0.5; 48], dt);
    let e = ops::upsample(&x3, (8, 8), UpsampleMode::Nearest).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "upsample",
                arg: "x",
                ..
            }
        ),
        "{e}"
    );
    let mut out = upload(&cpu, &[2, 8, 8, 4], &[0.0; 512], dt);
    let e = ops::upsample_into(&x, UpsampleMode::Nearest, &mut out).unwrap_err();
    assert!(
        matches!(e, Error::Shape { arg: "out", .. })
            && e.to_string().contains("[2, out_h, out_w, 3]"),
        "{e}"
    );
    let mut out = upload(&cpu, &[2, 8, 8, 3], &[0.0; 384], DType::F16);
    let e = ops::upsample_into(&x, UpsampleMode::Nearest, &mut out).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                arg: "out",
                got: DType::F16,
                ..
            }
        ),
        "{e}"
    );
    let xi = Tensor::new(&cpu, &[1, 2, 2, 1], vec![1i8; 4]).unwrap();
    assert!(matches!(
        ops::upsample(&xi, (4, 4), UpsampleMode::Nearest),
        Err(Error::DType { arg: "x", .. })
    ));
}

#[test]
fn operands_on_different_devices_are_errors() {
    let Some(gpu) = gpu_or_skip("upsample operands_on_different_devices_are_errors") else {
        return;
    };
    let x = upload(&Device::Gpu(gpu), &[1, 2, 2, 8], &[1.0; 32], DType::F16);
    let mut out = upload(&Device::Cpu, &[1, 4, 4, 8], &[0.0; 128], DType::F16);
    let e = ops::upsample_into(&x, UpsampleMode::Nearest, &mut out).unwrap_err();
    assert!(matches!(e, Error::Device { arg: "out", .. }), "{e}");
}

#[test]
fn upsample_gpu_matches_reference() {
    let Some(dev) = test_device("upsample_gpu_matches_reference") else {
        return;
    };
    let size = || {
        Dim::default()
            .sizes(1, &[1, 2, 7, 8, 13, 33])
            .uniform(1, 1, 40)
    };
    let channels = Dim::default()
        .sizes(1, &[1, 3, 8, 16, 20, 32, 33])
        .uniform(1, 1, 48);
    // An output side: an integer factor (kind 0), a fractional one (1), or any size, so
    // downsampling too (2).
    let out = || (0..3usize, 1..=4usize, 0.5f64..3.5, 1..=70usize);
    let out_side = |input: usize, (kind, factor, scale, any): (usize, usize, f64, usize)| match kind
    {
        0 => input * factor,
        1 => ops::scaled_size(input, scale).max(1),
        _ => any,
    };
    let strategy = (
        value_seed(),
        0..3usize,
        0..4usize,
        (1..=2usize, size(), size(), channels),
        (out(), out()),
    );
    check(
        file!(),
        128,
        &strategy,
        |(seed, di, mi, (n, h, w, c), (out_h, out_w))| {
            let mut rng = SeedRng::new(seed);
            let (dt, mode) = (DType::FLOATS[di], MODES[mi]);
            let (oh, ow) = (out_side(h, out_h), out_side(w, out_w));
            let x = random_values(&mut rng, n * h * w * c, 1.0, dt);
            let xt = upload(&dev, &[n, h, w, c], &x, dt);
            let oshape = [n, oh, ow, c];
            let mut y = poisoned(&dev, &oshape, dt);
            ops::upsample_into(&xt, mode, &mut y)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got = y.to_host().unwrap().to_f64();
            let want = reference::upsample(&x, [n, h, w, c], (oh, ow), mode);
            // Nearest copies exactly; bilinear blends 4 values in f32 (weights ≥ 0, so the
            // reference on |x| bounds the terms) and rounds once.
            let mag = reference::upsample(
                &x.iter().map(|v| v.abs()).collect::<Vec<_>>(),
                [n, h, w, c],
                (oh, ow),
                mode,
            );
            let bilinear = matches!(mode, UpsampleMode::Bilinear { .. });
            let atol = |i: usize| {
                if bilinear {
                    8.0 * U_F32 * mag[i] + min_step(dt)
                } else {
                    0.0
                }
            };
            let rtol = if bilinear {
                2.0 * dt.unit_roundoff()
            } else {
                0.0
            };
            check_close(
                &format!("upsample {dt} {mode:?} [{n},{h},{w},{c}] -> {oh}x{ow}"),
                &got,
                &want,
                &atol,
                rtol,
            )
            .map_err(TestCaseError::fail)?;
            let mut again = poisoned(&dev, &oshape, dt);
            ops::upsample_into(&xt, mode, &mut again)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again.to_host().unwrap(), y.to_host().unwrap());
            Ok(())
        },
    );
}
