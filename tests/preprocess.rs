//! Image preprocessing (`kernels/preprocess.cu`, `src/ops/preprocess.rs`): hand-computed
//! bilinear taps and pipelines, argument errors, and GPU against the f64 reference over random
//! u8 grey/RGB/RGBA and u16 grey batches, up- and down-scaling, odd sizes, every output dtype.

mod common;
use common::*;
use medkern::ops::{self, PixelRange, Preprocess};
use medkern::reference::preprocess::{self as reference, ValueMap};
use medkern::{DType, Device, Error, Tensor};
use proptest::prelude::*;

#[test]
fn bilinear_taps_hand_computed() {
    // Downscale 4 → 2: src = (dst + 0.5)·2 − 0.5 = 0.5, 2.5.
    assert_eq!(reference::bilinear_taps(0, 4, 2), (0, 1, 0.5, 0.5));
    assert_eq!(reference::bilinear_taps(1, 4, 2), (2, 3, 0.5, 0.5));
    // Upscale 2 → 4: src = −0.25 (clamped to 0), 0.25, 0.75, 1.25 (far neighbour clamped).
    assert_eq!(reference::bilinear_taps(0, 2, 4), (0, 1, 1.0, 0.0));
    assert_eq!(reference::bilinear_taps(1, 2, 4), (0, 1, 0.75, 0.25));
    assert_eq!(reference::bilinear_taps(2, 2, 4), (0, 1, 0.25, 0.75));
    assert_eq!(reference::bilinear_taps(3, 2, 4), (1, 1, 0.75, 0.25));
    // Same size: the identity.
    assert_eq!(reference::bilinear_taps(5, 7, 7), (5, 6, 1.0, 0.0));
}

#[test]
fn pipelines_hand_computed() {
    let cpu = Device::Cpu;
    // One RGBA pixel (alpha dropped), ImageNet statistics, no resize.
    let x = Tensor::new(&cpu, &[1, 1, 1, 4], vec![255u8, 0, 51, 7]).unwrap();
    let y = ops::preprocess(&x, &Preprocess::imagenet((1, 1)), DType::F32).unwrap();
    assert_eq!(y.shape(), [1, 1, 1, 3]);
    let m = [0.485f32, 0.456, 0.406].map(f64::from);
    let s = [0.229f32, 0.224, 0.225].map(f64::from);
    let want = [
        (1.0 - m[0]) / s[0],
        (0.0 - m[1]) / s[1],
        (0.2 - m[2]) / s[2],
    ];
    let got = y.to_host().unwrap().to_f64();
    for c in 0..3 {
        assert_eq!(got[c], f64::from(want[c] as f32), "channel {c}");
    }
    // u16 grey 1×2 with a 12-bit window, upscaled to 1×4, replicated to 3 channels, mean 0.5
    // std 0.25: t = (0, 1); columns interpolate at src 0, 0.25, 0.75, 1 → t = 0, 0.25, 0.75, 1.
    let x = Tensor::new(&cpu, &[1, 1, 2], vec![0u16, 5000]).unwrap();
    let p = Preprocess {
        out_size: (1, 4),
        range: PixelRange::Window {
            lo: 0.0,
            hi: 4095.0,
        },
        mean: &[0.5; 3],
        std: &[0.25; 3],
        grey_to_rgb: true,
    };
    let y = ops::preprocess(&x, &p, DType::F32).unwrap();
    assert_eq!(y.shape(), [1, 1, 4, 3]);
    let got = y.to_host().unwrap().to_f64();
    let want_t = [0.0, 0.25, 0.75, 1.0];
    for (i, t) in want_t.iter().enumerate() {
        for c in 0..3 {
            assert_eq!(got[i * 3 + c], (t - 0.5) / 0.25, "pixel {i} channel {c}");
        }
    }
    // Grey kept grey: one channel.
    let p1 = Preprocess {
        mean: &[0.5],
        std: &[0.25],
        grey_to_rgb: false,
        ..p
    };
    assert_eq!(
        ops::preprocess(&x, &p1, DType::F16).unwrap().shape(),
        [1, 1, 4, 1]
    );
    // 2×2 → 1×1 (scale 2: src 0.5): the mean of the four pixels.
    let x = Tensor::new(&cpu, &[1, 2, 2, 1], vec![0u8, 255, 255, 255]).unwrap();
    let p = Preprocess {
        out_size: (1, 1),
        range: PixelRange::Scale(255.0),
        mean: &[0.0],
        std: &[1.0],
        grey_to_rgb: false,
    };
    let y = ops::preprocess(&x, &p, DType::F32).unwrap();
    assert_eq!(y.to_host().unwrap().to_f64(), [0.75]);
}

#[test]
fn bad_inputs_are_errors() {
    let cpu = Device::Cpu;
    let rgb = Tensor::new(&cpu, &[2, 8, 8, 3], vec![0u8; 384]).unwrap();
    let ok = Preprocess::imagenet((4, 4));
    assert!(ops::preprocess(&rgb, &ok, DType::F16).is_ok());
    let bad_mean = Preprocess { mean: &[0.5], ..ok };
    let e = ops::preprocess(&rgb, &bad_mean, DType::F16).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                op: "preprocess",
                arg: "mean",
                ..
            }
        ) && e.to_string().contains("expected 3"),
        "{e}"
    );
    let bad_std = Preprocess {
        std: &[0.2, 0.0, 0.2],
        ..ok
    };
    let e = ops::preprocess(&rgb, &bad_std, DType::F16).unwrap_err();
    assert!(matches!(e, Error::Invalid { arg: "std", .. }), "{e}");
    let e = ops::preprocess(&rgb, &Preprocess::imagenet((0, 4)), DType::F16).unwrap_err();
    assert!(e.to_string().contains("output size <= 0"), "{e}");
    let e = ops::preprocess(
        &rgb,
        &Preprocess {
            grey_to_rgb: true,
            ..ok
        },
        DType::F16,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                arg: "grey_to_rgb",
                ..
            }
        ),
        "{e}"
    );
    let e = ops::preprocess(
        &rgb,
        &Preprocess {
            range: PixelRange::Window { lo: 5.0, hi: 5.0 },
            ..ok
        },
        DType::F16,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Invalid { arg: "range", .. }), "{e}");
    let e = ops::preprocess(&rgb, &ok, DType::I8).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                arg: "out",
                got: DType::I8,
                ..
            }
        ),
        "{e}"
    );
    // Input dtypes and channel counts.
    let f = Tensor::new(&cpu, &[1, 8, 8, 3], vec![0.0f32; 192]).unwrap();
    let e = ops::preprocess(&f, &ok, DType::F16).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                arg: "x",
                got: DType::F32,
                ..
            }
        ),
        "{e}"
    );
    let two = Tensor::new(&cpu, &[1, 8, 8, 2], vec![0u8; 128]).unwrap();
    let e = ops::preprocess(&two, &ok, DType::F16).unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "x", .. }), "{e}");
    let u16rgb = Tensor::new(&cpu, &[1, 8, 8, 3], vec![0u16; 192]).unwrap();
    let e = ops::preprocess(&u16rgb, &ok, DType::F16).unwrap_err();
    assert!(e.to_string().contains("u16 is grey"), "{e}");
    let mut out = Tensor::empty(&cpu, &[2, 4, 4, 1], DType::F32).unwrap();
    let e = ops::preprocess_into(&rgb, &ok, &mut out).unwrap_err();
    assert!(
        matches!(e, Error::Shape { arg: "out", .. }) && e.to_string().contains("[2, 4, 4, 3]"),
        "{e}"
    );
    if let Some(gpu) = gpu_or_skip("preprocess bad_inputs_are_errors (device mismatch)") {
        let xg = Tensor::new(&Device::Gpu(gpu), &[2, 8, 8, 3], vec![0u8; 384]).unwrap();
        let mut out = Tensor::empty(&cpu, &[2, 4, 4, 3], DType::F32).unwrap();
        let e = ops::preprocess_into(&xg, &ok, &mut out).unwrap_err();
        assert!(matches!(e, Error::Device { arg: "out", .. }), "{e}");
    }
}

/// Image sides: the tails 1, 7, 33, 64, 225 (rarely: the f64 reference is slow) and others.
fn side() -> Dim {
    Dim::default()
        .uniform(11, 1, 48)
        .sizes(4, &[1, 7, 33, 64])
        .sizes(1, &[225])
}

#[test]
fn preprocess_gpu_matches_reference() {
    let Some(dev) = test_device("preprocess_gpu_matches_reference") else {
        return;
    };
    // u16 input is grey (one channel); u8 has 1, 3 or 4 (cin index), grey optionally to RGB.
    let strategy = (
        value_seed(),
        0..3usize,
        (any::<bool>(), 0..3usize, any::<bool>()),
        (1..=2usize, side(), side(), side(), side()),
    );
    check(
        file!(),
        64,
        &strategy,
        |(seed, oi, (is_u16, ci, to_rgb), (n, h, w, oh, ow))| {
            let mut rng = SeedRng::new(seed);
            let od = DType::FLOATS[oi];
            let cin = if is_u16 { 1 } else { [1, 3, 4][ci] };
            let grey_to_rgb = cin == 1 && to_rgb;
            let cout = if cin == 1 && !grey_to_rgb { 1 } else { 3 };
            let len = n * h * w * cin;
            let (x, range) = if is_u16 {
                // 12-bit data with some saturated 16-bit outliers, a random window.
                let x: Vec<f64> = (0..len)
                    .map(|_| {
                        if rng.below(50) == 0 {
                            65535.0
                        } else {
                            rng.below(4096) as f64
                        }
                    })
                    .collect();
                let lo = rng.below(1500) as f32;
                (
                    x,
                    PixelRange::Window {
                        lo,
                        hi: lo + 100.0 + rng.below(4000) as f32,
                    },
                )
            } else {
                let x: Vec<f64> = (0..len).map(|_| rng.below(256) as f64).collect();
                let scale = if rng.below(2) == 0 {
                    255.0
                } else {
                    1.0 + rng.below(300) as f32
                };
                (x, PixelRange::Scale(scale))
            };
            let mean: Vec<f32> = (0..cout).map(|_| rng.uniform() as f32).collect();
            let std: Vec<f32> = (0..cout)
                .map(|_| 0.1 + 0.9 * rng.uniform() as f32)
                .collect();
            let p = Preprocess {
                out_size: (oh, ow),
                range,
                mean: &mean,
                std: &std,
                grey_to_rgb,
            };
            let sdt = if is_u16 { DType::U16 } else { DType::U8 };
            let xt = upload(&dev, &[n, h, w, cin], &x, sdt);
            let shape = [n, oh, ow, cout];
            let mut out = poisoned(&dev, &shape, od);
            ops::preprocess_into(&xt, &p, &mut out)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (lo, rg, clamp01, tmax) = match range {
                PixelRange::Scale(s) => (0.0, f64::from(s), false, 255.0 / f64::from(s)),
                PixelRange::Window { lo, hi } => {
                    (f64::from(lo), f64::from(hi) - f64::from(lo), true, 1.0)
                }
            };
            let f64s = |v: &[f32]| v.iter().map(|&t| f64::from(t)).collect::<Vec<_>>();
            let want = reference::preprocess(
                &x,
                (n, h, w, cin),
                (oh, ow, cout),
                ValueMap {
                    lo,
                    range: rg,
                    clamp01,
                },
                &f64s(&mean),
                &f64s(&std),
            );
            let got = out.to_host().unwrap().to_f64();
            // f32 source positions (as PyTorch) are off by a few ulps of the input size: the
            // weights move by that much, times the largest step between neighbours (tmax).
            let u = 2f64.powi(-24);
            let pos_err = 6.0 * u * (h.max(w) + 1) as f64;
            let std_min = std.iter().fold(f64::INFINITY, |a, &s| a.min(f64::from(s)));
            let atol = ((2.0 * pos_err + 16.0 * u) * tmax + 8.0 * u) / std_min + min_step(od);
            check_close(
                &format!(
                    "preprocess {sdt}->{od} [{n},{h},{w},{cin}] -> [{oh},{ow},{cout}] {range:?}"
                ),
                &got,
                &want,
                &|_| atol,
                od.unit_roundoff() + 4.0 * u,
            )
            .map_err(TestCaseError::fail)?;
            let mut again = poisoned(&dev, &shape, od);
            ops::preprocess_into(&xt, &p, &mut again)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again.to_host().unwrap(), out.to_host().unwrap());
            Ok(())
        },
    );
}
