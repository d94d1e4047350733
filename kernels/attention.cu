// Fused attention forward: O = softmax(Q·Kᵀ·scale + bias + mask)·V in one kernel.
//
// FlashAttention-2 scheme: one CTA per (64- or 128-query block, head, sequence), 4 or 8 warps of
// 16 query rows each. Q is loaded once into registers (ldmatrix); 64-key blocks of K and V stream
// through a 2-stage cp.async pipeline in padded shared memory; scores live only in registers
// (mma.sync m16n8k16, f32 accumulation), the softmax is online (running max and sum per row, in
// the log2 domain with ex2.approx), and P is fed straight back to the tensor cores as the A
// operand of P·V (the m16n8 accumulator layout is the m16n8k16 A layout). Nothing of size
// seq×seq reaches global memory; no atomics, so results are bit-identical run to run.
//
// Sequences are described by `seqs` [batch][4] = (q_start, q_len, k_start, k_len) in token
// rows, which covers padded batches (start = b·max, len = true length) and packed
// variable-length batches (start = cumulative offset) alike. Q/K/V/O are addressed by
// (token stride, head stride), so separate [tokens, heads, D] tensors and a packed QKV
// projection output [tokens, 3·heads·D] are read in place, and O is written as
// [tokens, heads·D], the layout of the output projection's input.
//
// Masks: keys j >= k_len; causal keeps j <= i + k_len - q_len (bottom-right aligned, FlashAttention
// >= 2.1); ALiBi adds -slope_h·|i + k_len - q_len - j|; a bias tensor (f32) adds
// bias[b·bias_b + h·bias_h + i·bias_q + j]. A query row with no unmasked key is written as zeros.
// In a padded output (max_q > 0) rows q_len..max_q-1 of each sequence are written as zeros.
//
// Kernels: attention_{f16,bf16}_d{32,64,80,96,128}_m{64,128} (query rows per CTA: 4 or 8 warps);
// attention_gather_* / attention_scatter_*
// move heads in and out of [batch·heads, seq, D] for the unfused comparison path (GEMM →
// softmax → GEMM). Launcher: src/ops/attention.rs; reference: src/reference/attention.rs.
#include "common/mma.cuh"

namespace mk {

// Mirrors `AttnParams` in src/ops/attention.rs field for field (168 bytes).
struct AttnParams {
    const void* q;
    const void* k;
    const void* v;
    void* o;
    const int* seqs;     // [batch][4]: q_start, q_len, k_start, k_len
    const float* bias;   // optional additive bias (f32), strides below, last dim contiguous
    const float* alibi;  // optional [heads] ALiBi slopes
    const void* pad0;    // reserved (keeps the 8-byte block even)
    long long q_tok, q_head, k_tok, k_head, v_tok, v_head, o_tok, o_head;  // strides, elements
    long long bias_b, bias_h, bias_q;
    int heads;
    int max_q;       // padded output: rows per sequence (zeros past q_len); 0 = packed
    int causal;
    float scale_log2;  // softmax scale · log2(e)
};

constexpr float LOG2E = 1.4426950408889634f;

// MK_EMU: the emulated GPU (emu/emu.h, emu/runtime.cpp) replaces each instruction.
__device__ __forceinline__ float ex2(float x) {
#ifdef MK_EMU
    return exp2f(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* smem) {
#ifdef MK_EMU
    mk_emu::ldmatrix_x4(r, smem, true);
    return;
#endif
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem)));
}

// Two f32 values rounded to one register of T pairs (lo in the low half).
template <typename T> __device__ __forceinline__ unsigned pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned pack2<f16>(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}
template <> __device__ __forceinline__ unsigned pack2<bf16>(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}

// WARPS warps of 16 query rows each share every K/V block: 4 (64 rows) for short or few
// sequences, 8 (128 rows) to halve the K/V traffic per query when there are enough rows.
// Rows, keys per block and the launcher's shared memory: common/consts.cuh ATTN_*.
static_assert(ATTN_WARP_ROWS == 16, "a warp's query rows are one m16 MMA tile");
template <int D, int WARPS> struct AttnCfg {
    static constexpr int BR = ATTN_WARP_ROWS * WARPS, BC = ATTN_BLOCK_KEYS, THREADS = 32 * WARPS;
    static constexpr int ROW = D * 2 + 16;  // padded shared row (bytes): conflict-free ldmatrix
    static constexpr int TILE = BC * ROW;   // one K or V block
    static constexpr int SMEM = BR * ROW + 4 * TILE;  // Q + 2 stages x (K, V)
    static_assert(SMEM == ATTN_SMEM(BR, D), "AttnCfg vs common/consts.cuh ATTN_SMEM");
    static constexpr int KS = D / 16;       // k-steps of Q·Kᵀ
    static constexpr int NT = BC / 8;       // 8-key score tiles per warp
    static constexpr int DT = D / 8;        // 8-column output tiles per warp
    static_assert(D % 16 == 0 && DT % 2 == 0, "head_dim must be a multiple of 16");
};

// Rows [r0, r0+ROWS) of one head (row stride `tok` elements, D contiguous) into a padded shared
// tile (row pitch 2D+16 bytes); rows at or past n are zero-filled without reading (`base` is a
// valid address).
template <typename T, int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_rows(char* s, const T* g, long long tok, int r0, int n, const void* base) {
    constexpr int CPR = D / 8, CHUNKS = ROWS * CPR;  // 16-byte chunks per row, per tile
#pragma unroll
    for (int c = threadIdx.x; c < CHUNKS; c += THREADS) {
        const int r = c / CPR, q = c % CPR;
        const bool ok = r0 + r < n;
        const void* src = ok ? static_cast<const void*>(g + (long long)(r0 + r) * tok + q * 8) : base;
        cp_async16(s + r * (2 * D + 16) + q * 16, src, ok);
    }
}

template <typename T, int D, int WARPS>
__device__ __forceinline__ void attention_fwd(const AttnParams& p) {
    typedef AttnCfg<D, WARPS> C;
    MK_DYN_SMEM(char, smem);
    char* const sq = smem;
    char* const skv = smem + C::BR * C::ROW;  // stage s: K at skv + 2s·TILE, V right after
    const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * C::BR;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int4 sd = reinterpret_cast<const int4*>(p.seqs)[b];
    const int qs = sd.x, ql = sd.y, ks = sd.z, kl = sd.w;
    T* const Oh = static_cast<T*>(p.o) + (long long)qs * p.o_tok + (long long)h * p.o_head;

    if (m0 >= ql) {  // a block of padding rows (or nothing, when packed)
        const int rows = min(C::BR, p.max_q - m0);
        for (int c = threadIdx.x; c < rows * (D / 8); c += C::THREADS) {
            const int r = c / (D / 8), q = c % (D / 8);
            *reinterpret_cast<uint4*>(Oh + (long long)(m0 + r) * p.o_tok + q * 8) = make_uint4(0, 0, 0, 0);
        }
        return;
    }

    const int shift = kl - ql;  // query row i sits at key position i + shift
    int kend = kl;
    if (p.causal) kend = min(kl, min(m0 + C::BR, ql) - 1 + shift + 1);
    const int nb = kend > 0 ? (kend + C::BC - 1) / C::BC : 0;

    const T* const Qh = static_cast<const T*>(p.q) + (long long)qs * p.q_tok + (long long)h * p.q_head;
    const T* const Kh = static_cast<const T*>(p.k) + (long long)ks * p.k_tok + (long long)h * p.k_head;
    const T* const Vh = static_cast<const T*>(p.v) + (long long)ks * p.v_tok + (long long)h * p.v_head;
    load_rows<T, D, C::BR, C::THREADS>(sq, Qh, p.q_tok, m0, ql, p.q);
    if (nb > 0) {
        load_rows<T, D, C::BC, C::THREADS>(skv, Kh, p.k_tok, 0, kl, p.k);
        load_rows<T, D, C::BC, C::THREADS>(skv + C::TILE, Vh, p.v_tok, 0, kl, p.v);
    }
    cp_async_commit();

    // ldmatrix lane offsets (common/mma.cuh): A-style (Q, and V through .trans) and B-style (K).
    const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_byte = (lane >> 4) * 16;
    const int b_row = (lane & 7) + (lane >> 4) * 8, b_byte = ((lane >> 3) & 1) * 16;
    const int wrow = m0 + warp * 16 + g;  // this thread's query rows: wrow, wrow + 8
    const float slope = p.alibi ? p.alibi[h] * LOG2E : 0.f;
    const float* const bias = p.bias ? p.bias + b * p.bias_b + h * p.bias_h : nullptr;

    unsigned qf[C::KS][4];
    float o[C::DT][4];
#pragma unroll
    for (int i = 0; i < C::DT; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[i][e] = 0.f;
    float mrow[2] = {neg_inf(), neg_inf()}, lrow[2] = {0.f, 0.f};

    for (int j = 0; j < nb; ++j) {
        cp_async_wait<0>();
        __syncthreads();  // block j is in shared memory; block j-1's stage is free
        if (j == 0) {
#pragma unroll
            for (int kk = 0; kk < C::KS; ++kk)
                ldmatrix_x4(qf[kk], sq + (warp * 16 + a_row) * C::ROW + kk * 32 + a_byte);
        }
        if (j + 1 < nb) {
            char* st = skv + ((j + 1) & 1) * 2 * C::TILE;
            load_rows<T, D, C::BC, C::THREADS>(st, Kh, p.k_tok, (j + 1) * C::BC, kl, p.k);
            load_rows<T, D, C::BC, C::THREADS>(st + C::TILE, Vh, p.v_tok, (j + 1) * C::BC, kl, p.v);
        }
        cp_async_commit();
        const char* const sk = skv + (j & 1) * 2 * C::TILE;
        const char* const sv = sk + C::TILE;
        const int n0 = j * C::BC;

        // S = Q·Kᵀ for 16 rows x 64 keys per warp.
        float s[C::NT][4];
#pragma unroll
        for (int i = 0; i < C::NT; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[i][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < C::KS; ++kk)
#pragma unroll
            for (int np = 0; np < C::NT / 2; ++np) {
                unsigned r[4];
                ldmatrix_x4(r, sk + (np * 16 + b_row) * C::ROW + kk * 32 + b_byte);
                Mma<T>::run(s[2 * np], qf[kk], r[0], r[1]);
                Mma<T>::run(s[2 * np + 1], qf[kk], r[2], r[3]);
            }

        // Scale, bias, masks; then the online-softmax update of each of the two rows.
        const bool edge = n0 + C::BC > kl || (p.causal && n0 + C::BC - 1 > m0 + shift);
        float mx[2] = {neg_inf(), neg_inf()};
#pragma unroll
        for (int nt = 0; nt < C::NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = wrow + (e >> 1) * 8;
                const int c = n0 + nt * 8 + 2 * t + (e & 1);
                float x = s[nt][e] * p.scale_log2;
                if (bias && i < ql && c < kl) {
                    // A finite bias must stay finite in the log2 domain: -FLT_MAX (HF-style masks)
                    // times log2(e) would overflow to -inf and drop the key, so a row masked that
                    // way would come out as zeros instead of the reference's mean of V. ±inf and
                    // NaN pass through unchanged.
                    const float bv = bias[(long long)i * p.bias_q + c];
                    float bl = bv * LOG2E;
                    if (fabsf(bv) <= 3.402823466e38f) bl = fminf(fmaxf(bl, -3.402823466e38f), 3.402823466e38f);
                    x += bl;
                }
                if (p.alibi) x -= slope * fabsf((float)(i + shift - c));
                if (edge && (c >= kl || (p.causal && c > i + shift))) x = neg_inf();
                s[nt][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            float m = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 1));
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
            const float mnew = fmaxf(mrow[hh], m);
            const float base = mnew == neg_inf() ? 0.f : mnew;  // all masked so far: p = 0
            const float corr = ex2(mrow[hh] - base);
            mrow[hh] = mnew;
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < C::NT; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float pv = ex2(s[nt][2 * hh + e] - base);
                    s[nt][2 * hh + e] = pv;
                    sum += pv;
                }
            lrow[hh] = lrow[hh] * corr + sum;  // per-thread partial; quad-reduced at the end
#pragma unroll
            for (int dt = 0; dt < C::DT; ++dt) {
                o[dt][2 * hh] *= corr;
                o[dt][2 * hh + 1] *= corr;
            }
        }

        // O += P·V: the score accumulators of key tiles 2k, 2k+1 are the A fragment of k-step k.
#pragma unroll
        for (int kk = 0; kk < C::BC / 16; ++kk) {
            const unsigned a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                   pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                   pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < C::DT / 2; ++dp) {
                unsigned r[4];
                ldmatrix_x4_trans(r, sv + (kk * 16 + a_row) * C::ROW + dp * 32 + a_byte);
                Mma<T>::run(o[2 * dp], a, r[0], r[1]);
                Mma<T>::run(o[2 * dp + 1], a, r[2], r[3]);
            }
        }
    }
    cp_async_wait<0>();

    // Normalise and store: rows past q_len are zeros in a padded output and skipped when packed.
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
        float l = lrow[hh];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const float inv = l > 0.f ? 1.f / l : (l == 0.f ? 0.f : l);  // no key: zeros; NaN stays NaN
        const int i = wrow + hh * 8;
        if (i >= ql && i >= p.max_q) continue;
        const bool real = i < ql;
        T* const orow = Oh + (long long)i * p.o_tok + 2 * t;
#pragma unroll
        for (int dt = 0; dt < C::DT; ++dt) {
            const unsigned v = real ? pack2<T>(o[dt][2 * hh] * inv, o[dt][2 * hh + 1] * inv) : 0u;
            *reinterpret_cast<unsigned*>(orow + dt * 8) = v;
        }
    }
}

// Copies head h of each sequence into dst [batch·heads, S, D] (or [batch·heads, D, S] when
// `transpose`), zero-filling rows past the sequence length. `which` 0 reads the q columns of
// seqs, 1 the k columns.
template <typename T>
__device__ __forceinline__ void attention_gather(T* dst, const T* src, const int* seqs, int which, long long tok,
                                                 long long head, int batch, int heads, int S, int D,
                                                 int transpose) {
    const long long total = (long long)batch * heads * S * D;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const int d = (int)(e % D);
        const int s = (int)((e / D) % S);
        const long long bh = e / ((long long)D * S);
        const int hd = (int)(bh % heads), b = (int)(bh / heads);
        const int start = seqs[4 * b + 2 * which], len = seqs[4 * b + 2 * which + 1];
        const T v = s < len ? src[(long long)(start + s) * tok + (long long)hd * head + d] : from_f32<T>(0.f);
        if (transpose)
            dst[(bh * D + d) * S + s] = v;
        else
            dst[e] = v;
    }
}

// Writes src [batch·heads, S, D] back to the token layout; rows past q_len are written (as
// zeros) only in a padded output (max_q > 0).
template <typename T>
__device__ __forceinline__ void attention_scatter(T* out, const T* src, const int* seqs, long long tok,
                                                  long long head, int batch, int heads, int S, int D, int max_q) {
    const long long total = (long long)batch * heads * S * D;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const int d = (int)(e % D);
        const int s = (int)((e / D) % S);
        const long long bh = e / ((long long)D * S);
        const int hd = (int)(bh % heads), b = (int)(bh / heads);
        const int start = seqs[4 * b], len = seqs[4 * b + 1];
        if (s < len || s < max_q)
            out[(long long)(start + s) * tok + (long long)hd * head + d] = s < len ? src[e] : from_f32<T>(0.f);
    }
}

}  // namespace mk

// The head dims D and query rows R per CTA instantiated: one kernel per (D, R), R / 16 warps.
// They must be common/consts.cuh ATTN_HEAD_DIMS and ATTN_BLOCK_ROWS (the launcher's lists), in
// order: checked below.
#define MK_ATTN_DIMS(X, ...) X(__VA_ARGS__, 32) X(__VA_ARGS__, 64) X(__VA_ARGS__, 80) X(__VA_ARGS__, 96) X(__VA_ARGS__, 128)
#define MK_ATTN_ROWS(X, ...) X(__VA_ARGS__, 64) X(__VA_ARGS__, 128)
#define MK_ATTN_ITEM(_, V) V,
namespace mk {
template <int N, int M> __host__ __device__ constexpr bool same_list(const int (&a)[N], const int (&b)[M]) {
    if (N != M) return false;
    for (int i = 0; i < N; ++i)
        if (a[i] != b[i]) return false;
    return true;
}
constexpr int ATTN_DIMS_BUILT[] = {MK_ATTN_DIMS(MK_ATTN_ITEM, _)};
constexpr int ATTN_ROWS_BUILT[] = {MK_ATTN_ROWS(MK_ATTN_ITEM, _)};
static_assert(same_list(ATTN_DIMS_BUILT, ATTN_HEAD_DIMS), "MK_ATTN_DIMS vs common/consts.cuh ATTN_HEAD_DIMS");
static_assert(same_list(ATTN_ROWS_BUILT, ATTN_BLOCK_ROWS), "MK_ATTN_ROWS vs common/consts.cuh ATTN_BLOCK_ROWS");
}  // namespace mk

#define MK_ATTN_W(T, TN, D, R)                                                                            \
    extern "C" __global__ void __launch_bounds__(32 * (R / mk::ATTN_WARP_ROWS))                           \
        attention_##TN##_d##D##_m##R(const mk::AttnParams p) {                                            \
        mk::attention_fwd<T, D, R / mk::ATTN_WARP_ROWS>(p);                                               \
    }
#define MK_ATTN(T, TN, D) MK_ATTN_ROWS(MK_ATTN_W, T, TN, D)
#define MK_ATTN_ALL(T, TN) MK_ATTN_DIMS(MK_ATTN, T, TN)
MK_ATTN_ALL(mk::f16, f16)
MK_ATTN_ALL(mk::bf16, bf16)

#define MK_ATTN_MOVE(T, TN)                                                                                   \
    extern "C" __global__ void attention_gather_##TN(T* dst, const T* src, const int* seqs, int which,         \
                                                     long long tok, long long head, int batch, int heads,    \
                                                     int S, int D, int transpose) {                          \
        mk::attention_gather<T>(dst, src, seqs, which, tok, head, batch, heads, S, D, transpose);             \
    }                                                                                                         \
    extern "C" __global__ void attention_scatter_##TN(T* out, const T* src, const int* seqs, long long tok,    \
                                                      long long head, int batch, int heads, int S, int D,     \
                                                      int max_q) {                                            \
        mk::attention_scatter<T>(out, src, seqs, tok, head, batch, heads, S, D, max_q);                       \
    }
MK_ATTN_MOVE(mk::f16, f16)
MK_ATTN_MOVE(mk::bf16, bf16)
