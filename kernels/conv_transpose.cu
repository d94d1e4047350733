// Transposed conv2d (PyTorch ConvTranspose2d, dilation 1, groups 1), NHWC, with fused bias and
// activation:
//   y[n,oh,ow,co] = act(bias[co] + Σ_{kh,kw,ci} x[n,ih,iw,ci]·w[kh,kw,ci,co]),
//   oh = ih·sh − ph + kh,  ow = iw·sw − pw + kw,  OH = (H − 1)·sh − 2·ph + KH + output_padding_h.
// x [N,H,W,Cin], w [KH,KW,Cin,Cout] (output channels innermost: 8 of them are one 16-byte
// vector), bias f32 [Cout] or null; f32 accumulation, one rounding and one store per output.
//
// Gather form: each thread owns one output pixel × 8 output channels and sums over the input
// positions that reach it: kh ≡ oh + ph (mod sh), ih = (oh + ph − kh)/sh. Outputs are split
// into the sh·sw phases (oh mod sh, ow mod sw), one per blockIdx.y: every output of a phase
// takes the same taps (a stride-1 conv with a sub-kernel), so warps do not diverge on them.
// The threads of a pixel read the same input vector (broadcast) and consecutive weight vectors.
// Kernels: conv_transpose_{vec,any}_{f32,f16,bf16}: vec = 16-byte vectors (Cin % 8 == 0,
// Cout % 8 == 0, aligned buffers); any = element loads, any channel counts.
// FLOPs: 2·N·H·W·Cin·Cout·KH·KW at most (each input-weight product once; those that land in the
// cropped padding are skipped), the same count as the forward conv it transposes.
// Launcher: src/ops/conv_transpose.rs; reference: src/reference/conv_transpose.rs.
#include "common/types.cuh"
#include "common/act.cuh"

namespace mk {

// Mirrors `CtParams` in src/ops/conv_transpose.rs field for field.
struct CtParams {
    const void* x;      // [N, H, W, Cin]
    const void* w;      // [KH, KW, Cin, Cout]
    const float* bias;  // [Cout] or null
    void* y;            // [N, OH, OW, Cout]
    int N, H, W, Cin, Cout, OH, OW;
    int kh, kw, sh, sw, ph, pw;
    int act;
};

// 8 values of T from p: one vector (V) or 8 guarded element loads (c + j < limit).
template <typename T, bool V>
__device__ __forceinline__ void load8(const T* p, int c, int limit, float (&v)[VEC]) {
    if constexpr (V) {
        load_vec<T>(p, v);
    } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[j] = c + j < limit ? to_f32<T>(p[j]) : 0.f;
    }
}

template <typename T, bool V>
__device__ __forceinline__ void conv_transpose(const CtParams& p) {
    const T* x = static_cast<const T*>(p.x);
    const T* w = static_cast<const T*>(p.w);
    T* y = static_cast<T*>(p.y);
    // This block's phase: output rows rh, rh + sh, ... and columns rw, rw + sw, ...
    const int rh = blockIdx.y / p.sw, rw = blockIdx.y % p.sw;
    const int rows = (p.OH - rh + p.sh - 1) / p.sh, cols = (p.OW - rw + p.sw - 1) / p.sw;
    const int ncv = (p.Cout + VEC - 1) / VEC;
    const long long total = (long long)p.N * rows * cols * ncv;
    // First tap of the phase along each axis: kh ≡ oh + ph (mod sh).
    const int kh0 = (rh + p.ph) % p.sh, kw0 = (rw + p.pw) % p.sw;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int cv = (int)(i % ncv);
        long long pix = i / ncv;
        const int oc = (int)(pix % cols), orow = (int)((pix / cols) % rows);
        const int n = (int)(pix / ((long long)cols * rows));
        const int oh = rh + orow * p.sh, ow = rw + oc * p.sw, co = cv * VEC;
        float acc[VEC];
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[j] = 0.f;
        for (int kh = kh0; kh < p.kh; kh += p.sh) {
            const int th = oh + p.ph - kh;
            if (th < 0) break;  // further taps reach above the input
            const int ih = th / p.sh;
            if (ih >= p.H) continue;
            for (int kw = kw0; kw < p.kw; kw += p.sw) {
                const int tw = ow + p.pw - kw;
                if (tw < 0) break;
                const int iw = tw / p.sw;
                if (iw >= p.W) continue;
                const T* xp = x + (((long long)n * p.H + ih) * p.W + iw) * p.Cin;
                const T* wp = w + ((long long)(kh * p.kw + kw) * p.Cin) * p.Cout + co;
                if constexpr (V) {
                    for (int ci = 0; ci < p.Cin; ci += VEC) {
                        float xv[VEC];
                        load_vec<T>(xp + ci, xv);
#pragma unroll
                        for (int j = 0; j < VEC; ++j) {
                            float wv[VEC];
                            load_vec<T>(wp + (long long)(ci + j) * p.Cout, wv);
#pragma unroll
                            for (int e = 0; e < VEC; ++e) acc[e] = fmaf(xv[j], wv[e], acc[e]);
                        }
                    }
                } else {
                    for (int ci = 0; ci < p.Cin; ++ci) {
                        const float xv = to_f32<T>(xp[ci]);
                        float wv[VEC];
                        load8<T, false>(wp + (long long)ci * p.Cout, co, p.Cout, wv);
#pragma unroll
                        for (int e = 0; e < VEC; ++e) acc[e] = fmaf(xv, wv[e], acc[e]);
                    }
                }
            }
        }
#pragma unroll
        for (int j = 0; j < VEC; ++j)
            acc[j] = act_rt(p.act, acc[j] + (p.bias && co + j < p.Cout ? p.bias[co + j] : 0.f));
        T* yp = y + (((long long)n * p.OH + oh) * p.OW + ow) * p.Cout + co;
        if constexpr (V) {
            store_vec<T>(yp, acc);
        } else {
#pragma unroll
            for (int j = 0; j < VEC; ++j)
                if (co + j < p.Cout) yp[j] = from_f32<T>(acc[j]);
        }
    }
}

}  // namespace mk

#define MK_CT(NAME, V, T, TN)                                                                       \
    extern "C" __global__ void __launch_bounds__(mk::CT_THREADS, 1) conv_transpose_##NAME##_##TN(const mk::CtParams p) { \
        mk::conv_transpose<T, V>(p);                                                                \
    }
#define MK_CT_ALL(T, TN) MK_CT(vec, true, T, TN) MK_CT(any, false, T, TN)
MK_CT_ALL(float, f32)
MK_CT_ALL(mk::f16, f16)
MK_CT_ALL(mk::bf16, bf16)
