// W4A16 GEMM (Marlin design): Y = act(alpha · X·Wᵀ + bias) + residual with X f16/bf16 [M, K]
// and W int4 [N, K] (symmetric, -8..7) with one f16 scale per group of 64 or 128 values of K.
//
// The weight is packed once on the host (src/ops/gemm_w4.rs, `pack_w4`) straight into the
// mma.m16n8k16 B-fragment order: for k-tile kt (64 values of K) and 32-column block nb, lane l
// owns 2 x 16 bytes (j = 0, 1: the k16 steps 2j and 2j+1). Word t (0..3) of such a uint4 is
// n8 tile t, column nb·32 + t·8 + l/4; its nibble i (0..3) is the low half, nibble i+4 the
// high half of register b(i%2) of k16 step 2j + i/2, i.e. the PTX fragment
//   b0 = W[n][k0 + (l%4)·2 + {0,1}],  b1 = the same at k0 + 8.
// Nibbles hold q + 8. Dequantisation in registers: OR two nibbles (bits 4i and 16+4i) under the
// f16 exponent of 1024 (0x6400; bf16: 128, 0x4300) and subtract 1032 (bf16: 136) as a half2:
// exact integers -8..7, so the MMAs see the exact int4 values. The f16 group scale is applied
// to the f32 accumulators once per group (a k-tile never straddles a group), which is exact
// up to f32 rounding, rather than to every weight in f16.
//
// Scales are stored transposed, [K/group, N] f16, so a lane reads its two columns as one pair.
// cp.async streams X (zero-filled below M) and the packed W (zero-filled past N) through a
// GEMM_W4_STAGES-deep shared-memory pipeline. Requires K % 64 == 0, N % 32 == 0 (the launcher
// checks; see W4Weight::new). Kernels: gemm_w4_{f16,bf16}_{same,f32}_{s,m}.
// NVRTC resource report (sm_80 / sm_90, 2026-12-07): 60-64 registers (s), 114-120 (m), no spills.
// Launcher: src/ops/gemm_w4.rs; reference: src/reference/gemm_w4.rs.
#include "common/mma.cuh"
#include "common/gemm.cuh"

namespace mk {

// Block tile: WARPS_M x 4 warps; warp tile (MT·16 rows) x 32 columns.
template <int MT_, int WARPS_M_> struct W4Cfg {
    static constexpr int MT = MT_, WARPS_M = WARPS_M_, WARPS_N = GEMM_W4_BN / GEMM_W4_NB;
    static constexpr int BM = 16 * MT * WARPS_M, BN = GEMM_W4_BN, KT = GEMM_W4_KT;
    static constexpr int THREADS = WARPS_M * WARPS_N * 32;
    static constexpr int A_ROW = GEMM_W4_A_ROW, A_BYTES = BM * A_ROW, B_BYTES = GEMM_W4_B_STAGE;
    static constexpr int STAGES = GEMM_W4_STAGES, STAGE_BYTES = A_BYTES + B_BYTES;
    static constexpr int SMEM = STAGES * STAGE_BYTES;
    static_assert(KT == 64 && GEMM_W4_NB == 32, "the packing (src/ops/gemm_w4.rs) is 64 x 32 per lane pair of uint4");
    static_assert(B_BYTES == WARPS_N * 32 * 2 * 16, "one uint4 per lane per k32 step per warp");
};
typedef W4Cfg<1, 1> W4S;
typedef W4Cfg<2, 2> W4M;
static_assert(W4S::BM == GEMM_W4_S_BM && W4S::THREADS == GEMM_W4_S_THREADS && W4S::SMEM == GEMM_W4_S_SMEM,
              "W4S vs common/consts.cuh");
static_assert(W4M::BM == GEMM_W4_M_BM && W4M::THREADS == GEMM_W4_M_THREADS && W4M::SMEM == GEMM_W4_M_SMEM,
              "W4M vs common/consts.cuh");

// half2 of the nibbles at bits 4i and 16 + 4i of `w` (each q + 8) as exact q values.
template <typename T> struct Dq;
template <> struct Dq<f16> {
    static __device__ __forceinline__ unsigned run(unsigned w, int i) {
        const unsigned bits = ((w >> (4 * i)) & 0x000F000Fu) | 0x64006400u;  // 1024 + (q + 8)
        __half2_raw r, bias;
        r.x = (unsigned short)(bits & 0xFFFFu);
        r.y = (unsigned short)(bits >> 16);
        bias.x = bias.y = 0x6408;  // 1032
        const __half2_raw d = __hsub2(__half2(r), __half2(bias));
        return (unsigned)d.x | ((unsigned)d.y << 16);
    }
};
template <> struct Dq<bf16> {
    static __device__ __forceinline__ unsigned run(unsigned w, int i) {
        const unsigned bits = ((w >> (4 * i)) & 0x000F000Fu) | 0x43004300u;  // 128 + (q + 8)
        __nv_bfloat162_raw r, bias;
        r.x = (unsigned short)(bits & 0xFFFFu);
        r.y = (unsigned short)(bits >> 16);
        bias.x = bias.y = 0x4308;  // 136
        const __nv_bfloat162_raw d = __hsub2(__nv_bfloat162(r), __nv_bfloat162(bias));
        return (unsigned)d.x | ((unsigned)d.y << 16);
    }
};

template <typename T, typename O, typename Cfg>
__device__ __forceinline__ void gemm_w4(const GemmParams& p) {
    MK_DYN_SMEM(char, smem);
    const int m0 = blockIdx.y * Cfg::BM, n0 = blockIdx.x * Cfg::BN;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / Cfg::WARPS_N, wn = warp % Cfg::WARPS_N;
    const char* X = static_cast<const char*>(p.x);
    const char* W = static_cast<const char*>(p.w);
    const f16* S = reinterpret_cast<const f16*>(p.sw);
    const int M = p.M, N = p.N;
    const long long xrow = (long long)p.K * 2;  // bytes per row of X
    const int nbs = N / GEMM_W4_NB, ktiles = p.K / Cfg::KT;
    const int tiles_per_group = p.group_size / Cfg::KT;

    auto stage_a = [&](int s) { return smem + s * Cfg::STAGE_BYTES; };
    auto stage_b = [&](int s) { return smem + s * Cfg::STAGE_BYTES + Cfg::A_BYTES; };
    // k-tile kt: BM rows x 128 bytes of X, and the block's BN/32 packed 1 KiB column blocks,
    // which lie next to each other in W (layout [K/64][N/32][2][32 lanes][16 bytes]).
    auto load = [&](int kt, char* sa, char* sb) {
#pragma unroll
        for (int c = tid; c < Cfg::BM * 8; c += Cfg::THREADS) {
            const int r = c >> 3, q = c & 7;
            const bool ok = m0 + r < M;
            const char* src = ok ? X + (long long)(m0 + r) * xrow + (long long)kt * 128 + q * 16 : X;
            cp_async16(sa + r * Cfg::A_ROW + q * 16, src, ok);
        }
        const long long wb = ((long long)kt * nbs + n0 / GEMM_W4_NB) * 1024;
#pragma unroll
        for (int c = tid; c < Cfg::B_BYTES / 16; c += Cfg::THREADS) {
            const bool ok = n0 / GEMM_W4_NB + (c >> 6) < nbs;
            cp_async16(sb + c * 16, ok ? W + wb + c * 16 : W, ok);
        }
    };

    float acc[Cfg::MT][4][4], facc[Cfg::MT][4][4];
#pragma unroll
    for (int i = 0; i < Cfg::MT; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int k = 0; k < 4; ++k) acc[i][j][k] = facc[i][j][k] = 0.f;

#pragma unroll
    for (int s = 0; s < Cfg::STAGES - 1; ++s) {
        if (s < ktiles) load(s, stage_a(s), stage_b(s));
        cp_async_commit();
    }
    const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_byte = (lane >> 4) * 16;
    const int col0 = n0 + wn * GEMM_W4_NB + (lane & 3) * 2;  // + t·8: this lane's column pairs
    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<Cfg::STAGES - 2>();
        __syncthreads();
        const int next = kt + Cfg::STAGES - 1;
        if (next < ktiles) load(next, stage_a(next % Cfg::STAGES), stage_b(next % Cfg::STAGES));
        cp_async_commit();
        const char* sa = stage_a(kt % Cfg::STAGES) + (wm * Cfg::MT * 16) * Cfg::A_ROW;
        const uint4* sb = reinterpret_cast<const uint4*>(stage_b(kt % Cfg::STAGES) + wn * 1024);
        const uint4 bq[2] = {sb[lane], sb[32 + lane]};
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
            unsigned a[Cfg::MT][4];
#pragma unroll
            for (int mt = 0; mt < Cfg::MT; ++mt)
                ldmatrix_x4(a[mt], sa + (mt * 16 + a_row) * Cfg::A_ROW + ks * 32 + a_byte);
            const uint4& q = bq[ks >> 1];
            const unsigned words[4] = {q.x, q.y, q.z, q.w};
            const int i0 = (ks & 1) * 2;
#pragma unroll
            for (int t = 0; t < 4; ++t) {
                const unsigned b0 = Dq<T>::run(words[t], i0), b1 = Dq<T>::run(words[t], i0 + 1);
#pragma unroll
                for (int mt = 0; mt < Cfg::MT; ++mt) Mma<T>::run(acc[mt][t], a[mt], b0, b1);
            }
        }
        // End of a weight group: fold the group's f32 sums into facc with its f16 scales.
        if ((kt + 1) % tiles_per_group == 0) {
            const long long g = kt / tiles_per_group;
#pragma unroll
            for (int t = 0; t < 4; ++t) {
                const int col = col0 + t * 8;
                float s0 = 0.f, s1 = 0.f;
                if (col < N) {  // N is even, so col + 1 < N too
                    s0 = to_f32<f16>(S[g * N + col]);
                    s1 = to_f32<f16>(S[g * N + col + 1]);
                }
#pragma unroll
                for (int mt = 0; mt < Cfg::MT; ++mt) {
                    facc[mt][t][0] = fmaf(acc[mt][t][0], s0, facc[mt][t][0]);
                    facc[mt][t][1] = fmaf(acc[mt][t][1], s1, facc[mt][t][1]);
                    facc[mt][t][2] = fmaf(acc[mt][t][2], s0, facc[mt][t][2]);
                    facc[mt][t][3] = fmaf(acc[mt][t][3], s1, facc[mt][t][3]);
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[mt][t][e] = 0.f;
                }
            }
        }
    }
    cp_async_wait<0>();

    O* Y = static_cast<O*>(p.y);
    const O* R = static_cast<const O*>(p.residual);
    const T* B = static_cast<const T*>(p.bias);
    const float alpha = p.alpha;
    const int act = p.act;
#pragma unroll
    for (int mt = 0; mt < Cfg::MT; ++mt)
#pragma unroll
        for (int t = 0; t < 4; ++t)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = m0 + (wm * Cfg::MT + mt) * 16 + (lane >> 2) + h * 8;
                if (row >= M) continue;
                store_pair<O>(Y, R, row, col0 + t * 8, N, facc[mt][t][2 * h], facc[mt][t][2 * h + 1],
                              [&](int c, float v) {
                                  v *= alpha;
                                  if (B) v += to_f32<T>(B[c]);
                                  return act_rt(act, v);
                              });
            }
}

}  // namespace mk

#define MK_GEMM_W4(T, TN, O, ON, CFG, CN)                                                     \
    extern "C" __global__ void __launch_bounds__(mk::CFG::THREADS)                            \
        gemm_w4_##TN##_##ON##_##CN(const mk::GemmParams p) {                                  \
        mk::gemm_w4<T, O, mk::CFG>(p);                                                        \
    }
#define MK_GEMM_W4_CFGS(T, TN, O, ON) MK_GEMM_W4(T, TN, O, ON, W4S, s) MK_GEMM_W4(T, TN, O, ON, W4M, m)
MK_GEMM_W4_CFGS(mk::f16, f16, mk::f16, f16)
MK_GEMM_W4_CFGS(mk::f16, f16, float, f32)
MK_GEMM_W4_CFGS(mk::bf16, bf16, mk::bf16, bf16)
MK_GEMM_W4_CFGS(mk::bf16, bf16, float, f32)
