// conv2d, NHWC, as an implicit GEMM on tensor cores: Y[m, oc] = Σ_k A[m, k]·W[oc, k] with
// m = (n, oh, ow), k = (kh, kw, c) and A[m, k] = X[n, oh·s - pad + kh·dil, ow·s - pad + kw·dil, c]
// (zero outside the image). A is never materialised: the A-tile loader of the shared GEMM
// mainloop (common/mma.cuh `mainloop_with`) gathers it straight from X into shared memory.
//   vec: 16-byte cp.async gathers of 8 channels (C and C/groups multiples of 8);
//   any: element gathers with plain loads/stores, for any channel count (the 3-channel first
//        layer of every ImageNet CNN, whose K = 7·7·3 = 147 runs through the same MMAs).
// W is [OC, Kp]: OHWI rows (kh, kw, c) zero-padded to Kp (a multiple of 8), prepared once by
// src/ops/conv.rs `ConvWeight`. Groups run on blockIdx.z (each group is its own GEMM).
// Epilogue (one store per output): y = act(acc·scale[oc] + bias[oc] + residual) — folded
// BatchNorm, then the residual, then the activation (ResNet's relu(bn(conv) + identity)).
// Kernels: conv2d_{f16,bf16}_vec_{s,m,l}, conv2d_{f16,bf16}_any_{s,m}, conv2d_f32 (direct SIMT).
// Launcher: src/ops/conv.rs; reference: src/reference/conv.rs.
#include "common/mma.cuh"
#include "common/gemm.cuh"

namespace mk {

// Mirrors `ConvParams` in src/ops/conv.rs field for field (136 bytes).
struct ConvParams {
    const void* x;         // [N, H, W, C]
    const void* w;         // [OC, Kp]
    void* y;               // [N, OH, OW, OC]
    const float* scale;    // optional [OC]
    const float* bias;     // optional [OC]
    const void* residual;  // optional, y's shape and dtype
    int N, H, W, C, OC, KH, KW, Cg, OCg, K, Kp, OH, OW;
    int stride_h, stride_w, dil_h, dil_w, pad_top, pad_left, act, M;
};

// Where output row m reads its window: image base offset and top-left input coordinate.
struct ConvRow {
    long long base;  // n·H·W·C, or -1 past M
    int ih0, iw0;
};

__device__ __forceinline__ ConvRow conv_row(const ConvParams& p, int m) {
    ConvRow r;
    if (m >= p.M) {
        r.base = -1;
        r.ih0 = r.iw0 = 0;
        return r;
    }
    const int hw = p.OH * p.OW;
    const int n = m / hw, rem = m - n * hw;
    const int oh = rem / p.OW, ow = rem - oh * p.OW;
    r.base = (long long)n * p.H * p.W * p.C;
    r.ih0 = oh * p.stride_h - p.pad_top;
    r.iw0 = ow * p.stride_w - p.pad_left;
    return r;
}

template <typename T, typename Cfg, bool VEC>
__device__ __forceinline__ void conv_tc(const ConvParams& p) {
    MK_DYN_SMEM(char, smem);
    constexpr int KE = Cfg::KB / (int)sizeof(T);  // k elements per k-tile (32)
    const int m0 = blockIdx.x * Cfg::BM, n0 = blockIdx.y * Cfg::BN, g = blockIdx.z;
    const T* X = static_cast<const T*>(p.x) + g * p.Cg;
    const char* Wg = reinterpret_cast<const char*>(static_cast<const T*>(p.w) + (long long)g * p.OCg * p.Kp);
    const long long wbytes = (long long)p.Kp * (long long)sizeof(T);
    const int ktiles = (p.K + KE - 1) / KE;
    float acc[Cfg::MT][Cfg::NT][4];
#pragma unroll
    for (int i = 0; i < Cfg::MT; ++i)
#pragma unroll
        for (int j = 0; j < Cfg::NT; ++j)
#pragma unroll
            for (int k = 0; k < 4; ++k) acc[i][j][k] = 0.f;

    if (VEC) {
        // Chunk slot i of this thread: row (tid + i·THREADS) / 4, 16-byte chunk (tid % 4).
        constexpr int SLOTS = Cfg::BM * 4 / Cfg::THREADS;
        static_assert(SLOTS * Cfg::THREADS == Cfg::BM * 4, "A chunks must divide over the threads");
        ConvRow rows[SLOTS];
#pragma unroll
        for (int i = 0; i < SLOTS; ++i) rows[i] = conv_row(p, m0 + ((threadIdx.x + i * Cfg::THREADS) >> 2));
        const int q = threadIdx.x & 3;
        mainloop_with<T, Cfg>(
            smem, ktiles,
            [&](int kt, char* sa, char* sb) {
                const int kk = kt * KE + q * 8;  // 8 channels of one (kh, kw) tap: Cg % 8 == 0
                const int c = kk % p.Cg, t = kk / p.Cg;
                const int kw = t % p.KW, kh = t / p.KW;
#pragma unroll
                for (int i = 0; i < SLOTS; ++i) {
                    const int r = (threadIdx.x + i * Cfg::THREADS) >> 2;
                    const int ih = rows[i].ih0 + kh * p.dil_h, iw = rows[i].iw0 + kw * p.dil_w;
                    const bool ok = rows[i].base >= 0 && kk < p.K && (unsigned)ih < (unsigned)p.H &&
                                    (unsigned)iw < (unsigned)p.W;
                    const T* src = ok ? X + rows[i].base + ((long long)ih * p.W + iw) * p.C + c
                                      : static_cast<const T*>(p.x);
                    cp_async16(sa + r * Cfg::ROW + q * 16, src, ok);
                }
                load_tile<Cfg::BN, Cfg::THREADS, Cfg::ROW>(sb, Wg, p.OCg, wbytes, n0, (long long)kt * Cfg::KB);
            },
            acc, [](int, int) {});
    } else {
        // Element gathers: thread t always fills k column t % 32 of rows t/32 + j·(THREADS/32).
        constexpr int RSTEP = Cfg::THREADS / 32, SLOTS = Cfg::BM / RSTEP;
        static_assert(KE == 32, "one warp covers the 32 k elements of a tile row");
        ConvRow rows[SLOTS];
#pragma unroll
        for (int j = 0; j < SLOTS; ++j) rows[j] = conv_row(p, m0 + (threadIdx.x >> 5) + j * RSTEP);
        const int kc = threadIdx.x & 31;
        mainloop_with<T, Cfg>(
            smem, ktiles,
            [&](int kt, char* sa, char* sb) {
                const int kk = kt * KE + kc;
                const int c = kk % p.Cg, t = kk / p.Cg;
                const int kw = t % p.KW, kh = t / p.KW;
#pragma unroll
                for (int j = 0; j < SLOTS; ++j) {
                    const int r = (threadIdx.x >> 5) + j * RSTEP;
                    const int ih = rows[j].ih0 + kh * p.dil_h, iw = rows[j].iw0 + kw * p.dil_w;
                    const bool ok = rows[j].base >= 0 && kk < p.K && (unsigned)ih < (unsigned)p.H &&
                                    (unsigned)iw < (unsigned)p.W;
                    const T v = ok ? X[rows[j].base + ((long long)ih * p.W + iw) * p.C + c] : from_f32<T>(0.f);
                    *reinterpret_cast<T*>(sa + r * Cfg::ROW + kc * (int)sizeof(T)) = v;
                }
                load_tile<Cfg::BN, Cfg::THREADS, Cfg::ROW>(sb, Wg, p.OCg, wbytes, n0, (long long)kt * Cfg::KB);
            },
            acc, [](int, int) {});
    }

    T* Y = static_cast<T*>(p.y);
    const T* R = static_cast<const T*>(p.residual);
    for_each_pair<Cfg>(m0, n0, [&](int mt, int nt, int h, int row, int col) {
        if (row >= p.M || col >= p.OCg) return;
        const int oc = g * p.OCg + col;
        const long long at = (long long)row * p.OC + oc;
        const bool two = col + 1 < p.OCg;
        float v[2] = {acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]};
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            if (j == 1 && !two) break;
            float t = v[j];
            if (p.scale) t *= p.scale[oc + j];
            if (p.bias) t += p.bias[oc + j];
            if (R) t += to_f32<T>(R[at + j]);
            v[j] = act_rt(p.act, t);
        }
        if (two && (at & 1) == 0) {
            Pair<T> pr;
            pr.v[0] = from_f32<T>(v[0]);
            pr.v[1] = from_f32<T>(v[1]);
            *reinterpret_cast<Pair<T>*>(Y + at) = pr;
        } else {
            Y[at] = from_f32<T>(v[0]);
            if (two) Y[at + 1] = from_f32<T>(v[1]);
        }
    });
}

// f32: direct convolution, one thread per output element (oc fastest, so a warp shares its
// input reads); for correctness-first f32 models, not the tensor-core paths' speed.
__device__ __forceinline__ void conv_direct_f32(const ConvParams& p) {
    const float* X = static_cast<const float*>(p.x);
    const float* Wt = static_cast<const float*>(p.w);
    float* Y = static_cast<float*>(p.y);
    const float* R = static_cast<const float*>(p.residual);
    const long long total = (long long)p.M * p.OC;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const int oc = (int)(e % p.OC);
        const int m = (int)(e / p.OC);
        const int g = oc / p.OCg;
        const ConvRow r = conv_row(p, m);
        const float* w = Wt + (long long)oc * p.Kp;
        float acc = 0.f;
        for (int kh = 0; kh < p.KH; ++kh) {
            const int ih = r.ih0 + kh * p.dil_h;
            if ((unsigned)ih >= (unsigned)p.H) continue;
            for (int kw = 0; kw < p.KW; ++kw) {
                const int iw = r.iw0 + kw * p.dil_w;
                if ((unsigned)iw >= (unsigned)p.W) continue;
                const float* x = X + r.base + ((long long)ih * p.W + iw) * p.C + g * p.Cg;
                const float* wk = w + (kh * p.KW + kw) * p.Cg;
                for (int c = 0; c < p.Cg; ++c) acc = fmaf(x[c], wk[c], acc);
            }
        }
        if (p.scale) acc *= p.scale[oc];
        if (p.bias) acc += p.bias[oc];
        if (R) acc += R[e];
        Y[e] = act_rt(p.act, acc);
    }
}

}  // namespace mk

#define MK_CONV(T, TN, CFG, CN, VEC, VN)                                                       \
    extern "C" __global__ void __launch_bounds__(mk::CFG::THREADS)                             \
        conv2d_##TN##_##VN##_##CN(const mk::ConvParams p) {                                    \
        mk::conv_tc<T, mk::CFG, VEC>(p);                                                       \
    }
#define MK_CONV_ALL(T, TN)                                                                     \
    MK_CONV(T, TN, CfgS, s, true, vec) MK_CONV(T, TN, CfgM, m, true, vec)                      \
    MK_CONV(T, TN, CfgL, l, true, vec) MK_CONV(T, TN, CfgS, s, false, any)                     \
    MK_CONV(T, TN, CfgM, m, false, any)
MK_CONV_ALL(mk::f16, f16)
MK_CONV_ALL(mk::bf16, bf16)

extern "C" __global__ void __launch_bounds__(mk::CONV_F32_THREADS) conv2d_f32(const mk::ConvParams p) {
    mk::conv_direct_f32(p);
}
