// medkern common: activation functions in f32, shared by elementwise kernels and epilogues.
// Codes match `medkern::ops::Activation` (src/ops/mod.rs, `Activation::code`).
#pragma once

namespace mk {

enum Act { IDENTITY = 0, RELU = 1, RELU6 = 2, GELU_ERF = 3, GELU_TANH = 4, SILU = 5, SIGMOID = 6, TANH = 7 };

template <int A> __device__ __forceinline__ float act(float x) {
    if constexpr (A == IDENTITY) return x;
    if constexpr (A == RELU) return fmaxf(x, 0.f);
    if constexpr (A == RELU6) return fminf(fmaxf(x, 0.f), 6.f);
    if constexpr (A == GELU_ERF) return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    if constexpr (A == GELU_TANH) {
        const float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
        return 0.5f * x * (1.f + tanhf(u));
    }
    if constexpr (A == SILU) return x / (1.f + expf(-x));
    if constexpr (A == SIGMOID) return 1.f / (1.f + expf(-x));
    // 1 - 2/(e^{2|x|} + 1) with x's sign: far smaller code than tanhf (which made the int8
    // GEMM epilogues spill on sm_80); absolute error ~1e-7. Below |x| = 0.1 that difference
    // cancels to nothing (12% off at 6e-7, found on the emulated GPU), so the odd series
    // x - x³/3 + 2x⁵/15 - 17x⁷/315 (next term < 2e-10 relative) takes over.
    if constexpr (A == TANH) {
        const float a = fabsf(x);
        if (a < 0.1f) {
            const float x2 = x * x;
            return x * (1.f + x2 * (-0.333333333f + x2 * (0.133333333f - x2 * 0.0539682540f)));
        }
        return copysignf(1.f - 2.f / (expf(2.f * a) + 1.f), x);
    }
    return x;
}

// Run-time selected activation for GEMM epilogues (the branch is uniform across the grid).
__device__ __forceinline__ float act_rt(int a, float x) {
    switch (a) {
        case RELU: return act<RELU>(x);
        case RELU6: return act<RELU6>(x);
        case GELU_ERF: return act<GELU_ERF>(x);
        case GELU_TANH: return act<GELU_TANH>(x);
        case SILU: return act<SILU>(x);
        case SIGMOID: return act<SIGMOID>(x);
        case TANH: return act<TANH>(x);
        default: return x;
    }
}

}  // namespace mk
