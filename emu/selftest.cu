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
