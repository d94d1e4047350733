// Tensor-core instructions for the CUDA emulation (scripts/cuda-emu): the asm sites of
// kernels/common/mma.cuh call these under MK_EMU. Include after emu.h, without warp.h (the
// kernels that use these declare `extern __shared__` dynamic shared memory, which must stay a
// plain extern here; see mk_emu::launch).
//
// The fragment layouts are written from the PTX ISA, not from the kernels:
// - "Matrix Fragments for mma.m16n8k16 with floating point type": groupID = lane >> 2,
//   threadID_in_group = lane % 4; A a_i (i = 0..7, two per register): row groupID for
//   i in {0,1,4,5}, else groupID + 8; col 2·tig + (i & 1), + 8 for i >= 4. B b_i (i = 0..3):
//   row (k) 2·tig + (i & 1), + 8 for i >= 2; col groupID. C/D c_i: row groupID (i < 2) or
//   groupID + 8; col 2·tig + (i & 1).
// - "Matrix Fragments for mma.m16n8k32" (.s8): A a_i (i = 0..15, four per register): row
//   groupID for i in {0..3, 8..11}, else groupID + 8; col 4·tig + (i & 3), + 16 for i >= 8.
//   B b_i (i = 0..7): row (k) 4·tig + (i & 3), + 16 for i >= 4; col groupID. C as above (.s32).
// - "ldmatrix": .x4 loads four 8x8 b16 matrices; lanes 8j..8j+7 give the addresses of matrix
//   j's rows 0..7; lane l receives, in register j, row l/4, elements 2(l%4) and 2(l%4)+1 of
//   matrix j (low half first). .trans delivers the transpose: elements [2(l%4)][l/4] and
//   [2(l%4)+1][l/4].
// - "cp.async": copies complete only at cp.async.wait_group N, which waits for all but the N
//   most recent committed groups; src-size 0 writes zeros. The emulation defers each copy to
//   that point, so a read of a stage before its wait sees stale or garbage shared memory.
// Elements of a register are little-endian: the lower index in the lower bits.
#pragma once
#include <deque>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

inline size_t __cvta_generic_to_shared(const void* p) { return (size_t)p; }

namespace mk_emu {

// Per-warp barriers and exchange buffers (blocks run one at a time).
inline std::unique_ptr<std::barrier<>> bars[32];
inline unsigned regs[1024][8];
inline const unsigned char* ptrs[1024];
inline void init(unsigned threads) {
    for (unsigned w = 0; w * 32 < threads; ++w)
        bars[w] = std::make_unique<std::barrier<>>(std::min(32u, threads - 32 * w));
}
inline unsigned tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
inline void warp_sync() { bars[tid() / 32]->arrive_and_wait(); }

// cp.async: per-thread queues of issued copies.
struct Copy { void* dst; const void* src; bool fill; };
inline thread_local std::vector<Copy> open;
inline thread_local std::deque<std::vector<Copy>> committed;
inline void cp_async16(void* dst, const void* src, bool pred) { open.push_back({dst, src, pred}); }
inline void commit() { committed.push_back(std::move(open)); open.clear(); }
inline void wait(int n) {
    while ((int)committed.size() > n) {
        for (const Copy& c : committed.front()) {
            if (c.fill) std::memcpy(c.dst, c.src, 16);
            else std::memset(c.dst, 0, 16);
        }
        committed.pop_front();
    }
}

inline unsigned ld32(const unsigned char* p) { unsigned v; std::memcpy(&v, p, 4); return v; }
inline unsigned short ld16(const unsigned char* p) { unsigned short v; std::memcpy(&v, p, 2); return v; }

// ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16
inline void ldmatrix_x4(unsigned (&r)[4], const void* p, bool trans) {
    const unsigned t = tid(), w = t / 32, l = t % 32;
    ptrs[t] = static_cast<const unsigned char*>(p);
    warp_sync();
    for (int j = 0; j < 4; ++j) {
        if (!trans) {
            r[j] = ld32(ptrs[w * 32 + 8 * j + l / 4] + 4 * (l % 4));
        } else {
            const unsigned lo = ld16(ptrs[w * 32 + 8 * j + 2 * (l % 4)] + 2 * (l / 4));
            const unsigned hi = ld16(ptrs[w * 32 + 8 * j + 2 * (l % 4) + 1] + 2 * (l / 4));
            r[j] = lo | (hi << 16);
        }
    }
    warp_sync();
}

template <typename H> float h2f(unsigned short b) { H h; std::memcpy(&h, &b, 2); return (float)h; }

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32: D = A·B + C.
template <typename H>
inline void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    const unsigned t = tid(), w = t / 32, l = t % 32;
    for (int i = 0; i < 4; ++i) regs[t][i] = a[i];
    regs[t][4] = b0; regs[t][5] = b1;
    warp_sync();
    float A[16][16], B[16][8];
    for (unsigned L = 0; L < 32; ++L) {
        const unsigned g = L >> 2, q = L & 3, *R = regs[w * 32 + L];
        for (int i = 0; i < 8; ++i) {
            const unsigned short e = (unsigned short)(R[i / 2] >> (16 * (i & 1)));
            const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
            const int col = 2 * q + (i & 1) + (i >= 4 ? 8 : 0);
            A[row][col] = h2f<H>(e);
        }
        for (int i = 0; i < 4; ++i) {
            const unsigned short e = (unsigned short)(R[4 + i / 2] >> (16 * (i & 1)));
            B[2 * q + (i & 1) + (i >= 2 ? 8 : 0)][g] = h2f<H>(e);
        }
    }
    warp_sync();
    const unsigned g = l >> 2, q = l & 3;
    for (int i = 0; i < 4; ++i) {
        const int row = i < 2 ? g : g + 8, col = 2 * q + (i & 1);
        float s = d[i];
        for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];  // products exact in f32
        d[i] = s;
    }
}

// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 (exact integer arithmetic).
inline void mma_16832_s8(int (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    const unsigned t = tid(), w = t / 32, l = t % 32;
    for (int i = 0; i < 4; ++i) regs[t][i] = a[i];
    regs[t][4] = b0; regs[t][5] = b1;
    warp_sync();
    int A[16][32], B[32][8];
    for (unsigned L = 0; L < 32; ++L) {
        const unsigned g = L >> 2, q = L & 3, *R = regs[w * 32 + L];
        for (int i = 0; i < 16; ++i) {
            const int e = (signed char)(R[i / 4] >> (8 * (i & 3)));
            const int row = (i < 4 || (i >= 8 && i < 12)) ? g : g + 8;
            A[row][4 * q + (i & 3) + (i >= 8 ? 16 : 0)] = e;
        }
        for (int i = 0; i < 8; ++i) B[4 * q + (i & 3) + (i >= 4 ? 16 : 0)][g] = (signed char)(R[4 + i / 4] >> (8 * (i & 3)));
    }
    warp_sync();
    const unsigned g = l >> 2, q = l & 3;
    for (int i = 0; i < 4; ++i) {
        const int row = i < 2 ? g : g + 8, col = 2 * q + (i & 1);
        long long s = d[i];
        for (int k = 0; k < 32; ++k) s += A[row][k] * B[k][col];
        d[i] = (int)s;
    }
}

}  // namespace mk_emu

// __shfl_xor_sync for kernels that include mma.h (warp.h's version needs its __shared__).
inline float __shfl_xor_sync(unsigned, float v, int o) {
    const unsigned t = mk_emu::tid(), w = t / 32, l = t % 32;
    float r;
    std::memcpy(&mk_emu::regs[t][0], &v, 4);
    mk_emu::warp_sync();
    std::memcpy(&r, &mk_emu::regs[w * 32 + (l ^ (unsigned)o)][0], 4);
    mk_emu::warp_sync();
    return r;
}

namespace mk_emu {

// A launch whose kernel uses `extern __shared__` dynamic shared memory `smem` (bytes): the
// memory is refilled with garbage before each block, like real shared memory.
template <typename F>
void launch(emu_dim3 grid, emu_dim3 block, unsigned char* smem, size_t bytes, F kernel) {
    gridDim = grid;
    blockDim = block;
    const unsigned nt = block.x * block.y * block.z;
    init(nt);
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                std::memset(smem, 0xA5, bytes);
                emu_bar = std::make_unique<std::barrier<>>(nt);
                std::vector<std::thread> ts;
                for (unsigned t = 0; t < nt; ++t)
                    ts.emplace_back([&, t] {
                        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        kernel();
                        emu_bar->arrive_and_drop();
                    });
                for (auto& th : ts) th.join();
            }
}

}  // namespace mk_emu
