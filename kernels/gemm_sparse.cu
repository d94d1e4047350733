// 2:4 structured-sparse GEMM: Y = act(alpha · X·Wᵀ + bias) + residual with W 2:4-sparse along K.
//
// The sparse operand of mma.sp is A, so the kernel computes Yᵀ = W·Xᵀ: A = W's compressed
// values [N16, K64/2] (the dense-A ldmatrix layout over compressed columns), B = X [M, K]
// rows (ldmatrix x4 gives b0..b3 = K 0-7, 8-15, 16-23, 24-31 of 8 rows), metadata words in
// register order (src/sparse.rs) staged through shared memory with the values; each
// mma.sp::ordered_metadata m16n8k32 does the work of a dense k32 with half the A traffic.
// f16/bf16 in, f32 accumulation, same epilogue as kernels/gemm.cu. K % 8 == 0.
// Kernels: gemm_sp_{f16,bf16}_{same,f32}_{s,l}. Launcher: src/ops/gemm_sparse.rs;
// reference: decompress (src/sparse.rs) then src/reference/gemm.rs.
#include "common/mma.cuh"
#include "common/gemm.cuh"

namespace mk {

template <typename E> struct MmaSp;
template <> struct MmaSp<f16> {
    static __device__ __forceinline__ void run(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[4], unsigned e) {
        asm volatile("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
    }
};
template <> struct MmaSp<bf16> {
    static __device__ __forceinline__ void run(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[4], unsigned e) {
        asm volatile("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
    }
};

// BN rows of W x BM rows of X per block, warp tile WN x WM, 64 logical K per stage.
template <int BN_, int BM_, int WN_, int WM_, int STAGES_> struct SpCfg {
    static constexpr int BN = BN_, BM = BM_, WN = WN_, WM = WM_, STAGES = STAGES_;
    static constexpr int W_ROW = 64 + 16;   // 32 compressed 16-bit values + pad, bytes
    static constexpr int X_ROW = 128 + 16;  // 64 dense 16-bit values + pad, bytes
    static constexpr int META = (BN / 16) * 32;  // words: 2 k32-steps x 16 lanes per 16-row tile
    static constexpr int WARPS_M = BM / WM;
    static constexpr int THREADS = (BN / WN) * (BM / WM) * 32;
    static constexpr int NT = WN / 16, MT = WM / 8;
    static constexpr int STAGE_BYTES = BN * W_ROW + BM * X_ROW + META * 4;
    static constexpr int SMEM = STAGES * STAGE_BYTES;
};
typedef SpCfg<64, 32, 32, 16, 3> SpS;     // 4 warps
typedef SpCfg<128, 128, 64, 32, 3> SpL;   // 8 warps

template <typename T, typename O, typename Cfg>
__device__ __forceinline__ void gemm_sp(const GemmParams& p) {
    extern __shared__ __align__(16) char smem[];
    const int n0 = blockIdx.x * Cfg::BN, m0 = blockIdx.y * Cfg::BM;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wn = warp / Cfg::WARPS_M, wm = warp % Cfg::WARPS_M;
    const int k64 = (p.K + 63) / 64 * 64;
    const int n16 = (p.N + 15) / 16 * 16;
    const long long vbytes = (long long)k64;   // compressed row: k64/2 values of 2 bytes
    const long long xbytes = (long long)p.K * 2;
    const char* V = static_cast<const char*>(p.w);
    const char* X = static_cast<const char*>(p.x);
    const char* Mt = reinterpret_cast<const char*>(p.meta);
    const int ktiles = k64 / 64;
    const int meta_row_words = (k64 / 32) * 16;  // words per 16-row tile

    auto sw = [&](int s) { return smem + s * Cfg::STAGE_BYTES; };
    auto sx = [&](int s) { return smem + s * Cfg::STAGE_BYTES + Cfg::BN * Cfg::W_ROW; };
    auto sm = [&](int s) {
        return reinterpret_cast<const unsigned*>(smem + s * Cfg::STAGE_BYTES + Cfg::BN * Cfg::W_ROW + Cfg::BM * Cfg::X_ROW);
    };
    auto load = [&](int kt, int s) {
        for (int c = threadIdx.x; c < Cfg::BN * 4; c += Cfg::THREADS) {  // W values: 64 bytes/row
            const int r = c >> 2, q = c & 3;
            const bool ok = n0 + r < n16;
            const char* src = ok ? V + (long long)(n0 + r) * vbytes + kt * 64 + q * 16 : V;
            cp_async16(sw(s) + r * Cfg::W_ROW + q * 16, src, ok);
        }
        for (int c = threadIdx.x; c < Cfg::BM * 8; c += Cfg::THREADS) {  // X: 128 bytes/row
            const int r = c >> 3, q = c & 7;
            const long long kb = (long long)kt * 128 + q * 16;
            const bool ok = m0 + r < p.M && kb < xbytes;
            const char* src = ok ? X + (long long)(m0 + r) * xbytes + kb : X;
            cp_async16(sx(s) + r * Cfg::X_ROW + q * 16, src, ok);
        }
        for (int c = threadIdx.x; c < (Cfg::BN / 16) * 8; c += Cfg::THREADS) {  // meta: 128 bytes/tile
            const int t = c >> 3, q = c & 7;
            const int tile = n0 / 16 + t;
            const bool ok = tile < n16 / 16;
            const char* src = ok ? Mt + ((long long)tile * meta_row_words + kt * 32) * 4 + q * 16 : Mt;
            cp_async16((char*)sm(s) + t * 128 + q * 16, src, ok);
        }
    };

    float acc[Cfg::NT][Cfg::MT][4];
#pragma unroll
    for (int i = 0; i < Cfg::NT; ++i)
#pragma unroll
        for (int j = 0; j < Cfg::MT; ++j)
#pragma unroll
            for (int k = 0; k < 4; ++k) acc[i][j][k] = 0.f;

#pragma unroll
    for (int s = 0; s < Cfg::STAGES - 1; ++s) {
        if (s < ktiles) load(s, s);
        cp_async_commit();
    }
    const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_byte = (lane >> 4) * 16;
    const int b_row = lane & 7, b_byte = (lane >> 3) * 16;
    const int g = lane >> 2, tig = lane & 3;
    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<Cfg::STAGES - 2>();
        __syncthreads();
        const int next = kt + Cfg::STAGES - 1;
        if (next < ktiles) load(next, next % Cfg::STAGES);
        cp_async_commit();
        const int st = kt % Cfg::STAGES;
        const char* W_s = sw(st) + (wn * Cfg::WN) * Cfg::W_ROW;
        const char* X_s = sx(st) + (wm * Cfg::WM) * Cfg::X_ROW;
        const unsigned* M_s = sm(st) + (wn * Cfg::WN / 16) * 32;
#pragma unroll
        for (int step = 0; step < 2; ++step) {
            unsigned a[Cfg::NT][4], b[Cfg::MT][4], e[Cfg::NT];
#pragma unroll
            for (int i = 0; i < Cfg::NT; ++i) {
                ldmatrix_x4(a[i], W_s + (i * 16 + a_row) * Cfg::W_ROW + step * 32 + a_byte);
                e[i] = tig < 2 ? M_s[i * 32 + step * 16 + g * 2 + tig] : 0u;
            }
#pragma unroll
            for (int j = 0; j < Cfg::MT; ++j) ldmatrix_x4(b[j], X_s + (j * 8 + b_row) * Cfg::X_ROW + step * 64 + b_byte);
#pragma unroll
            for (int i = 0; i < Cfg::NT; ++i)
#pragma unroll
                for (int j = 0; j < Cfg::MT; ++j) MmaSp<T>::run(acc[i][j], a[i], b[j], e[i]);
        }
    }
    cp_async_wait<0>();

    O* Y = static_cast<O*>(p.y);
    const O* R = static_cast<const O*>(p.residual);
    const T* B = static_cast<const T*>(p.bias);
#pragma unroll
    for (int i = 0; i < Cfg::NT; ++i)
#pragma unroll
        for (int j = 0; j < Cfg::MT; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int n = n0 + wn * Cfg::WN + i * 16 + g + (q >> 1) * 8;
                const int m = m0 + wm * Cfg::WM + j * 8 + tig * 2 + (q & 1);
                if (n >= p.N || m >= p.M) continue;
                float v = acc[i][j][q] * p.alpha;
                if (B) v += to_f32<T>(B[n]);
                v = act_rt(p.act, v);
                const long long o = (long long)m * p.N + n;
                if (R) v += to_f32<O>(R[o]);
                Y[o] = out_cast<O>(v);
            }
}

}  // namespace mk

#define MK_GEMM_SP(T, TN, O, ON, CFG, CN)                                                    \
    extern "C" __global__ void __launch_bounds__(mk::CFG::THREADS)                           \
        gemm_sp_##TN##_##ON##_##CN(const mk::GemmParams p) {                                 \
        mk::gemm_sp<T, O, mk::CFG>(p);                                                       \
    }
#define MK_GEMM_SP_CFGS(T, TN, O, ON) MK_GEMM_SP(T, TN, O, ON, SpS, s) MK_GEMM_SP(T, TN, O, ON, SpL, l)
MK_GEMM_SP_CFGS(mk::f16, f16, mk::f16, f16)
MK_GEMM_SP_CFGS(mk::f16, f16, float, f32)
MK_GEMM_SP_CFGS(mk::bf16, bf16, mk::bf16, bf16)
MK_GEMM_SP_CFGS(mk::bf16, bf16, float, f32)
