// medkern common: tensor-core building blocks (cp.async, ldmatrix, mma.sync) and the
// multi-stage shared-memory mainloop shared by the dense (f16/bf16) and int8 GEMMs.
//
// Layouts (PTX ISA, "Matrix fragments for mma.m16n8k16" and "mma.m16n8k32"):
//   A (row-major 16 x 32 bytes) -> 4 regs: a0 rows 0-7 bytes 0-15, a1 rows 8-15 bytes 0-15,
//   a2 rows 0-7 bytes 16-31, a3 rows 8-15 bytes 16-31; within each 8x16-byte block lane l holds
//   row l/4, bytes 4*(l%4)..+3 — exactly what ldmatrix.m8n8.x4.b16 returns.
//   B (col-major, i.e. W stored [N][K]) -> 2 regs per 8 columns: b0 bytes 0-15 of K, b1 16-31,
//   lane l holding column l/4 — ldmatrix (non-transposed) of W rows.
//   C (16 x 8) -> c0,c1 at row l/4, cols 2*(l%4)+{0,1}; c2,c3 at row l/4+8.
// One mma k-step covers 32 bytes of K: 16 f16/bf16 values or 32 int8 values, so the byte-level
// tile addressing below is the same for both element types.
#pragma once
#include "common/types.cuh"

namespace mk {

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; when !pred the destination is zero-filled and nothing
// is read (the source must still be a valid address, so callers pass the tensor base).
// MK_EMU: the emulated GPU (emu/emu.h, emu/runtime.cpp) replaces each instruction.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
#ifdef MK_EMU
    mk_emu::cp_async16(smem, gmem, pred);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
                 "r"(pred ? 16 : 0));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef MK_EMU
    mk_emu::commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
#ifdef MK_EMU
    mk_emu::wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* smem) {
#ifdef MK_EMU
    mk_emu::ldmatrix_x4(r, smem, false);
    return;
#endif
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem)));
}

// D += A * B on one 16x8 tile; E selects the input type.
template <typename E> struct Mma;
template <> struct Mma<f16> {
    typedef float Acc;
    static __device__ __forceinline__ void run(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#ifdef MK_EMU
        mk_emu::mma_16816<__half>(d, a, b0, b1);
        return;
#endif
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                     "{%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};
template <> struct Mma<bf16> {
    typedef float Acc;
    static __device__ __forceinline__ void run(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#ifdef MK_EMU
        mk_emu::mma_16816<__nv_bfloat16>(d, a, b0, b1);
        return;
#endif
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                     "{%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};
template <> struct Mma<signed char> {
    typedef int Acc;
    static __device__ __forceinline__ void run(int (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#ifdef MK_EMU
        mk_emu::mma_16832_s8(d, a, b0, b1);
        return;
#endif
        asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                     "{%8,%9}, {%0,%1,%2,%3};\n"
                     : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

// Tile configuration: block tile BM x BN, warp tile WM x WN, STAGES-deep cp.async pipeline,
// GEMM_KB = 64 bytes of K per stage. Shared rows are padded by 16 bytes (GEMM_ROW = 80-byte
// stride) so the eight 16-byte rows an ldmatrix phase reads fall in distinct banks.
template <int BM_, int BN_, int WM_, int WN_, int STAGES_> struct TileCfg {
    static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_, STAGES = STAGES_;
    static constexpr int KB = GEMM_KB;      // bytes of K per stage
    static constexpr int ROW = GEMM_ROW;    // padded shared row, bytes
    static_assert(KB == 64 && ROW >= KB && ROW % 16 == 0, "k-tiles are 4 16-byte chunks per row");
    static constexpr int WARPS_N = BN / WN;
    static constexpr int THREADS = (BM / WM) * (BN / WN) * 32;
    static constexpr int MT = WM / 16, NT = WN / 8;
    static constexpr int STAGE_BYTES = (BM + BN) * ROW;
    static constexpr int SMEM = STAGES * STAGE_BYTES;
    static_assert(NT % 2 == 0, "B fragments are loaded two n8 tiles at a time");
};

// Loads rows [r0, r0+ROWS) x K-bytes [k0, k0+64) of a row-major matrix with `rows` rows and
// `kbytes` bytes per row into a padded shared tile; out-of-range 16-byte chunks become zeros.
template <int ROWS, int THREADS, int ROWB>
__device__ __forceinline__ void load_tile(char* smem, const char* g, int rows, long long kbytes, int r0,
                                          long long k0) {
    constexpr int CHUNKS = ROWS * 4;
#pragma unroll
    for (int c = threadIdx.x; c < CHUNKS; c += THREADS) {
        const int r = c >> 2, q = c & 3;
        const long long kb = k0 + q * 16;
        const bool ok = (r0 + r < rows) && (kb < kbytes);
        const char* src = ok ? g + (long long)(r0 + r) * kbytes + kb : g;
        cp_async16(smem + r * ROWB + q * 16, src, ok);
    }
}

// The mainloop over `ktiles` k-tiles of 64 bytes: `load(kt, sa, sb)` issues the cp.async copies
// (or plain shared stores) of k-tile kt's A rows [BM][ROW] into sa and B rows [BN][ROW] into
// sb; the MMAs accumulate acc[mt][nt][4] += A·Bᵀ. `on_tile(kt, ktiles)` runs after the MMAs of
// k-tile kt (int8 uses it to fold group scales). Implicit-GEMM convolution supplies its own
// A loader (kernels/conv.cu); the GEMMs use `mainloop` below.
template <typename E, typename Cfg, typename Acc, typename Load, typename OnTile>
__device__ __forceinline__ void mainloop_with(char* smem, int ktiles, Load load, Acc (&acc)[Cfg::MT][Cfg::NT][4],
                                              OnTile on_tile) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp / Cfg::WARPS_N, wn = warp % Cfg::WARPS_N;
    auto stage_a = [&](int s) { return smem + s * Cfg::STAGE_BYTES; };
    auto stage_b = [&](int s) { return smem + s * Cfg::STAGE_BYTES + Cfg::BM * Cfg::ROW; };
#pragma unroll
    for (int s = 0; s < Cfg::STAGES - 1; ++s) {
        if (s < ktiles) load(s, stage_a(s), stage_b(s));
        cp_async_commit();
    }
    // ldmatrix row/byte offsets of this lane (see the layout note at the top).
    const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_byte = (lane >> 4) * 16;
    const int b_row = (lane & 7) + (lane >> 4) * 8, b_byte = ((lane >> 3) & 1) * 16;
    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<Cfg::STAGES - 2>();
        __syncthreads();
        const int next = kt + Cfg::STAGES - 1;
        if (next < ktiles) load(next, stage_a(next % Cfg::STAGES), stage_b(next % Cfg::STAGES));
        cp_async_commit();
        const char* sa = stage_a(kt % Cfg::STAGES) + (wm * Cfg::WM) * Cfg::ROW;
        const char* sb = stage_b(kt % Cfg::STAGES) + (wn * Cfg::WN) * Cfg::ROW;
#pragma unroll
        for (int kk = 0; kk < Cfg::KB; kk += 32) {
            unsigned a[Cfg::MT][4], b[Cfg::NT][2];
#pragma unroll
            for (int mt = 0; mt < Cfg::MT; ++mt)
                ldmatrix_x4(a[mt], sa + (mt * 16 + a_row) * Cfg::ROW + kk + a_byte);
#pragma unroll
            for (int np = 0; np < Cfg::NT / 2; ++np) {
                unsigned r[4];
                ldmatrix_x4(r, sb + (np * 16 + b_row) * Cfg::ROW + kk + b_byte);
                b[2 * np][0] = r[0]; b[2 * np][1] = r[1];
                b[2 * np + 1][0] = r[2]; b[2 * np + 1][1] = r[3];
            }
#pragma unroll
            for (int mt = 0; mt < Cfg::MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < Cfg::NT; ++nt) Mma<E>::run(acc[mt][nt], a[mt], b[nt][0], b[nt][1]);
        }
        on_tile(kt, ktiles);
    }
    cp_async_wait<0>();
}

// The GEMM mainloop: acc[mt][nt][4] += X[m0.., :] * W[n0.., :]^T over all of K (kbytes per row).
template <typename E, typename Cfg, typename Acc, typename OnTile>
__device__ __forceinline__ void mainloop(char* smem, const char* X, const char* W, int M, int N, long long kbytes,
                                         int m0, int n0, Acc (&acc)[Cfg::MT][Cfg::NT][4], OnTile on_tile) {
    const int ktiles = (int)((kbytes + Cfg::KB - 1) / Cfg::KB);
    mainloop_with<E, Cfg>(
        smem, ktiles,
        [&](int kt, char* sa, char* sb) {
            load_tile<Cfg::BM, Cfg::THREADS, Cfg::ROW>(sa, X, M, kbytes, m0, (long long)kt * Cfg::KB);
            load_tile<Cfg::BN, Cfg::THREADS, Cfg::ROW>(sb, W, N, kbytes, n0, (long long)kt * Cfg::KB);
        },
        acc, on_tile);
}

// Visits the accumulator elements of this thread as (row, col, pair index) with cols c, c+1:
// f(mt, nt, half, row, col) where half selects c0,c1 (0) or c2,c3 (1).
template <typename Cfg, typename F>
__device__ __forceinline__ void for_each_pair(int m0, int n0, F f) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp / Cfg::WARPS_N, wn = warp % Cfg::WARPS_N;
#pragma unroll
    for (int mt = 0; mt < Cfg::MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < Cfg::NT; ++nt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = m0 + wm * Cfg::WM + mt * 16 + (lane >> 2) + h * 8;
                const int col = n0 + wn * Cfg::WN + nt * 8 + (lane & 3) * 2;
                f(mt, nt, h, row, col);
            }
}

// The three tile shapes the launchers choose between by problem size (common/consts.cuh; the
// launchers' block size and shared memory are the GEMM_*_THREADS and GEMM_*_SMEM there).
typedef TileCfg<GEMM_S_BM, GEMM_S_BN, GEMM_S_WM, GEMM_S_WN, GEMM_STAGES> CfgS;  // 4 warps: small M
typedef TileCfg<GEMM_M_BM, GEMM_M_BN, GEMM_M_WM, GEMM_M_WN, GEMM_STAGES> CfgM;  // 8 warps: medium
typedef TileCfg<GEMM_L_BM, GEMM_L_BN, GEMM_L_WM, GEMM_L_WN, GEMM_STAGES> CfgL;  // 8 warps: large M
static_assert(CfgS::THREADS == GEMM_S_THREADS && CfgS::SMEM == GEMM_S_SMEM, "CfgS vs common/consts.cuh");
static_assert(CfgM::THREADS == GEMM_M_THREADS && CfgM::SMEM == GEMM_M_SMEM, "CfgM vs common/consts.cuh");
static_assert(CfgL::THREADS == GEMM_L_THREADS && CfgL::SMEM == GEMM_L_SMEM, "CfgL vs common/consts.cuh");

}  // namespace mk
