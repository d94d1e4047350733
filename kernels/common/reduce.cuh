// medkern common: deterministic all-reduce over a group of threads that shares one row.
#pragma once
#include "common/types.cuh"

namespace mk {

constexpr unsigned FULL_MASK = 0xffffffffu;

// Running max and the sum of exp(v - max): the online-softmax state.
struct MaxSum { float m, s; };
__device__ __forceinline__ MaxSum shfl_xor(MaxSum a, int o) {
    return {__shfl_xor_sync(FULL_MASK, a.m, o), __shfl_xor_sync(FULL_MASK, a.s, o)};
}
__device__ __forceinline__ MaxSum shfl_from(MaxSum a, int lane) {
    return {__shfl_sync(FULL_MASK, a.m, lane), __shfl_sync(FULL_MASK, a.s, lane)};
}
__device__ __forceinline__ MaxSum merge_maxsum(MaxSum a, MaxSum b) {
    const float m = fmaxf(a.m, b.m);
    if (m == neg_inf()) return {m, a.s + b.s};  // both empty: avoid exp(-inf - -inf) = NaN
    // An empty side contributes s·0: zero, or NaN when a NaN entry poisoned it (as it should).
    const float sa = a.m == neg_inf() ? a.s * 0.f : a.s * expf(a.m - m);
    const float sb = b.m == neg_inf() ? b.s * 0.f : b.s * expf(b.m - m);
    return {m, sa + sb};
}
__device__ __forceinline__ void maxsum_push(MaxSum& a, float v) {
    if (v == neg_inf()) return;
    if (v > a.m) { a.s = a.s * expf(a.m - v) + 1.f; a.m = v; }
    else { a.s += expf(v - a.m); }
}

// Running absolute maximum (int8 quantisation scales).
struct AbsMax { float v; };
__device__ __forceinline__ AbsMax shfl_xor(AbsMax a, int o) { return {__shfl_xor_sync(FULL_MASK, a.v, o)}; }
__device__ __forceinline__ AbsMax shfl_from(AbsMax a, int lane) { return {__shfl_sync(FULL_MASK, a.v, lane)}; }
__device__ __forceinline__ AbsMax merge_absmax(AbsMax a, AbsMax b) { return {fmaxf(a.v, b.v)}; }

// Welford count / mean / sum of squared deviations: stable with large outliers.
struct Welford { float n, mean, m2; };
__device__ __forceinline__ Welford shfl_xor(Welford a, int o) {
    return {__shfl_xor_sync(FULL_MASK, a.n, o), __shfl_xor_sync(FULL_MASK, a.mean, o),
            __shfl_xor_sync(FULL_MASK, a.m2, o)};
}
__device__ __forceinline__ Welford shfl_from(Welford a, int lane) {
    return {__shfl_sync(FULL_MASK, a.n, lane), __shfl_sync(FULL_MASK, a.mean, lane),
            __shfl_sync(FULL_MASK, a.m2, lane)};
}
__device__ __forceinline__ Welford merge_welford(Welford a, Welford b) {
    const float n = a.n + b.n;
    if (n == 0.f) return a;
    const float d = b.mean - a.mean;
    const float fb = b.n / n;
    return {n, a.mean + d * fb, a.m2 + b.m2 + d * d * a.n * fb};
}
__device__ __forceinline__ void welford_push(Welford& a, float v) {
    a.n += 1.f;
    const float d = v - a.mean;
    a.mean += d / a.n;
    a.m2 += d * (v - a.mean);
}

// All-reduce over TPR consecutive threads (TPR = 32: one warp; TPR = blockDim.x: the block).
// A merge need not be commutative (Welford's is not), so partner lanes of the butterfly can
// differ in the last bit: lane 0's result is broadcast, and the block stage merges the warps
// in one fixed order, so every thread gets the same bits on every run.
template <int TPR, typename S, typename F>
__device__ __forceinline__ S group_allreduce(S v, F merge) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = merge(v, shfl_xor(v, o));
    v = shfl_from(v, 0);
    if constexpr (TPR > 32) {
        constexpr int W = TPR / 32;
        MK_STATIC_SMEM(S, sh, [W]);
        const int w = threadIdx.x / 32;
        if (threadIdx.x % 32 == 0) sh[w] = v;
        __syncthreads();
        v = sh[0];
#pragma unroll
        for (int i = 1; i < W; ++i) v = merge(v, sh[i]);
        __syncthreads();  // sh may be reused by the next call
    }
    return v;
}

}  // namespace mk
