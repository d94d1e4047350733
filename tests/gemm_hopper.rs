//! Hopper dense GEMM (`kernels/gemm_hopper.cu`, sm_90a: TMA + mbarrier ring + warp-specialised
//! wgmma; `src/ops/gemm_hopper.rs`): GPU against the f64 reference with the Hopper kernels
//! switched on, over tails in M, N and K (TMA zero-fill), ring wrap-around (K beyond
//! GEMM_H_STAGES stages), persistent blocks walking several tiles, every epilogue and dtype,
//! batched and Linear layouts; and the switch and arch gate.
//!
//! On a GPU these run only on compute capability 9.0 (elsewhere a counted SKIP). On the
//! emulated GPU the device reports 2 SMs, so each block walks several tiles.

mod common;
use common::*;
use medkern::device::kernels;
use medkern::device::{Arch, Gpu};
use medkern::ops::Activation;
use medkern::{DType, Device, Error};
use proptest::prelude::*;
use std::sync::Arc;

/// A device with the Hopper kernels on, or None after a counted SKIP (no GPU, or a GPU other
/// than compute capability 9.0). The CPU self-check (MEDKERN_TEST_BACKEND=cpu) gets the CPU.
fn hopper_device(test: &str) -> Option<Device> {
    let dev = test_device(test)?;
    let Device::Gpu(g) = &dev else {
        return Some(dev);
    };
    let own: Arc<Gpu> = if g.is_emulated() {
        Gpu::emulated_as(g.arch(), 2).expect("emulated GPU")
    } else if g.arch() == Arch::new(9, 0) {
        Gpu::new(g.ordinal()).expect("GPU")
    } else {
        assert!(
            std::env::var("MEDKERN_REQUIRE_HOPPER").as_deref() != Ok("1"),
            "{test}: MEDKERN_REQUIRE_HOPPER=1 but the GPU is {}",
            g.arch()
        );
        skip(
            test,
            &format!("the GPU is {}, not compute capability 9.0", g.arch()),
        );
        return None;
    };
    own.set_hopper_kernels(true)
        .expect("compute capability 9.0");
    Some(Device::Gpu(own))
}

#[test]
fn hopper_switch_and_arch_gate() {
    // Table: sm_90a only, fed by TMA into wgmma.
    for name in [
        "gemm_hopper_f16_f16",
        "gemm_hopper_f16_f32",
        "gemm_hopper_bf16_bf16",
        "gemm_hopper_bf16_f32",
    ] {
        let k = kernels::kernel_info(name).unwrap();
        assert!(
            k.sm90a_only() && k.features.tma && !k.features.cp_async,
            "{name}"
        );
        kernels::check_arch(name, Arch::new(9, 0)).unwrap();
        for other in [
            Arch::new(8, 0),
            Arch::new(8, 9),
            Arch::new(10, 0),
            Arch::new(12, 0),
        ] {
            let e = kernels::check_arch(name, other).unwrap_err();
            assert!(
                matches!(e, Error::ArchMismatch { .. }) && e.to_string().contains("sm_90a"),
                "{name} on {other}: {e}"
            );
        }
    }
    if !medkern::device::emu::available() {
        skip("hopper_switch_and_arch_gate", "built without the emulator");
        return;
    }
    let ampere = Gpu::emulated_as(Arch::new(8, 0), 4).unwrap();
    let e = ampere.set_hopper_kernels(true).unwrap_err();
    assert!(e.to_string().contains("compute capability 9.0"), "{e}");
    assert!(!ampere.hopper_kernels());
    let h = Gpu::emulated_as(Arch::new(9, 0), 4).unwrap();
    assert_eq!(
        h.hopper_kernels(),
        std::env::var("MEDKERN_HOPPER").as_deref() == Ok("1"),
        "off by default, on with MEDKERN_HOPPER=1"
    );
    h.set_hopper_kernels(true).unwrap();
    assert!(h.hopper_kernels());
    h.set_hopper_kernels(false).unwrap();
    assert!(!h.hopper_kernels());
}

#[test]
fn gemm_hopper_matches_reference() {
    let Some(dev) = hopper_device("gemm_hopper_matches_reference") else {
        return;
    };
    let strategy = (
        value_seed(),
        (0..2usize, any::<bool>()),
        0..8usize,
        any::<(bool, bool)>(),
        (any::<bool>(), 1..=3usize),
        (gemm_dim(8, 300), gemm_dim(8, 300), 1..=72usize),
    );
    check_covering(
        file!(),
        48,
        &strategy,
        |(seed, (di, out32), ai, (with_bias, with_res), (batched, batch), (m, n, k8)), cover| {
            cover.admit([di, usize::from(out32)], [2, 2])?;
            let dt = [DType::F16, DType::BF16][di];
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
                k: 8 * k8,
                tile: None,
            };
            check_gemm_case(&dev, seed, &case).map_err(TestCaseError::fail)
        },
    );
}

#[test]
fn gemm_hopper_bert_shapes() {
    // Encoder shapes: the FFN up-projection of a 128-token batch, and a single token.
    let Some(dev) = hopper_device("gemm_hopper_bert_shapes") else {
        return;
    };
    for (i, (dt, m, n, k)) in [
        (DType::F16, 128, 3072, 768),
        (DType::BF16, 1, 768, 768),
        (DType::BF16, 200, 384, 1536),
        // 9 row tiles: more than one rasterisation group along M (GEMM_H_GROUP = 8).
        (DType::F16, 1100, 200, 64),
    ]
    .into_iter()
    .enumerate()
    {
        let case = GemmCase {
            dt,
            odt: dt,
            act: Activation::GeluErf,
            with_bias: true,
            with_res: false,
            batched: false,
            batch: 1,
            m,
            n,
            k,
            tile: None,
        };
        check_gemm_case(&dev, 40 + i as u64, &case).unwrap();
    }
}

#[test]
fn hopper_register_budget_fits_setmaxnreg() {
    // setmaxnreg.inc waits until the block's register pool can give the consumers their 232
    // registers: the pool is what the kernel was launched with (ptxas's count x 384 threads),
    // so a kernel compiled to fewer registers would hang on a GPU (the emulator cannot see it).
    if kernels::BUILD_NVRTC.is_none() {
        skip(
            "hopper_register_budget_fits_setmaxnreg",
            "built without NVRTC (no ptxas report)",
        );
        return;
    }
    let m = kernels::module("gemm_hopper").unwrap();
    let need = 128 * 40 + 2 * 128 * 232;
    let mut seen = 0;
    for r in m.resources.iter().filter(|r| r.arch == 90) {
        assert!(
            r.registers * 384 >= need && r.registers * 384 <= 65536,
            "{}: {} registers x 384 threads = {}, the warpgroups' setmaxnreg split needs {need}",
            r.kernel,
            r.registers,
            r.registers * 384
        );
        seen += 1;
    }
    assert_eq!(seen, 4, "{:?}", m.resources);
}
