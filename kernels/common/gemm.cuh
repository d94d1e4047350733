// medkern common: GEMM launch parameters and the fused epilogue store, shared by the dense
// and int8 GEMMs. The parameter block mirrors `GemmParams` in src/ops/gemm.rs field for field.
#pragma once
#include "common/types.cuh"
#include "common/act.cuh"

namespace mk {

// Y[b] = epilogue(X[b] · W[b]^T) with X [M,K] and W [N,K] row-major (the PyTorch Linear
// layout), b = blockIdx.z with per-batch strides in elements.
struct GemmParams {
    const void* x;
    const void* w;
    void* y;
    const void* bias;      // [N]: input dtype (dense) or f32 (int8); may be null
    const void* residual;  // Y's shape and dtype; may be null
    const float* sx;       // int8: activation scale, 1 value or M (per token)
    const float* sw;       // int8: weight scales, [N] or [N, groups]
    const unsigned* meta;  // 2:4 sparse: mma.sp metadata words (src/sparse.rs)
    long long stride_x, stride_w, stride_y, stride_r;
    int M, N, K;
    float alpha;
    int act;         // Activation code (act.cuh)
    int group_size;  // int8: K values per weight-scale group, multiple of 64; 0 = per channel
    int sx_per_row;  // int8: sx has M entries
    float out_scale; // int8 output: y = round(v / out_scale) saturated to [-128, 127]
};

template <typename O> __device__ __forceinline__ O out_cast(float v) { return from_f32<O>(v); }
template <> __device__ __forceinline__ signed char out_cast<signed char>(float v) {
    return (signed char)max(-128, min(127, __float2int_rn(v)));
}

template <typename O> struct alignas(2 * sizeof(O)) Pair { O v[2]; };

// Stores columns col, col+1 of one output row: v[j] → f(col+j, v[j]) (+ residual) → cast.
// Uses one paired store when both columns exist and the pair is aligned (N even).
template <typename O, typename F>
__device__ __forceinline__ void store_pair(O* Y, const O* R, int row, int col, int N, float v0, float v1, F f) {
    const long long base = (long long)row * N + col;
    float o[2] = {v0, v1};
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        if (col + j < N) {
            o[j] = f(col + j, o[j]);
            if (R) o[j] += to_f32<O>(R[base + j]);
        }
    }
    if (col + 1 < N && (N & 1) == 0) {
        Pair<O> p;
        p.v[0] = out_cast<O>(o[0]);
        p.v[1] = out_cast<O>(o[1]);
        *reinterpret_cast<Pair<O>*>(Y + base) = p;
    } else if (col < N) {
        Y[base] = out_cast<O>(o[0]);
        if (col + 1 < N) Y[base + 1] = out_cast<O>(o[1]);
    }
}

}  // namespace mk
