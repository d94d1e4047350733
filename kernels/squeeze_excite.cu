// Squeeze-and-excitation (EfficientNet SE block) on an NHWC activation x [N, H, W, C]:
//   s = sigmoid(W2 · SiLU(W1 · mean_hw(x) + b1) + b2),   y = x ⊙ s (per image and channel),
// W1 [Cse, C], W2 [C, Cse] (PyTorch Linear layout), weights and biases f32 or x's dtype.
//
// se_excite_{x}_{w}: one block of 512 threads per image: the squeeze (per-channel sums of
// the image, common/spatial.cuh, or the sum of `splits` partial sums from se_pool), then FC1
// (one warp per hidden unit, lanes over C, xor-butterfly sum) + SiLU into shared memory, then
// FC2 (one thread per channel, sequential over Cse) + sigmoid → s [N, C] f32. Everything in
// a fixed order: deterministic. Shared: pooled C ≤ 4096 floats, hidden Cse ≤ 512 floats
// (SE_MAX_CHANNELS, SE_MAX_HIDDEN and the block sizes: common/consts.cuh).
// se_pool_{x}: the squeeze split over `splits` position ranges per image for small batches
// with large H·W (one block per image would use one SM): grid (splits, N), partial sums
// [N, splits, C] f32.
// se_scale_{x}: y = x · s[n, c], grid (blocks per image, N), grid stride within the image,
// 16-byte vectors when C % 8 == 0 (vec_ok); the product is f32, rounded once.
// Launcher: src/ops/squeeze_excite.rs; reference: src/reference/squeeze_excite.rs.
#include "common/types.cuh"
#include "common/act.cuh"
#include "common/spatial.cuh"

namespace mk {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename T, typename W, int V>
__device__ __forceinline__ void se_excite(float* __restrict__ s_out, const T* __restrict__ x,
                                          const float* __restrict__ partials,
                                          const W* __restrict__ w1, const W* __restrict__ b1,
                                          const W* __restrict__ w2, const W* __restrict__ b2,
                                          int HW, int C, int Cse, int splits, int lanes,
                                          float* pooled, float* hidden, float* scratch) {
    const long long n = blockIdx.x;
    // Squeeze: pooled[c] = (Σ_p x[n, p, c]) / HW.
    if (partials) {
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float a = 0.f;
            for (int s = 0; s < splits; ++s) a += partials[(n * splits + s) * C + c];
            pooled[c] = a / (float)HW;
        }
    } else {
        for (int c0 = 0; c0 < C; c0 += lanes * V) {
            float sum[V];
            channel_sums<T, V>(x + n * HW * C, 0, HW, C, c0, lanes, scratch, sum);
            const int c = c0 + (threadIdx.x % lanes) * V;
            if (threadIdx.x / lanes == 0 && c < C) {
#pragma unroll
                for (int k = 0; k < V; ++k) pooled[c + k] = sum[k] / (float)HW;
            }
        }
    }
    __syncthreads();
    // FC1 + SiLU: hidden[j] = silu(W1[j, :] · pooled + b1[j]), one warp per j.
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (int j = warp; j < Cse; j += warps) {
        const W* row = w1 + (long long)j * C;
        float a = 0.f;
        for (int c = lane; c < C; c += 32) a += to_f32<W>(row[c]) * pooled[c];
        a = warp_sum(a);
        if (lane == 0) hidden[j] = act<SILU>(a + to_f32<W>(b1[j]));
    }
    __syncthreads();
    // FC2 + sigmoid: s[n, c] = sigmoid(W2[c, :] · hidden + b2[c]), one thread per c.
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const W* row = w2 + (long long)c * Cse;
        float a = 0.f;
        for (int j = 0; j < Cse; ++j) a += to_f32<W>(row[j]) * hidden[j];
        s_out[n * C + c] = act<SIGMOID>(a + to_f32<W>(b2[c]));
    }
}

template <typename T, int V>
__device__ __forceinline__ void se_pool(float* __restrict__ partials, const T* __restrict__ x,
                                        int HW, int C, int lanes, float* scratch) {
    const int split = blockIdx.x, splits = gridDim.x;
    const long long n = blockIdx.y;
    const long long p0 = (long long)HW * split / splits, p1 = (long long)HW * (split + 1) / splits;
    for (int c0 = 0; c0 < C; c0 += lanes * V) {
        float sum[V];
        channel_sums<T, V>(x + n * HW * C, p0, p1, C, c0, lanes, scratch, sum);
        const int c = c0 + (threadIdx.x % lanes) * V;
        if (threadIdx.x / lanes == 0 && c < C) {
#pragma unroll
            for (int k = 0; k < V; ++k) partials[(n * splits + split) * C + c + k] = sum[k];
        }
    }
}

template <typename T, int V>
__device__ __forceinline__ void se_scale(T* __restrict__ y, const T* __restrict__ x,
                                         const float* __restrict__ s, long long per_image, int C) {
    const long long n = blockIdx.y;
    const T* xi = x + n * per_image;
    T* yi = y + n * per_image;
    const float* si = s + n * C;
    const long long stride = (long long)gridDim.x * blockDim.x * V;
    for (long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * V; i < per_image; i += stride) {
        const int c = (int)((unsigned)i % (unsigned)C);  // per_image < 2^31 (host)
        float v[V];
        if constexpr (V == VEC) {
            load_vec<T>(xi + i, v);
            float sv[VEC];
            load_vec<float>(si + c, sv);
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[k] *= sv[k];
            store_vec<T>(yi + i, v);
        } else {
            yi[i] = from_f32<T>(to_f32<T>(xi[i]) * si[c]);
        }
    }
}

}  // namespace mk

#define MK_SE_EXCITE(T, TN, W, WN)                                                               \
    extern "C" __global__ void __launch_bounds__(mk::SE_THREADS) se_excite_##TN##_##WN(          \
        float* s, const T* x, const float* partials, const W* w1, const W* b1, const W* w2,      \
        const W* b2, int HW, int C, int Cse, int splits, int lanes, int vec_ok) {                \
        MK_STATIC_SMEM(float, pooled, [mk::SE_MAX_CHANNELS]);                                    \
        MK_STATIC_SMEM(float, hidden, [mk::SE_MAX_HIDDEN]);                                      \
        MK_STATIC_SMEM(float, scratch, [mk::SE_THREADS * mk::VEC]);                              \
        if (vec_ok)                                                                              \
            mk::se_excite<T, W, mk::VEC>(s, x, partials, w1, b1, w2, b2, HW, C, Cse, splits,     \
                                         lanes, pooled, hidden, scratch);                        \
        else                                                                                     \
            mk::se_excite<T, W, 1>(s, x, partials, w1, b1, w2, b2, HW, C, Cse, splits, lanes,    \
                                   pooled, hidden, scratch);                                     \
    }
MK_SE_EXCITE(float, f32, float, f32)
MK_SE_EXCITE(mk::f16, f16, mk::f16, f16)
MK_SE_EXCITE(mk::f16, f16, float, f32)
MK_SE_EXCITE(mk::bf16, bf16, mk::bf16, bf16)
MK_SE_EXCITE(mk::bf16, bf16, float, f32)

#define MK_SE_POOL(T, TN)                                                                        \
    extern "C" __global__ void __launch_bounds__(mk::SE_POOL_THREADS)                            \
        se_pool_##TN(float* partials, const T* x, int HW, int C, int lanes, int vec_ok) {        \
        MK_STATIC_SMEM(float, scratch, [mk::SE_POOL_THREADS * mk::VEC]);                         \
        if (vec_ok) mk::se_pool<T, mk::VEC>(partials, x, HW, C, lanes, scratch);                 \
        else mk::se_pool<T, 1>(partials, x, HW, C, lanes, scratch);                              \
    }
#define MK_SE_SCALE(T, TN)                                                                       \
    extern "C" __global__ void __launch_bounds__(mk::SE_SCALE_THREADS)                           \
        se_scale_##TN(T* y, const T* x, const float* s, long long per_image, int C, int vec_ok) { \
        if (vec_ok) mk::se_scale<T, mk::VEC>(y, x, s, per_image, C);                             \
        else mk::se_scale<T, 1>(y, x, s, per_image, C);                                          \
    }
MK_SE_POOL(float, f32)
MK_SE_POOL(mk::f16, f16)
MK_SE_POOL(mk::bf16, bf16)
MK_SE_SCALE(float, f32)
MK_SE_SCALE(mk::f16, f16)
MK_SE_SCALE(mk::bf16, bf16)
