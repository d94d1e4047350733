//! Dense GEMM (`kernels/gemm.cu`, `src/ops/gemm.rs`): GPU against the f64 reference over
//! CUTLASS-style shapes (tile multiples, just off them, M = 1), every tile config, epilogue,
//! input and output dtype; batched and Linear layouts; bad input.

mod common;
use common::*;
use medkern::ops::{self, Activation, Gemm, Tile};
use medkern::reference::gemm::{self as reference, GemmDims};
use medkern::{DType, Device, Error, Tensor};
use proptest::prelude::*;

#[test]
fn reference_small_product() {
    // [[1,2],[3,4]] · [[5,6],[7,8]]ᵀ = [[17,23],[39,53]], then +bias, ReLU, +residual.
    let d = GemmDims {
        batch: 1,
        m: 2,
        n: 2,
        k: 2,
        shared_w: true,
    };
    let y = reference::gemm(
        &[1., 2., 3., 4.],
        &[5., 6., 7., 8.],
        d,
        1.0,
        None,
        Activation::Identity,
        None,
    );
    assert_eq!(y, vec![17., 23., 39., 53.]);
    let y = reference::gemm(
        &[1., 2., 3., 4.],
        &[5., 6., 7., 8.],
        d,
        -1.0,
        Some(&[20., 0.]),
        Activation::Relu,
        Some(&[1., 1., 1., 1.]),
    );
    assert_eq!(y, vec![4., 1., 1., 1.]);
}

#[test]
fn tile_choice_follows_shape() {
    assert_eq!(Tile::choose(1, 768, 1, 132), Tile::S);
    assert_eq!(Tile::choose(32, 3072, 1, 132), Tile::S);
    assert_eq!(Tile::choose(16384, 768, 1, 132), Tile::L);
    assert_eq!(Tile::choose(2048, 768, 1, 132), Tile::M);
    assert_eq!(Tile::choose(512, 768, 1, 132), Tile::S);
}

#[test]
fn bad_inputs_are_errors() {
    let cpu = Device::Cpu;
    let h = |shape: &[usize]| {
        Tensor::new(&cpu, shape, vec![half::f16::ONE; shape.iter().product()]).unwrap()
    };
    let (x, w) = (h(&[4, 16]), h(&[8, 24]));
    let e = ops::gemm(&x, &w, &Gemm::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "gemm",
                arg: "x",
                ..
            }
        ) && e.to_string().contains("[..., 24]"),
        "{e}"
    );
    let e = ops::gemm(&h(&[4, 12]), &h(&[8, 12]), &Gemm::default()).unwrap_err();
    assert!(e.to_string().contains("multiple of 8"), "{e}");
    let w32 = Tensor::new(&cpu, &[8, 16], vec![1f32; 128]).unwrap();
    let e = ops::gemm(&x, &w32, &Gemm::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                op: "gemm",
                arg: "w",
                got: DType::F32,
                ..
            }
        ),
        "{e}"
    );
    let b = h(&[7]);
    let e = ops::gemm(
        &x,
        &h(&[8, 16]),
        &Gemm {
            bias: Some(&b),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::Shape { arg: "bias", .. }) && e.to_string().contains("[8]"),
        "{e}"
    );
    let e = ops::gemm(
        &x,
        &h(&[8, 16]),
        &Gemm {
            out_dtype: Some(DType::BF16),
            ..Default::default()
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
        ),
        "{e}"
    );
    let e = ops::gemm(&h(&[2, 4, 16]), &h(&[3, 8, 16]), &Gemm::default()).unwrap_err();
    assert!(
        matches!(e, Error::Shape { arg: "x", .. }) && e.to_string().contains("[3, M, 16]"),
        "{e}"
    );
    // The CPU backend computes the same thing as the reference (f16 rounding of 16·1·1 = 16).
    let y = ops::gemm(&x, &h(&[8, 16]), &Gemm::default())
        .unwrap()
        .to_host()
        .unwrap();
    assert_eq!(y.shape(), &[4, 8]);
    assert!(y.to_f64().iter().all(|&v| v == 16.0));
}

#[test]
fn gemm_gpu_matches_reference() {
    let Some(dev) = test_device("gemm_gpu_matches_reference") else {
        return;
    };
    // (dtype, f32 output, tile) are the kernel variants; k is any size for f32 (k32), a
    // multiple of 8 for f16/bf16 (8·k8); batch counts only when batched.
    let strategy = (
        value_seed(),
        (0..3usize, any::<bool>(), 0..4usize),
        0..8usize,
        any::<(bool, bool)>(),
        (any::<bool>(), 1..=3usize),
        (
            gemm_dim(8, 300),
            gemm_dim(8, 300),
            gemm_dim(1, 300),
            gemm_dim(1, 64),
        ),
    );
    check_covering(
        file!(),
        128,
        &strategy,
        |(seed, (di, out32, ti), ai, (with_bias, with_res), (batched, batch), (m, n, k32, k8)),
         cover| {
            cover.admit([di, usize::from(out32), ti], [3, 2, 4])?;
            let dt = DType::FLOATS[di];
            let k = if dt == DType::F32 { k32 } else { 8 * k8 };
            let case = GemmCase {
                dt,
                odt: if out32 { DType::F32 } else { dt },
                act: Activation::ALL[ai],
                with_bias,
                with_res,
                batched,
                batch: if batched { batch } else { 1 },
                m,
                n,
                k,
                tile: [Some(Tile::S), Some(Tile::M), Some(Tile::L), None][ti],
            };
            check_gemm_case(&dev, seed, &case).map_err(TestCaseError::fail)
        },
    );
}

#[test]
fn gemm_gpu_bert_shapes() {
    // The shapes the encoders run: M = batch·seq, hidden 384/768, FFN 1536/3072.
    let Some(dev) = test_device("gemm_gpu_bert_shapes") else {
        return;
    };
    let mut rng = SeedRng::new(5);
    for (m, n, k) in [
        (1, 768, 768),
        (128, 3072, 768),
        (384, 768, 3072),
        (1000, 384, 1536),
    ] {
        let dt = DType::F16;
        let x = random_values(&mut rng, m * k, 1.0, dt);
        let w = random_values(&mut rng, n * k, 0.05, dt);
        let b = random_values(&mut rng, n, 0.1, dt);
        let (xt, wt, bt) = (
            upload(&dev, &[m, k], &x, dt),
            upload(&dev, &[n, k], &w, dt),
            upload(&dev, &[n], &b, dt),
        );
        let mut out = poisoned(&dev, &[m, n], dt);
        ops::gemm_into(
            &xt,
            &wt,
            &Gemm {
                bias: Some(&bt),
                act: Activation::GeluErf,
                ..Default::default()
            },
            &mut out,
        )
        .unwrap();
        let d = GemmDims {
            batch: 1,
            m,
            n,
            k,
            shared_w: true,
        };
        let want = reference::gemm(&x, &w, d, 1.0, Some(&b), Activation::GeluErf, None);
        let got = out.to_host().unwrap().to_f64();
        check_close(
            &format!("bert gemm {m}x{n}x{k}"),
            &got,
            &want,
            &|_| 1e-3,
            2.0 * dt.unit_roundoff(),
        )
        .unwrap();
    }
}
