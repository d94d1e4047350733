// 2:4 structured-sparse GEMM: Y = act(alpha · X·Wᵀ + bias) + residual with W 2:4-sparse along K.
//
// The sparse operand of mma.sp is A, so the kernel computes Yᵀ = W·Xᵀ: A = W's compressed
// values [N16, K64/2] (the dense-A ldmatrix layout over compressed columns), B = X [M, K]
// rows (ldmatrix x4 gives b0..b3 = K 0-7, 8-15, 16-23, 24-31 of 8 rows), metadata words in
// register order (src/sparse.rs) staged through shared memory with the values; each
// mma.sp::ordered_metadata m16n8k32 does the work of a dense k32 with half the A traffic.
// f16/bf16 (m16n8k32, f32 accumulation, the epilogue of kernels/gemm.cu; K % 8 == 0) and int8
// (m16n8k64, s32 accumulation, the per-token / per-channel scale epilogue of
// kernels/gemm_int8.cu or raw s32; K % 16 == 0). Both move the same bytes per stage: 64 of
// compressed W and 128 of X per row. Kernels: gemm_sp_{f16,bf16}_{same,f32}_{s,l},
// gemm_sp_i8_{i32,i8,f16,bf16,f32}_{s,l}. Launcher: src/ops/gemm_sparse.rs;
// reference: decompress (src/sparse.rs) then src/reference/gemm.rs.
#include "common/mma.cuh"
#include "common/gemm.cuh"

namespace mk {

template <typename E> struct MmaSp;
template <> struct MmaSp<f16> {
    static __device__ __forceinline__ void run(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[4], unsigned e) {
#ifdef MK_EMU
        mk_emu::mma_sp_16832_f16(d, a, b, e);
        return;
#endif
        asm volatile("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
    }
};
template <> struct MmaSp<bf16> {
    static __device__ __forceinline__ void run(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[4], unsigned e) {
#ifdef MK_EMU
        mk_emu::mma_sp_16832_bf16(d, a, b, e);
        return;
#endif
        asm volatile("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
    }
};

template <> struct MmaSp<signed char> {
    static __device__ __forceinline__ void run(int (&d)[4], const unsigned (&a)[4], const unsigned (&b)[4], unsigned e) {
#ifdef MK_EMU
        mk_emu::mma_sp_16864_s8(d, a, b, e);
        return;
#endif
        asm volatile("mma.sp::ordered_metadata.sync.aligned.m16n8k64.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                     : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
    }
};

// BN rows of W x BM rows of X per block, warp tile WN x WM; per stage 64 bytes of compressed W
// and 128 bytes of X per row (64 logical K of f16/bf16, 128 of int8) in two mma steps. MW is
// the metadata words per 16-row tile per step: 16 (f16/bf16, selector 0) or 32 (int8).
// The shapes and the launchers' block size and shared memory: common/consts.cuh GEMM_SP_*.
template <int BN_, int BM_, int WN_, int WM_, int STAGES_, int MW_> struct SpCfg {
    static constexpr int BN = BN_, BM = BM_, WN = WN_, WM = WM_, STAGES = STAGES_, MW = MW_;
    static constexpr int W_ROW = GEMM_SP_W_ROW;  // compressed bytes (64) + pad
    static constexpr int X_ROW = GEMM_SP_X_ROW;  // dense bytes (128) + pad
    static constexpr int META = (BN / 16) * 2 * MW;  // words per stage
    static constexpr int WARPS_M = BM / WM;
    static constexpr int THREADS = (BN / WN) * (BM / WM) * 32;
    static constexpr int NT = WN / 16, MT = WM / 8;
    static constexpr int STAGE_BYTES = BN * W_ROW + BM * X_ROW + META * 4;
    static constexpr int SMEM = STAGES * STAGE_BYTES;
};
template <int MW>
using SpS = SpCfg<GEMM_SP_S_BN, GEMM_SP_S_BM, GEMM_SP_S_WN, GEMM_SP_S_WM, GEMM_SP_STAGES, MW>;  // 4 warps
template <int MW>
using SpL = SpCfg<GEMM_SP_L_BN, GEMM_SP_L_BM, GEMM_SP_L_WN, GEMM_SP_L_WM, GEMM_SP_STAGES, MW>;  // 8 warps
static_assert(SpS<GEMM_SP_MW_F16>::THREADS == GEMM_SP_S_THREADS && SpS<GEMM_SP_MW_I8>::THREADS == GEMM_SP_S_THREADS,
              "SpS vs common/consts.cuh");
static_assert(SpL<GEMM_SP_MW_F16>::THREADS == GEMM_SP_L_THREADS && SpL<GEMM_SP_MW_I8>::THREADS == GEMM_SP_L_THREADS,
              "SpL vs common/consts.cuh");
static_assert(SpS<GEMM_SP_MW_F16>::SMEM == GEMM_SP_S_SMEM_F16 && SpS<GEMM_SP_MW_I8>::SMEM == GEMM_SP_S_SMEM_I8,
              "SpS vs common/consts.cuh");
static_assert(SpL<GEMM_SP_MW_F16>::SMEM == GEMM_SP_L_SMEM_F16 && SpL<GEMM_SP_MW_I8>::SMEM == GEMM_SP_L_SMEM_I8,
              "SpL vs common/consts.cuh");

// acc[i][j] += W[n0 + wn·WN + 16i ..] · X[m0 + wm·WM + 8j ..]ᵀ over all of K.
template <typename E, typename Cfg, typename Acc>
__device__ __forceinline__ void sp_mainloop(const GemmParams& p, char* smem, Acc (&acc)[Cfg::NT][Cfg::MT][4]) {
    const int n0 = blockIdx.x * Cfg::BN, m0 = blockIdx.y * Cfg::BM;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wn = warp / Cfg::WARPS_M, wm = warp % Cfg::WARPS_M;
    constexpr int KSTAGE = 128 / (int)sizeof(E);  // logical K per stage
    const int kpad = (p.K + KSTAGE - 1) / KSTAGE * KSTAGE;
    const int ktiles = kpad / KSTAGE;
    const int n16 = (p.N + 15) / 16 * 16;
    const long long vbytes = (long long)ktiles * 64;   // compressed row bytes
    const long long xbytes = (long long)p.K * sizeof(E);
    const char* V = static_cast<const char*>(p.w);
    const char* X = static_cast<const char*>(p.x);
    const char* Mt = reinterpret_cast<const char*>(p.meta);
    const int meta_row_words = ktiles * 2 * Cfg::MW;  // words per 16-row tile

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
        constexpr int CH = 2 * Cfg::MW / 4;  // 16-byte chunks of metadata per tile per stage
        for (int c = threadIdx.x; c < (Cfg::BN / 16) * CH; c += Cfg::THREADS) {
            const int t = c / CH, q = c % CH;
            const int tile = n0 / 16 + t;
            const bool ok = tile < n16 / 16;
            const char* src = ok ? Mt + ((long long)tile * meta_row_words + kt * 2 * Cfg::MW) * 4 + q * 16 : Mt;
            cp_async16((char*)sm(s) + t * CH * 16 + q * 16, src, ok);
        }
    };

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
        const unsigned* M_s = sm(st) + (wn * Cfg::WN / 16) * 2 * Cfg::MW;
#pragma unroll
        for (int step = 0; step < 2; ++step) {
            unsigned a[Cfg::NT][4], b[Cfg::MT][4], e[Cfg::NT];
#pragma unroll
            for (int i = 0; i < Cfg::NT; ++i) {
                ldmatrix_x4(a[i], W_s + (i * 16 + a_row) * Cfg::W_ROW + step * 32 + a_byte);
                // f16/bf16: lanes 4g, 4g+1 hold rows g and g+8 for K halves 0, 1 (selector 0);
                // int8: lane 4g+h holds row g + 8(h&1), K half h>>1 (src/sparse.rs).
                const unsigned* mw = M_s + i * 2 * Cfg::MW + step * Cfg::MW;
                e[i] = Cfg::MW == GEMM_SP_MW_I8 ? mw[lane] : (tig < 2 ? mw[g * 2 + tig] : 0u);
                // Tiles past the padded N hold zero-filled metadata, and an all-zero nibble is
                // an invalid index pair: use positions (0, 1) there (the values are zeros).
                if (n0 + wn * Cfg::WN + i * 16 >= n16) e[i] = 0x44444444u;
            }
#pragma unroll
            for (int j = 0; j < Cfg::MT; ++j) ldmatrix_x4(b[j], X_s + (j * 8 + b_row) * Cfg::X_ROW + step * 64 + b_byte);
#pragma unroll
            for (int i = 0; i < Cfg::NT; ++i)
#pragma unroll
                for (int j = 0; j < Cfg::MT; ++j) MmaSp<E>::run(acc[i][j], a[i], b[j], e[i]);
        }
    }
    cp_async_wait<0>();
}

// Visits accumulator element q of (i, j) as (n = W row, m = X row).
template <typename Cfg, typename F>
__device__ __forceinline__ void sp_for_each(F f) {
    const int n0 = blockIdx.x * Cfg::BN, m0 = blockIdx.y * Cfg::BM;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wn = warp / Cfg::WARPS_M, wm = warp % Cfg::WARPS_M;
    const int g = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int i = 0; i < Cfg::NT; ++i)
#pragma unroll
        for (int j = 0; j < Cfg::MT; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q)
                f(i, j, q, n0 + wn * Cfg::WN + i * 16 + g + (q >> 1) * 8, m0 + wm * Cfg::WM + j * 8 + tig * 2 + (q & 1));
}

template <typename T, typename O, typename Cfg>
__device__ __forceinline__ void gemm_sp(const GemmParams& p) {
    MK_DYN_SMEM(char, smem);
    float acc[Cfg::NT][Cfg::MT][4];
#pragma unroll
    for (int i = 0; i < Cfg::NT; ++i)
#pragma unroll
        for (int j = 0; j < Cfg::MT; ++j)
#pragma unroll
            for (int k = 0; k < 4; ++k) acc[i][j][k] = 0.f;
    sp_mainloop<T, Cfg>(p, smem, acc);

    O* Y = static_cast<O*>(p.y);
    const O* R = static_cast<const O*>(p.residual);
    const T* B = static_cast<const T*>(p.bias);
    sp_for_each<Cfg>([&](int i, int j, int q, int n, int m) {
        if (n >= p.N || m >= p.M) return;
        float v = acc[i][j][q] * p.alpha;
        if (B) v += to_f32<T>(B[n]);
        v = act_rt(p.act, v);
        const long long o = (long long)m * p.N + n;
        if (R) v += to_f32<O>(R[o]);
        Y[o] = out_cast<O>(v);
    });
}

template <typename O, typename Cfg>
__device__ __forceinline__ void gemm_sp_i8(const GemmParams& p) {
    MK_DYN_SMEM(char, smem);
    int acc[Cfg::NT][Cfg::MT][4];
#pragma unroll
    for (int i = 0; i < Cfg::NT; ++i)
#pragma unroll
        for (int j = 0; j < Cfg::MT; ++j)
#pragma unroll
            for (int k = 0; k < 4; ++k) acc[i][j][k] = 0;
    sp_mainloop<signed char, Cfg>(p, smem, acc);
    O* Y = static_cast<O*>(p.y);
    constexpr bool RAW = sizeof(O) == 4 && O(0.5f) == O(0);
    constexpr bool REQUANT = sizeof(O) == 1;
    const O* R = static_cast<const O*>(p.residual);
    const float* B = static_cast<const float*>(p.bias);
    sp_for_each<Cfg>([&](int i, int j, int q, int n, int m) {
        if (n >= p.N || m >= p.M) return;
        const long long o = (long long)m * p.N + n;
        if constexpr (RAW) {
            Y[o] = acc[i][j][q];
        } else {
            float v = (float)acc[i][j][q] * p.sx[p.sx_per_row ? m : 0] * p.sw[n] * p.alpha;
            if (B) v += B[n];
            v = act_rt(p.act, v);
            if (REQUANT) {
                v = v / p.out_scale;
            } else if (R) {
                v += to_f32<O>(R[o]);
            }
            Y[o] = out_cast<O>(v);
        }
    });
}

}  // namespace mk

#define MK_GEMM_SP(T, TN, O, ON, CFG, CN)                                                    \
    extern "C" __global__ void __launch_bounds__(mk::CFG::THREADS)                           \
        gemm_sp_##TN##_##ON##_##CN(const mk::GemmParams p) {                                 \
        mk::gemm_sp<T, O, mk::CFG>(p);                                                       \
    }
#define MK_GEMM_SP_I8(O, ON, CFG, CN)                                                        \
    extern "C" __global__ void __launch_bounds__(mk::CFG::THREADS)                           \
        gemm_sp_i8_##ON##_##CN(const mk::GemmParams p) {                                     \
        mk::gemm_sp_i8<O, mk::CFG>(p);                                                       \
    }
#define MK_GEMM_SP_I8_CFGS(O, ON) \
    MK_GEMM_SP_I8(O, ON, SpS<mk::GEMM_SP_MW_I8>, s) MK_GEMM_SP_I8(O, ON, SpL<mk::GEMM_SP_MW_I8>, l)
#define MK_GEMM_SP_CFGS(T, TN, O, ON) \
    MK_GEMM_SP(T, TN, O, ON, SpS<mk::GEMM_SP_MW_F16>, s) MK_GEMM_SP(T, TN, O, ON, SpL<mk::GEMM_SP_MW_F16>, l)
MK_GEMM_SP_CFGS(mk::f16, f16, mk::f16, f16)
MK_GEMM_SP_CFGS(mk::f16, f16, float, f32)
MK_GEMM_SP_CFGS(mk::bf16, bf16, mk::bf16, bf16)
MK_GEMM_SP_CFGS(mk::bf16, bf16, float, f32)
MK_GEMM_SP_I8_CFGS(int, i32)
MK_GEMM_SP_I8_CFGS(signed char, i8)
MK_GEMM_SP_I8_CFGS(mk::f16, f16)
MK_GEMM_SP_I8_CFGS(mk::bf16, bf16)
MK_GEMM_SP_I8_CFGS(float, f32)
