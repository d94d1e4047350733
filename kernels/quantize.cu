// Int8 quantisation of activations (per token, symmetric, absmax), optionally fused after
// LayerNorm, and dequantisation.
//   quantize_rows:   s[r] = max|x[r,:]| / 127 (1 when the row is all zero), q = rn(x / s)
//   layernorm_quant: the same applied to LayerNorm(x + residual) computed in f32, so the
//                    normalised row never goes through memory in float
//   dequantize_rows: y = q · s[r] (or s[0] per tensor)
// All arithmetic is f32 with IEEE division, so the CPU reference reproduces q exactly.
// Kernels: quantize_rows_{warp,block}_*, layernorm_quant_{warp,block}_*, dequantize_rows_*.
// Launcher: src/ops/quantize.rs; reference: src/reference/quantize.rs.
#include "common/types.cuh"
#include "common/reduce.cuh"
#include "common/rows.cuh"

namespace mk {

struct alignas(8) I8x8 { signed char v[VEC]; };

__device__ __forceinline__ signed char quant(float x, float s) {
    return (signed char)max(-128, min(127, __float2int_rn(x / s)));
}
__device__ __forceinline__ float scale_of(float absmax) { return absmax > 0.f ? absmax / 127.f : 1.f; }

// Row values: x (+ residual rounded to T), then LayerNorm when NORM.
template <typename T, int TPR, bool NORM>
__device__ __forceinline__ void quantize_rows(signed char* __restrict__ q, float* __restrict__ scale,
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
    auto h1 = [&](int i) { return load_h1<T>(xr, rr, i); };
    auto hv = [&](int c, float (&h)[VEC]) { load_h<T>(xr, rr, (long long)c * VEC, h); };
    float mean = 0.f, rstd = 1.f;
    if constexpr (NORM) {
        Welford w = {0.f, 0.f, 0.f};
        for (int c = lane; c < nvec; c += TPR) {
            float h[VEC];
            hv(c, h);
#pragma unroll
            for (int k = 0; k < VEC; ++k) welford_push(w, h[k]);
        }
        for (int i = nvec * VEC + lane; i < n; i += TPR) welford_push(w, h1(i));
        w = group_allreduce<TPR>(w, merge_welford);
        mean = w.mean;
        rstd = 1.f / sqrtf(fmaxf(w.m2 / (float)n, 0.f) + eps);
    }
    auto y1 = [&](int i, float h) { return NORM ? (h - mean) * rstd * to_f32<T>(gamma[i]) + to_f32<T>(beta[i]) : h; };
    AbsMax am = {0.f};
    for (int c = lane; c < nvec; c += TPR) {
        float h[VEC];
        hv(c, h);
#pragma unroll
        for (int k = 0; k < VEC; ++k) am.v = fmaxf(am.v, fabsf(y1(c * VEC + k, h[k])));
    }
    for (int i = nvec * VEC + lane; i < n; i += TPR) am.v = fmaxf(am.v, fabsf(y1(i, h1(i))));
    am = group_allreduce<TPR>(am, merge_absmax);
    const float s = scale_of(am.v);
    if (lane == 0) scale[row] = s;
    for (int c = lane; c < nvec; c += TPR) {
        float h[VEC];
        hv(c, h);
        I8x8 o;
#pragma unroll
        for (int k = 0; k < VEC; ++k) o.v[k] = quant(y1(c * VEC + k, h[k]), s);
        *reinterpret_cast<I8x8*>(q + base + c * VEC) = o;
    }
    for (int i = nvec * VEC + lane; i < n; i += TPR) q[base + i] = quant(y1(i, h1(i)), s);
}

template <typename T>
__device__ __forceinline__ void dequantize_rows(T* __restrict__ y, const signed char* __restrict__ q,
                                                const float* __restrict__ s, long long total, long long n,
                                                int per_row) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
        y[i] = from_f32<T>((float)q[i] * s[per_row ? i / n : 0]);
}

}  // namespace mk

#define MK_QUANT(MODE, TPR, T, TN)                                                                    \
    extern "C" __global__ void __launch_bounds__(mk::ROW_THREADS)                                     \
        quantize_rows_##MODE##_##TN(signed char* q, float* scale, const T* x, int rows, int n, int vec_ok) { \
        mk::quantize_rows<T, TPR, false>(q, scale, x, nullptr, nullptr, nullptr, 0.f, rows, n, vec_ok); \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(mk::ROW_THREADS) layernorm_quant_##MODE##_##TN(      \
        signed char* q, float* scale, const T* x, const T* res, const T* gamma, const T* beta, float eps, \
        int rows, int n, int vec_ok) {                                                                \
        mk::quantize_rows<T, TPR, true>(q, scale, x, res, gamma, beta, eps, rows, n, vec_ok);         \
    }
#define MK_QUANT_ALL(T, TN)                                                                           \
    MK_QUANT(warp, 32, T, TN) MK_QUANT(block, mk::ROW_THREADS, T, TN)                                 \
    extern "C" __global__ void dequantize_rows_##TN(T* y, const signed char* q, const float* s,      \
                                                    long long total, long long n, int per_row) {     \
        mk::dequantize_rows<T>(y, q, s, total, n, per_row);                                           \
    }
MK_QUANT_ALL(float, f32)
MK_QUANT_ALL(mk::f16, f16)
MK_QUANT_ALL(mk::bf16, bf16)
