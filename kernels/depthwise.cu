// Depthwise conv2d, NHWC (groups = channels, channel multiplier 1), with a fused epilogue:
//   y[n,oh,ow,c] = act(scale[c] · Σ_{kh,kw} x[n, oh·sh + kh·dh − pt, ow·sw + kw·dw − pl, c] · w[kh,kw,c]
//                      + bias[c]) + residual[n,oh,ow,c]
// x [N,H,W,C], w [KH,KW,C] (channels innermost: one tap of 8 channels is one 16-byte vector, as
// the input's), scale/bias f32 [C] (folded BatchNorm; either may be null), residual y's shape
// (may be null); f32 accumulation, one rounding and one store per output.
//
// Scheme (memory-bound op, so the design counts bytes): a CTA owns an output tile of th rows ×
// twg·R columns × ncv·8 channels of one image. It stages the input tile that tile reads (halo
// included, zeros for padding) in shared memory once (16-byte vector loads when C % 8 == 0, a
// scalar path otherwise), converts the tile's weights to f32 in shared memory, synchronises once,
// and each thread computes R consecutive outputs along W for one 8-channel vector, sliding along
// the row so each staged column is read from shared memory once per kernel row, not once per
// tap (k3s1: 6 reads for 12 taps·outputs). The thread order is channel vector, then row, then
// column strip; the host pads the staged row pitch so a quarter-warp's 16-byte reads hit distinct
// banks. Weights sit in registers one kernel row at a time (k·8 floats).
// Kernels: depthwise_{k3s1,k3s2,k5s1,k5s2}_{f32,f16,bf16} (square k, dilation 1: the EfficientNet
// and MobileNet layers, fully unrolled) and depthwise_any_{dt} (any k_h × k_w, stride, dilation).
//
// Bytes: each input element is read from DRAM about once: a tile re-reads its halo, e.g.
// (th+2)(tw+2)/(th·tw) ≈ 1.3× for k3s1 on a 9×28 tile, and neighbouring tiles run together so
// the halo comes from L2. Traffic ≈ N·H·W·C·s (in) + N·OH·OW·C·s (out, + the same for a
// residual) + k²·C·s + 8·C (weights, scale, bias), s = element size. At the H100's ~3.0 TB/s
// measured copy rate, f16, batch 32 (EfficientNet-B0, PyTorch padding):
//   112×112×32 k3s1: 25.7 + 25.7 MB → 17 µs     112×112×96 k3s2: 77.1 + 19.3 MB → 32 µs
//   56×56×144 k5s2:  28.9 + 7.2 MB  → 12 µs     28×28×240 k3s2:  12.0 + 3.0 MB  → 5.0 µs
//   14×14×480 k3s1:  6.0 + 6.0 MB   → 4.0 µs    14×14×672 k5s1:  8.4 + 8.4 MB   → 5.6 µs
//   7×7×1152 k5s1:   3.6 + 3.6 MB   → 2.4 µs
// Arithmetic is k² FMAs per output: 25 FMA per 4 bytes (k5 f16) is near the H100's f32 FMA to
// DRAM balance (~10 FMA/byte), which is why each staged value is reused from registers.
// Launcher and tile plan: src/ops/depthwise.rs; reference: src/reference/depthwise.rs.
#include "common/types.cuh"
#include "common/act.cuh"

namespace mk {

// Mirrors `DwParams` in src/ops/depthwise.rs field for field (pointers, then 4-byte fields).
struct DwParams {
    const void* x;         // [N, H, W, C]
    const void* w;         // [KH, KW, C]
    const float* scale;    // [C] or null (1)
    const float* bias;     // [C] or null (0)
    const void* residual;  // [N, OH, OW, C] or null
    void* y;               // [N, OH, OW, C]
    int N, H, W, C, OH, OW;
    int kh, kw, sh, sw, dh, dw, pad_top, pad_left;
    int act;       // Activation code (act.cuh)
    int vec_ok;    // C % 8 == 0 and x, residual, y 16-byte aligned
    // Tile plan, chosen by the host (blockDim.x == ncv · th · twg):
    int ncv;       // 8-channel vectors per CTA
    int th;        // output rows per CTA
    int twg;       // column strips per CTA, R outputs each
    int tiles_w;   // tiles along OW; blockIdx.x = tile_row · tiles_w + tile_col
    int in_rows;   // staged input rows: (th − 1)·sh + (kh − 1)·dh + 1
    int in_cols;   // staged input columns: (twg·R − 1)·sw + (kw − 1)·dw + 1
    int row_pitch; // elements between staged rows (>= in_cols · ncv · 8; row_pitch·sizeof(T) % 16 == 0)
    int w_off;     // byte offset of the f32 weights [kh·kw][ncv·8] in shared memory
};

__device__ __forceinline__ unsigned char* dyn_smem() {
    MK_DYN_SMEM(unsigned char, mk_dyn_smem);
    return mk_dyn_smem;
}

// 8 channels of T as 16-byte words (1 for f16/bf16, 2 for f32).
template <typename T> struct Chunk { static constexpr int WORDS = sizeof(T) * VEC / 16; uint4 u[WORDS]; };

// Stages the input tile (zeros outside the image and past C) and the f32 weights of channels
// [c0, c0 + ncv·8). Loads are issued 4 at a time before their stores.
template <typename T>
__device__ __forceinline__ void stage(const DwParams& p, T* sx, float* sw_, int n, int ih0, int iw0, int c0) {
    const int nt = blockDim.x;
    const int cb = p.ncv * VEC;
    const T* x = static_cast<const T*>(p.x);
    const int total = p.in_rows * p.in_cols * p.ncv;
    constexpr int U = 4;
    for (int base = threadIdx.x; base < total; base += U * nt) {
        Chunk<T> v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int i = base + u * nt;
            const int cv = i % p.ncv, pix = i / p.ncv;
            const int ih = ih0 + pix / p.in_cols, iw = iw0 + pix % p.in_cols;
            const int c = c0 + cv * VEC;
#pragma unroll
            for (int q = 0; q < Chunk<T>::WORDS; ++q) v[u].u[q] = make_uint4(0, 0, 0, 0);
            if (i < total && ih >= 0 && ih < p.H && iw >= 0 && iw < p.W && c < p.C) {
                const T* src = x + (((long long)n * p.H + ih) * p.W + iw) * p.C + c;
                if (p.vec_ok) {
#pragma unroll
                    for (int q = 0; q < Chunk<T>::WORDS; ++q) v[u].u[q] = reinterpret_cast<const uint4*>(src)[q];
                } else {
                    Pack<T> e;
#pragma unroll
                    for (int j = 0; j < VEC; ++j) e.v[j] = c + j < p.C ? src[j] : from_f32<T>(0.f);
                    v[u] = *reinterpret_cast<const Chunk<T>*>(&e);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int i = base + u * nt;
            if (i < total) {
                const int cv = i % p.ncv, pix = i / p.ncv;
                T* dst = sx + (pix / p.in_cols) * p.row_pitch + (pix % p.in_cols) * cb + cv * VEC;
#pragma unroll
                for (int q = 0; q < Chunk<T>::WORDS; ++q) reinterpret_cast<uint4*>(dst)[q] = v[u].u[q];
            }
        }
    }
    const T* w = static_cast<const T*>(p.w);
    const int taps = p.kh * p.kw;
    for (int i = threadIdx.x; i < taps * cb; i += nt) {
        const int t = i / cb, c = c0 + i % cb;
        sw_[i] = c < p.C ? to_f32<T>(w[(long long)t * p.C + c]) : 0.f;
    }
}

template <typename T>
__device__ __forceinline__ void store_out(const DwParams& p, long long o, int c, const float* sc, const float* bi,
                                          float (&a)[VEC]) {
    const T* res = static_cast<const T*>(p.residual);
    T* y = static_cast<T*>(p.y);
    float r[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) a[j] = act_rt(p.act, a[j] * sc[j] + bi[j]);
    if (p.vec_ok) {
        if (res) {
            load_vec<T>(res + o, r);
#pragma unroll
            for (int j = 0; j < VEC; ++j) a[j] += r[j];
        }
        store_vec<T>(y + o, a);
    } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j)
            if (c + j < p.C) y[o + j] = from_f32<T>(res ? a[j] + to_f32<T>(res[o + j]) : a[j]);
    }
}

// K > 0: square K×K window, stride S both ways, dilation 1, everything unrolled. K == 0: the
// general window from the parameters. R outputs per thread along W.
template <typename T, int K, int S, int R>
__device__ __forceinline__ void depthwise(const DwParams& p) {
    unsigned char* smem = dyn_smem();
    T* sx = reinterpret_cast<T*>(smem);
    float* sw_ = reinterpret_cast<float*>(smem + p.w_off);
    const int cb = p.ncv * VEC;
    const int n = blockIdx.z, c0 = blockIdx.y * cb;
    const int oh0 = (blockIdx.x / p.tiles_w) * p.th;
    const int ow0 = (blockIdx.x % p.tiles_w) * p.twg * R;
    stage<T>(p, sx, sw_, n, oh0 * p.sh - p.pad_top, ow0 * p.sw - p.pad_left, c0);
    __syncthreads();

    const int cv = threadIdx.x % p.ncv;
    const int gy = (threadIdx.x / p.ncv) % p.th;
    const int gx = threadIdx.x / (p.ncv * p.th);
    float acc[R][VEC];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[r][j] = 0.f;

    if constexpr (K > 0) {
        // Staged columns gx·R·S .. + S·(R−1) + K − 1 of rows gy·S .. + K − 1: column j feeds
        // output r through tap kw = j − S·r.
        const T* s0 = sx + gy * S * p.row_pitch + gx * R * S * cb + cv * VEC;
        const float* w0 = sw_ + cv * VEC;
#pragma unroll 1
        for (int kh = 0; kh < K; ++kh) {
            float wk[K][VEC];
#pragma unroll
            for (int kw = 0; kw < K; ++kw) load_vec<float>(w0 + (kh * K + kw) * cb, wk[kw]);
            const T* srow = s0 + kh * p.row_pitch;
#pragma unroll
            for (int j = 0; j < S * (R - 1) + K; ++j) {
                float v[VEC];
                load_vec<T>(srow + j * cb, v);
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    const int kw = j - S * r;
                    if (kw >= 0 && kw < K) {
#pragma unroll
                        for (int e = 0; e < VEC; ++e) acc[r][e] = fmaf(v[e], wk[kw][e], acc[r][e]);
                    }
                }
            }
        }
    } else {
        const T* s0 = sx + gy * p.sh * p.row_pitch + gx * R * p.sw * cb + cv * VEC;
        for (int kh = 0; kh < p.kh; ++kh) {
            for (int kw = 0; kw < p.kw; ++kw) {
                float wk[VEC];
                load_vec<float>(sw_ + (kh * p.kw + kw) * cb + cv * VEC, wk);
                const T* s = s0 + kh * p.dh * p.row_pitch + kw * p.dw * cb;
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    float v[VEC];
                    load_vec<T>(s + r * p.sw * cb, v);
#pragma unroll
                    for (int e = 0; e < VEC; ++e) acc[r][e] = fmaf(v[e], wk[e], acc[r][e]);
                }
            }
        }
    }

    const int oh = oh0 + gy, c = c0 + cv * VEC;
    if (oh >= p.OH || c >= p.C) return;
    float sc[VEC], bi[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
        const bool in = c + j < p.C;
        sc[j] = p.scale && in ? p.scale[c + j] : 1.f;
        bi[j] = p.bias && in ? p.bias[c + j] : 0.f;
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int ow = ow0 + gx * R + r;
        if (ow < p.OW) store_out<T>(p, (((long long)n * p.OH + oh) * p.OW + ow) * p.C + c, c, sc, bi, acc[r]);
    }
}

}  // namespace mk

#define MK_DW(NAME, K, S, R, T, TN)                                                                   \
    extern "C" __global__ void __launch_bounds__(mk::DW_MAX_THREADS, 1) depthwise_##NAME##_##TN(const mk::DwParams p) { \
        mk::depthwise<T, K, S, R>(p);                                                                 \
    }
#define MK_DW_ALL(T, TN)                                                                          \
    MK_DW(k3s1, 3, 1, mk::DW_R_K3S1, T, TN) MK_DW(k3s2, 3, 2, mk::DW_R_K3S2, T, TN)               \
    MK_DW(k5s1, 5, 1, mk::DW_R_K5S1, T, TN) MK_DW(k5s2, 5, 2, mk::DW_R_K5S2, T, TN)               \
    MK_DW(any, 0, 1, mk::DW_R_ANY, T, TN)
MK_DW_ALL(float, f32)
MK_DW_ALL(mk::f16, f16)
MK_DW_ALL(mk::bf16, bf16)
