//! W4A16 GEMM (`kernels/gemm_w4.cu`, `src/ops/gemm_w4.rs`): the host packing against the
//! mma.m16n8k16 B-fragment definition, the CPU backend against the reference, the GPU kernels
//! against the f64 reference (int4 values times f16 scales, exact), bad inputs.

mod common;
use common::*;
use medkern::ops::{self, Activation, Gemm, Tile, W4Weight, pack_w4, unpack_w4};
use medkern::quant::{Clip, QuantizedWeight, quantize_weight_int4};
use medkern::reference::gemm_w4 as reference;
use medkern::{DType, Device, Error, Tensor};
use proptest::prelude::*;

const U_F32: f64 = f32::EPSILON as f64 / 2.0;

/// A quantised `[n, k]` weight from normal values with planted outliers, with a few values
/// forced to the ends of the int4 range (-8 never comes out of absmax rounding).
fn int4_weight(rng: &mut SeedRng, n: usize, k: usize, group: usize) -> QuantizedWeight {
    let w = random_values(rng, n * k, 0.05, DType::F32);
    let clip = if rng.below(2) == 0 {
        Clip::AbsMax
    } else {
        Clip::Percentile(90.0 + 10.0 * rng.uniform())
    };
    let mut q = quantize_weight_int4(&host(&[n, k], &w, DType::F32), group, clip).unwrap();
    for _ in 0..(n * k / 97).max(1) {
        let i = rng.below((n * k) as u64) as usize;
        q.q[i] = if rng.below(2) == 0 { -8 } else { 7 };
    }
    q
}

fn scales_f64(q: &QuantizedWeight) -> Vec<f64> {
    q.scales.iter().map(|&s| f64::from(s)).collect()
}

#[test]
fn packing_matches_the_mma_b_fragment() {
    let (n, k) = (96, 192);
    let mut rng = SeedRng::new(5);
    let q: Vec<i8> = (0..n * k).map(|_| rng.below(16) as i8 - 8).collect();
    let p = pack_w4(&q, n, k).unwrap();
    assert_eq!(p.len(), n * k / 2);
    // Walk the packed bytes as the kernel does: per (k-tile, 32-column block, k32 half j,
    // lane) one uint4; word t = n8 tile t; PTX m16n8k16: b0 = B[k = (lane%4)·2 + {0,1}]
    // [n = lane/4], b1 the same at k + 8; nibble (k16 step % 2)·2 + register, +4 for the
    // high half.
    let mut seen = vec![false; n * k];
    for kt in 0..k / 64 {
        for nb in 0..n / 32 {
            for j in 0..2 {
                for lane in 0..32 {
                    let base = (((kt * (n / 32) + nb) * 2 + j) * 32 + lane) * 16;
                    for t in 0..4 {
                        let word = u32::from_le_bytes(
                            p[base + 4 * t..base + 4 * t + 4].try_into().unwrap(),
                        );
                        for step in [2 * j, 2 * j + 1] {
                            for reg in 0..2 {
                                for half in 0..2 {
                                    let nib = (step % 2) * 2 + reg + 4 * half;
                                    let v = ((word >> (4 * nib)) & 0xF) as i8 - 8;
                                    let row = nb * 32 + t * 8 + lane / 4;
                                    let col = kt * 64 + step * 16 + (lane % 4) * 2 + reg * 8 + half;
                                    assert_eq!(v, q[row * k + col], "W[{row}][{col}]");
                                    assert!(!seen[row * k + col], "W[{row}][{col}] packed twice");
                                    seen[row * k + col] = true;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(seen.iter().all(|&s| s));
    assert_eq!(unpack_w4(&p, n, k).unwrap(), q);
}

#[test]
fn packing_puts_one_value_where_worked_out_by_hand() {
    // N = 64, K = 128; W[37][75] = 5. Row 37: block 1, n8 tile 0, lane/4 = 5. Column 75:
    // k-tile 1, k16 step 0 (j = 0), offset 11 = (lane%4 = 1)·2 + 8 (b1) + 1 (high half):
    // lane 21, nibble 1 + 4 = 5. Byte ((1·2 + 1)·2 + 0)·32 + 21 = 213 uint4s in, word 0,
    // byte 2, high nibble.
    let (n, k) = (64, 128);
    let mut q = vec![0i8; n * k];
    q[37 * k + 75] = 5;
    let p = pack_w4(&q, n, k).unwrap();
    for (i, &b) in p.iter().enumerate() {
        let want = if i == 213 * 16 + 2 { 0xD8 } else { 0x88 };
        assert_eq!(b, want, "byte {i}");
    }
}

#[test]
fn cpu_backend_matches_reference() {
    let mut rng = SeedRng::new(11);
    for (dt, m, n, k, group) in [
        (DType::F32, 1, 32, 64, 64),
        (DType::F16, 7, 64, 256, 128),
        (DType::BF16, 33, 96, 128, 64),
    ] {
        let q = int4_weight(&mut rng, n, k, group);
        let w = W4Weight::new(&q, &Device::Cpu).unwrap();
        assert_eq!((w.n(), w.k(), w.group_size()), (n, k, group));
        assert_eq!(w.bytes(), n * k / 2 + 2 * n * (k / group));
        let x = random_values(&mut rng, m * k, 1.0, dt);
        let b = random_values(&mut rng, n, 1.0, dt);
        let r = random_values(&mut rng, m * n, 1.0, dt);
        let (bt, rt) = (
            upload(&Device::Cpu, &[n], &b, dt),
            upload(&Device::Cpu, &[m, n], &r, dt),
        );
        let g = Gemm {
            alpha: 0.75,
            bias: Some(&bt),
            act: Activation::GeluErf,
            residual: Some(&rt),
            ..Gemm::default()
        };
        let y = ops::gemm_w4(&upload(&Device::Cpu, &[m, k], &x, dt), &w, &g).unwrap();
        let want = reference::gemm_w4(
            &x,
            &q.q,
            &scales_f64(&q),
            (m, n, k, group),
            0.75,
            Some(&b),
            Activation::GeluErf,
            Some(&r),
        );
        let want = host(&[m, n], &want, dt).to_f64();
        assert_eq!(y.to_host().unwrap().to_f64(), want, "{dt} m{m} n{n} k{k}");
    }
}

#[test]
fn reference_is_exact_int4_times_scale() {
    // x = 1 everywhere, q = -8 in group 0 and 7 in group 1, scales 0.5 and 2: y = 64·(-4 + 14).
    let q: Vec<i8> = (0..128).map(|i| if i < 64 { -8 } else { 7 }).collect();
    let y = reference::gemm_w4(
        &[1.0; 128],
        &q,
        &[0.5, 2.0],
        (1, 1, 128, 64),
        1.0,
        None,
        Activation::Identity,
        None,
    );
    assert_eq!(y, vec![640.0]);
}

fn weight_err(q: &QuantizedWeight) -> Error {
    W4Weight::new(q, &Device::Cpu).unwrap_err()
}

#[test]
fn bad_inputs_are_errors() {
    let mut rng = SeedRng::new(3);
    let good = int4_weight(&mut rng, 32, 128, 64);
    let e = weight_err(&QuantizedWeight {
        bits: 8,
        ..good.clone()
    });
    assert!(
        matches!(
            e,
            Error::Invalid {
                op: "W4Weight::new",
                arg: "bits",
                ..
            }
        ) && e.to_string().contains("expected 4"),
        "{e}"
    );
    let e = weight_err(&QuantizedWeight {
        group_size: 32,
        scales: vec![1.0; 32 * 4],
        ..good.clone()
    });
    assert!(
        matches!(
            e,
            Error::Invalid {
                arg: "group_size",
                ..
            }
        ) && e.to_string().contains("64 or 128"),
        "{e}"
    );
    // K = 96 quantises (the last group is short) but is not a multiple of the group.
    let short = quantize_weight_int4(
        &host(
            &[32, 96],
            &random_values(&mut rng, 32 * 96, 1.0, DType::F32),
            DType::F32,
        ),
        64,
        Clip::AbsMax,
    )
    .unwrap();
    let e = weight_err(&short);
    assert!(
        matches!(e, Error::Shape { arg: "w", .. })
            && e.to_string().contains("multiple of the group size 64")
            && e.to_string().contains("96"),
        "{e}"
    );
    let narrow = int4_weight(&mut rng, 48, 64, 64);
    let e = weight_err(&narrow);
    assert!(
        e.to_string().contains("N a positive multiple of 32") && e.to_string().contains("48"),
        "{e}"
    );
    let mut wide = good.clone();
    wide.q[77] = 8;
    let e = weight_err(&wide);
    assert!(
        matches!(e, Error::Invalid { arg: "q", .. })
            && e.to_string().contains("value 8 at 77; expected -8..=7"),
        "{e}"
    );
    let mut inexact = good.clone();
    inexact.scales[3] = 0.1;
    let e = weight_err(&inexact);
    assert!(
        matches!(e, Error::Invalid { arg: "scales", .. }) && e.to_string().contains("f16"),
        "{e}"
    );
    let e = weight_err(&QuantizedWeight {
        q: vec![0; 10],
        ..good.clone()
    });
    assert!(
        matches!(
            e,
            Error::Shape {
                arg: "q/scales",
                ..
            }
        ),
        "{e}"
    );
    let huge = QuantizedWeight {
        n: 32,
        k: 1 << 17,
        ..good.clone()
    };
    assert!(weight_err(&huge).to_string().contains("at most 65536"));

    let w = W4Weight::new(&good, &Device::Cpu).unwrap();
    let x = Tensor::new(&Device::Cpu, &[2, 64], vec![1f32; 128]).unwrap();
    let e = ops::gemm_w4(&x, &w, &Gemm::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "gemm_w4",
                arg: "x",
                ..
            }
        ) && e.to_string().contains("[..., 128]"),
        "{e}"
    );
    let xi = Tensor::new(&Device::Cpu, &[2, 128], vec![1i8; 256]).unwrap();
    let e = ops::gemm_w4(&xi, &w, &Gemm::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                op: "gemm_w4",
                arg: "x",
                got: DType::I8,
                ..
            }
        ),
        "{e}"
    );
    let xh = upload(&Device::Cpu, &[2, 128], &[1.0; 256], DType::F16);
    let e = ops::gemm_w4(
        &xh,
        &w,
        &Gemm {
            out_dtype: Some(DType::BF16),
            ..Gemm::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                arg: "out_dtype",
                ..
            }
        ) && e.to_string().contains("f16 or f32"),
        "{e}"
    );
    assert!(
        pack_w4(&[0; 64 * 31], 31, 64)
            .unwrap_err()
            .to_string()
            .contains("multiple of 32")
    );
    assert!(
        pack_w4(&[9; 32 * 64], 32, 64)
            .unwrap_err()
            .to_string()
            .contains("expected -8..=7")
    );
    assert!(unpack_w4(&[0; 10], 32, 64).is_err());
}

#[test]
fn gpu_refuses_f32_and_the_large_tile() {
    let Some(dev) = test_device("gpu_refuses_f32_and_the_large_tile") else {
        return;
    };
    if matches!(dev, Device::Cpu) {
        return; // MEDKERN_TEST_BACKEND=cpu: the CPU backend takes both.
    }
    let mut rng = SeedRng::new(9);
    let w = W4Weight::new(&int4_weight(&mut rng, 32, 64, 64), &dev).unwrap();
    let x32 = upload(&dev, &[1, 64], &[1.0; 64], DType::F32);
    let e = ops::gemm_w4(&x32, &w, &Gemm::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                op: "gemm_w4",
                arg: "x",
                got: DType::F32,
                ..
            }
        ),
        "{e}"
    );
    let x = upload(&dev, &[1, 64], &[1.0; 64], DType::F16);
    let e = ops::gemm_w4(
        &x,
        &w,
        &Gemm {
            tile: Some(Tile::L),
            ..Gemm::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::Invalid { arg: "tile", .. }) && e.to_string().contains("S (16 rows)"),
        "{e}"
    );
    // A CPU activation with a GPU weight.
    let xc = upload(&Device::Cpu, &[1, 64], &[1.0; 64], DType::F16);
    let e = ops::gemm_w4(&xc, &w, &Gemm::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Device {
                op: "gemm_w4",
                arg: "w",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn gemm_w4_gpu_matches_reference() {
    let Some(dev) = test_device("gemm_w4_gpu_matches_reference") else {
        return;
    };
    // (dtype, f32 output, tile) are the kernel variants; N = 32·n32, K = group·kg.
    let strategy = (
        value_seed(),
        (0..2usize, any::<bool>(), 0..2usize),
        0..8usize,
        any::<(bool, bool, bool)>(),
        (gemm_dim(1, 300), 1..=12usize, 1..=6usize),
    );
    check_covering(
        file!(),
        64,
        &strategy,
        |(seed, (di, out32, ti), ai, (with_bias, with_res, g128), (m, n32, kg)), cover| {
            cover.admit([di, usize::from(out32), ti], [2, 2, 2])?;
            let mut rng = SeedRng::new(seed);
            let dt = [DType::F16, DType::BF16][di];
            let odt = if out32 { DType::F32 } else { dt };
            let act = Activation::ALL[ai];
            let tile = [Tile::S, Tile::M][ti];
            let group = if g128 { 128 } else { 64 };
            let (n, k) = (32 * n32, group * kg);
            let q = int4_weight(&mut rng, n, k, group);
            let x = random_values(&mut rng, m * k, 1.0, dt);
            let b = random_values(&mut rng, n, 1.0, dt);
            let r = random_values(&mut rng, m * n, 1.0, odt);
            let alpha = f64::from((0.25 + rng.uniform()) as f32);
            let (xt, bt, rt) = (
                upload(&dev, &[m, k], &x, dt),
                upload(&dev, &[n], &b, dt),
                upload(&dev, &[m, n], &r, odt),
            );
            let w = W4Weight::new(&q, &dev).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let spec = Gemm {
                alpha: alpha as f32,
                bias: with_bias.then_some(&bt),
                act,
                residual: with_res.then_some(&rt),
                out_dtype: Some(odt),
                tile: Some(tile),
            };
            let mut out = poisoned(&dev, &[m, n], odt);
            ops::gemm_w4_into(&xt, &w, &spec, &mut out)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got = out.to_host().unwrap().to_f64();
            let s = scales_f64(&q);
            let want = reference::gemm_w4(
                &x,
                &q.q,
                &s,
                (m, n, k, group),
                alpha,
                with_bias.then_some(&b[..]),
                act,
                with_res.then_some(&r[..]),
            );
            // f32 accumulation of K products: error grows like sqrt(K) ulps of Σ|x·w|.
            let ax: Vec<f64> = x.iter().map(|v| v.abs()).collect();
            let aq: Vec<i8> = q.q.iter().map(|v| v.saturating_abs()).collect();
            let mag = reference::gemm_w4(
                &ax,
                &aq,
                &s,
                (m, n, k, group),
                alpha,
                None,
                Activation::Identity,
                None,
            );
            let atol = |i: usize| {
                let extra = if with_bias { b[i % n].abs() } else { 0.0 }
                    + if with_res { r[i].abs() } else { 0.0 };
                min_step(odt) + 8.0 * (k as f64).sqrt() * U_F32 * (mag[i] + extra + want[i].abs())
            };
            check_close(
                &format!("gemm_w4 {dt}->{odt} {act:?} tile {tile:?} m{m} n{n} k{k} group {group} bias={with_bias} res={with_res}"),
                &got,
                &want,
                &atol,
                2.0 * odt.unit_roundoff(),
            )
            .map_err(TestCaseError::fail)
        },
    );
}
