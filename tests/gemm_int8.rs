//! Int8 GEMM (`kernels/gemm_int8.cu`, `src/ops/gemm_int8.rs`): raw int32 accumulators exact
//! against the integer reference; dequantised, group-wise and requantised outputs against the
//! f64 reference; bad scales and shapes.

mod common;
use common::*;
use medkern::ops::{self, Activation, GemmI8, Tile};
use medkern::reference::gemm::GemmDims;
use medkern::reference::gemm_int8::{self as reference, I8Epilogue};
use medkern::{DType, Device, Error, HostTensor, Tensor};
use proptest::prelude::*;

const U_F32: f64 = f32::EPSILON as f64 / 2.0;

fn i8t(dev: &Device, shape: &[usize], v: Vec<i8>) -> Tensor {
    HostTensor::new(shape, v).unwrap().to_device(dev).unwrap()
}
fn f32t(dev: &Device, shape: &[usize], v: &[f64]) -> Tensor {
    HostTensor::from_f64(shape, v, DType::F32)
        .unwrap()
        .to_device(dev)
        .unwrap()
}

#[test]
fn reference_is_exact_and_groups_sum_up() {
    let d = GemmDims {
        batch: 1,
        m: 1,
        n: 1,
        k: 128,
        shared_w: true,
    };
    let x = vec![-128i8; 128];
    let w = vec![-128i8; 128];
    assert_eq!(reference::gemm_i8_acc(&x, &w, d), vec![128 * 16384]);
    let g = reference::gemm_i8_group_acc(&x, &w, d, 64);
    assert_eq!(g, vec![64 * 16384, 64 * 16384]);
    let e = I8Epilogue {
        sx: &[0.5],
        sw: &[0.25, 1.0],
        group_size: 64,
        alpha: 1.0,
        bias: None,
        act: Activation::Identity,
        residual: None,
        out_scale: None,
    };
    assert_eq!(
        reference::gemm_i8(&x, &w, d, &e),
        vec![0.5 * (0.25 + 1.0) * 64.0 * 16384.0]
    );
}

#[test]
fn bad_inputs_are_errors() {
    let cpu = Device::Cpu;
    let (x, w) = (
        i8t(&cpu, &[4, 32], vec![1; 128]),
        i8t(&cpu, &[8, 32], vec![1; 256]),
    );
    let sx = f32t(&cpu, &[1], &[1.0]);
    let sw_bad = f32t(&cpu, &[7], &[1.0; 7]);
    let e = ops::gemm_i8(&x, &w, &GemmI8::new(&sx, &sw_bad, DType::F16)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "gemm_i8",
                arg: "w_scale",
                ..
            }
        ) && e.to_string().contains("[8]"),
        "{e}"
    );
    let sx_bad = f32t(&cpu, &[3], &[1.0; 3]);
    let sw = f32t(&cpu, &[8], &[1.0; 8]);
    let e = ops::gemm_i8(&x, &w, &GemmI8::new(&sx_bad, &sw, DType::F16)).unwrap_err();
    assert!(
        matches!(e, Error::Shape { arg: "x_scale", .. })
            && e.to_string().contains("[4] (per token)"),
        "{e}"
    );
    let e = ops::gemm_i8_raw(
        &i8t(&cpu, &[4, 24], vec![1; 96]),
        &i8t(&cpu, &[8, 24], vec![1; 192]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("multiple of 16"), "{e}");
    let xf = Tensor::new(&cpu, &[4, 32], vec![1f32; 128]).unwrap();
    let e = ops::gemm_i8_raw(&xf, &w).unwrap_err();
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
    let e = ops::gemm_i8(
        &x,
        &w,
        &GemmI8 {
            group_size: 48,
            ..GemmI8::new(&sx, &sw, DType::F32)
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                arg: "group_size",
                ..
            }
        ),
        "{e}"
    );
    let e = ops::gemm_i8(&x, &w, &GemmI8::new(&sx, &sw, DType::I32)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                arg: "out_dtype",
                ..
            }
        ),
        "{e}"
    );
    // CPU backend: 32 · 1 · 1 = 32 exactly.
    let y = ops::gemm_i8_raw(&x, &w).unwrap().to_host().unwrap();
    assert_eq!(y.as_slice::<i32>().unwrap(), &[32; 32]);
}

#[test]
fn gemm_i8_raw_gpu_is_exact() {
    let Some(dev) = test_device("gemm_i8_raw_gpu_is_exact") else {
        return;
    };
    // k = 16·k16; batch counts only when batched.
    let strategy = (
        value_seed(),
        0..3usize,
        (any::<bool>(), 1..=3usize),
        (gemm_dim(16, 300), gemm_dim(16, 300), gemm_dim(1, 64)),
    );
    check(
        file!(),
        96,
        &strategy,
        |(seed, ti, (batched, batch), (m, n, k16))| {
            let mut rng = SeedRng::new(seed);
            let k = 16 * k16;
            let batch = if batched { batch } else { 1 };
            let (xs, ws, ys) = if batched {
                (vec![batch, m, k], vec![batch, n, k], vec![batch, m, n])
            } else {
                (vec![m, k], vec![n, k], vec![m, n])
            };
            let x = random_i8(&mut rng, batch * m * k);
            let w = random_i8(&mut rng, ws.iter().product());
            let mut out = poisoned(&dev, &ys, DType::I32);
            ops::gemm_i8_raw_into(
                &i8t(&dev, &xs, x.clone()),
                &i8t(&dev, &ws, w.clone()),
                &mut out,
                Some(Tile::ALL[ti]),
            )
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got: Vec<i64> = out
                .to_host()
                .unwrap()
                .as_slice::<i32>()
                .unwrap()
                .iter()
                .map(|&v| i64::from(v))
                .collect();
            let want = reference::gemm_i8_acc(
                &x,
                &w,
                GemmDims {
                    batch,
                    m,
                    n,
                    k,
                    shared_w: !batched,
                },
            );
            prop_assert!(
                got == want,
                "int32 accumulators differ: b{} m{} n{} k{} tile {:?}; first mismatch {:?}",
                batch,
                m,
                n,
                k,
                Tile::ALL[ti],
                got.iter().zip(&want).position(|(a, b)| a != b)
            );
            Ok(())
        },
    );
}

#[test]
fn gemm_i8_dequant_gpu_matches_reference() {
    let Some(dev) = test_device("gemm_i8_dequant_gpu_matches_reference") else {
        return;
    };
    // (output dtype, tile) are the kernel variants. k: 64·k64, less 16·k_cut when not grouped;
    // the group 64·g64; batch counts only when batched.
    let strategy = (
        value_seed(),
        (0..4usize, 0..3usize),
        0..8usize,
        any::<(bool, bool, bool, bool)>(),
        (any::<bool>(), 1..=3usize),
        (
            gemm_dim(16, 260),
            gemm_dim(16, 260),
            1..=8usize,
            0..3usize,
            1..=3usize,
        ),
    );
    check_covering(
        file!(),
        128,
        &strategy,
        |(
            seed,
            (oi, ti),
            ai,
            (per_token, grouped, with_bias, with_res),
            (batched, batch),
            (m, n, k64, k_cut, g64),
        ),
         cover| {
            cover.admit([oi, ti], [4, 3])?;
            let mut rng = SeedRng::new(seed);
            let odt = [DType::F16, DType::BF16, DType::F32, DType::I8][oi];
            let act = Activation::ALL[ai];
            let k = 64 * k64 - if grouped { 0 } else { 16 * k_cut };
            let group = if grouped { 64 * g64 } else { 0 };
            let groups = if grouped { k.div_ceil(group) } else { 1 };
            let with_res = with_res && odt != DType::I8;
            let batch = if batched { batch } else { 1 };
            let (xs, ws, ys) = if batched {
                (vec![batch, m, k], vec![batch, n, k], vec![batch, m, n])
            } else {
                (vec![m, k], vec![n, k], vec![m, n])
            };
            let x = random_i8(&mut rng, batch * m * k);
            let w = random_i8(&mut rng, ws.iter().product());
            let sx: Vec<f64> = (0..if per_token { batch * m } else { 1 })
                .map(|_| f64::from((0.01 + rng.uniform() * 0.05) as f32))
                .collect();
            let sw: Vec<f64> = (0..n * groups)
                .map(|_| f64::from((0.001 + rng.uniform() * 0.01) as f32))
                .collect();
            let b = random_values(&mut rng, n, 1.0, DType::F32);
            let r = random_values(
                &mut rng,
                batch * m * n,
                1.0,
                if odt == DType::I8 { DType::F32 } else { odt },
            );
            let out_scale = f64::from((0.02 + rng.uniform() * 0.1) as f32);
            let sw_shape = if grouped { vec![n, groups] } else { vec![n] };
            let (sxt, swt) = (f32t(&dev, &[sx.len()], &sx), f32t(&dev, &sw_shape, &sw));
            let (bt, rt) = (
                f32t(&dev, &[n], &b),
                upload(
                    &dev,
                    &ys,
                    &r,
                    if odt == DType::I8 { DType::F32 } else { odt },
                ),
            );
            let spec = GemmI8 {
                group_size: group,
                alpha: 1.0,
                bias: with_bias.then_some(&bt),
                act,
                residual: with_res.then_some(&rt),
                out_scale: out_scale as f32,
                tile: Some(Tile::ALL[ti]),
                ..GemmI8::new(&sxt, &swt, odt)
            };
            let mut out = poisoned(&dev, &ys, odt);
            ops::gemm_i8_into(
                &i8t(&dev, &xs, x.clone()),
                &i8t(&dev, &ws, w.clone()),
                &spec,
                &mut out,
            )
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got = out.to_host().unwrap().to_f64();
            let d = GemmDims {
                batch,
                m,
                n,
                k,
                shared_w: !batched,
            };
            let epi = I8Epilogue {
                sx: &sx,
                sw: &sw,
                group_size: group,
                alpha: 1.0,
                bias: with_bias.then_some(&b[..]),
                act,
                residual: with_res.then_some(&r[..]),
                out_scale: (odt == DType::I8).then_some(out_scale),
            };
            let want = reference::gemm_i8(&x, &w, d, &epi);
            // The activation's input: GELU/SiLU-style 1 + erf / 1 + e^-x cancel for x < 0, so f32
            // arithmetic errs by ~2U·|x| there, whatever the size of the result.
            let pre = reference::gemm_i8(
                &x,
                &w,
                d,
                &I8Epilogue {
                    act: Activation::Identity,
                    residual: None,
                    out_scale: None,
                    ..epi
                },
            );
            let what = format!(
                "gemm_i8 ->{odt} {act:?} b{batch} m{m} n{n} k{k} group {group} per_token={per_token} bias={with_bias} res={with_res}"
            );
            if odt == DType::I8 {
                // Requantisation must round to nearest: within half a step (plus the f32
                // epilogue's error) of the exact v / out_scale, clamped. A ±1 tolerance around
                // the rounded reference let floor or truncation pass.
                let v = reference::gemm_i8(
                    &x,
                    &w,
                    d,
                    &I8Epilogue {
                        out_scale: None,
                        ..epi
                    },
                );
                let exact: Vec<f64> = v
                    .iter()
                    .map(|&v| (v / out_scale).clamp(-128.0, 127.0))
                    .collect();
                let atol = |i: usize| {
                    0.5 + (16.0 * U_F32 * (v[i].abs() + b[i % n].abs() + 1e-3)
                        + 8.0 * U_F32 * pre[i].abs())
                        / out_scale
                        + 2.0 * U_F32 * exact[i].abs()
                };
                check_close(&what, &got, &exact, &atol, 0.0).map_err(TestCaseError::fail)
            } else {
                let atol = |i: usize| {
                    min_step(odt)
                        + 16.0 * U_F32 * (want[i].abs() + b[i % n].abs() + r[i].abs() + 1e-3)
                        + 8.0 * U_F32 * pre[i].abs()
                };
                check_close(
                    &what,
                    &got,
                    &want,
                    &atol,
                    2.0 * odt.unit_roundoff() + 16.0 * U_F32,
                )
                .map_err(TestCaseError::fail)
            }
        },
    );
}

#[test]
fn degenerate_k_and_groups_are_errors() {
    let cpu = Device::Cpu;
    let x0 = i8t(&cpu, &[4, 0], vec![]);
    let w0 = i8t(&cpu, &[8, 0], vec![]);
    let e = ops::gemm_i8_raw(&x0, &w0).unwrap_err();
    assert!(e.to_string().contains("positive multiple of 16"), "{e}");
    let (x, w) = (
        i8t(&cpu, &[1, 128], vec![1; 128]),
        i8t(&cpu, &[2, 128], vec![1; 256]),
    );
    let sx = f32t(&cpu, &[1], &[1.0]);
    let sw = f32t(&cpu, &[2, 1], &[1.0, 1.0]);
    let huge = GemmI8 {
        group_size: 1 << 20,
        ..GemmI8::new(&sx, &sw, DType::F32)
    };
    assert!(matches!(
        ops::gemm_i8(&x, &w, &huge),
        Err(Error::Invalid {
            arg: "group_size",
            ..
        })
    ));
}
