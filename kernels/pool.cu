// Pooling over NHWC activations: windowed max / average pooling and global average pooling.
//
// pool_{max,avg}_{f32,f16,bf16}: one thread per output pixel and VEC = 8 channels (16-byte
// loads and stores when C % 8 == 0 and the buffers are aligned: vec_ok) or one channel, grid
// stride over N·OH·OW·(C/V) (< 2^31, 32-bit index arithmetic). Input row ih = oh·SH − PT + kh·DH (PT: leading padding, TF SAME
// resolved on the host by Window); padded positions are skipped, so padding never wins a max
// (it starts at −inf; a NaN input wins, as in PyTorch) and the average divides by KH·KW
// (count_include_pad) or by the number of real positions (the host rejects windows with none).
// The sums are f32, the division IEEE, the output rounded once.
// gap_{in}_{out}: global average pool [N,H,W,C] → [N,C] (out = x's dtype or f32): one block of
// 256 threads per (image, chunk of lanes·V channels): lanes channel lanes × 256/lanes position
// slices summed in a fixed order (common/spatial.cuh), then sum / (H·W).
// Launcher: src/ops/pool.rs; reference: src/reference/pool.rs.
#include "common/types.cuh"
#include "common/spatial.cuh"

namespace mk {

struct PoolGeom {
    int N, H, W, C, OH, OW, KH, KW, SH, SW, DH, DW, PT, PL;
};

template <typename T, bool MAX, int V>
__device__ __forceinline__ void pool_window(T* __restrict__ y, const T* __restrict__ x,
                                            const PoolGeom& g, int include_pad) {
    const int CV = g.C / V;
    const long long total = (long long)g.N * g.OH * g.OW * CV;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        // 32-bit index arithmetic: the host keeps the output below 2^31 vectors.
        const unsigned u = (unsigned)idx;
        const int c = (int)(u % CV) * V;
        unsigned pix = u / CV;
        const int ow = (int)(pix % g.OW);
        pix /= g.OW;
        const int oh = (int)(pix % g.OH);
        const long long n = pix / g.OH;
        float acc[V];
#pragma unroll
        for (int k = 0; k < V; ++k) acc[k] = MAX ? neg_inf() : 0.f;
        int count = 0;
        for (int kh = 0; kh < g.KH; ++kh) {
            const int ih = oh * g.SH - g.PT + kh * g.DH;
            if (ih < 0 || ih >= g.H) continue;
            for (int kw = 0; kw < g.KW; ++kw) {
                const int iw = ow * g.SW - g.PL + kw * g.DW;
                if (iw < 0 || iw >= g.W) continue;
                ++count;
                const T* p = x + ((n * g.H + ih) * g.W + iw) * g.C + c;
                float v[V];
                if constexpr (V == VEC) load_vec<T>(p, v);
                else v[0] = to_f32<T>(p[0]);
#pragma unroll
                for (int k = 0; k < V; ++k) {
                    if constexpr (MAX) {
                        if (v[k] > acc[k] || v[k] != v[k]) acc[k] = v[k];
                    } else {
                        acc[k] += v[k];
                    }
                }
            }
        }
        if constexpr (!MAX) {
            const float div = include_pad ? (float)(g.KH * g.KW) : (float)count;
#pragma unroll
            for (int k = 0; k < V; ++k) acc[k] = acc[k] / div;
        }
        T* q = y + idx * V;  // y is [N, OH, OW, C]: output vector idx starts at idx·V
        if constexpr (V == VEC) store_vec<T>(q, acc);
        else q[0] = from_f32<T>(acc[0]);
    }
}

template <typename T, typename O, int V>
__device__ __forceinline__ void gap(O* __restrict__ y, const T* __restrict__ x, int HW, int C,
                                    int lanes, float* scratch) {
    const long long n = blockIdx.y;
    const int c0 = blockIdx.x * lanes * V;
    float s[V];
    channel_sums<T, V>(x + n * HW * C, 0, HW, C, c0, lanes, scratch, s);
    const int lane = threadIdx.x % lanes;
    const int c = c0 + lane * V;
    if (threadIdx.x / lanes != 0 || c >= C) return;
#pragma unroll
    for (int k = 0; k < V; ++k) s[k] = s[k] / (float)HW;
    if constexpr (V == VEC) store_vec<O>(y + n * C + c, s);
    else y[n * C + c] = from_f32<O>(s[0]);
}

}  // namespace mk

#define MK_POOL(MODE, ISMAX, T, TN)                                                              \
    extern "C" __global__ void __launch_bounds__(mk::POOL_THREADS) pool_##MODE##_##TN(           \
        T* y, const T* x, int N, int H, int W, int C, int OH, int OW, int KH, int KW, int SH,    \
        int SW, int DH, int DW, int PT, int PL, int include_pad, int vec_ok) {                   \
        const mk::PoolGeom g = {N, H, W, C, OH, OW, KH, KW, SH, SW, DH, DW, PT, PL};             \
        if (vec_ok) mk::pool_window<T, ISMAX, mk::VEC>(y, x, g, include_pad);                   \
        else mk::pool_window<T, ISMAX, 1>(y, x, g, include_pad);                                 \
    }
#define MK_POOL_ALL(T, TN) MK_POOL(max, true, T, TN) MK_POOL(avg, false, T, TN)
MK_POOL_ALL(float, f32)
MK_POOL_ALL(mk::f16, f16)
MK_POOL_ALL(mk::bf16, bf16)

#define MK_GAP(T, TN, O, ON)                                                                     \
    extern "C" __global__ void __launch_bounds__(mk::POOL_THREADS)                               \
        gap_##TN##_##ON(O* y, const T* x, int HW, int C, int lanes, int vec_ok) {                \
        MK_STATIC_SMEM(float, scratch, [mk::POOL_THREADS * mk::VEC]);                            \
        if (vec_ok) mk::gap<T, O, mk::VEC>(y, x, HW, C, lanes, scratch);                         \
        else mk::gap<T, O, 1>(y, x, HW, C, lanes, scratch);                                      \
    }
MK_GAP(float, f32, float, f32)
MK_GAP(mk::f16, f16, mk::f16, f16)
MK_GAP(mk::f16, f16, float, f32)
MK_GAP(mk::bf16, bf16, mk::bf16, bf16)
MK_GAP(mk::bf16, bf16, float, f32)
