//! NCHW ↔ NHWC (`kernels/layout.cu`, `src/ops/layout.rs`): a hand-computed transform, round
//! trips, argument errors, and GPU against the reference (exact: a copy) over random shapes
//! covering the tiled and the small-dimension kernels and every element size.

mod common;
use common::*;
use medkern::ops;
use medkern::reference::layout as reference;
use medkern::{DType, Device, Error, Tensor};
use proptest::prelude::*;

#[test]
fn reference_hand_computed() {
    // NCHW [1, 2, 1, 3]: channel 0 = (1, 2, 3), channel 1 = (4, 5, 6) → NHWC pixels (1,4) (2,5) (3,6).
    let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let y = reference::nchw_to_nhwc(&x, (1, 2, 1, 3));
    assert_eq!(y, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    assert_eq!(reference::nhwc_to_nchw(&y, (1, 1, 3, 2)), x);
    // Two images stay apart.
    let x2: Vec<f64> = (0..12).map(f64::from).collect();
    let y2 = reference::nchw_to_nhwc(&x2, (2, 2, 1, 3));
    assert_eq!(&y2[6..], &[6.0, 9.0, 7.0, 10.0, 8.0, 11.0]);
    let cpu = Device::Cpu;
    let t = Tensor::new(&cpu, &[1, 2, 1, 3], vec![1u8, 2, 3, 4, 5, 6]).unwrap();
    let yt = ops::nchw_to_nhwc(&t).unwrap();
    assert_eq!(yt.shape(), [1, 1, 3, 2]);
    assert_eq!(
        yt.to_host().unwrap().as_slice::<u8>().unwrap(),
        [1, 4, 2, 5, 3, 6]
    );
}

#[test]
fn bad_inputs_are_errors() {
    let cpu = Device::Cpu;
    let x = Tensor::new(&cpu, &[2, 3, 4, 5], vec![0.0f32; 120]).unwrap();
    let e =
        ops::nchw_to_nhwc(&Tensor::new(&cpu, &[3, 4, 5], vec![0.0f32; 60]).unwrap()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "nchw_to_nhwc",
                arg: "x",
                ..
            }
        ) && e.to_string().contains("[N, C, H, W]"),
        "{e}"
    );
    // y in NCHW order instead of NHWC: names the shape expected.
    let mut y = Tensor::empty(&cpu, &[2, 3, 4, 5], DType::F32).unwrap();
    let e = ops::nchw_to_nhwc_into(&x, &mut y).unwrap_err();
    assert!(
        matches!(e, Error::Shape { arg: "y", .. }) && e.to_string().contains("[2, 4, 5, 3]"),
        "{e}"
    );
    let mut y = Tensor::empty(&cpu, &[2, 5, 3, 4], DType::F16).unwrap();
    let e = ops::nhwc_to_nchw_into(&x, &mut y).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                op: "nhwc_to_nchw",
                arg: "y",
                ..
            }
        ),
        "{e}"
    );
    if let Some(gpu) = gpu_or_skip("layout bad_inputs_are_errors (device mismatch)") {
        let xg = upload(&Device::Gpu(gpu), &[2, 3, 4, 5], &[0.0; 120], DType::F32);
        let mut y = Tensor::empty(&cpu, &[2, 4, 5, 3], DType::F32).unwrap();
        let e = ops::nchw_to_nhwc_into(&xg, &mut y).unwrap_err();
        assert!(matches!(e, Error::Device { arg: "y", .. }), "{e}");
    }
}

#[test]
fn layout_gpu_matches_reference() {
    let Some(dev) = test_device("layout_gpu_matches_reference") else {
        return;
    };
    let dtypes = [DType::F32, DType::F16, DType::BF16, DType::U8, DType::I32];
    // The tiled kernel runs when both C and H·W exceed 8 (src/ops/layout.rs), the small one
    // otherwise: C is drawn above 8 for the tiled cases, at most 8 for the others.
    let tiled_c = any::<bool>().prop_flat_map(|tiled| {
        let c = if tiled {
            Dim::default().sizes(1, &[9, 13, 32, 64, 144])
        } else {
            Dim::default().sizes(1, &[1, 3, 4, 8])
        };
        (Just(tiled), c)
    });
    let side = || {
        Dim::default()
            .uniform(11, 1, 60)
            .sizes(4, &[1, 7, 33])
            .sizes(1, &[225])
    };
    let strategy = (
        value_seed(),
        0..dtypes.len(),
        tiled_c,
        any::<bool>(),
        (1..=3usize, side(), side()),
    );
    check_covering(
        file!(),
        64,
        &strategy,
        |(seed, di, (tiled, c), to_nhwc, (n, h, mut w)), cover| {
            // The first cases walk every (dtype, kernel) pair: drawn freely, u8
            // (transpose_*_b1) met the tiled kernel too rarely to count on.
            cover.admit([di, usize::from(tiled)], [dtypes.len(), 2])?;
            let mut rng = SeedRng::new(seed);
            let dt = dtypes[di];
            if tiled && h * w <= 8 {
                w = 9;
            }
            let len = n * c * h * w;
            let x = if dt.is_float() {
                random_values(&mut rng, len, 3.0, dt)
            } else {
                (0..len)
                    .map(|_| {
                        dt.round(rng.below(256) as f64 - if dt == DType::U8 { 0.0 } else { 128.0 })
                    })
                    .collect()
            };
            let (xs, ys) = if to_nhwc {
                ([n, c, h, w], [n, h, w, c])
            } else {
                ([n, h, w, c], [n, c, h, w])
            };
            let xt = upload(&dev, &xs, &x, dt);
            let mut out = poisoned(&dev, &ys, dt);
            if to_nhwc {
                ops::nchw_to_nhwc_into(&xt, &mut out)
            } else {
                ops::nhwc_to_nchw_into(&xt, &mut out)
            }
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let want = if to_nhwc {
                reference::nchw_to_nhwc(&x, (n, c, h, w))
            } else {
                reference::nhwc_to_nchw(&x, (n, h, w, c))
            };
            let got = out.to_host().unwrap().to_f64();
            check_close(
                &format!("layout {dt} {xs:?} to_nhwc {to_nhwc}"),
                &got,
                &want,
                &|_| 0.0,
                0.0,
            )
            .map_err(TestCaseError::fail)?;
            // And back: the round trip is the identity.
            let back = if to_nhwc {
                ops::nhwc_to_nchw(&out)
            } else {
                ops::nchw_to_nhwc(&out)
            }
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back.to_host().unwrap(), xt.to_host().unwrap());
            Ok(())
        },
    );
}
