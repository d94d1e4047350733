// Additions to emu.h for kernels that declare __shared__ arrays inside functions and use warp
// shuffles (pool, squeeze_excite, layout, preprocess): function-scope __shared__ becomes a
// static local (one instance, shared by the block's threads; blocks run one at a time), and
// __shfl_xor_sync exchanges through a buffer between two per-warp barriers. Call
// emu_warp::init(threads per block) before a launch whose kernel shuffles; every lane of a warp
// must then take part in each shuffle (as in the kernels: warp-uniform loops).
#pragma once
#undef __shared__
#define __shared__ static
namespace emu_warp {
inline std::unique_ptr<std::barrier<>> bars[32];
inline float buf[1024];
inline void init(unsigned threads) {
    for (unsigned w = 0; w * 32 < threads; ++w)
        bars[w] = std::make_unique<std::barrier<>>(std::min(32u, threads - 32 * w));
}
}  // namespace emu_warp
inline float __shfl_xor_sync(unsigned, float v, int o) {
    const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned w = t / 32, lane = t % 32;
    emu_warp::buf[t] = v;
    emu_warp::bars[w]->arrive_and_wait();
    const float r = emu_warp::buf[w * 32 + (lane ^ (unsigned)o)];
    emu_warp::bars[w]->arrive_and_wait();
    return r;
}
// __shfl_sync: every lane reads lane `src`'s value (the row reductions broadcast lane 0's).
inline float __shfl_sync(unsigned, float v, int src) {
    const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned w = t / 32;
    emu_warp::buf[t] = v;
    emu_warp::bars[w]->arrive_and_wait();
    const float r = emu_warp::buf[w * 32 + ((unsigned)src & 31u)];
    emu_warp::bars[w]->arrive_and_wait();
    return r;
}
