//! Pooling (`kernels/pool.cu`, `src/ops/pool.rs`): hand-computed references, argument errors,
//! and GPU against the f64 reference over random NHWC shapes (odd sizes, C off multiples of 8,
//! every padding mode, strides 1/2, dilation, planted outliers, poisoned outputs).

mod common;
use common::*;
use medkern::ops::{self, Padding, Pool2d};
use medkern::reference::pool as reference;
use medkern::{DType, Device, Error, Tensor};
use proptest::prelude::*;

/// 4×4 single-channel image holding 1..16 row-major, times `sign`.
fn ramp(sign: f64) -> Vec<f64> {
    (1..=16).map(|v| sign * f64::from(v)).collect()
}

#[test]
fn reference_hand_computed() {
    let stem = Pool2d::resnet_stem().window("t", 4, 4).unwrap();
    assert_eq!((stem.out_h, stem.out_w, stem.pad_top), (2, 2, 1));
    // 3×3 s2 p1: window (0,0) covers rows/cols -1..1 → real 1, 2, 5, 6.
    assert_eq!(
        reference::max_pool(&ramp(1.0), 1, 1, &stem),
        [6.0, 8.0, 14.0, 16.0]
    );
    // All negative: zero padding would win; it must not.
    assert_eq!(
        reference::max_pool(&ramp(-1.0), 1, 1, &stem),
        [-1.0, -2.0, -5.0, -6.0]
    );
    // Average: (1+2+5+6)/9 with the padding counted, /4 without.
    let inc = reference::avg_pool(&ramp(1.0), 1, 1, &stem, true);
    let exc = reference::avg_pool(&ramp(1.0), 1, 1, &stem, false);
    assert_eq!(inc[0], 14.0 / 9.0);
    assert_eq!(exc[0], 3.5);
    // Window (1,1): rows/cols 1..3, all real: 6+7+8+10+11+12+14+15+16 = 99.
    assert_eq!((inc[3], exc[3]), (11.0, 11.0));
    // TF SAME, k3 s2 on 4: out 2, total padding 1, all of it at the bottom/right.
    let same = Pool2d::new((3, 3), (2, 2), Padding::Same)
        .window("t", 4, 4)
        .unwrap();
    assert_eq!((same.out_h, same.pad_top), (2, 0));
    assert_eq!(
        reference::max_pool(&ramp(1.0), 1, 1, &same),
        [11.0, 12.0, 15.0, 16.0]
    );
    let exc = reference::avg_pool(&ramp(1.0), 1, 1, &same, false);
    assert_eq!(
        exc[0],
        (1.0 + 2.0 + 3.0 + 5.0 + 6.0 + 7.0 + 9.0 + 10.0 + 11.0) / 9.0
    );
    assert_eq!(exc[3], (11.0 + 12.0 + 15.0 + 16.0) / 4.0);
    // Dilation 2, k2 s1 valid on 4: taps (r, r+2).
    let mut dil = Pool2d::new((2, 2), (1, 1), Padding::Valid);
    dil.dilation = (2, 2);
    let d = dil.window("t", 4, 4).unwrap();
    assert_eq!(
        reference::max_pool(&ramp(1.0), 1, 1, &d),
        [11.0, 12.0, 15.0, 16.0]
    );
    // NaN wins a max, as in PyTorch.
    let mut x = ramp(1.0);
    x[0] = f64::NAN;
    assert!(reference::max_pool(&x, 1, 1, &stem)[0].is_nan());
    // Global average pool [1, 2, 2, 2] → [1, 2].
    let g = reference::global_avg_pool(&[1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 6.0, 60.0], 1, 4, 2);
    assert_eq!(g, [3.0, 30.0]);
}

#[test]
fn cpu_ops_match_hand_computed() {
    let cpu = Device::Cpu;
    let x = Tensor::new(
        &cpu,
        &[1, 4, 4, 1],
        ramp(-1.0).iter().map(|&v| v as f32).collect(),
    )
    .unwrap();
    let y = ops::max_pool2d(&x, &Pool2d::resnet_stem()).unwrap();
    assert_eq!(y.shape(), [1, 2, 2, 1]);
    assert_eq!(y.to_host().unwrap().to_f64(), [-1.0, -2.0, -5.0, -6.0]);
    let g = ops::global_avg_pool(&x).unwrap();
    assert_eq!(g.shape(), [1, 1]);
    assert_eq!(g.to_host().unwrap().to_f64(), [-8.5]);
}

#[test]
fn bad_inputs_are_errors() {
    let cpu = Device::Cpu;
    let x = Tensor::new(&cpu, &[1, 4, 4, 3], vec![1.0f32; 48]).unwrap();
    // Output size <= 0.
    let e = ops::max_pool2d(&x, &Pool2d::new((5, 5), (1, 1), Padding::Valid)).unwrap_err();
    assert!(e.to_string().contains("output size <= 0"), "{e}");
    assert!(e.to_string().starts_with("max_pool2d"), "{e}");
    // A window entirely in the padding.
    let e =
        ops::avg_pool2d(&x, &Pool2d::new((2, 2), (1, 1), Padding::symmetric(2, 0))).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                op: "avg_pool2d",
                arg: "padding",
                ..
            }
        ),
        "{e}"
    );
    // Wrong rank / zero channels.
    let flat = Tensor::new(&cpu, &[4, 4, 3], vec![1.0f32; 48]).unwrap();
    let e = ops::max_pool2d(&flat, &Pool2d::resnet_stem()).unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "x", .. }), "{e}");
    // Integer input.
    let xi = Tensor::new(&cpu, &[1, 4, 4, 1], vec![1i8; 16]).unwrap();
    let e = ops::max_pool2d(&xi, &Pool2d::resnet_stem()).unwrap_err();
    assert!(matches!(e, Error::DType { got: DType::I8, .. }), "{e}");
    // Output: channels mismatch, dtype mismatch.
    let mut out = Tensor::empty(&cpu, &[1, 2, 2, 4], DType::F32).unwrap();
    let e = ops::max_pool2d_into(&x, &Pool2d::resnet_stem(), &mut out).unwrap_err();
    assert!(
        matches!(e, Error::Shape { arg: "out", .. }) && e.to_string().contains("[1, 2, 2, 3]"),
        "{e}"
    );
    let mut out = Tensor::empty(&cpu, &[1, 2, 2, 3], DType::F16).unwrap();
    let e = ops::max_pool2d_into(&x, &Pool2d::resnet_stem(), &mut out).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "out", .. }), "{e}");
    let mut g = Tensor::empty(&cpu, &[1, 3], DType::BF16).unwrap();
    let e = ops::global_avg_pool_into(&x, &mut g).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                op: "global_avg_pool",
                arg: "out",
                got: DType::BF16,
                ..
            }
        ),
        "{e}"
    );
    let mut g = Tensor::empty(&cpu, &[1, 4], DType::F32).unwrap();
    let e = ops::global_avg_pool_into(&x, &mut g).unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "out", .. }), "{e}");
    // Zero stride.
    let e = ops::max_pool2d(&x, &Pool2d::new((2, 2), (0, 1), Padding::Valid)).unwrap_err();
    assert!(e.to_string().contains("stride 0"), "{e}");
    // Operands on different devices (needs a GPU).
    if let Some(gpu) = gpu_or_skip("pool bad_inputs_are_errors (device mismatch)") {
        let xg = upload(&Device::Gpu(gpu), &[1, 4, 4, 3], &[1.0; 48], DType::F32);
        let mut out = Tensor::empty(&cpu, &[1, 2, 2, 3], DType::F32).unwrap();
        let e = ops::max_pool2d_into(&xg, &Pool2d::resnet_stem(), &mut out).unwrap_err();
        assert!(matches!(e, Error::Device { arg: "out", .. }), "{e}");
    }
}

/// Spatial sizes the brief names (1, 7, 33, 225 rarely: the f64 reference is slow) and others.
fn spatial() -> Dim {
    Dim::default()
        .uniform(23, 1, 40)
        .sizes(6, &[1, 7, 33, 56])
        .sizes(1, &[225])
}

/// Channel counts: multiples of 8 (vector path) and not.
const CHANNELS: [usize; 8] = [1, 3, 8, 13, 16, 24, 64, 71];

/// A pooling window for a max (`true`) or average pool: kernel 1..4, stride 1..2, dilation 2
/// in a third of the max pools, every padding mode.
fn pool2d() -> impl Strategy<Value = (bool, Pool2d)> {
    // Explicit paddings draw u in 0..12 and take u mod (span/2 + 1): uniform in 0..=span/2
    // (span/2 + 1 is 1..4, each dividing 12), shrinking toward 0.
    let pads = (0..12usize, 0..12usize, 0..12usize, 0..12usize);
    (
        any::<bool>(),
        (1..=4usize, 1..=4usize, 1..=2usize, 1..=2usize),
        (prop::bool::weighted(1.0 / 3.0), 1..=2usize, 1..=2usize),
        (0..4usize, pads),
        any::<bool>(),
    )
        .prop_map(
            |(max, (kh, kw, sh, sw), (dilated, dh, dw), (pad_kind, (t, b, l, r)), count_pad)| {
                let dilation = if max && dilated { (dh, dw) } else { (1, 1) };
                let span = |k: usize, d: usize| d * (k - 1) + 1;
                let (ph, pw) = (span(kh, dilation.0) / 2 + 1, span(kw, dilation.1) / 2 + 1);
                let padding = match pad_kind {
                    0 => Padding::Valid,
                    1 => Padding::Same,
                    2 => Padding::symmetric(t % ph, l % pw),
                    _ => Padding::Explicit {
                        top: t % ph,
                        bottom: b % ph,
                        left: l % pw,
                        right: r % pw,
                    },
                };
                let p = Pool2d {
                    kernel: (kh, kw),
                    stride: (sh, sw),
                    dilation,
                    padding,
                    count_include_pad: count_pad,
                };
                (max, p)
            },
        )
}

#[test]
fn pool_gpu_matches_reference() {
    let Some(dev) = test_device("pool_gpu_matches_reference") else {
        return;
    };
    let strategy = (
        value_seed(),
        0..3usize,
        pool2d(),
        (
            1..=3usize,
            spatial(),
            spatial(),
            Dim::default().sizes(1, &CHANNELS),
        ),
    );
    check(
        file!(),
        64,
        &strategy,
        |(seed, di, (max, p), (n, h, w, c))| {
            let mut rng = SeedRng::new(seed);
            let dt = DType::FLOATS[di];
            let Ok(win) = p.window("t", h, w) else {
                // Too small an input for the window, or a window all in padding: an error.
                let x = upload(&dev, &[n, h, w, c], &vec![0.0; n * h * w * c], dt);
                prop_assert!(ops::max_pool2d(&x, &p).is_err());
                return Ok(());
            };
            let x = random_values(&mut rng, n * h * w * c, 2.0, dt);
            let xt = upload(&dev, &[n, h, w, c], &x, dt);
            let shape = [n, win.out_h, win.out_w, c];
            let run = |out: &mut Tensor| {
                if max {
                    ops::max_pool2d_into(&xt, &p, out)
                } else {
                    ops::avg_pool2d_into(&xt, &p, out)
                }
                .map_err(|e| TestCaseError::fail(e.to_string()))
            };
            let mut out = poisoned(&dev, &shape, dt);
            run(&mut out)?;
            let got = out.to_host().unwrap().to_f64();
            let what = format!(
                "{} {dt} x[{n},{h},{w},{c}] {p:?}",
                if max { "max" } else { "avg" }
            );
            if max {
                // A max only selects: exact.
                let want = reference::max_pool(&x, n, c, &win);
                check_close(&what, &got, &want, &|_| 0.0, 0.0).map_err(TestCaseError::fail)?;
            } else {
                let want = reference::avg_pool(&x, n, c, &win, p.count_include_pad);
                // f32 sum of <= KH·KW terms, one division: bounded by the window's |x| average.
                let absx: Vec<f64> = x.iter().map(|v| v.abs()).collect();
                let mag = reference::avg_pool(&absx, n, c, &win, p.count_include_pad);
                let kk = (win.k_h * win.k_w) as f64;
                check_close(
                    &what,
                    &got,
                    &want,
                    &|i| (kk + 2.0) * 2f64.powi(-24) * mag[i] + min_step(dt),
                    dt.unit_roundoff(),
                )
                .map_err(TestCaseError::fail)?;
            }
            let mut again = poisoned(&dev, &shape, dt);
            run(&mut again)?;
            prop_assert_eq!(again.to_host().unwrap(), out.to_host().unwrap());
            Ok(())
        },
    );
}

#[test]
fn global_avg_pool_gpu_matches_reference() {
    let Some(dev) = test_device("global_avg_pool_gpu_matches_reference") else {
        return;
    };
    // A third of the channel counts are the wide ones of the CNNs' last layers.
    let c = Dim::default()
        .sizes(3, &CHANNELS)
        .sizes(4, &[512, 1280, 1152]);
    let strategy = (
        value_seed(),
        0..5usize,
        (1..=4usize, spatial(), spatial(), c),
    );
    check(file!(), 64, &strategy, |(seed, pair, (n, h, w, c))| {
        let mut rng = SeedRng::new(seed);
        let (dt, od) = [
            (DType::F32, DType::F32),
            (DType::F16, DType::F16),
            (DType::F16, DType::F32),
            (DType::BF16, DType::BF16),
            (DType::BF16, DType::F32),
        ][pair];
        let hw = h * w;
        let x = random_values(&mut rng, n * hw * c, 2.0, dt);
        let xt = upload(&dev, &[n, h, w, c], &x, dt);
        let mut out = poisoned(&dev, &[n, c], od);
        ops::global_avg_pool_into(&xt, &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let got = out.to_host().unwrap().to_f64();
        let want = reference::global_avg_pool(&x, n, hw, c);
        let absx: Vec<f64> = x.iter().map(|v| v.abs()).collect();
        let mag = reference::global_avg_pool(&absx, n, hw, c);
        // Each thread adds ceil(HW/slices) positions (slices >= 8), then up to 256 slice
        // partials are added: f32 recursive-summation bound over that depth.
        let depth = hw.div_ceil(8) as f64 + 258.0;
        check_close(
            &format!("gap {dt}->{od} [{n},{h},{w},{c}]"),
            &got,
            &want,
            &|i| depth * 2f64.powi(-24) * mag[i] + min_step(od),
            od.unit_roundoff(),
        )
        .map_err(TestCaseError::fail)?;
        let mut again = poisoned(&dev, &[n, c], od);
        ops::global_avg_pool_into(&xt, &mut again)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(again.to_host().unwrap(), out.to_host().unwrap());
        Ok(())
    });
}
