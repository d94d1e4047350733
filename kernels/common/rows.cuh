// medkern common: reading a row's input with an optional fused residual add, rounded to T
// once as the unfused `x + residual` would be (LayerNorm and the LayerNorm-quantise kernels).
#pragma once
#include "common/types.cuh"

namespace mk {

template <typename T>
__device__ __forceinline__ void load_h(const T* x, const T* res, long long i, float (&h)[VEC]) {
    load_vec<T>(x + i, h);
    if (res) {
        float r[VEC];
        load_vec<T>(res + i, r);
#pragma unroll
        for (int k = 0; k < VEC; ++k) h[k] = to_f32<T>(from_f32<T>(h[k] + r[k]));
    }
}

template <typename T>
__device__ __forceinline__ float load_h1(const T* x, const T* res, long long i) {
    const float v = to_f32<T>(x[i]);
    return res ? to_f32<T>(from_f32<T>(v + to_f32<T>(res[i]))) : v;
}

}  // namespace mk
