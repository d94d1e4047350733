// Image preprocessing into a normalised NHWC tensor, in one pass:
//   t(v)   = (v − lo) / range, clamped to [0, 1] when clamp01     (u8: lo 0, range = scale;
//                                                                   u16: the caller's window)
//   r      = bilinear resize of t to Hout × Wout (align_corners = false, no antialias: the
//            arithmetic of PyTorch's upsample_bilinear2d, f32 source positions
//            max((dst + 0.5)·in/out − 0.5, 0), the far neighbour clamped to the edge)
//   y[c]   = (r − mean[c]) / std[c]
// Input [N, Hin, Win, Cin] u8 (Cin 1 grey, 3 RGB, 4 RGBA: alpha dropped) or u16 (Cin 1);
// output [N, Hout, Wout, Cout], Cout = 3 (colour or grey replicated) or 1 (grey). Output
// channel c reads input channel (Cin == 1 ? 0 : c).
// preprocess_{u8,u16}_{f32,f16,bf16}: one thread per output pixel (all Cout channels), grid
// stride over N·Hout·Wout. Launcher: src/ops/preprocess.rs; reference:
// src/reference/preprocess.rs.
#include "common/types.cuh"

namespace mk {

struct Norm {
    float mean[3], std[3];
};

template <typename S, typename O>
__device__ __forceinline__ void preprocess(O* __restrict__ y, const S* __restrict__ x, int N,
                                           int Hin, int Win, int Cin, int Hout, int Wout, int Cout,
                                           float scale_h, float scale_w, float lo, float range,
                                           int clamp01, const Norm& nm) {
    const long long total = (long long)N * Hout * Wout;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long pix = (long long)blockIdx.x * blockDim.x + threadIdx.x; pix < total; pix += stride) {
        const unsigned up = (unsigned)pix;  // N·Hout·Wout < 2^31 (host): 32-bit index arithmetic
        const int ow = (int)(up % (unsigned)Wout);
        const int oh = (int)((up / (unsigned)Wout) % (unsigned)Hout);
        const long long n = up / ((unsigned)Wout * (unsigned)Hout);
        // Source coordinates as upsample_bilinear2d (align_corners = false) computes them.
        const float sy = fmaxf(scale_h * ((float)oh + 0.5f) - 0.5f, 0.f);
        const float sx = fmaxf(scale_w * ((float)ow + 0.5f) - 0.5f, 0.f);
        const int y0 = min((int)sy, Hin - 1), x0 = min((int)sx, Win - 1);
        const int y1 = y0 + (y0 < Hin - 1 ? 1 : 0), x1 = x0 + (x0 < Win - 1 ? 1 : 0);
        const float ly1 = sy - (float)y0, lx1 = sx - (float)x0;
        const float ly0 = 1.f - ly1, lx0 = 1.f - lx1;
        const S* img = x + n * Hin * Win * Cin;
        const long long i00 = ((long long)y0 * Win + x0) * Cin, i01 = ((long long)y0 * Win + x1) * Cin;
        const long long i10 = ((long long)y1 * Win + x0) * Cin, i11 = ((long long)y1 * Win + x1) * Cin;
        O* out = y + pix * Cout;
#pragma unroll
        for (int c = 0; c < 3; ++c) {  // unrolled: mean/std indices stay static (no local memory)
            if (c >= Cout) break;
            const int ci = Cin == 1 ? 0 : c;
            float t[4] = {(float)img[i00 + ci], (float)img[i01 + ci], (float)img[i10 + ci],
                          (float)img[i11 + ci]};
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                t[k] = (t[k] - lo) / range;
                if (clamp01) t[k] = fminf(fmaxf(t[k], 0.f), 1.f);
            }
            const float r = ly0 * (lx0 * t[0] + lx1 * t[1]) + ly1 * (lx0 * t[2] + lx1 * t[3]);
            out[c] = from_f32<O>((r - nm.mean[c]) / nm.std[c]);
        }
    }
}

}  // namespace mk

#define MK_PREPROCESS(S, SN, O, ON)                                                              \
    extern "C" __global__ void __launch_bounds__(mk::PRE_THREADS) preprocess_##SN##_##ON(        \
        O* y, const S* x, int N, int Hin, int Win, int Cin, int Hout, int Wout, int Cout,        \
        float scale_h, float scale_w, float lo, float range, int clamp01, float m0, float m1,     \
        float m2, float s0, float s1, float s2) {                                                \
        const mk::Norm nm = {{m0, m1, m2}, {s0, s1, s2}};                                        \
        mk::preprocess<S, O>(y, x, N, Hin, Win, Cin, Hout, Wout, Cout, scale_h, scale_w, lo,     \
                             range, clamp01, nm);                                                \
    }
#define MK_PREPROCESS_ALL(S, SN)                                                                 \
    MK_PREPROCESS(S, SN, float, f32) MK_PREPROCESS(S, SN, mk::f16, f16)                          \
        MK_PREPROCESS(S, SN, mk::bf16, bf16)
MK_PREPROCESS_ALL(unsigned char, u8)
MK_PREPROCESS_ALL(unsigned short, u16)
