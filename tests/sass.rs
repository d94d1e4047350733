//! The sm_90 machine code (SASS) of every kernel, disassembled from the embedded CUBINs with
//! nvdisasm (no GPU needed): each kernel issues what the kernel table says it is built on
//! (HMMA for f16/bf16, IMMA for int8, their `.SP` forms for 2:4 sparse, LDGSTS where it
//! pipelines with cp.async, none of these where the table says not), and no kernel touches
//! local memory (LDL/STL). Without nvdisasm the check is a counted SKIP, a failure under
//! `MEDKERN_REQUIRE_NVRTC=1` (scripts/test, CI); scripts/setup-nvrtc installs it.

mod common;
use medkern::device::kernels::{self, Features, KERNELS, Mma};
use medkern::device::sass::{self, Disassembler, KernelSass};
use std::io::Write as _;

fn require() -> bool {
    std::env::var("MEDKERN_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

fn fake(ops: &[(&str, u32)]) -> KernelSass {
    KernelSass {
        module: "fake",
        kernel: "fake".into(),
        opcodes: ops.iter().map(|(o, n)| (o.to_string(), *n)).collect(),
    }
}

#[test]
fn sm90_sass_matches_the_kernel_table() {
    const TEST: &str = "sm90_sass_matches_the_kernel_table";
    // The machine code does not depend on the test device: scripts/test's CPU self-check and
    // emulated-GPU passes would only repeat the plain run's check (half a minute each).
    if std::env::var_os("MEDKERN_TEST_DEVICE").is_some()
        || std::env::var_os("MEDKERN_TEST_BACKEND").is_some()
    {
        println!("{TEST}: checked by the plain run (MEDKERN_TEST_DEVICE/BACKEND set)");
        return;
    }
    let Some(dis) = Disassembler::find() else {
        assert!(
            !require(),
            "MEDKERN_REQUIRE_NVRTC=1 but no nvdisasm was found (MEDKERN_NVRTC_LIB/../bin, \
             CUDA_HOME/bin, CUDA_PATH/bin, /usr/local/cuda/bin, PATH); run scripts/setup-nvrtc"
        );
        common::skip(
            TEST,
            "no disassembler (nvdisasm; scripts/setup-nvrtc installs it)",
        );
        return;
    };
    if !kernels::BUILD_TARGETS.contains(&"sm_90") {
        assert!(
            !require(),
            "MEDKERN_REQUIRE_NVRTC=1 but the build embedded no sm_90 CUBIN (targets {:?})",
            kernels::BUILD_TARGETS
        );
        common::skip(TEST, "no sm_90 CUBIN in this build");
        return;
    }
    let all = dis
        .disassemble_embedded(90)
        .unwrap_or_else(|e| panic!("{}: {e}", dis.path().display()));
    let mut failures = Vec::new();
    let (mut mma, mut sparse, mut pipelined, mut tma) = (0, 0, 0, 0);
    for k in KERNELS {
        let Some(s) = all.iter().find(|s| s.kernel == k.name) else {
            failures.push(format!(
                "{} ({}): not in the sm_90 CUBIN's SASS",
                k.name, k.module
            ));
            continue;
        };
        failures.extend(
            s.check(k.features)
                .into_iter()
                .map(|f| format!("{} ({}): {f}", k.name, k.module)),
        );
        mma += usize::from(k.features.mma.is_some());
        sparse += usize::from(k.features.mma.is_some_and(Mma::sparse));
        pipelined += usize::from(k.features.cp_async);
        tma += usize::from(k.features.tma);
    }
    // Functions of the CUBINs that are not kernels of the table (none today) still may not
    // touch local memory.
    for s in all
        .iter()
        .filter(|s| KERNELS.iter().all(|k| k.name != s.kernel))
    {
        if s.local_memory() > 0 {
            failures.push(format!(
                "{} ({}): touches local memory: {} LDL/STL",
                s.kernel,
                s.module,
                s.local_memory()
            ));
        }
    }
    // On the raw stderr handle, as common::skip does: shown in the test log even on success.
    let summary = format!(
        "\nsass: {} kernels disassembled by {} ({}): {mma} tensor-core ({sparse} 2:4 sparse), \
         {pipelined} cp.async-pipelined, {tma} TMA-fed (sm_90a), {} functions checked for local memory; {} failures\n",
        KERNELS.len(),
        dis.path().display(),
        dis.version().unwrap_or_default(),
        all.len(),
        failures.len()
    );
    let _ = std::io::stderr().write_all(summary.as_bytes());
    assert!(
        failures.is_empty(),
        "sm_90 SASS disagrees with the kernel table:\n  {}",
        failures.join("\n  ")
    );
}

/// The checks bite: each planted contradiction is reported, and a matching SASS is not.
#[test]
fn sass_checks_catch_planted_violations() {
    let dense = Features::pipelined;
    let ok = fake(&[
        ("HMMA.16816.F32.BF16", 32),
        ("LDGSTS.E.BYPASS.128", 8),
        ("BAR.SYNC.DEFER_BLOCKING", 1),
    ]);
    assert_eq!(ok.check(dense(Mma::Bf16)), Vec::<String>::new());
    // bf16 SASS under an f16 row, f16 (no .BF16) under a bf16 row.
    assert_eq!(ok.check(dense(Mma::F16)).len(), 1);
    let f16 = fake(&[("HMMA.16816.F32", 8), ("LDGSTS.E.BYPASS.128", 8)]);
    assert!(f16.check(dense(Mma::F16)).is_empty());
    assert_eq!(f16.check(dense(Mma::Bf16)).len(), 1);
    // Dense MMA where the table says 2:4 sparse, and the other way round.
    assert_eq!(f16.check(dense(Mma::SparseF16)).len(), 1);
    let sp = fake(&[("HMMA.SP.16832.F32", 8), ("LDGSTS.E.BYPASS.128", 8)]);
    assert!(sp.check(dense(Mma::SparseF16)).is_empty());
    assert_eq!(sp.check(dense(Mma::F16)).len(), 1);
    // int8, dense and sparse.
    let i8 = fake(&[("IMMA.16832.S8.S8", 8), ("LDGSTS.E.BYPASS.128", 8)]);
    assert!(i8.check(dense(Mma::I8)).is_empty());
    assert_eq!(i8.check(dense(Mma::SparseI8)).len(), 1);
    let spi8 = fake(&[("IMMA.SP.16864.S8.S8", 8), ("LDGSTS.E.BYPASS.128", 8)]);
    assert!(spi8.check(dense(Mma::SparseI8)).is_empty());
    // A pipelined kernel whose copies became plain loads; a plain kernel with LDGSTS or MMA.
    let no_pipe = fake(&[("HMMA.16816.F32", 8), ("LDG.E.128", 8)]);
    let e = no_pipe.check(dense(Mma::F16));
    assert!(e.len() == 1 && e[0].contains("LDGSTS"), "{e:?}");
    assert_eq!(f16.check(Features::PLAIN).len(), 2);
    // Hopper: HGMMA fed by TMA; an f16 row over bf16 HGMMA, an Ampere row over the Hopper
    // SASS (wrong MMA, no LDGSTS, UTMALDG present), and the TMA loads gone.
    let hg = fake(&[("HGMMA.64x128x16.F32.BF16", 8), ("UTMALDG.3D", 2)]);
    assert!(hg.check(Features::tma(Mma::WgmmaBf16)).is_empty());
    assert_eq!(hg.check(Features::tma(Mma::WgmmaF16)).len(), 1);
    assert_eq!(hg.check(dense(Mma::Bf16)).len(), 3);
    let no_tma = fake(&[("HGMMA.64x128x16.F32", 8), ("LDG.E.128", 8)]);
    let e = no_tma.check(Features::tma(Mma::WgmmaF16));
    assert!(e.len() == 1 && e[0].contains("UTMALDG"), "{e:?}");
    // Local memory, in any kernel.
    let spill = fake(&[("LDG.E", 1), ("STL", 2), ("LDL.64", 1)]);
    let e = spill.check(Features::PLAIN);
    assert!(
        e.len() == 1 && e[0].contains("STL×2") && e[0].contains("LDL.64×1"),
        "{e:?}"
    );
    assert_eq!(spill.local_memory(), 3);
}

/// nvdisasm's listing format as the parser reads it (sections, predicates, addresses), and the
/// instruction mix `medkern info` prints.
#[test]
fn listing_parses_into_an_instruction_mix() {
    let listing = "\t.target\tsm_90\n\
        //--------------------- .text.k_one --------------------------\n\
        \t.section\t.text.k_one,\"ax\",@progbits\n\
        k_one:\n\
        .text.k_one:\n\
        \x20       /*0000*/                   LDC R1, c[0x0][0x28] ;\n\
        \x20       /*0010*/               @P0 LDG.E.128 R4, desc[UR4][R2.64] ;\n\
        \x20       /*0020*/              @!P1 LDG.E.U16 R6, desc[UR4][R2.64] ;\n\
        \x20       /*0030*/                   LDGSTS.E.BYPASS.128 [R9], desc[UR4][R2.64] ;\n\
        \x20       /*0040*/                   LDSM.16.M88.4 R12, [R9] ;\n\
        \x20       /*0050*/                   HMMA.16816.F32.BF16 R16, R12, R14, R16 ;\n\
        \x20       /*0060*/                   HMMA.16816.F32.BF16 R20, R12, R15, R20 ;\n\
        \x20       /*0070*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;\n\
        \x20       /*0080*/                   STG.E.64 desc[UR4][R2.64], R16 ;\n\
        \x20       /*0090*/                   EXIT ;\n\
        .L_x_1:\n\
        \x20       /*00a0*/                   BRA `(.L_x_1);\n\
        \t.section\t.nv.constant0.k_one,\"a\",@progbits\n\
        \x20       /*0000*/ \t.byte\t0x00, 0x00\n\
        \t.section\t.text.k_two,\"ax\",@progbits\n\
        \x20       /*0000*/                   STL [R1], R0 ;\n\
        \x20       /*0010*/                   EXIT ;\n";
    let ks = sass::parse("m", listing);
    assert_eq!(ks.len(), 2, "{ks:?}");
    assert_eq!(ks[0].kernel, "k_one");
    assert_eq!(
        ks[0].opcodes.values().sum::<u32>(),
        11,
        "{:?}",
        ks[0].opcodes
    );
    assert_eq!(ks[0].opcodes.get("HMMA.16816.F32.BF16"), Some(&2));
    assert!(ks[0].check(Features::pipelined(Mma::Bf16)).is_empty());
    assert_eq!(
        ks[0].mix().to_string(),
        "HMMA×2 | LDG 16b×1 128b×1 | STG 64b×1 | LDGSTS×1 | LDSM×1 | BAR×1"
    );
    assert_eq!(ks[1].kernel, "k_two");
    assert_eq!(ks[1].local_memory(), 1);
    assert_eq!(ks[1].mix().to_string(), "LDL/STL×1");
    assert_eq!(sass::parse("m", "").len(), 0);
    assert_eq!(fake(&[("EXIT", 1)]).mix().to_string(), "-");
    assert!(sass::is_mma("IMMA.SP.16864.S8.S8", Mma::SparseI8));
}
