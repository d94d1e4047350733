//! Device layer: a missing GPU, a GPU too old for a kernel and an unknown kernel are errors
//! that name what was asked and what exists; the kernel table matches the compiled modules.

mod common;
use medkern::device::kernels::{self, KERNELS, MODULES};
use medkern::{Arch, Error, Gpu, HostTensor};

#[test]
fn missing_gpu_is_an_error_not_a_panic() {
    // No machine has 4096 GPUs: without a driver this is NoDriver, with one NoDevice.
    let e = Gpu::new(4096).unwrap_err();
    match &e {
        Error::NoDriver { op, .. } => assert_eq!(*op, "gpu_count"),
        Error::NoDevice { op, ordinal, .. } => assert_eq!((*op, *ordinal), ("Gpu::new", 4096)),
        other => panic!("unexpected error {other}"),
    }
    assert!(matches!(
        medkern::Device::best(),
        medkern::Device::Cpu | medkern::Device::Gpu(_)
    ));
}

#[test]
fn arch_below_minimum_names_kernel_and_both_archs() {
    let e = kernels::check_arch("softmax_warp_bf16", Arch::new(7, 5)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ArchTooLow {
                kernel: "softmax_warp_bf16",
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("softmax_warp_bf16") && msg.contains("sm_80") && msg.contains("sm_75"),
        "{msg}"
    );
    assert!(kernels::check_arch("softmax_warp_bf16", Arch::new(9, 0)).is_ok());
    assert!(kernels::check_arch("softmax_warp_bf16", Arch::new(8, 0)).is_ok());
    let e = kernels::check_arch("no_such_kernel", Arch::new(9, 0)).unwrap_err();
    assert!(
        matches!(e, Error::UnknownKernel { .. }) && e.to_string().contains("no_such_kernel"),
        "{e}"
    );
}

#[test]
fn kernel_table_matches_compiled_modules() {
    for k in KERNELS {
        let m = kernels::module(k.module).unwrap();
        assert!(m.source.contains("__global__"), "{} has no kernels", m.name);
    }
    for m in MODULES {
        assert!(
            KERNELS.iter().any(|k| k.module == m.name),
            "module {} has no table entries",
            m.name
        );
    }
    if kernels::BUILD_NVRTC.is_none() {
        let line =
            "\nSKIP kernel_table_matches_compiled_modules: built without NVRTC (runtime compile)\n";
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        return;
    }
    // Every table entry was compiled for each CUBIN target of the build (sm_80 and sm_90 unless
    // MEDKERN_TARGETS narrowed them), the PTX target is embedded, every compiled kernel is in the
    // table, and none spills.
    let cubin_archs: Vec<u32> = kernels::BUILD_TARGETS
        .iter()
        .filter_map(|t| t.strip_prefix("sm_"))
        .map(|a| a.parse().unwrap())
        .collect();
    let ptx = kernels::BUILD_TARGETS
        .iter()
        .find_map(|t| t.strip_prefix("compute_"));
    // An sm_90a module (first line `// medkern-targets: sm_90a`) has its sm_90a CUBIN (listed
    // as 90) when the build has sm_90, and no PTX: no other target accepts its instructions.
    let specific = |m: &kernels::EmbeddedModule| m.source.starts_with("// medkern-targets: sm_90a");
    for m in MODULES {
        let want: Vec<u32> = if specific(m) {
            cubin_archs.iter().copied().filter(|&a| a == 90).collect()
        } else {
            cubin_archs.clone()
        };
        assert_eq!(kernels::precompiled_archs(m), want, "module {}", m.name);
        if specific(m) {
            assert!(m.ptx.is_none(), "sm_90a module {} embeds PTX", m.name);
        } else if let Some(a) = ptx {
            let target = format!(".target sm_{a}");
            assert!(
                m.ptx.is_some_and(|p| p.contains(&target)),
                "module {} lacks its compute_{a} PTX",
                m.name
            );
        }
        for r in m.resources {
            let info = kernels::kernel_info(r.kernel)
                .unwrap_or_else(|e| panic!("compiled kernel missing from the table: {e}"));
            assert_eq!(info.module, m.name);
            assert_eq!(
                (r.spill_stores, r.spill_loads),
                (0, 0),
                "{} spills on sm_{}",
                r.kernel,
                r.arch
            );
        }
    }
    for k in KERNELS {
        let m = kernels::module(k.module).unwrap();
        for &arch in cubin_archs.iter().filter(|&&a| !k.sm90a_only() || a == 90) {
            assert!(
                m.resources
                    .iter()
                    .any(|r| r.kernel == k.name && r.arch == arch),
                "{} not compiled for sm_{arch}",
                k.name
            );
        }
    }
}

/// build.rs reads the kernel table's text for the emulated GPU's registry, merging a module's
/// rows (one per feature set): the registry must be the table, kernel for kernel.
#[test]
fn emulator_registry_is_the_kernel_table() {
    if !medkern::device::emu::available() {
        common::skip(
            "emulator_registry_is_the_kernel_table",
            "built without the emulator",
        );
        return;
    }
    let mut registry: Vec<&str> = medkern::device::emu::kernel_names()
        .into_iter()
        .filter(|n| !n.starts_with("mk_selftest_"))
        .collect();
    let mut table: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
    registry.sort_unstable();
    table.sort_unstable();
    assert_eq!(registry, table);
}

#[test]
fn host_tensor_checks_length() {
    let e = HostTensor::new(&[2, 3], vec![1.0f32; 5]).unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. }) && e.to_string().contains("[2, 3]"),
        "{e}"
    );
    let t = HostTensor::new(&[2, 3], vec![1.5f32; 6]).unwrap();
    assert_eq!(t.as_slice::<f32>().unwrap(), &[1.5; 6]);
    assert!(matches!(
        t.as_slice::<half::f16>(),
        Err(Error::DType { .. })
    ));
}

#[test]
fn runtime_compile_produces_and_caches_a_cubin() {
    use medkern::device::runtime_compile;
    if runtime_compile::load_nvrtc().is_err() {
        let line = "\nSKIP runtime_compile_produces_and_caches_a_cubin: no NVRTC at run time\n";
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        return;
    }
    let dir = std::env::temp_dir().join(format!("medkern-rtc-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let m = kernels::module("softmax").unwrap();
    let cubin = runtime_compile::cubin_cached_in(m, Arch::new(8, 6), Some(dir.clone())).unwrap();
    assert_eq!(&cubin[..4], b"\x7fELF", "a CUBIN is an ELF image");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].starts_with(&format!("softmax-{:016x}-sm_86-nvrtc", m.source_hash)),
        "{files:?}"
    );
    // Second call is served from the cache, byte for byte.
    assert_eq!(
        runtime_compile::cubin_cached_in(m, Arch::new(8, 6), Some(dir.clone())).unwrap(),
        cubin
    );
    // A cache file with one flipped byte, or cut short, is not loaded: recompiled and rewritten.
    let path = dir.join(&files[0]);
    let good = std::fs::read(&path).unwrap();
    assert!(
        good.len() > cubin.len(),
        "the file carries the CUBIN's hash"
    );
    for bad in [
        {
            let mut b = good.clone();
            let i = b.len() - 100;
            b[i] ^= 0x40;
            b
        },
        good[..good.len() / 2].to_vec(),
        cubin.clone(),
    ] {
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(
            runtime_compile::cubin_cached_in(m, Arch::new(8, 6), Some(dir.clone())).unwrap(),
            cubin
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            good,
            "the cache is rewritten"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 17 step 11: launches and host time per call come from the device layer (what the
/// benches and `medkern bench` report); a whole forward launches the same kernels each time.
#[test]
fn timed_counts_launches_and_times_on_the_device() {
    let test = "timed_counts_launches_and_times_on_the_device";
    if common::gpu_or_skip(test).is_none() {
        return;
    }
    // A GPU of its own: the shared one counts the other tests' launches too.
    let gpu = if common::emulated() {
        Gpu::emulated()
    } else {
        Gpu::new(0)
    }
    .expect("gpu");
    let dev = medkern::Device::Gpu(gpu.clone());
    let x = HostTensor::from_f64(&[3, 37], &vec![0.5; 111], medkern::DType::F32)
        .and_then(|h| h.to_device(&dev))
        .expect("upload");
    let before = gpu.launch_count();
    let t = gpu
        .timed(|| medkern::ops::softmax(&x, None, 1.0).map(|_| ()))
        .expect("timed");
    assert_eq!(t.launches, 1, "{t:?}");
    assert_eq!(gpu.launch_count(), before + 1);
    assert!(t.host_ms >= 0.0);
    assert_eq!(t.device_ms.is_some(), !common::emulated(), "{t:?}");
    if let Some(ms) = t.device_ms {
        assert!(ms.is_finite() && ms >= 0.0, "{t:?}");
    }
    // An error inside is returned, not timed.
    let e = gpu.timed(|| {
        Err(Error::Invalid {
            op: "test",
            arg: "x",
            detail: "planted".into(),
        })
    });
    assert!(e.is_err());

    let cfg = medkern::model::resnet::ResNetConfig::resnet18(3);
    let m = medkern::model::resnet::random_resnet(&cfg, 5)
        .to_safetensors()
        .and_then(|b| {
            medkern::model::resnet::ResNet::from_safetensors(&b, cfg, &dev, medkern::DType::F16)
        })
        .expect("resnet18");
    let img = HostTensor::from_f64(
        &[1, 32, 32, 3],
        &vec![0.25; 32 * 32 * 3],
        medkern::DType::F16,
    )
    .and_then(|h| h.to_device(&dev))
    .expect("image");
    let a = gpu.timed(|| m.forward(&img).map(|_| ())).expect("forward");
    let b = gpu.timed(|| m.forward(&img).map(|_| ())).expect("forward");
    // 20 convolutions at least (stem + 8 basic blocks of 2 + 3 downsamples), pooling, the head.
    assert!(a.launches >= 22, "{a:?}");
    assert_eq!(
        a.launches, b.launches,
        "a forward launches the same kernels each time"
    );
    println!(
        "resnet18 32x32 b1 forward: {} launches, host {:.1} ms",
        a.launches, a.host_ms
    );
}
