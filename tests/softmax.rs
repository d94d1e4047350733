//! Row softmax (`kernels/softmax.cu`, `src/ops/softmax.rs`): GPU against the f64 reference
//! with random shapes, scales, broadcast padding masks and fully masked rows.

mod common;
use approx::{assert_abs_diff_eq, assert_relative_eq};
use common::*;
use medkern::ops;
use medkern::reference::softmax as reference;
use medkern::{DType, Device, Error, Tensor};
use proptest::prelude::*;

#[test]
fn reference_properties() {
    // Rows sum to one, shifting a row changes nothing, a -inf entry gets exactly zero,
    // and a fully masked row is zeros (not NaN).
    let x = [1.0, 2.0, 3.0, 1001.0, 1002.0, 1003.0];
    let y = reference::softmax(&x, 3, None, 1.0);
    for c in 0..3 {
        assert_abs_diff_eq!(y[c], y[3 + c], epsilon = 1e-15);
    }
    assert_abs_diff_eq!(y[0] + y[1] + y[2], 1.0, epsilon = 1e-15);
    // e^-2 / (1 + e^-1 + e^-2), closed form.
    assert_relative_eq!(y[0], 0.090_030_573_170_380_46, max_relative = 1e-14);
    let mask = [
        0.0,
        f64::NEG_INFINITY,
        0.0,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    ];
    let y = reference::softmax(&x, 3, Some(&mask), 1.0);
    assert_eq!(y[1], 0.0);
    assert_eq!(&y[3..], &[0.0, 0.0, 0.0]);
}

#[test]
fn bad_inputs_are_errors() {
    let cpu = Device::Cpu;
    let x = Tensor::new(&cpu, &[6, 4], vec![1.0f32; 24]).unwrap();
    let m16 = Tensor::new(&cpu, &[1, 4], vec![half::f16::ZERO; 4]).unwrap();
    let e = ops::softmax(&x, Some(&m16), 1.0).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                op: "softmax",
                arg: "mask",
                got: DType::F16,
                ..
            }
        ),
        "{e}"
    );
    let m4 = Tensor::new(&cpu, &[4, 4], vec![0.0f32; 16]).unwrap();
    let e = ops::softmax(&x, Some(&m4), 1.0).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "softmax",
                arg: "mask",
                ..
            }
        ) && e.to_string().contains("dividing the 6 rows"),
        "{e}"
    );
    let e = ops::softmax(&x, None, f32::INFINITY).unwrap_err();
    assert!(matches!(e, Error::Invalid { arg: "scale", .. }), "{e}");
    let empty = Tensor::new(&cpu, &[3, 0], Vec::<f32>::new()).unwrap();
    assert!(matches!(
        ops::softmax(&empty, None, 1.0),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn softmax_gpu_matches_reference() {
    let Some(dev) = test_device("softmax_gpu_matches_reference") else {
        return;
    };
    // Rows come in `groups` of `per` (one mask row per group).
    let strategy = (
        value_seed(),
        0..3usize,
        0..3usize,
        (1..=4usize, interesting_dim(64), interesting_dim(4096)),
    );
    check_covering(
        file!(),
        96,
        &strategy,
        |(seed, di, mask_kind, (groups, per, n)), cover| {
            // (dtype, kernel) are the variants: rows longer than 1024 take the block kernel,
            // shorter ones the warp kernel (src/ops/softmax.rs).
            cover.admit([di, usize::from(n > 1024)], [3, 2])?;
            let mut rng = SeedRng::new(seed);
            let dt = DType::FLOATS[di];
            let rows = groups * per;
            let scale = 0.05 + rng.uniform();
            let x = random_values(&mut rng, rows * n, 3.0, dt);
            // mask_kind 0: none; 1: one padding mask per group of rows, some rows fully masked;
            // 2: a finite additive bias per group (ALiBi-like).
            let mask: Option<Vec<f64>> = match mask_kind {
                0 => None,
                1 => Some(
                    (0..groups)
                        .flat_map(|g| {
                            let valid = if g == 0 && rng.below(2) == 0 {
                                0
                            } else {
                                1 + rng.below(n as u64) as usize
                            };
                            (0..n).map(move |c| if c < valid { 0.0 } else { f64::NEG_INFINITY })
                        })
                        .collect(),
                ),
                _ => Some(random_values(&mut rng, groups * n, 2.0, DType::F32)),
            };
            let xt = upload(&dev, &[rows, n], &x, dt);
            let mt = mask
                .as_ref()
                .map(|m| upload(&dev, &[groups, n], m, DType::F32));
            let mut out = poisoned(&dev, &[rows, n], dt);
            ops::softmax_into(&xt, mt.as_ref(), scale as f32, &mut out)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got = out.to_host().unwrap().to_f64();
            let want = reference::softmax(&x, n, mask.as_deref(), f64::from(scale as f32));
            // Inputs reach |x·scale| ≈ 120: exp's argument carries that many f32 ulps.
            let rtol = 2.0 * dt.unit_roundoff() + 2e-5;
            check_close(
                &format!("softmax {dt} [{rows},{n}] mask {mask_kind}"),
                &got,
                &want,
                &|_| min_step(dt) + 1e-7,
                rtol,
            )
            .map_err(TestCaseError::fail)?;
            // Deterministic: a second launch is bit-identical.
            let mut again = poisoned(&dev, &[rows, n], dt);
            ops::softmax_into(&xt, mt.as_ref(), scale as f32, &mut again)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again.to_host().unwrap(), out.to_host().unwrap());
            Ok(())
        },
    );
}

/// Issue 15: a row of NaN scores came out as zeros (taken for fully masked) from the reference,
/// the CPU backend and both kernels, since the running max drops NaN. A row with any NaN score
/// is now all NaN; a fully masked row stays zeros; an entry the mask drops takes no part
/// whatever x holds there (as in the fused attention). Every float dtype, with and without a
/// mask, at lengths for the warp kernel (vector and scalar tails) and the block kernel.
#[test]
fn nan_rows_are_nan_and_fully_masked_rows_are_zero() {
    let mut devs = vec![Device::Cpu];
    devs.extend(test_device(
        "nan_rows_are_nan_and_fully_masked_rows_are_zero",
    ));
    let (nan, ninf) = (f64::NAN, f64::NEG_INFINITY);
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Want {
        Finite,
        Nan,
        Zero,
    }
    use Want::*;
    for n in [8, 37, 1024, 1031, 2048] {
        let mut rng = SeedRng::new(n as u64);
        // (x row, mask row, expected without the mask, expected with it); x starts random and
        // the mask keeps every entry.
        let mut rows: Vec<(Vec<f64>, Vec<f64>, [Want; 2])> = Vec::new();
        let mut add = |f: &dyn Fn(&mut Vec<f64>, &mut Vec<f64>), want: [Want; 2]| {
            let mut x = random_values(&mut rng, n, 2.0, DType::F16);
            let mut m = vec![0.0; n];
            f(&mut x, &mut m);
            rows.push((x, m, want));
        };
        add(&|_, _| {}, [Finite, Finite]);
        add(&|x, _| x.fill(nan), [Nan, Nan]);
        add(&|x, _| x[n - 1] = nan, [Nan, Nan]); // the scalar tail when n % 8 != 0
        add(&|x, _| x[1] = nan, [Nan, Nan]);
        add(&|x, _| x.fill(ninf), [Zero, Zero]); // fully masked through x
        // +inf - max(+inf) is NaN (as torch.softmax): a row holding +inf is all NaN, not a
        // one-hot a kernel's running max might make of it.
        add(&|x, _| x[3] = f64::INFINITY, [Nan, Nan]);
        add(&|x, _| x[n - 1] = f64::INFINITY, [Nan, Nan]);
        add(&|_, m| m.fill(ninf), [Finite, Zero]); // fully masked through the mask
        // NaN only where the mask drops every entry.
        let all_nan_dropped = |x: &mut Vec<f64>, m: &mut Vec<f64>| {
            x.fill(nan);
            m.fill(ninf);
        };
        add(&all_nan_dropped, [Nan, Zero]);
        // A NaN the mask drops takes no part.
        add(
            &|x, m| {
                x[2] = nan;
                m[2] = ninf;
            },
            [Nan, Finite],
        );
        // The only entry kept is NaN.
        add(
            &|x, m| {
                x[0] = nan;
                m[1..].fill(ninf);
            },
            [Nan, Nan],
        );
        let r = rows.len();
        let x: Vec<f64> = rows.iter().flat_map(|(x, _, _)| x.clone()).collect();
        let m: Vec<f64> = rows.iter().flat_map(|(_, m, _)| m.clone()).collect();
        for dt in DType::FLOATS {
            for masked in [false, true] {
                let mask = masked.then_some(&m[..]);
                // The reference sees x as uploaded (rounded to dt).
                let xr = host(&[r, n], &x, dt).to_f64();
                let want = reference::softmax(&xr, n, mask, f64::from(0.7f32));
                for dev in &devs {
                    let what = format!("{} {dt} n {n} mask {masked}", dev.describe());
                    let xt = upload(dev, &[r, n], &x, dt);
                    let mt = mask.map(|m| upload(dev, &[r, n], m, DType::F32));
                    let mut out = poisoned(dev, &[r, n], dt);
                    ops::softmax_into(&xt, mt.as_ref(), 0.7, &mut out).unwrap();
                    let got = out.to_host().unwrap().to_f64();
                    for (i, (_, _, w)) in rows.iter().enumerate() {
                        let w = w[usize::from(masked)];
                        let (g, wr) = (&got[i * n..][..n], &want[i * n..][..n]);
                        let what = format!("{what} row {i} ({w:?})");
                        match w {
                            Nan => {
                                assert!(g.iter().all(|v| v.is_nan()), "{what}: got {:?}", &g[..3]);
                                assert!(wr.iter().all(|v| v.is_nan()), "reference {what}");
                            }
                            Zero => {
                                assert!(g.iter().all(|&v| v == 0.0), "{what}: got {:?}", &g[..3]);
                                assert!(wr.iter().all(|&v| v == 0.0), "reference {what}");
                            }
                            Finite => {
                                assert!(wr.iter().all(|v| v.is_finite()), "reference {what}");
                                let rtol = 2.0 * dt.unit_roundoff() + 2e-5;
                                check_close(&what, g, wr, &|_| min_step(dt) + 1e-7, rtol).unwrap();
                            }
                        }
                    }
                }
            }
        }
    }
}
