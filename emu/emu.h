// The emulated GPU (Device::emulated, feature `emu`): this header is force-included before every
// kernels/*.cu when build.rs compiles the unchanged kernel sources with the host C++ compiler.
// It maps the CUDA built-ins the kernels use onto emu/runtime.cpp, which runs each CUDA thread
// of a block as a fiber on one OS thread (blocks one after another, a launch per calling
// thread), so barriers, warp shuffles and the tensor-core instructions are exact rendezvous
// points rather than OS-thread barriers.
//
// What it checks (runtime.cpp): out-of-bounds global and dynamic-shared accesses (guard pages
// after every allocation and after the launched dynamic shared size, and, through the shadow
// memory below, each allocation's exact end), cp.async / ldmatrix address alignment and
// bounds, warp collectives reached by only some lanes (divergence), barriers never reached
// (deadlock), invalid mma.sp metadata. cp.async copies land at a seeded random yield point
// between issue and their wait_group, so a read of a stage still in flight, or a prefetch that
// overwrites a stage another warp still reads, changes the result.
//
// Shadow memory (build.rs compiles the kernels with GCC's -fsanitize=thread instrumentation,
// runtime.cpp implements its hooks): racecheck (shared-memory accesses of two threads, one a
// write, with no barrier — or within a warp no warp collective — between; a cp.async
// destination touched before its wait_group), initcheck (reads of device memory neither the
// host nor a kernel wrote since allocation; reads of shared memory the block never wrote) and
// exact-end memcheck. MEDKERN_EMU_CHECKS=none|all|memcheck,initcheck,racecheck (default all).
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <vector_types.h>
#include <vector_functions.h>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// build.rs preprocesses each module once with MK_EMU_SCAN to read every kernel's
// __launch_bounds__ (a launch with more threads is refused, as the driver refuses it).
#ifdef MK_EMU_SCAN
#define __launch_bounds__(...) MK_EMU_LB(__VA_ARGS__)
#else
#define __launch_bounds__(...)
#endif
// Function-scope __shared__ arrays: one instance per OS thread, shared by the fibers of the
// block that thread is running (blocks run one at a time per OS thread).
#define __shared__ static thread_local
#ifndef MK_EMU
#define MK_EMU 1
#endif

struct emu_dim3 {
    unsigned x, y, z;
};
extern thread_local emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

using std::max;
using std::min;

namespace mk_emu {

// Block-wide barrier (__syncthreads) and warp rendezvous, implemented by the fiber scheduler.
void syncthreads();
void syncwarp();
// Warp shuffle of a 32-bit value: mode 0 = xor, 1 = from lane `arg`.
unsigned shfl32(unsigned bits, int mode, int arg);
// Dynamic shared memory of the running launch (16-byte aligned, poisoned before each block).
char* dyn_smem();
// A static shared array (MK_STATIC_SMEM, kernels/common/types.cuh) reached by a thread of the
// running block: filled with 0xFF bytes (NaN) at its first use in each block.
void static_smem(void* p, std::size_t n);
// Tensor-core and async-copy instructions (PTX ISA semantics; see runtime.cpp).
void cp_async16(void* dst, const void* src, bool pred);
void commit();
void wait(int n);
void ldmatrix_x4(unsigned (&r)[4], const void* p, bool trans);
void mma_16816_f16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);
void mma_16816_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);
void mma_16832_s8(int (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);
void mma_sp_16832_f16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[4], unsigned e);
void mma_sp_16832_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[4], unsigned e);
void mma_sp_16864_s8(int (&d)[4], const unsigned (&a)[4], const unsigned (&b)[4], unsigned e);

// Hopper (kernels/common/hopper.cuh; see runtime.cpp): the shared-window address of a pointer
// into dynamic shared memory, mbarriers, TMA tensor loads (landing at a random point before
// their mbarrier completes), warpgroup MMA (executed at wgmma.wait_group, reading shared memory
// then), setmaxnreg (checked, no effect).
unsigned shared_addr(const void* p);
void mbar_init(void* bar, unsigned count);
void fence_mbar_init();
void mbar_arrive(void* bar);
void mbar_arrive_expect_tx(void* bar, unsigned bytes);
void mbar_wait(void* bar, unsigned parity);
void tma_load(void* dst, const void* map, int c0, int c1, int c2, void* bar);
void setmaxnreg(unsigned n, bool inc);
void wgmma_fence();
void wgmma_commit();
void wgmma_wait(int n);
void wgmma_m64n128k16(float (&d)[64], unsigned long long da, unsigned long long db, int scale_d, bool bf16);

template <typename H> inline void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    if constexpr (std::is_same_v<H, __half>) mma_16816_f16(d, a, b0, b1);
    else mma_16816_bf16(d, a, b0, b1);
}

// One field of a kernel parameter struct (build.rs's table, checked against Rust's layout).
struct Field {
    const char* strct;
    const char* field;
    std::size_t offset;
    std::size_t size;
    std::size_t nfields;
};

// The kernel-parameter trampoline: cuLaunchKernel's `void** kernelParams` (one pointer per
// parameter, to bytes laid out as the parameter's type) unpacked into the typed call. The
// parameter count and sizes are recorded so a launch with the wrong list fails.
struct Entry {
    const char* name;
    void (*invoke)(void**);
    unsigned nparams;
    unsigned sizes[24];
    unsigned max_threads;  // __launch_bounds__'s first argument, else the 1024 of every kernel
};
template <typename... A, std::size_t... I>
inline void call_with(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}
template <auto F, typename... A> constexpr Entry entry_of(const char* name, void (*)(A...), unsigned max_threads) {
    static_assert(sizeof...(A) <= 24, "mk_emu: at most 24 kernel parameters");
    Entry e{name, [](void** args) { call_with(F, args, std::index_sequence_for<A...>{}); }, sizeof...(A), {},
            max_threads};
    unsigned i = 0;
    ((e.sizes[i++] = (unsigned)sizeof(A)), ...);
    return e;
}

}  // namespace mk_emu

#define MK_EMU_ENTRY(k, max_threads) ::mk_emu::entry_of<&k>(#k, &k, (max_threads))

inline void __syncthreads() { mk_emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { mk_emu::syncwarp(); }
template <typename T> inline T mk_emu_shfl(T v, int mode, int arg) {
    static_assert(sizeof(T) == 4, "32-bit shuffles only");
    unsigned b;
    std::memcpy(&b, &v, 4);
    b = mk_emu::shfl32(b, mode, arg);
    std::memcpy(&v, &b, 4);
    return v;
}
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int o) { return mk_emu_shfl(v, 0, o); }
template <typename T> inline T __shfl_sync(unsigned, T v, int src) { return mk_emu_shfl(v, 1, src); }
inline size_t __cvta_generic_to_shared(const void* p) { return (size_t)p; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline int __float2int_rn(float f) { return (int)std::nearbyint(f); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
