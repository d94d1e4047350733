//! Depthwise conv2d (`kernels/depthwise.cu`, `src/ops/depthwise.rs`): hand-computed reference
//! values, PyTorch weight conversion, bad input, and the GPU against the f64 reference over
//! random NHWC shapes (odd sizes, C off multiples of 8), every padding mode, strides, dilations,
//! the fast k3/k5 variants and the general one, and every fused epilogue.

mod common;
use common::*;
use medkern::ops::depthwise::{self as dw, Depthwise};
use medkern::ops::{self, Activation, Padding, Window};
use medkern::reference::depthwise as reference;
use medkern::{DType, Device, Error, HostTensor, Tensor};
use proptest::prelude::*;

const U_F32: f64 = f32::EPSILON as f64 / 2.0;

fn cpu(shape: &[usize], v: &[f64], dt: DType) -> Tensor {
    upload(&Device::Cpu, shape, v, dt)
}

#[test]
fn reference_hand_computed() {
    // 3×3 image, 2 channels: channel 0 = 1..9 against a 3×3 box of ones (padding 1), channel 1
    // = 10..90 against the centre tap only (identity).
    let x: Vec<f64> = (1..=9).flat_map(|v| [v as f64, 10.0 * v as f64]).collect();
    let mut w = vec![0.0; 18];
    for t in 0..9 {
        w[t * 2] = 1.0;
    }
    w[4 * 2 + 1] = 1.0;
    let win = Window::new(
        "t",
        (3, 3),
        (3, 3),
        (1, 1),
        (1, 1),
        Padding::symmetric(1, 1),
    )
    .unwrap();
    let y = reference::depthwise(&x, 1, 2, &w, &win, None, None, Activation::Identity, None);
    let ch0: Vec<f64> = y.iter().step_by(2).copied().collect();
    let ch1: Vec<f64> = y.iter().skip(1).step_by(2).copied().collect();
    assert_eq!(ch0, vec![12., 21., 16., 27., 45., 33., 24., 39., 28.]);
    assert_eq!(ch1, (1..=9).map(|v| 10.0 * v as f64).collect::<Vec<_>>());
    // Epilogue: relu(scale·conv + bias) + residual, per channel.
    let res = vec![0.5; 18];
    let y = reference::depthwise(
        &x,
        1,
        2,
        &w,
        &win,
        Some(&[2.0, 1.0]),
        Some(&[-30.0, -45.0]),
        Activation::Relu,
        Some(&res),
    );
    assert_eq!(&y[0..2], &[0.5, 0.5]); // relu(24 − 30), relu(10 − 45)
    assert_eq!(&y[8..10], &[60.5, 5.5]); // centre: 2·45 − 30, 50 − 45

    // TF SAME, stride 2, k3 on 4×4 (1..16): output 2×2, the one padding row/column at the
    // bottom/right.
    let x: Vec<f64> = (1..=16).map(f64::from).collect();
    let win = Window::new("t", (4, 4), (3, 3), (2, 2), (1, 1), Padding::Same).unwrap();
    assert_eq!(
        (win.out_h, win.out_w, win.pad_top, win.pad_left),
        (2, 2, 0, 0)
    );
    let y = reference::depthwise(
        &x,
        1,
        1,
        &[1.0; 9],
        &win,
        None,
        None,
        Activation::Identity,
        None,
    );
    assert_eq!(y, vec![54., 45., 72., 54.]);
    // Dilation 2, k3 on 5×5 (1..25), no padding: one output, the sum of the 9 even positions.
    let x: Vec<f64> = (1..=25).map(f64::from).collect();
    let win = Window::new("t", (5, 5), (3, 3), (1, 1), (2, 2), Padding::Valid).unwrap();
    let y = reference::depthwise(
        &x,
        1,
        1,
        &[1.0; 9],
        &win,
        None,
        None,
        Activation::Identity,
        None,
    );
    assert_eq!(y, vec![117.0]);
}

#[test]
fn pytorch_weights_convert() {
    // [C=2, 1, 2, 2] = 0..8 → [2, 2, 2] with channels innermost.
    let pt = HostTensor::from_f64(
        &[2, 1, 2, 2],
        &(0..8).map(f64::from).collect::<Vec<_>>(),
        DType::F16,
    )
    .unwrap();
    let w = dw::weights_from_pytorch(&pt).unwrap();
    assert_eq!(w.shape(), &[2, 2, 2]);
    assert_eq!(w.dtype(), DType::F16);
    assert_eq!(w.to_f64(), vec![0., 4., 1., 5., 2., 6., 3., 7.]);
    let bad = HostTensor::from_f64(&[2, 2, 2, 2], &[0.0; 16], DType::F32).unwrap();
    assert!(matches!(
        dw::weights_from_pytorch(&bad),
        Err(Error::Shape { arg: "w", .. })
    ));
    // The CPU op with converted weights equals the reference on the same values.
    let x = cpu(&[1, 2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.], DType::F16);
    let wt = Tensor::Host(w);
    let y = ops::depthwise(&x, &wt, &Depthwise::default())
        .unwrap()
        .to_host()
        .unwrap();
    assert_eq!(y.shape(), &[1, 1, 1, 2]);
    // channel 0: 1·0 + 3·1 + 5·2 + 7·3 = 34; channel 1: 2·4 + 4·5 + 6·6 + 8·7 = 120.
    assert_eq!(y.to_f64(), vec![34.0, 120.0]);
}

#[test]
fn bad_inputs_are_errors() {
    let dt = DType::F16;
    let x = cpu(&[2, 8, 8, 12], &[0.5; 2 * 8 * 8 * 12], dt);
    let w = cpu(&[3, 3, 12], &[0.5; 108], dt);
    let d = Depthwise::default();
    let is = |e: &Error, arg: &str, needle: &str| {
        let s = e.to_string();
        s.starts_with("depthwise") && s.contains(arg) && s.contains(needle)
    };
    // Channel mismatch.
    let w10 = cpu(&[3, 3, 10], &[0.5; 90], dt);
    let e = ops::depthwise(&x, &w10, &d).unwrap_err();
    assert!(
        matches!(e, Error::Shape { arg: "w", .. }) && is(&e, "w", "x has 12"),
        "{e}"
    );
    // Weight rank (a PyTorch-layout weight passed unconverted).
    let wpt = cpu(&[12, 1, 3, 3], &[0.5; 108], dt);
    let e = ops::depthwise(&x, &wpt, &d).unwrap_err();
    assert!(is(&e, "w", "weights_from_pytorch"), "{e}");
    // x not NHWC.
    let x3 = cpu(&[8, 8, 12], &[0.5; 768], dt);
    assert!(matches!(
        ops::depthwise(&x3, &w, &d),
        Err(Error::Shape { arg: "x", .. })
    ));
    // Output size <= 0.
    let w9 = cpu(&[9, 9, 12], &[0.5; 972], dt);
    let e = ops::depthwise(&x, &w9, &d).unwrap_err();
    assert!(is(&e, "window", "output size <= 0"), "{e}");
    // Dtype mismatch.
    let w32 = cpu(&[3, 3, 12], &[0.5; 108], DType::F32);
    let e = ops::depthwise(&x, &w32, &d).unwrap_err();
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
    let xi = cpu(&[2, 8, 8, 12], &[1.0; 1536], DType::I8);
    assert!(matches!(
        ops::depthwise(&xi, &w, &d),
        Err(Error::DType { arg: "x", .. })
    ));
    // Epilogue parameters: f32 [C].
    let s16 = cpu(&[12], &[1.0; 12], dt);
    let e = ops::depthwise(
        &x,
        &w,
        &Depthwise {
            scale: Some(&s16),
            ..d
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::DType { arg: "scale", .. }) && is(&e, "scale", "f32"),
        "{e}"
    );
    let b7 = cpu(&[7], &[1.0; 7], DType::F32);
    let e = ops::depthwise(
        &x,
        &w,
        &Depthwise {
            bias: Some(&b7),
            ..d
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::Shape { arg: "bias", .. }) && is(&e, "bias", "[12]"),
        "{e}"
    );
    // Residual and out must have the output's shape: [2, 6, 6, 12] here.
    let r = cpu(&[2, 8, 8, 12], &[0.0; 1536], dt);
    let e = ops::depthwise(
        &x,
        &w,
        &Depthwise {
            residual: Some(&r),
            ..d
        },
    )
    .unwrap_err();
    assert!(is(&e, "residual", "[2, 6, 6, 12]"), "{e}");
    let mut out = cpu(&[2, 6, 6, 12], &[0.0; 864], DType::BF16);
    let e = ops::depthwise_into(&x, &w, &d, &mut out).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "out", .. }), "{e}");
    // A stride of zero.
    let e = ops::depthwise(
        &x,
        &w,
        &Depthwise {
            stride: (0, 1),
            ..d
        },
    )
    .unwrap_err();
    assert!(is(&e, "window", "stride 0"), "{e}");
}

#[test]
fn operands_on_different_devices_are_errors() {
    let Some(gpu) = gpu_or_skip("depthwise operands_on_different_devices_are_errors") else {
        return;
    };
    let dev = Device::Gpu(gpu);
    let x = upload(&dev, &[1, 4, 4, 8], &[1.0; 128], DType::F16);
    let w = cpu(&[3, 3, 8], &[1.0; 72], DType::F16);
    let e = ops::depthwise(&x, &w, &Depthwise::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Device {
                op: "depthwise",
                arg: "w",
                ..
            }
        ),
        "{e}"
    );
}

/// One random depthwise problem.
#[derive(Clone, Debug)]
struct Case {
    dt: DType,
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    k: (usize, usize),
    stride: (usize, usize),
    dil: (usize, usize),
    padding: Padding,
    act: Activation,
    scale: bool,
    bias: bool,
    residual: bool,
}

impl Case {
    /// The kernel variant the launcher takes (src/ops/depthwise.rs): 0..4 the fast k3s1, k3s2,
    /// k5s1, k5s2 (square kernel and stride, no dilation), 4 the general one.
    fn variant(&self) -> usize {
        let fast = self.k.0 == self.k.1 && self.stride.0 == self.stride.1 && self.dil == (1, 1);
        match (fast, self.k.0, self.stride.0) {
            (true, 3, 1) => 0,
            (true, 3, 2) => 1,
            (true, 5, 1) => 2,
            (true, 5, 2) => 3,
            _ => 4,
        }
    }
}

/// Random cases: half take a fast variant's shape (square k3/k5, stride 1/2, no dilation),
/// half a general one (k 1..7, stride and dilation 1..3 per axis); every padding mode and
/// epilogue.
fn depthwise_case() -> impl Strategy<Value = Case> {
    let size = || {
        Dim::default()
            .sizes(1, &[1, 2, 7, 8, 13, 33])
            .uniform(1, 1, 40)
    };
    let channels = Dim::default()
        .sizes(1, &[1, 3, 8, 16, 20, 32, 33, 40, 64, 72])
        .uniform(5, 1, 80);
    let window = (
        (any::<bool>(), any::<bool>(), 1..=2usize),
        (
            (1..=7usize, 1..=7usize),
            (1..=3usize, 1..=3usize),
            (1..=3usize, 1..=3usize),
        ),
    );
    (
        (0..3usize, 1..=2usize, size(), size(), channels),
        window,
        (0..4usize, (0..4usize, 0..4usize, 0..4usize, 0..4usize)),
        (0..Activation::ALL.len(), any::<(bool, bool, bool)>()),
    )
        .prop_map(
            |((di, n, h, w, c), ((fast, k5, s), general), (pad_kind, pads), (ai, flags))| {
                let (k, stride, dil) = if fast {
                    let k = if k5 { 5 } else { 3 };
                    ((k, k), (s, s), (1, 1))
                } else {
                    general
                };
                let padding = match pad_kind {
                    0 => Padding::Same,
                    1 => Padding::Valid,
                    2 => Padding::symmetric(dil.0 * (k.0 / 2), dil.1 * (k.1 / 2)),
                    _ => Padding::Explicit {
                        top: pads.0,
                        bottom: pads.1,
                        left: pads.2,
                        right: pads.3,
                    },
                };
                Case {
                    dt: DType::FLOATS[di],
                    n,
                    h,
                    w,
                    c,
                    k,
                    stride,
                    dil,
                    padding,
                    act: Activation::ALL[ai],
                    scale: flags.0,
                    bias: flags.1,
                    residual: flags.2,
                }
            },
        )
}

#[test]
fn depthwise_gpu_matches_reference() {
    let Some(dev) = test_device("depthwise_gpu_matches_reference") else {
        return;
    };
    check_covering(
        file!(),
        96,
        &(value_seed(), depthwise_case()),
        |(seed, mut k), cover| {
            // The first cases walk every (dtype, kernel variant) pair.
            let di = DType::FLOATS.iter().position(|&d| d == k.dt).unwrap();
            cover.admit([di, k.variant()], [3, 5])?;
            let mut rng = SeedRng::new(seed);
            let win = match Window::new("t", (k.h, k.w), k.k, k.stride, k.dil, k.padding) {
                Ok(w) => w,
                Err(_) => {
                    // The window does not fit this padding: TF SAME always gives an output.
                    k.padding = Padding::Same;
                    Window::new("t", (k.h, k.w), k.k, k.stride, k.dil, k.padding).unwrap()
                }
            };
            let dt = k.dt;
            let (n, c) = (k.n, k.c);
            let oshape = [n, win.out_h, win.out_w, c];
            let olen = oshape.iter().product::<usize>();
            let x = random_values(&mut rng, n * k.h * k.w * c, 1.0, dt);
            let w = random_values(&mut rng, k.k.0 * k.k.1 * c, 0.5, dt);
            let scale: Option<Vec<f64>> = k.scale.then(|| {
                (0..c)
                    .map(|_| DType::F32.round(0.25 + rng.uniform()))
                    .collect()
            });
            let bias = k.bias.then(|| random_values(&mut rng, c, 1.0, DType::F32));
            let res = k.residual.then(|| random_values(&mut rng, olen, 1.0, dt));
            let xt = upload(&dev, &[n, k.h, k.w, c], &x, dt);
            let wt = upload(&dev, &[k.k.0, k.k.1, c], &w, dt);
            let st = scale.as_ref().map(|v| upload(&dev, &[c], v, DType::F32));
            let bt = bias.as_ref().map(|v| upload(&dev, &[c], v, DType::F32));
            let rt = res.as_ref().map(|v| upload(&dev, &oshape, v, dt));
            let d = Depthwise {
                stride: k.stride,
                dilation: k.dil,
                padding: k.padding,
                scale: st.as_ref(),
                bias: bt.as_ref(),
                act: k.act,
                residual: rt.as_ref(),
            };
            let mut out = poisoned(&dev, &oshape, dt);
            ops::depthwise_into(&xt, &wt, &d, &mut out)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got = out.to_host().unwrap().to_f64();
            let want = reference::depthwise(
                &x,
                n,
                c,
                &w,
                &win,
                scale.as_deref(),
                bias.as_deref(),
                k.act,
                res.as_deref(),
            );
            // f32 accumulation: error ≲ (taps + 2)·u·Σ|scale·x·w| (the same sum of magnitudes,
            // from the reference on |x|, |w|, |scale|), plus the f32 epilogue on |bias| and
            // |residual|; the output rounds once to the dtype.
            let abs = |v: &[f64]| v.iter().map(|t| t.abs()).collect::<Vec<_>>();
            let mag = reference::depthwise(
                &abs(&x),
                n,
                c,
                &w.iter().map(|t| t.abs()).collect::<Vec<_>>(),
                &win,
                scale.as_deref(),
                None,
                Activation::Identity,
                None,
            );
            let taps = (k.k.0 * k.k.1) as f64;
            let atol = |i: usize| {
                let b = bias.as_ref().map_or(0.0, |b| b[i % c].abs());
                let r = res.as_ref().map_or(0.0, |r| r[i].abs());
                4.0 * (taps + 2.0) * U_F32 * (mag[i] + b + r) + min_step(dt)
            };
            let rtol = 2.0 * dt.unit_roundoff() + 8.0 * U_F32;
            check_close(
                &format!(
                    "depthwise {dt} [{n},{},{},{c}] k{:?} s{:?} d{:?} {:?} {:?} scale {} bias {} res {}",
                    k.h, k.w, k.k, k.stride, k.dil, k.padding, k.act, k.scale, k.bias, k.residual
                ),
                &got,
                &want,
                &atol,
                rtol,
            )
            .map_err(TestCaseError::fail)?;
            // Deterministic: a second launch is bit-identical.
            let mut again = poisoned(&dev, &oshape, dt);
            ops::depthwise_into(&xt, &wt, &d, &mut again)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again.to_host().unwrap(), out.to_host().unwrap());
            Ok(())
        },
    );
}
