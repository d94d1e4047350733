// LayerNorm over the last dimension with f32 statistics and an optional fused residual add:
//   h = round_T(x + residual);  y = (h - mean(h)) / sqrt(var(h) + eps) * gamma + beta
// and, when h_out is given, h is stored too (the pre-LN residual stream).
// Statistics use Welford per thread merged across the row (stable with outliers); a second
// read of the row normalises. Kernels: layernorm_{warp,block}_{f32,f16,bf16}.
// Launcher: src/ops/layernorm.rs; reference: src/reference/layernorm.rs.
#include "common/types.cuh"
#include "common/reduce.cuh"
#include "common/rows.cuh"

namespace mk {

template <typename T, int TPR>
__device__ __forceinline__ void layernorm_rows(T* __restrict__ y, T* __restrict__ h_out,
                                               const T* __restrict__ x, const T* __restrict__ res,
                                               const T* __restrict__ gamma, const T* __restrict__ beta,
                                               float eps, int rows, int n, int vec_ok) {
    const int row = blockIdx.x * (blockDim.x / TPR) + threadIdx.x / TPR;
    const int lane = threadIdx.x % TPR;
    if (TPR == 32 && row >= rows) return;
    const long long base = (long long)row * n;
    const T* xr = x + base;
    const T* rr = res ? res + base : nullptr;
    const int nvec = vec_ok ? n / VEC : 0;

    Welford w = {0.f, 0.f, 0.f};
    for (int c = lane; c < nvec; c += TPR) {
        float h[VEC];
        load_h<T>(xr, rr, (long long)c * VEC, h);
#pragma unroll
        for (int k = 0; k < VEC; ++k) welford_push(w, h[k]);
    }
    for (int i = nvec * VEC + lane; i < n; i += TPR) welford_push(w, load_h1<T>(xr, rr, i));
    w = group_allreduce<TPR>(w, merge_welford);
    const float mean = w.mean;
    const float rstd = 1.f / sqrtf(fmaxf(w.m2 / (float)n, 0.f) + eps);

    for (int c = lane; c < nvec; c += TPR) {
        const long long i = (long long)c * VEC;
        float h[VEC], g[VEC], b[VEC], o[VEC];
        load_h<T>(xr, rr, i, h);
        load_vec<T>(gamma + i, g);
        load_vec<T>(beta + i, b);
#pragma unroll
        for (int k = 0; k < VEC; ++k) o[k] = (h[k] - mean) * rstd * g[k] + b[k];
        store_vec<T>(y + base + i, o);
        if (h_out) store_vec<T>(h_out + base + i, h);
    }
    for (int i = nvec * VEC + lane; i < n; i += TPR) {
        const float h = load_h1<T>(xr, rr, i);
        y[base + i] = from_f32<T>((h - mean) * rstd * to_f32<T>(gamma[i]) + to_f32<T>(beta[i]));
        if (h_out) h_out[base + i] = from_f32<T>(h);
    }
}

}  // namespace mk

#define MK_LAYERNORM(MODE, TPR, T, TN)                                                           \
    extern "C" __global__ void __launch_bounds__(mk::ROW_THREADS)                                \
        layernorm_##MODE##_##TN(T* y, T* h_out, const T* x, const T* res, const T* gamma,        \
                                const T* beta, float eps, int rows, int n, int vec_ok) {         \
        mk::layernorm_rows<T, TPR>(y, h_out, x, res, gamma, beta, eps, rows, n, vec_ok);         \
    }
#define MK_LAYERNORM_ALL(T, TN) MK_LAYERNORM(warp, 32, T, TN) MK_LAYERNORM(block, mk::ROW_THREADS, T, TN)
MK_LAYERNORM_ALL(float, f32)
MK_LAYERNORM_ALL(mk::f16, f16)
MK_LAYERNORM_ALL(mk::bf16, bf16)
