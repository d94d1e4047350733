// Self-test kernels, compiled only into the emulated GPU (never by NVRTC, not in the kernel
// table). Most are deliberately wrong (a static shared read before any write, divergence, a
// deadlock, races, an early cp.async read): src/device/emu_tests.rs launches each and requires
// the emulator to report it. The mk_selftest_mma_* / mk_selftest_ldmatrix* probes run
// one tensor-core instruction through kernels/common/mma.cuh for one warp, so that
// src/device/emu_layout_tests.rs can check the emulator's register layouts against CuTe's.
#include "common/types.cuh"
#include "common/mma.cuh"

// Threads 32..63 read elements of a static shared array that no thread of the block wrote.
extern "C" __global__ void mk_selftest_static_smem(float* y) {
    MK_STATIC_SMEM(float, s, [64]);
    if (threadIdx.x < 32) s[threadIdx.x] = 1.f + (float)blockIdx.x;
    __syncthreads();
    y[blockIdx.x * 64 + threadIdx.x] = s[threadIdx.x];
}

// Half of a warp shuffles, the other half waits at __syncwarp: two different warp-synchronous
// instructions in one warp.
extern "C" __global__ void mk_selftest_divergence(float* y) {
    float v = (float)threadIdx.x;
    if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    else __syncwarp();
    y[threadIdx.x] = v;
}

// Warp 0 waits at the block barrier while warp 1 waits in a shuffle that lane 0 of warp 1
// never joins (it is at the barrier too): nothing can proceed.
extern "C" __global__ void mk_selftest_deadlock(float* y) {
    float v = (float)threadIdx.x;
    if (threadIdx.x == 32 || threadIdx.x < 32) __syncthreads();
    else v = __shfl_xor_sync(0xffffffffu, v, 1);
    y[threadIdx.x] = v;
}

// memcheck: the last thread writes one element past a static shared array.
extern "C" __global__ void mk_selftest_static_oob(float* y) {
    MK_STATIC_SMEM(float, s, [64]);
    s[threadIdx.x + (threadIdx.x == 63 ? 1 : 0)] = (float)threadIdx.x;
    __syncthreads();
    y[threadIdx.x] = s[threadIdx.x];
}

// racecheck: lane 0 of warp 0 rewrites an element that lane 0 of warp 1 reads, with no barrier
// between (whichever runs first, the second access is the hazard).
extern "C" __global__ void mk_selftest_race_raw(float* y) {
    MK_STATIC_SMEM(float, s, [64]);
    s[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    if (threadIdx.x == 0) s[0] = 5.f;
    if (threadIdx.x == 32) y[0] = s[0];
    __syncthreads();
    y[threadIdx.x] = s[63 - threadIdx.x];
}

// racecheck: warp 1 overwrites elements warp 0 reads, with no barrier between the read and the
// write (the reads are ordered after the first writes by the barrier).
extern "C" __global__ void mk_selftest_race_war(float* y) {
    MK_STATIC_SMEM(float, s, [64]);
    s[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    const float v = s[(threadIdx.x + 1) % 64];
    if (threadIdx.x >= 32) s[threadIdx.x - 32] = 0.f;
    y[threadIdx.x] = v;
}

// racecheck: a thread reads its own cp.async destination before cp.async.wait_group.
extern "C" __global__ void mk_selftest_cp_async_early_read(float* y) {
    MK_DYN_SMEM(float, s);
    mk_emu::cp_async16(s + 4 * threadIdx.x, y + 4 * threadIdx.x, true);
    mk_emu::commit();
    const float v = s[4 * threadIdx.x];
    mk_emu::wait(0);
    y[4 * threadIdx.x] = v + s[4 * threadIdx.x + 1];
}

// The same, correctly ordered: wait_group before the read (racecheck stays quiet).
extern "C" __global__ void mk_selftest_cp_async_waited(float* y) {
    MK_DYN_SMEM(float, s);
    mk_emu::cp_async16(s + 4 * threadIdx.x, y + 4 * threadIdx.x, true);
    mk_emu::commit();
    mk_emu::wait(0);
    y[4 * threadIdx.x] = s[4 * threadIdx.x] + s[4 * threadIdx.x + 1];
}

// One mma.sync per lane of a single warp through mk::Mma<E> (the GEMMs' wrapper): lane l reads
// in[10l .. 10l+10) = a0..a3, b0, b1, c0..c3 (raw 32-bit words; C as f32 or s32 bits) and
// writes d0..d3 to out[4l .. 4l+4).
template <typename E> __device__ __forceinline__ void selftest_mma(const unsigned* in, unsigned* out) {
    typedef typename mk::Mma<E>::Acc Acc;
    const unsigned* p = in + 10 * (threadIdx.x & 31);
    const unsigned a[4] = {p[0], p[1], p[2], p[3]};
    Acc d[4];
    for (int i = 0; i < 4; ++i) memcpy(&d[i], &p[6 + i], 4);
    mk::Mma<E>::run(d, a, p[4], p[5]);
    for (int i = 0; i < 4; ++i) memcpy(&out[4 * (threadIdx.x & 31) + i], &d[i], 4);
}
extern "C" __global__ void mk_selftest_mma_f16(const unsigned* in, unsigned* out) { selftest_mma<mk::f16>(in, out); }
extern "C" __global__ void mk_selftest_mma_bf16(const unsigned* in, unsigned* out) { selftest_mma<mk::bf16>(in, out); }
extern "C" __global__ void mk_selftest_mma_s8(const unsigned* in, unsigned* out) { selftest_mma<signed char>(in, out); }

// One ldmatrix.x4 for a single warp: the block copies `words` 32-bit words from `image` into
// dynamic shared memory, then lane l passes row address smem + offs[l] bytes and writes its
// four registers to out[4l .. 4l+4). The non-transposed form goes through mk::ldmatrix_x4 (the
// GEMMs' wrapper); no kernel loads with .trans, so that form calls the emulator directly.
__device__ __forceinline__ void selftest_ldmatrix(const unsigned* image, int words, const int* offs, unsigned* out,
                                                  bool trans) {
    MK_DYN_SMEM(unsigned, s);
    for (int i = threadIdx.x; i < words; i += blockDim.x) s[i] = image[i];
    __syncthreads();
    const int l = threadIdx.x & 31;
    unsigned r[4];
    const char* row = reinterpret_cast<const char*>(s) + offs[l];
    if (trans) mk_emu::ldmatrix_x4(r, row, true);
    else mk::ldmatrix_x4(r, row);
    for (int j = 0; j < 4; ++j) out[4 * l + j] = r[j];
}
extern "C" __global__ void mk_selftest_ldmatrix(const unsigned* image, int words, const int* offs, unsigned* out) {
    selftest_ldmatrix(image, words, offs, out, false);
}
extern "C" __global__ void mk_selftest_ldmatrix_trans(const unsigned* image, int words, const int* offs,
                                                      unsigned* out) {
    selftest_ldmatrix(image, words, offs, out, true);
}

// ---- Hopper (kernels/common/hopper.cuh) ------------------------------------------------------
#include "common/hopper.cuh"

// The dynamic shared memory of a probe, from its first 1024-byte aligned shared address.
__device__ __forceinline__ char* aligned_smem() {
    MK_DYN_SMEM(char, raw);
    return raw + ((1024u - (mk::shared_addr(raw) & 1023u)) & 1023u);
}

// One wgmma m64n128k16 (f16) for one warpgroup through mk::Wgmma: the block copies `words`
// 32-bit words of `image` to the aligned shared memory, adds that address to the start-address
// field of the descriptors `da`, `db` (given relative to it) and thread t writes its 64
// accumulators to out[64t .. 64t+64).
extern "C" __global__ void mk_selftest_wgmma(const unsigned* image, int words, unsigned long long da,
                                             unsigned long long db, float* out) {
    char* s = aligned_smem();
    unsigned* w = reinterpret_cast<unsigned*>(s);
    for (int i = threadIdx.x; i < words; i += blockDim.x) w[i] = image[i];
    mk::fence_proxy_async();  // generic stores, then wgmma's async-proxy reads
    __syncthreads();
    const unsigned long long base = mk::shared_addr(s) >> 4;
    float d[64];
    for (int i = 0; i < 64; ++i) d[i] = 0.f;
    mk::wgmma_fence();
    mk::Wgmma<mk::f16>::run(d, da + base, db + base, 0);
    mk::wgmma_commit();
    mk::wgmma_wait<0>();
    for (int i = 0; i < 64; ++i) out[64 * threadIdx.x + i] = d[i];
}

// One TMA load of the box at (c0, c1, c2) of `map` into the aligned shared memory, completed
// on an mbarrier all threads wait on (unless `wait` is 0: then nobody waits, which the
// emulator must report); the block then copies `bytes` bytes of shared memory to out.
extern "C" __global__ void mk_selftest_tma(const MK_GRID_CONSTANT mk::TmaMap map, int c0, int c1, int c2, int bytes,
                                           int wait, unsigned* out) {
    char* s = aligned_smem();
    unsigned long long* bar = reinterpret_cast<unsigned long long*>(s + bytes);
    if (threadIdx.x == 0) {
        mk::mbar_init(bar, 1);
        mk::mbar_init_fence();
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        mk::mbar_arrive_expect_tx(bar, bytes);
        mk::tma_load_3d(s, &map, c0, c1, c2, bar);
    }
    if (!wait) return;
    mk::mbar_wait(bar, 0);
    const unsigned* w = reinterpret_cast<const unsigned*>(s);
    for (int i = threadIdx.x; i < bytes / 4; i += blockDim.x) out[i] = w[i];
}

// Thread 0 arrives on an mbarrier nobody initialised.
extern "C" __global__ void mk_selftest_mbar_uninit(float* y) {
    MK_DYN_SMEM(unsigned long long, bar);
    if (threadIdx.x == 0) mk::mbar_arrive(bar);
    y[threadIdx.x] = 1.f;
}

// An mbarrier expecting two arrivals gets one; every thread waits for the phase.
extern "C" __global__ void mk_selftest_mbar_never_completes(float* y) {
    MK_DYN_SMEM(unsigned long long, bar);
    if (threadIdx.x == 0) {
        mk::mbar_init(bar, 2);
        mk::mbar_init_fence();
    }
    __syncthreads();
    if (threadIdx.x == 0) mk::mbar_arrive(bar);
    mk::mbar_wait(bar, 0);
    y[threadIdx.x] = 1.f;
}

// Two phases of an mbarrier with one arrival each: waits on parity 0 then 1 pass in order.
extern "C" __global__ void mk_selftest_mbar_phases(float* y) {
    MK_DYN_SMEM(unsigned long long, bar);
    if (threadIdx.x == 0) {
        mk::mbar_init(bar, 1);
        mk::mbar_init_fence();
    }
    __syncthreads();
    if (threadIdx.x == 0) mk::mbar_arrive(bar);
    mk::mbar_wait(bar, 0);
    __syncthreads();
    if (threadIdx.x == 0) mk::mbar_arrive(bar);
    mk::mbar_wait(bar, 1);
    y[threadIdx.x] = 2.f;
}

// wgmma.mma_async with no wgmma.fence before it.
extern "C" __global__ void mk_selftest_wgmma_unfenced(float* y) {
    char* s = aligned_smem();
    const unsigned long long desc = mk::desc_k128(mk::shared_addr(s));
    float d[64] = {};
    mk::Wgmma<mk::f16>::run(d, desc, desc, 0);
    mk::wgmma_commit();
    mk::wgmma_wait<0>();
    y[threadIdx.x] = d[0];
}

// wgmma.mma_async issued and committed, never waited for before the threads exit.
extern "C" __global__ void mk_selftest_wgmma_unwaited(float* y) {
    char* s = aligned_smem();
    const unsigned long long desc = mk::desc_k128(mk::shared_addr(s));
    float d[64] = {};
    mk::wgmma_fence();
    mk::Wgmma<mk::f16>::run(d, desc, desc, 0);
    mk::wgmma_commit();
    y[threadIdx.x] = 1.f;
}
