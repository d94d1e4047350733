// Upsampling (and resampling to any size), NHWC, PyTorch `F.interpolate` semantics given an
// output size: nearest ('nearest': src = min(floor(dst·scale), in − 1)), nearest-exact
// (src = min(floor((dst + 0.5)·scale), in − 1)), and bilinear with align_corners false
// (src = max(scale·(dst + 0.5) − 0.5, 0), scale = in/out) or true (src = scale·dst, scale =
// (in − 1)/(out − 1)), the neighbour one step on clamped to the last row/column.
// Index arithmetic is f32 without contraction (__fmul_rn/__fadd_rn), as PyTorch's CPU code and
// the reference compute it, so every output picks the same source pixels; scales come from the
// host (src/reference/upsample.rs `scale`). Interpolation is f32, one rounding per output.
// One thread per output pixel × 8 channels, grid-stride: 16-byte vectors when C % 8 == 0
// (vec_ok), guarded element accesses otherwise. Memory-bound: bytes = input (read about once:
// neighbouring outputs share source pixels through L1/L2) + output.
// Kernels: upsample_nearest_{f32,f16,bf16} (mode 0 nearest, 1 nearest-exact),
// upsample_bilinear_{dt} (mode 0 align_corners false, 1 true).
// Launcher: src/ops/upsample.rs; reference: src/reference/upsample.rs.
#include "common/types.cuh"

namespace mk {

// Mirrors `UpParams` in src/ops/upsample.rs field for field.
struct UpParams {
    const void* x;  // [N, H, W, C]
    void* y;        // [N, OH, OW, C]
    int N, H, W, C, OH, OW;
    float scale_h, scale_w;
    int mode;
    int vec_ok;
};

template <typename T>
__device__ __forceinline__ void load8(const T* p, int c, int C, bool vec, float (&v)[VEC]) {
    if (vec) {
        load_vec<T>(p, v);
    } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[j] = c + j < C ? to_f32<T>(p[j]) : 0.f;
    }
}

template <typename T>
__device__ __forceinline__ void store8(T* p, int c, int C, bool vec, const float (&v)[VEC]) {
    if (vec) {
        store_vec<T>(p, v);
    } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j)
            if (c + j < C) p[j] = from_f32<T>(v[j]);
    }
}

__device__ __forceinline__ int nearest_src(int dst, float scale, int in, int exact) {
    const float d = exact ? __fadd_rn((float)dst, 0.5f) : (float)dst;
    return min((int)floorf(__fmul_rn(d, scale)), in - 1);
}

// Source coordinate of a bilinear output: (index, fraction, step to the next index).
__device__ __forceinline__ void linear_src(int dst, float scale, int in, int align, int& i0, float& l1, int& step) {
    const float s = align ? __fmul_rn(scale, (float)dst)
                          : fmaxf(__fsub_rn(__fmul_rn(scale, __fadd_rn((float)dst, 0.5f)), 0.5f), 0.f);
    i0 = (int)s;
    l1 = __fsub_rn(s, (float)i0);
    step = i0 < in - 1 ? 1 : 0;
}

template <typename T, bool BILINEAR>
__device__ __forceinline__ void upsample(const UpParams& p) {
    const T* x = static_cast<const T*>(p.x);
    T* y = static_cast<T*>(p.y);
    const bool vec = p.vec_ok != 0;
    const int ncv = (p.C + VEC - 1) / VEC;
    const long long total = (long long)p.N * p.OH * p.OW * ncv;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(i % ncv) * VEC;
        const long long pix = i / ncv;
        const int ow = (int)(pix % p.OW), oh = (int)((pix / p.OW) % p.OH);
        const long long n = pix / ((long long)p.OW * p.OH);
        const T* xn = x + n * p.H * p.W * p.C + c;
        float out[VEC];
        if constexpr (!BILINEAR) {
            const int ih = nearest_src(oh, p.scale_h, p.H, p.mode);
            const int iw = nearest_src(ow, p.scale_w, p.W, p.mode);
            load8<T>(xn + ((long long)ih * p.W + iw) * p.C, c, p.C, vec, out);
        } else {
            int h0, w0, hs, ws;
            float lh, lw;
            linear_src(oh, p.scale_h, p.H, p.mode, h0, lh, hs);
            linear_src(ow, p.scale_w, p.W, p.mode, w0, lw, ws);
            const T* r0 = xn + (long long)h0 * p.W * p.C;
            const T* r1 = r0 + (long long)hs * p.W * p.C;
            float a[VEC], b[VEC], d[VEC], e[VEC];
            load8<T>(r0 + (long long)w0 * p.C, c, p.C, vec, a);
            load8<T>(r0 + (long long)(w0 + ws) * p.C, c, p.C, vec, b);
            load8<T>(r1 + (long long)w0 * p.C, c, p.C, vec, d);
            load8<T>(r1 + (long long)(w0 + ws) * p.C, c, p.C, vec, e);
            const float mh = 1.f - lh, mw = 1.f - lw;
#pragma unroll
            for (int j = 0; j < VEC; ++j)
                out[j] = mh * (mw * a[j] + lw * b[j]) + lh * (mw * d[j] + lw * e[j]);
        }
        store8<T>(y + pix * p.C + c, c, p.C, vec, out);
    }
}

}  // namespace mk

#define MK_UP(NAME, B, T, TN)                                                                   \
    extern "C" __global__ void __launch_bounds__(mk::UP_THREADS, 1) upsample_##NAME##_##TN(const mk::UpParams p) { \
        mk::upsample<T, B>(p);                                                                  \
    }
#define MK_UP_ALL(T, TN) MK_UP(nearest, false, T, TN) MK_UP(bilinear, true, T, TN)
MK_UP_ALL(float, f32)
MK_UP_ALL(mk::f16, f16)
MK_UP_ALL(mk::bf16, bf16)
