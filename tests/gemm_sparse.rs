//! 2:4 sparsity (`src/sparse.rs`, `kernels/gemm_sparse.cu`, `src/ops/gemm_sparse.rs`): pruning,
//! validation, the compressed format's exact round trip and metadata bits, and the sparse GEMM on
//! the GPU against the dense reference of the decompressed weight.

mod common;
use common::*;
use medkern::ops::{self, Activation, Gemm, SparseWeight};
use medkern::reference::gemm::{self as reference, GemmDims};
use medkern::sparse::{compress, prune_2_4, validate_2_4};
use medkern::{DType, Device, Error, HostTensor};
use proptest::prelude::*;

const U_F32: f64 = f32::EPSILON as f64 / 2.0;

#[test]
fn prune_keeps_two_largest_and_reports_energy() {
    let w = HostTensor::from_f64(
        &[1, 8],
        &[1.0, -3.0, 2.0, 0.5, 0.0, 0.0, 0.0, 4.0],
        DType::F32,
    )
    .unwrap();
    let (p, rep) = prune_2_4(&w).unwrap();
    assert_eq!(p.to_f64(), vec![0.0, -3.0, 2.0, 0.0, 0.0, 0.0, 0.0, 4.0]);
    let total = 1.0 + 9.0 + 4.0 + 0.25 + 16.0;
    assert!((rep.energy_kept - (9.0 + 4.0 + 16.0) / total).abs() < 1e-15);
    validate_2_4(&p).unwrap();
}

#[test]
fn validate_names_first_offending_group() {
    let w = HostTensor::from_f64(
        &[2, 8],
        &[
            1., 1., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 1., 1., 1., 0.,
        ],
        DType::F16,
    )
    .unwrap();
    let e = validate_2_4(&w).unwrap_err();
    assert!(
        e.to_string().contains("row 1, columns 4..7") && e.to_string().contains("3 non-zeros"),
        "{e}"
    );
    assert!(matches!(
        compress(&w),
        Err(Error::Invalid {
            op: "validate_2_4",
            ..
        })
    ));
    let f32w =
        HostTensor::from_f64(&[1, 8], &[1., 0., 0., 1., 0., 0., 0., 0.], DType::F32).unwrap();
    assert!(matches!(
        compress(&f32w),
        Err(Error::DType {
            op: "compress",
            got: DType::F32,
            ..
        })
    ));
    let odd = HostTensor::from_f64(&[1, 6], &[1.0; 6], DType::F16).unwrap();
    assert!(
        matches!(prune_2_4(&odd), Err(Error::Shape { .. })),
        "K not a multiple of 4"
    );
}

#[test]
fn metadata_bits_follow_the_mma_sp_layout() {
    // Row 0 keeps positions (1, 2) in its first group; row 8 keeps (0, 3) in its first group;
    // row 0 group 4 (K 16..19, the second 16-wide half) keeps (2, 3). Everything else defaults
    // to (0, 1) = nibble 0b0100.
    let (n, k) = (16, 64);
    let mut v = vec![0.0; n * k];
    v[1] = 1.0;
    v[2] = 2.0;
    v[8 * k] = 3.0;
    v[8 * k + 3] = 4.0;
    v[18] = 5.0;
    v[19] = 6.0;
    let s = compress(&HostTensor::from_f64(&[n, k], &v, DType::F16).unwrap()).unwrap();
    assert_eq!(s.meta.len(), 2 * 16, "two k32 steps of 16 lanes");
    let default = 0b0100u32;
    let nib = |a: u32, b: u32| a | (b << 2);
    let half = |first: u32| first | (default << 4) | (default << 8) | (default << 12);
    // Lane 0 (g 0, first K half): low half row 0, high half row 8.
    assert_eq!(s.meta[0], half(nib(1, 2)) | (half(nib(0, 3)) << 16));
    // Lane 1 (g 0, second K half): row 0 group 4 is its nibble 0.
    assert_eq!(s.meta[1], half(nib(2, 3)) | (half(default) << 16));
    // Values are the kept ones in K order.
    assert_eq!(&s.values.to_f64()[..2], &[1.0, 2.0]);
    assert_eq!(&s.values.to_f64()[32 * 8..32 * 8 + 2], &[3.0, 4.0]);
    assert_eq!(s.decompress().unwrap().to_f64(), v);

    // int8: one mma step covers 64 K and every lane of a quad holds one row's 32 K: lane 4g+h
    // describes row g + 8(h&1), K 32(h>>1)..+32 (PTX m16n8k64 metadata figures).
    let s8 = compress(&HostTensor::from_f64(&[n, k], &v, DType::I8).unwrap()).unwrap();
    assert_eq!(
        s8.meta.len(),
        2 * 32,
        "K padded to 128: two k64 steps of 32 lanes"
    );
    // Lane 0: row 0, K 0..31 (group 4 is nibble 4); lane 1: row 8, K 0..31; lane 2: row 0, K 32..63.
    assert_eq!(s8.meta[0], half(nib(1, 2)) | (half(nib(2, 3)) << 16));
    assert_eq!(s8.meta[1], half(nib(0, 3)) | (half(default) << 16));
    assert_eq!(s8.meta[2], half(default) | (half(default) << 16));
    assert_eq!(s8.decompress().unwrap().to_f64(), v);
}

#[test]
fn compress_round_trip_is_exact() {
    // k = 4·k4.
    let strategy = (value_seed(), 0..3usize, gemm_dim(16, 100), gemm_dim(1, 80));
    check(file!(), 64, &strategy, |(seed, di, n, k4)| {
        let mut rng = SeedRng::new(seed);
        let dt = [DType::F16, DType::BF16, DType::I8][di];
        let sigma = if dt == DType::I8 { 30.0 } else { 1.0 };
        let k = 4 * k4;
        let w =
            HostTensor::from_f64(&[n, k], &random_values(&mut rng, n * k, sigma, dt), dt).unwrap();
        let (p, rep) = prune_2_4(&w).unwrap();
        prop_assert!(rep.energy_kept > 0.5 && rep.energy_kept <= 1.0);
        let s = compress(&p).unwrap();
        prop_assert_eq!(s.decompress().unwrap(), p.clone());
        // Pruning a pruned weight changes nothing.
        let (p2, rep2) = prune_2_4(&p).unwrap();
        prop_assert_eq!(p2, p);
        prop_assert_eq!(rep2.energy_kept, 1.0);
        Ok(())
    });
}

#[test]
fn bad_inputs_are_errors() {
    let cpu = Device::Cpu;
    let w = HostTensor::from_f64(&[8, 32], &vec![1.0; 256], DType::F16).unwrap();
    let (sw, _) = SparseWeight::prune(&w, &cpu).unwrap();
    let x = HostTensor::from_f64(&[4, 24], &vec![1.0; 96], DType::F16)
        .unwrap()
        .to_device(&cpu)
        .unwrap();
    let e = ops::gemm_sparse(&x, &sw, &Gemm::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "gemm_sparse",
                arg: "x",
                ..
            }
        ) && e.to_string().contains("[..., 32]"),
        "{e}"
    );
    let x32 = HostTensor::from_f64(&[4, 32], &vec![1.0; 128], DType::F32)
        .unwrap()
        .to_device(&cpu)
        .unwrap();
    let e = ops::gemm_sparse(&x32, &sw, &Gemm::default()).unwrap_err();
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
    // The CPU backend: each row of W kept 2 of every 4 ones → 16 per output.
    let x = HostTensor::from_f64(&[4, 32], &vec![1.0; 128], DType::F16)
        .unwrap()
        .to_device(&cpu)
        .unwrap();
    let y = ops::gemm_sparse(&x, &sw, &Gemm::default())
        .unwrap()
        .to_host()
        .unwrap();
    assert!(y.to_f64().iter().all(|&v| v == 16.0));
}

/// (big, M, N): big cases reach the large tile. On a GPU that needs >= one block of 128x128 per
/// SM (M, N up to 1700 give up to 196 blocks); the emulated one-SM device (`few_sm`) takes it at
/// any size, so there, as in the small cases, M and N stay up to 200.
fn big_m_n(align: usize) -> impl Strategy<Value = (bool, usize, usize)> {
    any::<bool>().prop_flat_map(move |big| {
        let max = if big && !common::emulated() {
            1700
        } else {
            200
        };
        (Just(big), gemm_dim(align, max), gemm_dim(align, max))
    })
}

#[test]
fn gemm_sparse_gpu_matches_reference() {
    let Some(dev) = test_device("gemm_sparse_gpu_matches_reference") else {
        return;
    };
    // (dtype, f32 output, big) are the kernel variants; k = 8·k8.
    let strategy = (
        value_seed(),
        (0..2usize, any::<bool>()),
        0..8usize,
        any::<(bool, bool)>(),
        big_m_n(8),
        gemm_dim(1, 48),
    );
    check_covering(
        file!(),
        96,
        &strategy,
        |(seed, (di, out32), ai, (with_bias, with_res), (big, m, n), k8), cover| {
            cover.admit([di, usize::from(out32), usize::from(big)], [2, 2, 2])?;
            // Big cases reach the large tile: on the emulated GPU through a one-SM device.
            let dev = if big {
                common::few_sm(&dev)
            } else {
                dev.clone()
            };
            let mut rng = SeedRng::new(seed);
            let dt = [DType::F16, DType::BF16][di];
            let odt = if out32 { DType::F32 } else { dt };
            let act = Activation::ALL[ai];
            let k = 8 * k8;
            let x = random_values(&mut rng, m * k, 1.0, dt);
            let wd = HostTensor::from_f64(&[n, k], &random_values(&mut rng, n * k, 0.5, dt), dt)
                .unwrap();
            let (sw, _) =
                SparseWeight::prune(&wd, &dev).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let w = prune_2_4(&wd).unwrap().0.to_f64();
            let b = random_values(&mut rng, n, 1.0, dt);
            let r = random_values(&mut rng, m * n, 1.0, odt);
            let (xt, bt, rt) = (
                upload(&dev, &[m, k], &x, dt),
                upload(&dev, &[n], &b, dt),
                upload(&dev, &[m, n], &r, odt),
            );
            let spec = Gemm {
                bias: with_bias.then_some(&bt),
                act,
                residual: with_res.then_some(&rt),
                out_dtype: Some(odt),
                ..Default::default()
            };
            let mut out = poisoned(&dev, &[m, n], odt);
            ops::gemm_sparse_into(&xt, &sw, &spec, &mut out)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got = out.to_host().unwrap().to_f64();
            let d = GemmDims {
                batch: 1,
                m,
                n,
                k,
                shared_w: true,
            };
            let want = reference::gemm(
                &x,
                &w,
                d,
                1.0,
                with_bias.then_some(&b[..]),
                act,
                with_res.then_some(&r[..]),
            );
            let ax: Vec<f64> = x.iter().map(|v| v.abs()).collect();
            let aw: Vec<f64> = w.iter().map(|v| v.abs()).collect();
            let mag = reference::gemm(&ax, &aw, d, 1.0, None, Activation::Identity, None);
            let atol = |i: usize| {
                let extra = if with_bias { b[i % n].abs() } else { 0.0 }
                    + if with_res { r[i].abs() } else { 0.0 };
                min_step(odt) + 8.0 * (k as f64).sqrt() * U_F32 * (mag[i] + extra + want[i].abs())
            };
            check_close(
                &format!("gemm_sparse {dt}->{odt} {act:?} m{m} n{n} k{k}"),
                &got,
                &want,
                &atol,
                2.0 * odt.unit_roundoff(),
            )
            .map_err(TestCaseError::fail)
        },
    );
}

/// A random 2:4-sparse int8 weight `[n, k]` (pruned from random int8 values).
fn sparse_i8(rng: &mut SeedRng, n: usize, k: usize) -> HostTensor {
    let v: Vec<f64> = random_i8(rng, n * k).into_iter().map(f64::from).collect();
    prune_2_4(&HostTensor::from_f64(&[n, k], &v, DType::I8).unwrap())
        .unwrap()
        .0
}

#[test]
fn sparse_i8_bad_inputs_are_errors() {
    use medkern::ops::GemmI8;
    let cpu = Device::Cpu;
    let mut rng = SeedRng::new(1);
    let sw = SparseWeight::new(&compress(&sparse_i8(&mut rng, 8, 32)).unwrap(), &cpu).unwrap();
    let x = HostTensor::new(&[4, 32], vec![1i8; 128])
        .unwrap()
        .to_device(&cpu)
        .unwrap();
    let sx = HostTensor::new(&[1], vec![1f32])
        .unwrap()
        .to_device(&cpu)
        .unwrap();
    let swg = HostTensor::new(&[8, 1], vec![1f32; 8])
        .unwrap()
        .to_device(&cpu)
        .unwrap();
    let e = ops::gemm_sparse_i8(
        &x,
        &sw,
        &GemmI8 {
            group_size: 64,
            ..GemmI8::new(&sx, &swg, DType::F32)
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                op: "gemm_sparse_i8",
                arg: "group_size",
                ..
            }
        ),
        "{e}"
    );
    let xf = HostTensor::from_f64(&[4, 32], &[1.0; 128], DType::F16)
        .unwrap()
        .to_device(&cpu)
        .unwrap();
    assert!(matches!(
        ops::gemm_sparse_i8_raw(&xf, &sw),
        Err(Error::DType { arg: "x", .. })
    ));
    // CPU backend: the raw product equals the integer reference of the decompressed weight.
    let y = ops::gemm_sparse_i8_raw(&x, &sw).unwrap().to_host().unwrap();
    let dense = sw.to_host().unwrap().decompress().unwrap();
    let want: Vec<i32> = (0..4 * 8)
        .map(|i| {
            dense.as_slice::<i8>().unwrap()[(i % 8) * 32..(i % 8 + 1) * 32]
                .iter()
                .map(|&v| i32::from(v))
                .sum()
        })
        .collect();
    assert_eq!(y.as_slice::<i32>().unwrap(), &want[..]);
}

#[test]
fn gemm_sparse_i8_gpu_is_exact_and_dequantises() {
    use medkern::ops::GemmI8;
    use medkern::reference::gemm_int8::{self as ref8, I8Epilogue};
    let Some(dev) = test_device("gemm_sparse_i8_gpu_is_exact_and_dequantises") else {
        return;
    };
    // (output, big) are the kernel variants; k = 16·k16.
    let strategy = (
        value_seed(),
        0..5usize,
        any::<(bool, bool)>(),
        big_m_n(16),
        gemm_dim(1, 40),
    );
    check_covering(
        file!(),
        96,
        &strategy,
        |(seed, oi, (per_token, with_bias), (big, m, n), k16), cover| {
            cover.admit([oi, usize::from(big)], [5, 2])?;
            let dev = if big {
                common::few_sm(&dev)
            } else {
                dev.clone()
            };
            let mut rng = SeedRng::new(seed);
            let k = 16 * k16;
            let x: Vec<i8> = random_i8(&mut rng, m * k);
            let wd = sparse_i8(&mut rng, n, k);
            let sw = SparseWeight::new(&compress(&wd).unwrap(), &dev)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let xt = HostTensor::new(&[m, k], x.clone())
                .unwrap()
                .to_device(&dev)
                .unwrap();
            let d = GemmDims {
                batch: 1,
                m,
                n,
                k,
                shared_w: true,
            };
            let wv: Vec<i8> = wd.as_slice::<i8>().unwrap().to_vec();
            if oi == 0 {
                let mut out = poisoned(&dev, &[m, n], DType::I32);
                ops::gemm_sparse_i8_into(&xt, &sw, None, &mut out)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let got: Vec<i64> = out
                    .to_host()
                    .unwrap()
                    .as_slice::<i32>()
                    .unwrap()
                    .iter()
                    .map(|&v| i64::from(v))
                    .collect();
                let want = ref8::gemm_i8_acc(&x, &wv, d);
                prop_assert!(
                    got == want,
                    "sparse int32 accumulators differ: m{} n{} k{}; first at {:?}",
                    m,
                    n,
                    k,
                    got.iter().zip(&want).position(|(a, b)| a != b)
                );
                return Ok(());
            }
            let odt = [DType::I32, DType::F16, DType::BF16, DType::F32, DType::I8][oi];
            let sx: Vec<f64> = (0..if per_token { m } else { 1 })
                .map(|_| f64::from((0.01 + rng.uniform() * 0.05) as f32))
                .collect();
            let swv: Vec<f64> = (0..n)
                .map(|_| f64::from((0.001 + rng.uniform() * 0.01) as f32))
                .collect();
            let b = random_values(&mut rng, n, 1.0, DType::F32);
            let (sxt, swt, bt) = (
                upload(&dev, &[sx.len()], &sx, DType::F32),
                upload(&dev, &[n], &swv, DType::F32),
                upload(&dev, &[n], &b, DType::F32),
            );
            let out_scale = 0.05f32;
            let spec = GemmI8 {
                bias: with_bias.then_some(&bt),
                out_scale,
                act: Activation::GeluErf,
                ..GemmI8::new(&sxt, &swt, odt)
            };
            let mut out = poisoned(&dev, &[m, n], odt);
            ops::gemm_sparse_i8_into(&xt, &sw, Some(&spec), &mut out)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let epi = I8Epilogue {
                sx: &sx,
                sw: &swv,
                group_size: 0,
                alpha: 1.0,
                bias: with_bias.then_some(&b[..]),
                act: Activation::GeluErf,
                residual: None,
                out_scale: (odt == DType::I8).then_some(f64::from(out_scale)),
            };
            let want = ref8::gemm_i8(&x, &wv, d, &epi);
            // The activation's input: GELU's 1 + erf(x/√2) cancels for x < 0, so f32
            // arithmetic (kernel erff, on a GPU as here) errs by ~2U·|x| there, whatever
            // the size of the result.
            let pre = ref8::gemm_i8(
                &x,
                &wv,
                d,
                &I8Epilogue {
                    act: Activation::Identity,
                    out_scale: None,
                    ..epi
                },
            );
            let got = out.to_host().unwrap().to_f64();
            let what = format!("gemm_sparse_i8 ->{odt} m{m} n{n} k{k}");
            if odt == DType::I8 {
                // Round to nearest: within half a step (plus the f32 epilogue's error) of
                // the exact v / out_scale, clamped; ±1 around the rounded value let floor pass.
                let os = f64::from(out_scale);
                let v = ref8::gemm_i8(
                    &x,
                    &wv,
                    d,
                    &I8Epilogue {
                        out_scale: None,
                        ..epi
                    },
                );
                let exact: Vec<f64> = v.iter().map(|&v| (v / os).clamp(-128.0, 127.0)).collect();
                let atol = |i: usize| {
                    0.5 + (16.0 * U_F32 * (v[i].abs() + b[i % n].abs() + 1e-3)
                        + 8.0 * U_F32 * pre[i].abs())
                        / os
                        + 2.0 * U_F32 * exact[i].abs()
                };
                check_close(&what, &got, &exact, &atol, 0.0).map_err(TestCaseError::fail)
            } else {
                let atol = |i: usize| {
                    min_step(odt)
                        + 16.0 * U_F32 * (want[i].abs() + b[i % n].abs() + 1e-3)
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
fn inconsistent_compressed_weights_are_refused() {
    // Sparse24's fields are public: a weight whose sizes disagree with N and K would make the
    // kernel read out of bounds, so SparseWeight::new refuses it before any upload.
    let cpu = Device::Cpu;
    let w = HostTensor::from_f64(&[20, 72], &vec![1.0; 1440], DType::F16).unwrap();
    let good = compress(&prune_2_4(&w).unwrap().0).unwrap();
    SparseWeight::new(&good, &cpu).unwrap();
    let refused = |s: &medkern::sparse::Sparse24, what: &str| {
        let e = SparseWeight::new(s, &cpu).unwrap_err();
        assert!(e.to_string().contains("SparseWeight::new"), "{what}: {e}");
    };
    let mut s = good.clone();
    s.n = 40;
    refused(&s, "N beyond the values");
    let mut s = good.clone();
    s.k = 200;
    refused(&s, "K beyond the values");
    let mut s = good.clone();
    s.meta.pop();
    refused(&s, "a metadata word short");
    let mut s = good.clone();
    s.meta[3] = 0x1111_1111; // positions 1, 0: not ascending
    refused(&s, "unordered metadata");
    let mut s = good.clone();
    s.n = 0;
    refused(&s, "N = 0");
    let mut s = good;
    s.values = HostTensor::from_f64(&[32, 64], &vec![0.0; 32 * 64], DType::F32).unwrap();
    refused(&s, "f32 values");
}
