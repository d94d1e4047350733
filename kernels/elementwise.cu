// Elementwise family: y = act(x * alpha + bias[col]) + residual, and dtype casts.
//
// One fused kernel covers bias add, the activations, scale and residual add (each optional),
// so a GEMM-free layer tail costs one read of each input and one write. Arithmetic is f32;
// the output is rounded to nearest even. Kernels: eltwise_{act}_{f32,f16,bf16},
// cast_{src}_{dst}. Launcher: src/ops/elementwise.rs; reference: src/reference/elementwise.rs.
#include "common/types.cuh"
#include "common/act.cuh"

namespace mk {

// total elements; bias (length n) is broadcast along rows; vec_ok: host checked that
// pointers are VEC-aligned and n % VEC == 0, so a VEC chunk never straddles a row.
template <typename T, int A>
__device__ __forceinline__ void eltwise(T* __restrict__ y, const T* __restrict__ x,
                                        const T* __restrict__ bias, const T* __restrict__ res,
                                        float alpha, long long total, long long n, int vec_ok) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long nvec = vec_ok ? total / VEC : 0;
    for (long long v = tid; v < nvec; v += stride) {
        const long long i = v * VEC;
        float a[VEC], b[VEC], r[VEC];
        load_vec<T>(x + i, a);
        if (bias) load_vec<T>(bias + i % n, b);
        if (res) load_vec<T>(res + i, r);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            float t = a[k] * alpha;
            if (bias) t += b[k];
            t = act<A>(t);
            if (res) t += r[k];
            a[k] = t;
        }
        store_vec<T>(y + i, a);
    }
    for (long long i = nvec * VEC + tid; i < total; i += stride) {
        float t = to_f32<T>(x[i]) * alpha;
        if (bias) t += to_f32<T>(bias[i % n]);
        t = act<A>(t);
        if (res) t += to_f32<T>(res[i]);
        y[i] = from_f32<T>(t);
    }
}

template <typename S, typename D>
__device__ __forceinline__ void cast(D* __restrict__ y, const S* __restrict__ x, long long total, int vec_ok) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long nvec = vec_ok ? total / VEC : 0;
    for (long long v = tid; v < nvec; v += stride) {
        float a[VEC];
        load_vec<S>(x + v * VEC, a);
        store_vec<D>(y + v * VEC, a);
    }
    for (long long i = nvec * VEC + tid; i < total; i += stride) y[i] = from_f32<D>(to_f32<S>(x[i]));
}

}  // namespace mk

#define MK_ELTWISE(NAME, A, T, TN)                                                              \
    extern "C" __global__ void eltwise_##NAME##_##TN(T* y, const T* x, const T* bias,          \
                                                     const T* res, float alpha, long long total, \
                                                     long long n, int vec_ok) {                \
        mk::eltwise<T, mk::A>(y, x, bias, res, alpha, total, n, vec_ok);                        \
    }
#define MK_ELTWISE_ALL(NAME, A) \
    MK_ELTWISE(NAME, A, float, f32) MK_ELTWISE(NAME, A, mk::f16, f16) MK_ELTWISE(NAME, A, mk::bf16, bf16)

MK_ELTWISE_ALL(identity, IDENTITY)
MK_ELTWISE_ALL(relu, RELU)
MK_ELTWISE_ALL(relu6, RELU6)
MK_ELTWISE_ALL(gelu_erf, GELU_ERF)
MK_ELTWISE_ALL(gelu_tanh, GELU_TANH)
MK_ELTWISE_ALL(silu, SILU)
MK_ELTWISE_ALL(sigmoid, SIGMOID)
MK_ELTWISE_ALL(tanh, TANH)

#define MK_CAST(S, SN, D, DN)                                                                     \
    extern "C" __global__ void cast_##SN##_##DN(D* y, const S* x, long long total, int vec_ok) { \
        mk::cast<S, D>(y, x, total, vec_ok);                                                     \
    }
MK_CAST(float, f32, mk::f16, f16)
MK_CAST(float, f32, mk::bf16, bf16)
MK_CAST(mk::f16, f16, float, f32)
MK_CAST(mk::bf16, bf16, float, f32)
MK_CAST(mk::f16, f16, mk::bf16, bf16)
MK_CAST(mk::bf16, bf16, mk::f16, f16)
