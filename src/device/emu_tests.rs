//! The emulated GPU refuses what the driver refuses and reports faults with kernel, block and
//! thread: launches assembled by hand (the ops never build these), through the same `Launch`.

use super::*;
use crate::{DType, DeviceTensor};

/// `eltwise_relu_f32(y, x, bias, res, alpha, total, n, vec_ok)` over `len` f32 buffers, told
/// to cover `total` elements, with the given block and dynamic shared memory.
fn relu(
    gpu: &Arc<Gpu>,
    len: usize,
    total: i64,
    block: u32,
    smem: u32,
    drop_last: bool,
) -> Result<()> {
    let mut x = DeviceTensor::alloc(gpu, &[len], DType::F32)?;
    x.fill_bytes(0x3F)?; // initcheck: the inputs are written before the launch reads them
    relu_on(gpu, &x, total, block, smem, drop_last)
}

/// `relu` over a given input `x` (which the caller may leave unwritten).
fn relu_on(
    gpu: &Arc<Gpu>,
    x: &DeviceTensor,
    total: i64,
    block: u32,
    smem: u32,
    drop_last: bool,
) -> Result<()> {
    let len = x.len();
    let mut y = DeviceTensor::alloc(gpu, &[len], DType::F32)?;
    let (null, alpha, n, vec_ok) = (0u64, 1.0f32, total, 0i32);
    let mut b = gpu.launcher("eltwise_relu_f32");
    b.arg(y.buffer_mut())
        .arg(x.buffer())
        .arg(&null)
        .arg(&null)
        .arg(&alpha)
        .arg(&total)
        .arg(&n);
    if !drop_last {
        b.arg(&vec_ok);
    }
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem,
    };
    // SAFETY: the emulated GPU checks every access against the live allocations; these
    // launches are meant to fault or be refused, and host memory stays untouched.
    unsafe { b.launch(cfg) }
}

fn err_text(r: Result<()>) -> String {
    match r {
        Ok(()) => panic!("the launch was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_correct_launch_runs() {
    let gpu = Gpu::emulated().unwrap();
    relu(&gpu, 300, 300, 256, 0, false).unwrap();
}

/// `transpose_small_b4(y, x, batch, rows, cols)`, declared `__launch_bounds__(mk::LAYOUT_THREADS)`
/// (256, common/consts.cuh).
fn transpose(gpu: &Arc<Gpu>, block: u32) -> Result<()> {
    transpose_with(gpu, "transpose_small_b4", (block, 1, 1), 0)
}

/// `kernel` (a `transpose_*_b4`) over one 8x8 f32 matrix with the given block and dynamic
/// shared memory.
fn transpose_with(
    gpu: &Arc<Gpu>,
    kernel: &'static str,
    block: (u32, u32, u32),
    smem: u32,
) -> Result<()> {
    let mut x = DeviceTensor::alloc(gpu, &[8, 8], DType::F32)?;
    x.fill_bytes(0x3F)?;
    let mut y = DeviceTensor::alloc(gpu, &[8, 8], DType::F32)?;
    let (batch, rows, cols) = (1i64, 8i32, 8i32);
    let mut b = gpu.launcher(kernel);
    b.arg(y.buffer_mut())
        .arg(x.buffer())
        .arg(&batch)
        .arg(&rows)
        .arg(&cols);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: block,
        shared_mem_bytes: smem,
    };
    // SAFETY: as in `relu`: 64 elements each, the emulated GPU checks every access.
    unsafe { b.launch(cfg) }
}

#[test]
fn launch_bounds_are_enforced() {
    let gpu = Gpu::emulated().unwrap();
    let bound = crate::ops::consts::LAYOUT_THREADS as u32;
    transpose(&gpu, bound).unwrap();
    // build.rs read __launch_bounds__(256) from kernels/layout.cu; the driver refuses 512.
    let e = err_text(transpose(&gpu, 2 * bound));
    assert!(
        e.contains(&format!("__launch_bounds__({bound})"))
            && e.contains("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"),
        "{e}"
    );
    // A kernel without bounds takes up to 1024 threads, never more.
    relu(&gpu, 300, 300, 1024, 0, false).unwrap();
    let e = err_text(relu(&gpu, 300, 300, 2048, 0, false));
    assert!(e.contains("CUDA_ERROR_INVALID_VALUE"), "{e}");
}

#[test]
fn shared_memory_above_the_arch_opt_in_is_refused() {
    // sm_86 blocks may opt in to 99 KiB, H100 to 227 KiB.
    let ampere = Gpu::emulated_as(Arch::new(8, 6), 1).unwrap();
    let e = err_text(relu(&ampere, 64, 64, 256, 120 * 1024, false));
    assert!(e.contains(&format!("{} bytes", 99 * 1024)), "{e}");
    let hopper = Gpu::emulated().unwrap();
    relu(&hopper, 64, 64, 256, 120 * 1024, false).unwrap();
}

/// Issue 15 item 13: a kernel may take the opt-in limit less its own static shared memory (the
/// driver's rule, set once at its first fetch); a byte more is an Err naming the kernel and both
/// sizes, not a launch. transpose_tiled_b4 declares a 32x33 f32 tile (known when build.rs ran
/// ptxas; without it the emulated GPU counts no static shared memory).
#[test]
fn a_launch_above_the_kernels_dynamic_shared_maximum_is_refused() {
    let kernel = "transpose_tiled_b4";
    let block = (32, 8, 1);
    let static_smem = if kernels::BUILD_NVRTC.is_some() {
        32 * 33 * 4
    } else {
        0
    };
    for gpu in [
        Gpu::emulated().unwrap(),
        Gpu::emulated_as(Arch::new(8, 6), 1).unwrap(),
    ] {
        let max = max_dynamic_smem(gpu.arch()) - static_smem;
        transpose_with(&gpu, kernel, block, max).unwrap();
        let e = err_text(transpose_with(&gpu, kernel, block, max + 1));
        assert!(
            e.contains(kernel)
                && e.contains(&format!("{} bytes", max + 1))
                && e.contains(&format!("{max} bytes")),
            "{}: {e}",
            gpu.arch()
        );
        // Launches within the maximum still run after the refusal.
        transpose_with(&gpu, kernel, block, 64 * 1024).unwrap();
    }
}

#[test]
fn out_of_bounds_global_access_names_kernel_block_thread() {
    let gpu = Gpu::emulated().unwrap();
    // 64 elements allocated, the kernel told 2000: thread 64 + 256·k reads past the end.
    let e = err_text(relu(&gpu, 64, 2000, 256, 0, false));
    assert!(
        e.contains("memcheck")
            && e.contains("eltwise_relu_f32")
            && e.contains("block (")
            && e.contains("thread ("),
        "{e}"
    );
}

#[test]
fn a_wrong_parameter_list_is_refused() {
    let gpu = Gpu::emulated().unwrap();
    let e = err_text(relu(&gpu, 64, 64, 256, 0, true));
    assert!(
        e.contains("takes 8 parameters") && e.contains("passed 7"),
        "{e}"
    );
}

mod generated {
    include!(concat!(env!("OUT_DIR"), "/param_fields_gen.rs"));
}

#[cfg(medkern_emu)]
unsafe extern "C" {
    fn mk_emu_param_field(k: u32) -> *const CField;
}

/// emu.h's `mk_emu::Field`.
#[repr(C)]
struct CField {
    strct: *const std::ffi::c_char,
    field: *const std::ffi::c_char,
    offset: usize,
    size: usize,
    nfields: usize,
}

#[test]
fn parameter_structs_have_one_layout_in_rust_and_c() {
    // Every struct a launcher passes by value: the same size, field count, field order (names
    // equal but for case and underscores) and offsets in Rust (offset_of!) and in C (offsetof, compiled from
    // kernels/ by build.rs). A field added, moved or retyped on one side only fails here.
    let mut c = Vec::new();
    for k in 0u32.. {
        // SAFETY: returns a pointer into a static table, or null past its end.
        let p = unsafe { mk_emu_param_field(k) };
        if p.is_null() {
            break;
        }
        // SAFETY: a static entry with NUL-terminated static strings.
        let f = unsafe { &*p };
        let s = |p| {
            unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned()
        };
        c.push((s(f.strct), s(f.field), f.offset, f.size, f.nfields));
    }
    let rust = generated::RUST_PARAM_FIELDS;
    assert_eq!(c.len(), rust.len(), "C {c:?}\nRust {rust:?}");
    let structs: std::collections::BTreeSet<&str> = rust.iter().map(|r| r.0).collect();
    assert_eq!(structs.len(), 6, "{structs:?}");
    for (c, r) in c.iter().zip(rust) {
        assert_eq!(c.0, r.0);
        // Rust spells C's `W` (beside `w`) as `w_`, `Cin` as `c_in`.
        let norm = |s: &str| s.replace('_', "").to_ascii_lowercase();
        assert!(
            norm(&c.1) == norm(r.1),
            "{}: C field {} vs Rust {}",
            c.0,
            c.1,
            r.1
        );
        assert_eq!(
            (c.2, c.3, c.4),
            (r.2, r.3, r.4),
            "{}.{}: C (offset, size, fields) vs Rust",
            c.0,
            c.1
        );
    }
}

/// One block of a tensor-core GEMM kernel over `[x, w, y, meta]` (device addresses, meta 0 for
/// dense) for (m, n, k), launched by hand with the op's tile geometry.
fn gemm_launch(
    gpu: &Arc<Gpu>,
    kernel: &'static str,
    [x, w, y, meta]: [u64; 4],
    (m, n, k): (usize, usize, usize),
    g: &crate::ops::gemm::Geometry,
) -> Result<()> {
    let p = crate::ops::gemm::GemmParams {
        x,
        w,
        y,
        meta,
        stride_x: (m * k) as i64,
        stride_y: (m * n) as i64,
        m: m as i32,
        n: n as i32,
        k: k as i32,
        alpha: 1.0,
        ..Default::default()
    };
    let mut b = gpu.launcher(kernel);
    b.arg(&p);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (g.threads, 1, 1),
        shared_mem_bytes: g.smem,
    };
    // SAFETY: the callers' buffers are live allocations of the emulated GPU sized for (m, n, k)
    // (plus any offset they test); the emulator checks each access.
    unsafe { b.launch(cfg) }
}

#[test]
fn misaligned_cp_async_is_a_misaligned_address_error() {
    // gemm_f16_f16_s loads X with 16-byte cp.async; an X two bytes off the allocation's
    // alignment is what CUDA_ERROR_MISALIGNED_ADDRESS reports on a GPU. (The op itself refuses
    // such operands before launching; this launch is assembled by hand.)
    use crate::ops::gemm::Tile;
    let gpu = Gpu::emulated().unwrap();
    let (m, n, k) = (32usize, 64usize, 64usize);
    let mut x = DeviceTensor::alloc(&gpu, &[m * k + 8], DType::F16).unwrap();
    let mut w = DeviceTensor::alloc(&gpu, &[n, k], DType::F16).unwrap();
    x.fill_bytes(0x3C).unwrap();
    w.fill_bytes(0x3C).unwrap();
    let y = DeviceTensor::alloc(&gpu, &[m, n], DType::F16).unwrap();
    let g = Tile::S.geometry();
    // X has 8 spare elements, so the offset read stays inside its allocation.
    let run = |x_offset: u64| {
        gemm_launch(
            &gpu,
            "gemm_f16_f16_s",
            [x.addr() + x_offset, w.addr(), y.addr(), 0],
            (m, n, k),
            &g,
        )
    };
    run(0).unwrap();
    let e = err_text(run(2));
    assert!(
        e.contains("CUDA_ERROR_MISALIGNED_ADDRESS")
            && e.contains("gemm_f16_f16_s")
            && e.contains("thread ("),
        "{e}"
    );
}

#[test]
fn invalid_sparse_metadata_is_an_error() {
    // gemm_sp_f16_f16_s with the metadata compress() produced runs; with 0xFF-filled
    // metadata every nibble names position 3 twice, which ordered mma.sp metadata forbids.
    use crate::HostTensor;
    let gpu = Gpu::emulated().unwrap();
    let (m, n, k) = (32usize, 64usize, 64usize);
    let dense: Vec<f64> = (0..n * k)
        .map(|i| if i % 4 < 2 { 1.0 + (i % 7) as f64 } else { 0.0 })
        .collect();
    let s = crate::sparse::compress(&HostTensor::from_f64(&[n, k], &dense, DType::F16).unwrap())
        .unwrap();
    let values = DeviceTensor::upload(&gpu, &s.values).unwrap();
    let words: Vec<i32> = s.meta.iter().map(|&w| w as i32).collect();
    let good = DeviceTensor::upload(
        &gpu,
        &HostTensor::new(&[words.len()], words.clone()).unwrap(),
    )
    .unwrap();
    let mut poisoned = DeviceTensor::alloc(&gpu, &[words.len()], DType::I32).unwrap();
    poisoned.fill_bytes(0xFF).unwrap(); // written (so initcheck passes), but invalid
    let x = DeviceTensor::upload(
        &gpu,
        &HostTensor::from_f64(&[m, k], &vec![0.5; m * k], DType::F16).unwrap(),
    )
    .unwrap();
    let y = DeviceTensor::alloc(&gpu, &[m, n], DType::F16).unwrap();
    // The launcher's own small sparse tile (src/ops/gemm_sparse.rs `geometry`).
    let (g, _) = crate::ops::gemm_sparse::geometry(false, false);
    let run = |meta: &DeviceTensor| {
        gemm_launch(
            &gpu,
            "gemm_sp_f16_f16_s",
            [x.addr(), values.addr(), y.addr(), meta.addr()],
            (m, n, k),
            &g,
        )
    };
    run(&good).unwrap();
    let e = err_text(run(&poisoned));
    assert!(
        e.contains("invalid metadata") && e.contains("gemm_sp_f16_f16_s"),
        "{e}"
    );
}

/// Launches one of emu/selftest.cu's wrong kernels on a 64-element f32 buffer.
fn selftest(kernel: &'static str, grid: u32, block: u32) -> (Result<()>, Vec<f32>) {
    selftest_smem(kernel, grid, block, 0)
}

/// As `selftest`, with `smem` bytes of dynamic shared memory and a 256-element buffer.
fn selftest_smem(kernel: &'static str, grid: u32, block: u32, smem: u32) -> (Result<()>, Vec<f32>) {
    let gpu = Gpu::emulated().unwrap();
    let mut y = DeviceTensor::alloc(&gpu, &[256 * grid as usize], DType::F32).unwrap();
    y.fill_bytes(0x3F).unwrap();
    let mut addr = y.addr();
    let mut params = [(&mut addr as *mut u64).cast::<std::ffi::c_void>()];
    // SAFETY: the self-test kernels take one f32 pointer and touch y[0 .. 256·grid).
    let r = unsafe {
        emu::launch(
            kernel,
            (grid, 1, 1),
            (block, 1, 1),
            smem,
            &mut params,
            &[8],
            7,
        )
    };
    let host = crate::Tensor::Device(y).to_host().unwrap();
    let v: Vec<f32> = host.to_f64().iter().map(|&v| v as f32).collect();
    (r, v)
}

#[test]
fn static_shared_memory_reads_before_any_write_are_initcheck_errors() {
    let (r, _) = selftest("mk_selftest_static_smem", 3, 64);
    let e = err_text(r);
    assert!(
        e.contains("initcheck: read of static shared memory byte 128")
            && e.contains("mk_selftest_static_smem")
            && e.contains("thread (32,0,0)"),
        "{e}"
    );
}

#[test]
fn static_shared_memory_reads_before_any_write_show_as_nan() {
    // With initcheck off (as a GPU would run it), threads 32..63 read what nobody wrote in
    // this block: NaN, in every block (not zeros in the first and the previous block's values
    // after it).
    let (r, y) = emu::with_checks(emu::Checks::MEMCHECK, || {
        selftest("mk_selftest_static_smem", 3, 64)
    });
    r.unwrap();
    for b in 0..3 {
        let row = &y[b * 64..(b + 1) * 64];
        assert!(
            row[..32].iter().all(|&v| v == 1.0 + b as f32),
            "block {b}: {row:?}"
        );
        assert!(row[32..].iter().all(|v| v.is_nan()), "block {b}: {row:?}");
    }
}

#[test]
fn divergent_warp_collectives_and_deadlocks_are_errors() {
    let (r, _) = selftest("mk_selftest_divergence", 1, 32);
    let e = err_text(r);
    assert!(
        e.contains("warp divergence") && e.contains("mk_selftest_divergence"),
        "{e}"
    );
    let (r, _) = selftest("mk_selftest_deadlock", 1, 64);
    let e = err_text(r);
    assert!(
        e.contains("deadlock") && e.contains("mk_selftest_deadlock"),
        "{e}"
    );
}

#[test]
fn shared_memory_races_are_racecheck_errors() {
    // Every seed of the warp order: the second of the two unordered accesses is reported.
    for kernel in ["mk_selftest_race_raw", "mk_selftest_race_war"] {
        let (r, _) = selftest(kernel, 2, 64);
        let e = err_text(r);
        assert!(
            e.contains("racecheck: ")
                && e.contains("hazard on static shared memory byte")
                && e.contains(kernel),
            "{e}"
        );
    }
    let (r, _) = selftest_smem("mk_selftest_cp_async_early_read", 1, 64, 1024);
    let e = err_text(r);
    assert!(
        e.contains("racecheck: read-after-write hazard on dynamic shared memory byte")
            && e.contains("cp.async still in flight"),
        "{e}"
    );
    // The same copies read after their wait_group: no report, and the values arrived.
    let (r, y) = selftest_smem("mk_selftest_cp_async_waited", 1, 64, 1024);
    r.unwrap();
    let fill = f32::from_bits(0x3F3F_3F3F);
    assert!(
        y[..256].chunks(4).all(|c| c[0] == 2.0 * fill),
        "{:?}",
        &y[..8]
    );
}

#[test]
fn uninitialised_and_past_the_end_global_accesses_are_reported() {
    let gpu = Gpu::emulated().unwrap();
    // relu over 300 f32 (1200 bytes; the allocation is rounded to 1280, so the guard page
    // alone misses element 300): told 301 elements, the exact-end memcheck reports it.
    let e = err_text(relu(&gpu, 300, 301, 256, 0, false));
    assert!(
        e.contains("memcheck: invalid global read of 4 bytes")
            && e.contains("4 bytes past the end of an allocation of 1200 bytes"),
        "{e}"
    );
    // An input the host never wrote: initcheck.
    let x = DeviceTensor::alloc(&gpu, &[64], DType::F32).unwrap();
    let e = err_text(relu_on(&gpu, &x, 64, 64, 0, false));
    assert!(
        e.contains("initcheck: global read of 4 bytes")
            && e.contains("neither the host nor a kernel has written"),
        "{e}"
    );
}

#[test]
fn static_shared_array_overruns_are_memcheck_errors() {
    let (r, _) = selftest("mk_selftest_static_oob", 1, 64);
    let e = err_text(r);
    assert!(
        e.contains("memcheck: invalid static shared access of 4 bytes")
            && e.contains("past the end of a static shared array of 256 bytes")
            && e.contains("thread (63,0,0)"),
        "{e}"
    );
}

/// Issue 15 item 13: while one module's load is in progress (held open by the test hook, as a
/// slow JIT or NVRTC compile would), a launch of a kernel whose module is already loaded, and
/// the first load of a third module, both complete.
#[test]
fn a_slow_module_load_holds_up_no_other_module() {
    use std::sync::mpsc;
    use std::time::Duration;
    let gpu = Gpu::emulated().unwrap();
    relu(&gpu, 64, 64, 256, 0, false).unwrap(); // `elementwise` is loaded
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    gpu.set_load_hook(move |module| {
        if module == "layout" {
            let _ = entered_tx.send(());
            let rx = release_rx.lock().unwrap_or_else(|p| p.into_inner());
            let _ = rx.recv_timeout(Duration::from_secs(60));
        }
    });
    std::thread::scope(|s| {
        let slow = s.spawn(|| transpose(&gpu, 256));
        // The layout module's load has started (and waits for the release below).
        entered_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        let other = done_tx.clone();
        let g = &gpu;
        s.spawn(move || done_tx.send(("relu launch", relu(g, 64, 64, 256, 0, false))));
        s.spawn(move || other.send(("softmax load", g.fetch("softmax_warp_f32").map(|_| ()))));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let got: Vec<_> = (0..2)
            .map(|_| {
                done_rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            })
            .collect();
        // Let the held load finish before asserting, so every thread joins either way.
        release_tx.send(()).unwrap();
        for r in got {
            match r {
                Ok((what, r)) => assert!(r.is_ok(), "{what}: {r:?}"),
                Err(_) => panic!("a launch waited on another module's load"),
            }
        }
        slow.join().unwrap().unwrap();
    });
}

/// Threads that need the same module at once load it once (the others wait for that load),
/// and all of them launch.
#[test]
fn threads_needing_one_module_load_it_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let gpu = Gpu::emulated().unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let counted = loads.clone();
    gpu.set_load_hook(move |module| {
        if module == "elementwise" {
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    });
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| relu(&gpu, 64, 64, 256, 0, false)))
            .collect();
        for h in hs {
            h.join().unwrap().unwrap();
        }
    });
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

// ---- Hopper: mbarrier and wgmma misuse (emu/selftest.cu) --------------------------------------

#[test]
fn mbarrier_misuse_is_reported() {
    let (r, _) = selftest_smem("mk_selftest_mbar_uninit", 1, 64, 64);
    let e = err_text(r);
    assert!(e.contains("no thread of the block initialised"), "{e}");
    let (r, _) = selftest_smem("mk_selftest_mbar_never_completes", 1, 64, 64);
    let e = err_text(r);
    assert!(
        e.contains("deadlock") && e.contains("mbarrier phase that never completes"),
        "{e}"
    );
    // Two phases in order: runs.
    let (r, y) = selftest_smem("mk_selftest_mbar_phases", 1, 64, 64);
    r.unwrap();
    assert!(y[..64].iter().all(|&v| v == 2.0), "{:?}", &y[..64]);
}

#[test]
fn wgmma_misuse_is_reported() {
    let smem = 1024 + 24 * 1024;
    let (r, _) = selftest_smem("mk_selftest_wgmma_unfenced", 1, 128, smem);
    let e = err_text(r);
    assert!(e.contains("no wgmma.fence since"), "{e}");
    let (r, _) = selftest_smem("mk_selftest_wgmma_unwaited", 1, 128, smem);
    let e = err_text(r);
    assert!(e.contains("still in flight when the thread exits"), "{e}");
    // A warpgroup instruction needs whole warpgroups.
    let (r, _) = selftest_smem("mk_selftest_wgmma_unfenced", 1, 96, smem);
    let e = err_text(r);
    assert!(e.contains("multiple of 128 threads"), "{e}");
}
