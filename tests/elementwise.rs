//! Elementwise family (`kernels/elementwise.cu`, `src/ops/elementwise.rs`): GPU against the f64
//! reference over random shapes, every activation and dtype; reference against published values.

mod common;
use common::*;
use medkern::ops::{self, Activation, Eltwise};
use medkern::reference::elementwise as reference;
use medkern::{DType, Device, Error, Tensor};
use proptest::prelude::*;

const U_F32: f64 = f32::EPSILON as f64 / 2.0;

#[test]
fn reference_matches_published_values() {
    // Values from the closed forms, computed independently (Wolfram Alpha / mpmath).
    let cases = [
        (Activation::GeluErf, 1.0, 0.841_344_746_068_542_9),
        (Activation::GeluErf, -2.0, -0.045_500_263_896_358_42),
        (Activation::GeluTanh, 1.0, 0.841_191_990_608_276_8),
        (Activation::Silu, 1.0, 0.731_058_578_630_004_9),
        (Activation::Sigmoid, -3.0, 0.047_425_873_177_566_78),
        (Activation::Tanh, 0.5, 0.462_117_157_260_009_8),
        (Activation::Relu6, 7.5, 6.0),
        (Activation::Relu, -0.25, 0.0),
        (Activation::Identity, -0.25, -0.25),
    ];
    for (act, x, want) in cases {
        let got = reference::activation(act, x);
        assert!(
            (got - want).abs() < 1e-12,
            "{act:?}({x}) = {got}, want {want}"
        );
    }
}

#[test]
fn cpu_backend_rounds_to_dtype_and_broadcasts_bias() {
    let x = Tensor::new(&Device::Cpu, &[2, 3], vec![half::f16::from_f32(1.0); 6]).unwrap();
    let b = Tensor::new(
        &Device::Cpu,
        &[3],
        vec![
            half::f16::from_f32(0.1),
            half::f16::from_f32(0.2),
            half::f16::from_f32(0.3),
        ],
    )
    .unwrap();
    let y = ops::bias_add(&x, &b).unwrap().to_host().unwrap().to_f64();
    // 1 + f16(0.1) = 1.0999755859375 rounds to the f16 1.099609375 (spacing 2^-10 above 1).
    assert_eq!(y[0], 1.099_609_375);
    assert_eq!(y[0], y[3], "bias must broadcast along rows");
    assert_eq!(
        y[2],
        half::f16::from_f64(1.0 + half::f16::from_f32(0.3).to_f64()).to_f64()
    );
}

#[test]
fn bad_inputs_are_errors() {
    let cpu = Device::Cpu;
    let x = Tensor::new(&cpu, &[4, 5], vec![1.0f32; 20]).unwrap();
    let wrong_bias = Tensor::new(&cpu, &[4], vec![1.0f32; 4]).unwrap();
    let e = ops::bias_add(&x, &wrong_bias).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "eltwise",
                arg: "bias",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("[5]"), "{e}");

    let r16 = Tensor::new(&cpu, &[4, 5], vec![half::f16::ONE; 20]).unwrap();
    let e = ops::residual_add(&x, &r16).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                op: "eltwise",
                arg: "residual",
                got: DType::F16,
                ..
            }
        ),
        "{e}"
    );

    let xi = Tensor::new(&cpu, &[3], vec![1i32, 2, 3]).unwrap();
    let e = ops::activation(&xi, Activation::Relu).unwrap_err();
    assert!(
        e.to_string().contains("i32") && e.to_string().contains("f32, f16 or bf16"),
        "{e}"
    );

    let e = ops::scale(&x, f32::NAN).unwrap_err();
    assert!(matches!(e, Error::Invalid { arg: "alpha", .. }), "{e}");
    let e = ops::cast(&xi, DType::F16).unwrap_err();
    assert!(matches!(e, Error::DType { op: "cast", .. }), "{e}");
}

/// Per-element tolerance: one final rounding to the dtype plus f32 arithmetic on operands of
/// magnitude `mag` (the sum of the absolute values that met in the computation).
fn eltwise_tol(dt: DType, mag: &[f64]) -> (impl Fn(usize) -> f64 + '_, f64) {
    (
        move |i: usize| min_step(dt) + 64.0 * U_F32 * mag[i],
        2.0 * dt.unit_roundoff(),
    )
}

#[test]
fn eltwise_gpu_matches_reference() {
    let Some(dev) = test_device("eltwise_gpu_matches_reference") else {
        return;
    };
    // (dtype, activation) are the kernel variants.
    let strategy = (
        value_seed(),
        (0..3usize, 0..8usize),
        any::<bool>(),
        any::<bool>(),
        -2.0f32..2.0,
        (interesting_dim(300), interesting_dim(3000)),
    );
    check_covering(
        file!(),
        96,
        &strategy,
        |(seed, (di, ai), with_bias, with_res, alpha, (rows, n)), cover| {
            cover.admit([di, ai], [3, 8])?;
            let mut rng = SeedRng::new(seed);
            let (dt, act) = (DType::FLOATS[di], Activation::ALL[ai]);
            let shape = [rows, n];
            let len = rows * n;
            let x = random_values(&mut rng, len, 2.0, dt);
            let b = random_values(&mut rng, n, 1.0, dt);
            let r = random_values(&mut rng, len, 1.0, dt);
            let alpha = if alpha == 0.0 { 1.0 } else { alpha };
            let xt = upload(&dev, &shape, &x, dt);
            let bt = upload(&dev, &[n], &b, dt);
            let rt = upload(&dev, &shape, &r, dt);
            let spec = Eltwise {
                alpha,
                bias: with_bias.then_some(&bt),
                act,
                residual: with_res.then_some(&rt),
            };
            let mut out = poisoned(&dev, &shape, dt);
            ops::eltwise_into(&xt, &spec, &mut out)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got = out.to_host().unwrap().to_f64();
            let want = reference::eltwise(
                &x,
                n,
                f64::from(alpha),
                with_bias.then_some(&b[..]),
                act,
                with_res.then_some(&r[..]),
            );
            let mag: Vec<f64> = (0..len)
                .map(|i| {
                    let t = (x[i] * f64::from(alpha)).abs()
                        + if with_bias { b[i % n].abs() } else { 0.0 };
                    t + want[i].abs() + if with_res { r[i].abs() } else { 0.0 }
                })
                .collect();
            let (atol, rtol) = eltwise_tol(dt, &mag);
            check_close(
                &format!("eltwise {act:?} {dt} {shape:?} bias={with_bias} res={with_res}"),
                &got,
                &want,
                &atol,
                rtol,
            )
            .map_err(TestCaseError::fail)
        },
    );
}

#[test]
fn cast_gpu_matches_reference() {
    let Some(dev) = test_device("cast_gpu_matches_reference") else {
        return;
    };
    // (from, to) are the kernel variants.
    let strategy = (
        value_seed(),
        (0..3usize, 0..3usize),
        interesting_dim(100_000),
    );
    check_covering(file!(), 48, &strategy, |(seed, (si, di), len), cover| {
        cover.admit([si, di], [3, 3])?;
        let (from, to) = (DType::FLOATS[si], DType::FLOATS[di]);
        if from == to {
            return Ok(());
        }
        let mut rng = SeedRng::new(seed);
        // Wide dynamic range so rounding, not just copying, is exercised.
        let x: Vec<f64> = (0..len)
            .map(|_| from.round(rng.normal() * 10f64.powi(rng.below(9) as i32 - 4)))
            .collect();
        let xt = upload(&dev, &[len], &x, from);
        let mut out = poisoned(&dev, &[len], to);
        ops::cast_into(&xt, &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let got = out.to_host().unwrap().to_f64();
        // Round-to-nearest-even is exact: compare bit for bit with the reference rounding.
        let want: Vec<f64> = x.iter().map(|&v| to.round(v)).collect();
        check_close(
            &format!("cast {from}->{to} len {len}"),
            &got,
            &want,
            &|_| 0.0,
            0.0,
        )
        .map_err(TestCaseError::fail)
    });
}
