// medkern common: Hopper (sm_90a) building blocks — mbarriers, TMA tensor loads, wgmma — for
// the warp-specialised kernels (gemm_hopper.cu). Only modules built for sm_90a include this
// (build.rs: a module whose first line is `// medkern-targets: sm_90a`).
//
// PTX ISA 8.x: "Parallel Synchronization and Communication Instructions: mbarrier",
// "Data Movement: cp.async.bulk.tensor", "Asynchronous Warpgroup Level Matrix Multiply-
// Accumulate Instructions: wgmma". Under MK_EMU each instruction is the emulated GPU's
// (emu/emu.h, emu/runtime.cpp), which checks what the hardware leaves undefined.
#pragma once
#include "common/types.cuh"

#ifdef MK_EMU
#define MK_GRID_CONSTANT
#else
#define MK_GRID_CONSTANT __grid_constant__
#endif

namespace mk {

// A TMA tensor map: CUtensorMap's 128 opaque bytes, built on the host (src/device/tma.rs:
// cuTensorMapEncodeTiled on a GPU, the emulator's own encoding on the emulated one) and passed
// as a `const __grid_constant__` kernel parameter, whose address the TMA instructions take.
#ifdef MK_EMU
struct TmaMap {
    unsigned long long opaque[16];
};
#else
struct alignas(64) TmaMap {
    unsigned long long opaque[16];
};
#endif

// The address of `p` in the shared window (what descriptors and shared-memory operands hold).
__device__ __forceinline__ unsigned shared_addr(const void* p) {
#ifdef MK_EMU
    return mk_emu::shared_addr(p);
#else
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
#endif
}

// --- mbarrier (a 64-bit object in shared memory) ---------------------------------------------
__device__ __forceinline__ void mbar_init(unsigned long long* bar, unsigned count) {
#ifdef MK_EMU
    mk_emu::mbar_init(bar, count);
#else
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(shared_addr(bar)), "r"(count) : "memory");
#endif
}
// Makes the initialisations visible to the other threads and to the async proxy (TMA).
__device__ __forceinline__ void mbar_init_fence() {
#ifdef MK_EMU
    mk_emu::fence_mbar_init();
#else
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// One arrival, announcing `bytes` that TMA copies will complete on this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(unsigned long long* bar, unsigned bytes) {
#ifdef MK_EMU
    mk_emu::mbar_arrive_expect_tx(bar, bytes);
#else
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(
                     shared_addr(bar)),
                 "r"(bytes)
                 : "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(unsigned long long* bar) {
#ifdef MK_EMU
    mk_emu::mbar_arrive(bar);
#else
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(shared_addr(bar))
                 : "memory");
#endif
}
// Waits until the phase of parity `parity` has completed (the barrier's phase bit differs).
__device__ __forceinline__ void mbar_wait(unsigned long long* bar, unsigned parity) {
#ifdef MK_EMU
    mk_emu::mbar_wait(bar, parity);
#else
    unsigned done;
    do {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(shared_addr(bar)), "r"(parity)
            : "memory");
    } while (!done);
#endif
}

// --- TMA --------------------------------------------------------------------------------------
// Copies the box at coordinates (c0, c1, c2) (c0 innermost, in elements) of the 3-D tensor map
// into shared memory at `dst` (laid out and swizzled as the map says), completing the box's
// bytes on `bar`. Elements outside the tensor are zeros.
__device__ __forceinline__ void tma_load_3d(void* dst, const TmaMap* map, int c0, int c1, int c2,
                                            unsigned long long* bar) {
#ifdef MK_EMU
    mk_emu::tma_load(dst, map, c0, c1, c2, bar);
#else
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
        "%4}], [%5];\n" ::"r"(shared_addr(dst)),
        "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(shared_addr(bar))
        : "memory");
#endif
}

// --- warpgroup registers ----------------------------------------------------------------------
// setmaxnreg: the producer warpgroup gives registers back, the consumers take them.
template <unsigned N> __device__ __forceinline__ void regs_dec() {
#ifdef MK_EMU
    mk_emu::setmaxnreg(N, false);
#else
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <unsigned N> __device__ __forceinline__ void regs_inc() {
#ifdef MK_EMU
    mk_emu::setmaxnreg(N, true);
#else
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// --- wgmma ------------------------------------------------------------------------------------
// Shared-memory matrix descriptor (PTX ISA "Matrix Descriptor Format"): start address >> 4
// (bits 0-13), leading byte offset >> 4 (16-29), stride byte offset >> 4 (32-45), base offset
// (49-51), layout (62-63: 0 interleave, 1 = 128-byte, 2 = 64-byte, 3 = 32-byte swizzle).
// K-major operand in 128-byte swizzle: rows of 128 bytes (64 f16), 8-row atoms 1024 bytes
// apart (SBO); the leading offset is unused (1 by convention).
__device__ __forceinline__ unsigned long long desc_k128(unsigned saddr) {
    return (unsigned long long)((saddr & 0x3FFFFu) >> 4) | (1ull << 16) | ((unsigned long long)(1024 >> 4) << 32) |
           (1ull << 62);
}

// Ties the accumulator registers to this point for the compiler (CUTLASS's
// warpgroup_fence_operand): around wgmma.fence and after wgmma.wait_group, so neither the
// zeroing before the first wgmma nor the epilogue's reads after the last wait move across the
// asynchronous MMAs that own the registers in between.
template <int N> __device__ __forceinline__ void fence_regs(float (&d)[N]) {
#ifndef MK_EMU
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
#endif
}

// Orders this thread's generic-proxy shared-memory writes before later async-proxy accesses
// (wgmma operands, TMA): needed when threads, not TMA, fill a wgmma operand.
__device__ __forceinline__ void fence_proxy_async() {
#ifndef MK_EMU
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_fence() {
#ifdef MK_EMU
    mk_emu::wgmma_fence();
#else
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef MK_EMU
    mk_emu::wgmma_commit();
#else
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
#ifdef MK_EMU
    mk_emu::wgmma_wait(N);
#else
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// D[64 x 128] (+)= A[64 x 16] · B[16 x 128] for the warpgroup: A and B K-major in shared memory
// (descriptors), D in 64 f32 registers per thread (the m64nNk16 accumulator layout: warp w,
// lane l holds rows 16w + l/4 (+8), columns 8j + 2(l%4) + {0,1} in d[4j..4j+3]).
// scale_d = 0: D = A·B.
// The wgmma m64n128k16 instruction for input type TY ("f16" or "bf16"), operands d, da, db,
// scale_d of the caller.
#define MK_WGMMA_M64N128K16(TY) \
        asm volatile( \
            "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n" \
            "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " \
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, " \
            "%64, %65, p, 1, 1, 0, 0;\n}\n" \
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
            : "l"(da), "l"(db), "r"(scale_d));

template <typename T> struct Wgmma;
template <> struct Wgmma<f16> {
    static __device__ __forceinline__ void run(float (&d)[64], unsigned long long da, unsigned long long db,
                                               int scale_d) {
#ifdef MK_EMU
        mk_emu::wgmma_m64n128k16(d, da, db, scale_d, false);
#else
        MK_WGMMA_M64N128K16("f16");
#endif
    }
};
template <> struct Wgmma<bf16> {
    static __device__ __forceinline__ void run(float (&d)[64], unsigned long long da, unsigned long long db,
                                               int scale_d) {
#ifdef MK_EMU
        mk_emu::wgmma_m64n128k16(d, da, db, scale_d, true);
#else
        MK_WGMMA_M64N128K16("bf16");
#endif
    }
};

}  // namespace mk
