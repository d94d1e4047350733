// Deliberately wrong kernels, compiled only into the emulated GPU (never by NVRTC, not in the
// kernel table): src/device/emu_tests.rs launches each and requires the emulator to report it.
#include "common/types.cuh"

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
