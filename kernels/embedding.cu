// Embedding lookup with the BERT sum: y[t, :] = word[ids[t]] + position[pos[t]] + type[types[t]]
// (position and type tables optional), f32 arithmetic, one rounding. Ids were range-checked on
// the host (src/ops/embedding.rs), so every row read is inside its table. One warp per token row,
// 16-byte vectors when the hidden size allows.
// Kernels: embedding_{f32,f16,bf16}. Launcher: src/ops/embedding.rs; reference:
// src/reference/embedding.rs.
#include "common/types.cuh"

namespace mk {

template <typename T>
__device__ __forceinline__ void embedding(T* __restrict__ y, const int* __restrict__ ids, const int* __restrict__ pos,
                                          const int* __restrict__ types, const T* __restrict__ word,
                                          const T* __restrict__ posw, const T* __restrict__ typew, int tokens, int h,
                                          int vec_ok) {
    const int lane = threadIdx.x & 31;
    const int warps = blockDim.x >> 5;
    for (int t = blockIdx.x * warps + (threadIdx.x >> 5); t < tokens; t += gridDim.x * warps) {
        const T* w = word + (long long)ids[t] * h;
        const T* p = posw ? posw + (long long)pos[t] * h : nullptr;
        const T* ty = typew ? typew + (long long)types[t] * h : nullptr;
        T* out = y + (long long)t * h;
        if (vec_ok) {
            for (int c = lane * VEC; c < h; c += 32 * VEC) {
                float a[VEC], b[VEC];
                load_vec<T>(w + c, a);
                if (p) {
                    load_vec<T>(p + c, b);
#pragma unroll
                    for (int k = 0; k < VEC; ++k) a[k] += b[k];
                }
                if (ty) {
                    load_vec<T>(ty + c, b);
#pragma unroll
                    for (int k = 0; k < VEC; ++k) a[k] += b[k];
                }
                store_vec<T>(out + c, a);
            }
        } else {
            for (int c = lane; c < h; c += 32) {
                float a = to_f32<T>(w[c]);
                if (p) a += to_f32<T>(p[c]);
                if (ty) a += to_f32<T>(ty[c]);
                out[c] = from_f32<T>(a);
            }
        }
    }
}

}  // namespace mk

#define MK_EMB(T, TN)                                                                                    \
    extern "C" __global__ void embedding_##TN(T* y, const int* ids, const int* pos, const int* types,   \
                                              const T* word, const T* posw, const T* typew, int tokens,  \
                                              int h, int vec_ok) {                                      \
        mk::embedding<T>(y, ids, pos, types, word, posw, typew, tokens, h, vec_ok);                     \
    }
MK_EMB(float, f32)
MK_EMB(mk::f16, f16)
MK_EMB(mk::bf16, bf16)
