//! conv2d (`kernels/conv.cu`, `src/ops/conv.rs`): GPU against the f64 reference over random
//! NHWC shapes (odd H/W, channel counts off multiples of 8 including the 3-channel first
//! layer, k 1/3/5/7, stride 1/2, dilation, every padding mode, groups), the fused epilogue
//! (folded BN scale/bias, residual, activation), every tile, all dtypes; bad input.

mod common;
use common::*;
use medkern::ops::{self, Activation, Conv2d, ConvWeight, Padding, Tile, Window};
use medkern::reference::conv::{self as reference, ConvShape};
use medkern::{DType, Device, Error, HostTensor, Tensor};
use proptest::prelude::*;

const U_F32: f64 = f32::EPSILON as f64 / 2.0;

#[derive(Clone, Debug)]
struct Case {
    dt: DType,
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oc: usize,
    k: (usize, usize),
    stride: (usize, usize),
    dil: (usize, usize),
    pad: Padding,
    groups: usize,
    scale: bool,
    bias: bool,
    residual: bool,
    act: Activation,
    tile: Option<Tile>,
}

/// A random case: groups (mostly 1), channels per group on and off multiples of 8 (3: the first
/// layer), k 1/2/3/5/7 (a fifth of them k×1 or k×3), stride 1/2, dilation 2 in a quarter, every
/// padding mode, every epilogue and tile. H and W stay at least the dilated kernel, and halve
/// until the f64 reference stays cheap.
fn conv_case() -> impl Strategy<Value = Case> {
    let pick = |sizes: &[usize]| Dim::default().sizes(1, sizes);
    (
        (
            0..3usize,
            pick(&[1, 1, 1, 2, 4]),
            pick(&[3, 8, 16, 5, 24, 64, 1]),
            pick(&[1, 8, 16, 33, 64, 7, 70]),
        ),
        (
            pick(&[1, 3, 3, 5, 7, 2]),
            prop::bool::weighted(0.2),
            pick(&[1, 3]),
        ),
        (1..=2usize, 1..=2usize, prop::bool::weighted(0.25)),
        (0..4usize, (0..3usize, 0..3usize, 0..3usize, 0..3usize)),
        (
            1..=3usize,
            pick(&[1, 7, 33, 12, 17]),
            pick(&[1, 7, 33, 9, 16]),
        ),
        (
            any::<(bool, bool)>(),
            prop::bool::weighted(1.0 / 3.0),
            0..Activation::ALL.len(),
            0..4usize,
        ),
    )
        .prop_map(
            |(
                (di, groups, cg, ocg),
                (kk, rect, kw),
                (sh, sw, dilated),
                (pad_kind, (top, bottom, left, right)),
                (n, h, w),
                ((scale, bias), residual, ai, ti),
            )| {
                let k = if rect { (kk, kw) } else { (kk, kk) };
                let dil = if dilated { (2, 2) } else { (1, 1) };
                let pad = match pad_kind {
                    0 => Padding::Same,
                    1 => Padding::Valid,
                    2 => Padding::symmetric(k.0 / 2 * dil.0, k.1 / 2 * dil.1),
                    _ => Padding::Explicit {
                        top,
                        bottom,
                        left,
                        right,
                    },
                };
                let span = |k: usize, d: usize| d * (k - 1) + 1;
                let min_h = span(k.0, dil.0);
                let min_w = span(k.1, dil.1);
                let mut case = Case {
                    dt: [DType::F16, DType::BF16, DType::F32][di],
                    n,
                    h: h.max(min_h),
                    w: w.max(min_w),
                    c: cg * groups,
                    oc: ocg * groups,
                    k,
                    stride: (sh, sw),
                    dil,
                    pad,
                    groups,
                    scale,
                    bias,
                    residual,
                    act: Activation::ALL[ai],
                    tile: [None, Some(Tile::S), Some(Tile::M), Some(Tile::L)][ti],
                };
                // Keep the f64 reference cheap (multiply-adds).
                while case.n * case.h * case.w * case.oc * k.0 * k.1 * cg > 3_000_000
                    && case.h > min_h
                {
                    case.h = (case.h / 2).max(min_h);
                    case.w = (case.w / 2).max(min_w);
                    case.n = 1;
                }
                case
            },
        )
}

struct Run {
    got: Vec<f64>,
    want: Vec<f64>,
    /// The same convolution on |x|, |w|, |scale|, |bias|, |residual|: the error scale.
    mag: Vec<f64>,
    /// On the CPU device only: the convolution computed here, independently of the library.
    direct: Option<Vec<f64>>,
}

/// The convolution written out over an explicitly zero-padded NHWC input and an OHWI weight,
/// with the epilogue act(acc·scale + bias + residual): the CPU backend's own oracle is the
/// library's reference, so its test needs this one.
#[allow(clippy::too_many_arguments)]
fn direct_conv(
    case: &Case,
    win: &Window,
    x: &[f64],
    w: &[f64],
    sc: &[f64],
    bi: &[f64],
    res: &[f64],
) -> Vec<f64> {
    let (n, c, oc, g) = (case.n, case.c, case.oc, case.groups);
    let (cg, ocg) = (c / g, oc / g);
    let (ph, pw) = (win.pad_top, win.pad_left);
    let (hp, wp) = (
        (win.out_h - 1) * win.stride_h + (win.k_h - 1) * win.dil_h + 1,
        (win.out_w - 1) * win.stride_w + (win.k_w - 1) * win.dil_w + 1,
    );
    let (hp, wp) = (hp.max(ph + case.h), wp.max(pw + case.w));
    let mut xp = vec![0.0; n * hp * wp * c];
    for b in 0..n {
        for i in 0..case.h {
            for j in 0..case.w {
                let src = ((b * case.h + i) * case.w + j) * c;
                let dst = ((b * hp + i + ph) * wp + j + pw) * c;
                xp[dst..dst + c].copy_from_slice(&x[src..src + c]);
            }
        }
    }
    let mut y = Vec::with_capacity(n * win.out_h * win.out_w * oc);
    for b in 0..n {
        for oh in 0..win.out_h {
            for ow in 0..win.out_w {
                for o in 0..oc {
                    let c0 = (o / ocg) * cg;
                    let mut acc = 0.0;
                    for kh in 0..win.k_h {
                        for kw in 0..win.k_w {
                            let (ih, iw) = (
                                oh * win.stride_h + kh * win.dil_h,
                                ow * win.stride_w + kw * win.dil_w,
                            );
                            for ci in 0..cg {
                                acc += xp[((b * hp + ih) * wp + iw) * c + c0 + ci]
                                    * w[((o * win.k_h + kh) * win.k_w + kw) * cg + ci];
                            }
                        }
                    }
                    let mut v = acc;
                    if case.scale {
                        v *= sc[o];
                    }
                    if case.bias {
                        v += bi[o];
                    }
                    if case.residual {
                        v += res[y.len()];
                    }
                    y.push(medkern::reference::elementwise::activation(case.act, v));
                }
            }
        }
    }
    y
}

fn run_case(case: &Case, dev: &Device, rng: &mut SeedRng) -> Result<Run, Error> {
    let dt = case.dt;
    let cg = case.c / case.groups;
    let x = random_values(rng, case.n * case.h * case.w * case.c, 1.0, dt);
    let wv = random_values(rng, case.oc * case.k.0 * case.k.1 * cg, 0.3, dt);
    let sc: Vec<f64> = (0..case.oc).map(|_| 0.5 + rng.uniform()).collect();
    let sc: Vec<f64> = sc.iter().map(|&v| f64::from(v as f32)).collect();
    let bi = random_values(rng, case.oc, 0.5, DType::F32);
    let win = Window::new(
        "test",
        (case.h, case.w),
        case.k,
        case.stride,
        case.dil,
        case.pad,
    )?;
    let ys = [case.n, win.out_h, win.out_w, case.oc];
    let res = random_values(rng, ys.iter().product(), 1.0, dt);
    let wt = ConvWeight::new(
        &HostTensor::from_f64(&[case.oc, case.k.0, case.k.1, cg], &wv, dt)?,
        case.groups,
        dev,
    )?;
    let xt = upload(dev, &[case.n, case.h, case.w, case.c], &x, dt);
    let st = upload(dev, &[case.oc], &sc, DType::F32);
    let bt = upload(dev, &[case.oc], &bi, DType::F32);
    let rt = upload(dev, &ys, &res, dt);
    let spec = Conv2d {
        stride: case.stride,
        dilation: case.dil,
        padding: case.pad,
        scale: case.scale.then_some(&st),
        bias: case.bias.then_some(&bt),
        residual: case.residual.then_some(&rt),
        act: case.act,
        tile: case.tile,
    };
    let mut out = poisoned(dev, &ys, dt);
    ops::conv2d_into(&xt, &wt, &spec, &mut out)?;
    let got = out.to_host()?.to_f64();
    let shape = ConvShape {
        n: case.n,
        c: case.c,
        oc: case.oc,
        groups: case.groups,
        win,
    };
    let want = reference::conv2d(
        &x,
        &wv,
        &shape,
        case.scale.then_some(&sc[..]),
        case.bias.then_some(&bi[..]),
        case.residual.then_some(&res[..]),
        case.act,
    );
    let abs = |v: &[f64]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
    let (ab, ar) = (abs(&bi), abs(&res));
    let mag = reference::conv2d(
        &abs(&x),
        &abs(&wv),
        &shape,
        case.scale.then_some(&sc[..]),
        case.bias.then_some(&ab[..]),
        case.residual.then_some(&ar[..]),
        Activation::Identity,
    );
    let direct =
        matches!(dev, Device::Cpu).then(|| direct_conv(case, &win, &x, &wv, &sc, &bi, &res));
    Ok(Run {
        got,
        want,
        mag,
        direct,
    })
}

fn check(case: &Case, r: &Run) -> Result<(), String> {
    let dt = case.dt;
    let k = (case.k.0 * case.k.1 * case.c / case.groups) as f64;
    check_close(
        &format!("conv2d {case:?}"),
        &r.got,
        &r.want,
        // f32 accumulation over K terms (and the f32 epilogue), then one rounding to dt;
        // activations have slope <= 1.2.
        &|i| min_step(dt) + 1.2 * 4.0 * k.sqrt() * U_F32 * (r.mag[i] + r.want[i].abs()),
        2.0 * dt.unit_roundoff(),
    )
}

#[test]
fn conv2d_gpu_matches_reference() {
    let Some(dev) = test_device("conv2d_gpu_matches_reference") else {
        return;
    };
    common::check(file!(), 64, &(value_seed(), conv_case()), |(seed, case)| {
        let r = run_case(&case, &dev, &mut SeedRng::new(seed))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check(&case, &r).map_err(TestCaseError::fail)?;
        // Deterministic: the same inputs give bit-identical outputs.
        let again = run_case(&case, &dev, &mut SeedRng::new(seed))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(
            r.got
                .iter()
                .zip(&again.got)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "two launches differ"
        );
        Ok(())
    });
}

#[test]
fn resnet_and_efficientnet_layers() {
    // The layer types of the clinical CNNs, small spatial sizes: ResNet stem (3 channels, k7 s2
    // p3), a 3x3 block conv with BN + residual + ReLU, a 1x1 s2 downsample, EfficientNet's TF
    // SAME stride-2 3x3 stem with SiLU, a 1x1 expand, and a depthwise 3x3 through groups = C.
    let Some(dev) = test_device("resnet_and_efficientnet_layers") else {
        return;
    };
    let base = Case {
        dt: DType::F16,
        n: 2,
        h: 23,
        w: 19,
        c: 3,
        oc: 64,
        k: (7, 7),
        stride: (2, 2),
        dil: (1, 1),
        pad: Padding::symmetric(3, 3),
        groups: 1,
        scale: true,
        bias: true,
        residual: false,
        act: Activation::Relu,
        tile: None,
    };
    let layers = [
        base.clone(),
        Case {
            c: 64,
            k: (3, 3),
            stride: (1, 1),
            pad: Padding::symmetric(1, 1),
            residual: true,
            ..base.clone()
        },
        Case {
            c: 64,
            oc: 128,
            k: (1, 1),
            pad: Padding::Valid,
            act: Activation::Identity,
            dt: DType::BF16,
            ..base.clone()
        },
        Case {
            oc: 32,
            k: (3, 3),
            pad: Padding::Same,
            act: Activation::Silu,
            h: 24,
            w: 24,
            ..base.clone()
        },
        Case {
            c: 16,
            oc: 96,
            k: (1, 1),
            stride: (1, 1),
            pad: Padding::Valid,
            act: Activation::Silu,
            ..base.clone()
        },
        Case {
            c: 96,
            oc: 96,
            groups: 96,
            k: (3, 3),
            stride: (2, 2),
            pad: Padding::Same,
            act: Activation::Silu,
            ..base.clone()
        },
    ];
    let mut rng = SeedRng::new(18);
    for case in layers {
        for tile in [Tile::S, Tile::M, Tile::L] {
            let case = Case {
                tile: Some(tile),
                ..case.clone()
            };
            let r = run_case(&case, &dev, &mut rng).unwrap();
            check(&case, &r).unwrap();
        }
    }
}

#[test]
fn pytorch_weight_layout() {
    // ConvWeight::from_pytorch (OIHW) equals ConvWeight::new on the reordered OHWI weight.
    let mut rng = SeedRng::new(3);
    let (oc, cg, kh, kw) = (5, 3, 3, 2);
    let v = random_values(&mut rng, oc * cg * kh * kw, 1.0, DType::F32);
    let oihw = HostTensor::from_f64(&[oc, cg, kh, kw], &v, DType::F32).unwrap();
    let a = ConvWeight::from_pytorch(&oihw, 1, &Device::Cpu).unwrap();
    assert_eq!(a.shape(), [oc, kh, kw, cg]);
    let want = reference::oihw_to_ohwi(&v, oc, cg, kh, kw);
    assert_eq!(a.to_ohwi_f64().unwrap(), want);
    // Spot-check one element by hand: OIHW [o=4, c=2, h=1, w=0] is OHWI [4, 1, 0, 2].
    assert_eq!(
        want[((4 * kh + 1) * kw) * cg + 2],
        v[((4 * cg + 2) * kh + 1) * kw]
    );
}

#[test]
fn cpu_backend_runs_random_cases() {
    // The op's CPU path (weight padding, window, epilogue plumbing) against the reference.
    let mut rng = SeedRng::new(99);
    for case in sample(&conv_case(), 10) {
        let mut r = run_case(&case, &Device::Cpu, &mut rng).unwrap();
        // Against the direct convolution above, not the reference the CPU path itself calls.
        r.want = r.direct.take().unwrap();
        check(&case, &r).unwrap();
    }
}

#[test]
fn bad_inputs_are_errors() {
    let cpu = Device::Cpu;
    let x = Tensor::new(&cpu, &[1, 8, 8, 6], vec![half::f16::ONE; 384]).unwrap();
    let w = |shape: &[usize], groups| {
        let n: usize = shape.iter().product();
        ConvWeight::new(
            &HostTensor::new(shape, vec![half::f16::ONE; n]).unwrap(),
            groups,
            &cpu,
        )
    };
    // Channels mismatch.
    let e = ops::conv2d(&x, &w(&[4, 3, 3, 4], 1).unwrap(), &Conv2d::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "conv2d",
                arg: "x",
                ..
            }
        ) && e.to_string().contains("4 channels"),
        "{e}"
    );
    // Groups not dividing the output channels.
    let e = w(&[4, 3, 3, 2], 3).unwrap_err();
    assert!(matches!(e, Error::Invalid { arg: "groups", .. }), "{e}");
    // Output size <= 0.
    let e = ops::conv2d(&x, &w(&[4, 9, 9, 6], 1).unwrap(), &Conv2d::default()).unwrap_err();
    assert!(e.to_string().contains("output size <= 0"), "{e}");
    // Zero stride.
    let e = ops::conv2d(
        &x,
        &w(&[4, 3, 3, 6], 1).unwrap(),
        &Conv2d {
            stride: (0, 1),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Invalid { arg: "window", .. }), "{e}");
    // Weight dtype mismatch; scale of the wrong length; x not NHWC.
    let wf = ConvWeight::new(
        &HostTensor::new(&[4, 1, 1, 6], vec![1.0f32; 24]).unwrap(),
        1,
        &cpu,
    )
    .unwrap();
    let e = ops::conv2d(&x, &wf, &Conv2d::default()).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "weight", .. }), "{e}");
    let s = Tensor::new(&cpu, &[3], vec![1.0f32; 3]).unwrap();
    let e = ops::conv2d(
        &x,
        &w(&[4, 1, 1, 6], 1).unwrap(),
        &Conv2d {
            scale: Some(&s),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "scale", .. }), "{e}");
    let x3 = Tensor::new(&cpu, &[8, 8, 6], vec![half::f16::ONE; 384]).unwrap();
    let e = ops::conv2d(&x3, &w(&[4, 1, 1, 6], 1).unwrap(), &Conv2d::default()).unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "x", .. }), "{e}");
    // A residual of the wrong shape.
    let r = Tensor::new(&cpu, &[1, 8, 8, 5], vec![half::f16::ONE; 320]).unwrap();
    let e = ops::conv2d(
        &x,
        &w(&[4, 1, 1, 6], 1).unwrap(),
        &Conv2d {
            residual: Some(&r),
            ..Default::default()
        },
    )
    .unwrap_err();
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
}
