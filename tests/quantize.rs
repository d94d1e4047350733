//! Quantisation (`kernels/quantize.cu`, `src/ops/quantize.rs`, `src/quant.rs`): per-token int8
//! activations exact against the f32 reference, the LayerNorm-fused variant, dequantisation,
//! and the offline weight quantizer's error bounds and SQNR.

mod common;
use common::*;
use medkern::ops::{self, LnParams};
use medkern::quant::{Clip, quantize_weight};
use medkern::reference::{layernorm, quantize as reference};
use medkern::{DType, Device, Error, HostTensor, Tensor};
use proptest::prelude::*;

const U_F32: f64 = f32::EPSILON as f64 / 2.0;

#[test]
fn reference_rounds_half_to_even_and_saturates() {
    let (q, s) = reference::quantize_rows(&[127.0, 63.5, -0.5, 1.5, 0.0], 5);
    assert_eq!(s, vec![1.0]);
    assert_eq!(q, vec![127, 64, 0, 2, 0]);
    let (q, s) = reference::quantize_rows(&[0.0, 0.0], 2);
    assert_eq!((q, s), (vec![0, 0], vec![1.0]));
}

#[test]
fn weight_quantizer_error_is_bounded_and_groups_help() {
    let mut rng = SeedRng::new(3);
    let (n, k) = (16, 256);
    let mut v = random_values(&mut rng, n * k, 0.02, DType::F32);
    for r in 0..n {
        v[r * k + 200] = 2.0; // one outlier per row, in the last group
    }
    let w = HostTensor::from_f64(&[n, k], &v, DType::F32).unwrap();
    let pc = quantize_weight(&w, 0, Clip::AbsMax).unwrap();
    let pg = quantize_weight(&w, 64, Clip::AbsMax).unwrap();
    // Absmax: every value within half a step of its scale.
    let deq = pc.dequantize();
    for i in 0..n * k {
        assert!(
            (deq[i] - v[i]).abs() <= 0.5 * f64::from(pc.scales[i / k]) * (1.0 + 1e-6),
            "element {i}"
        );
    }
    assert_eq!(pg.scale_tensor().unwrap().shape(), &[n, 4]);
    assert!(
        pg.sqnr_db > pc.sqnr_db + 3.0,
        "groups isolate the outlier: {} vs {}",
        pg.sqnr_db,
        pc.sqnr_db
    );
    let clipped = quantize_weight(&w, 0, Clip::Percentile(99.0)).unwrap();
    assert!(
        clipped.scales[0] < pc.scales[0],
        "percentile clipping lowers the scale"
    );
    assert!(pc.sqnr_db.is_finite() && pc.sqnr_db > 20.0);
    assert!(matches!(
        quantize_weight(&w, 48, Clip::AbsMax),
        Err(Error::Invalid {
            arg: "group_size",
            ..
        })
    ));
    assert!(matches!(
        quantize_weight(&w, 0, Clip::Percentile(0.0)),
        Err(Error::Invalid { arg: "clip", .. })
    ));
}

#[test]
fn bad_inputs_are_errors() {
    let cpu = Device::Cpu;
    let q = Tensor::new(&cpu, &[2, 3], vec![1i8; 6]).unwrap();
    let s3 = Tensor::new(&cpu, &[3], vec![1f32; 3]).unwrap();
    let e = ops::dequantize_rows(&q, &s3, DType::F16).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "dequantize_rows",
                arg: "scale",
                ..
            }
        ) && e.to_string().contains("[2]"),
        "{e}"
    );
    let x = Tensor::new(&cpu, &[2, 3], vec![1i32; 6]).unwrap();
    assert!(matches!(
        ops::quantize_rows(&x),
        Err(Error::DType {
            op: "quantize_rows",
            ..
        })
    ));
    let xf = Tensor::new(&cpu, &[2, 4], vec![1f32; 8]).unwrap();
    let g = Tensor::new(&cpu, &[3], vec![1f32; 3]).unwrap();
    let e = ops::layernorm_quantize(
        &xf,
        &LnParams {
            residual: None,
            gamma: &g,
            beta: &g,
            eps: 1e-5,
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "gamma", .. }), "{e}");
}

#[test]
fn quantize_gpu_matches_reference() {
    let Some(dev) = test_device("quantize_gpu_matches_reference") else {
        return;
    };
    let strategy = (
        value_seed(),
        0..3usize,
        (interesting_dim(200), interesting_dim(4000)),
        prop::bool::weighted(0.25),
    );
    check_covering(
        file!(),
        64,
        &strategy,
        |(seed, di, (rows, n), zero_row), cover| {
            // (dtype, kernel) are the variants: rows longer than 1024 take the block kernel, shorter
            // ones the warp kernel (src/ops/quantize.rs).
            cover.admit([di, usize::from(n > 1024)], [3, 2])?;
            let mut rng = SeedRng::new(seed);
            let dt = DType::FLOATS[di];
            let mut x = random_values(&mut rng, rows * n, 1.0, dt);
            if zero_row {
                x[..n].fill(0.0); // an all-zero row gets scale 1
            }
            let xt = upload(&dev, &[rows, n], &x, dt);
            let (q, s) = ops::quantize_rows(&xt).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (wq, ws) = reference::quantize_rows(&x, n);
            let (sh, qh) = (s.to_host().unwrap(), q.to_host().unwrap());
            prop_assert_eq!(sh.as_slice::<f32>().unwrap(), &ws[..]);
            prop_assert!(
                qh.as_slice::<i8>().unwrap() == &wq[..],
                "q differs ({} {}x{})",
                dt,
                rows,
                n
            );
            // Dequantise back and compare with the reference formula.
            let y =
                ops::dequantize_rows(&q, &s, dt).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let wy = reference::dequantize_rows(
                &wq,
                &ws.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
                n,
            );
            check_close(
                "dequantize_rows",
                &y.to_host().unwrap().to_f64(),
                &wy,
                &|_| min_step(dt),
                2.0 * dt.unit_roundoff(),
            )
            .map_err(TestCaseError::fail)
        },
    );
}

#[test]
fn layernorm_quantize_gpu_matches_reference() {
    let Some(dev) = test_device("layernorm_quantize_gpu_matches_reference") else {
        return;
    };
    let strategy = (
        value_seed(),
        0..3usize,
        any::<bool>(),
        (interesting_dim(100), interesting_dim(3000)),
    );
    check_covering(
        file!(),
        48,
        &strategy,
        |(seed, di, with_res, (rows, n)), cover| {
            // (dtype, kernel) are the variants, as in quantize_gpu_matches_reference.
            cover.admit([di, usize::from(n > 1024)], [3, 2])?;
            let mut rng = SeedRng::new(seed);
            let dt = DType::FLOATS[di];
            let x = random_values(&mut rng, rows * n, 2.0, dt);
            let r = random_values(&mut rng, rows * n, 1.0, dt);
            let g = random_values(&mut rng, n, 1.0, dt);
            let b = random_values(&mut rng, n, 0.2, dt);
            let (xt, rt, gt, bt) = (
                upload(&dev, &[rows, n], &x, dt),
                upload(&dev, &[rows, n], &r, dt),
                upload(&dev, &[n], &g, dt),
                upload(&dev, &[n], &b, dt),
            );
            let ln = LnParams {
                residual: with_res.then_some(&rt),
                gamma: &gt,
                beta: &bt,
                eps: 1e-5,
            };
            let (q, s) = ops::layernorm_quantize(&xt, &ln)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let y = layernorm::layernorm(&x, with_res.then_some(&r[..]), &g, &b, 1e-5, n, dt).0;
            let (_, ws) = reference::quantize_rows(&y, n);
            let gs: Vec<f64> = s.to_host().unwrap().to_f64();
            let wsf: Vec<f64> = ws.iter().map(|&v| f64::from(v)).collect();
            check_close("layernorm_quantize scale", &gs, &wsf, &|_| 0.0, 1e-4)
                .map_err(TestCaseError::fail)?;
            // Round to nearest against the row's own scale: within half a step of y / s plus
            // the f32 normalisation's error (as in the LayerNorm test) in steps. A ±1 band
            // around the rounded reference let floor or truncation pass.
            let gq: Vec<f64> = q.to_host().unwrap().to_f64();
            let exact: Vec<f64> = y
                .iter()
                .enumerate()
                .map(|(i, &v)| (v / gs[i / n]).clamp(-128.0, 127.0))
                .collect();
            let atol = |i: usize| {
                let c = i % n;
                0.5 + 256.0 * U_F32 * ((y[i] - b[c]).abs() + g[c].abs() + b[c].abs()) / gs[i / n]
                    + 2.0 * U_F32 * exact[i].abs()
            };
            check_close("layernorm_quantize q", &gq, &exact, &atol, 0.0)
                .map_err(TestCaseError::fail)
        },
    );
}
