// medkern common: scalar types, f32 conversion, 8-element vector packs.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include "common/consts.cuh"

// Dynamic shared memory (the launch's shared-memory size), 16-byte aligned. Under MK_EMU (the
// emulated GPU, emu/emu.h) it is the emulator's per-launch buffer, bounded by a guard page.
#ifdef MK_EMU
#define MK_DYN_SMEM(T, name) T* name = reinterpret_cast<T*>(mk_emu::dyn_smem())
#else
#define MK_DYN_SMEM(T, name) extern __shared__ __align__(16) T name[]
#endif

// A static shared array, e.g. MK_STATIC_SMEM(float, tile, [32][33]). Under MK_EMU it is one
// instance per OS thread (blocks run one at a time per thread) refilled with 0xFF bytes (NaN) at
// its first use in every block, standing in for a fresh block's undefined shared memory: a read
// before the block's first write shows instead of finding zeros or the previous block's values.
#ifdef MK_EMU
#define MK_STATIC_SMEM(T, name, dims) \
    __shared__ T name dims;           \
    ::mk_emu::static_smem(&name, sizeof(name))
#else
#define MK_STATIC_SMEM(T, name, dims) __shared__ T name dims
#endif

namespace mk {

typedef __half f16;
typedef __nv_bfloat16 bf16;

// -inf without <cmath> (NVRTC has no INFINITY macro).
__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

template <typename T> __device__ __forceinline__ float to_f32(T x);
template <> __device__ __forceinline__ float to_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f32<f16>(f16 x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f32<bf16>(bf16 x) { return __bfloat162float(x); }
template <> __device__ __forceinline__ float to_f32<signed char>(signed char x) { return (float)x; }
template <> __device__ __forceinline__ float to_f32<int>(int x) { return (float)x; }

// Round-to-nearest-even conversion from f32, as the CPU reference does.
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ f16 from_f32<f16>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

// Memory-bound kernels move VEC elements per access (common/consts.cuh): 16 bytes for f16/bf16,
// 2 x 16 for f32.
template <typename T> struct alignas(sizeof(T) * VEC) Pack { T v[VEC]; };

// Loads VEC elements at p (aligned to sizeof(T)*VEC) widened to f32.
template <typename T> __device__ __forceinline__ void load_vec(const T* __restrict__ p, float (&out)[VEC]) {
    const Pack<T> pk = *reinterpret_cast<const Pack<T>*>(p);
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = to_f32<T>(pk.v[i]);
}
// f32: two explicit 16-byte loads (there is no 32-byte load before sm_100).
template <> __device__ __forceinline__ void load_vec<float>(const float* __restrict__ p, float (&out)[VEC]) {
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    const float4 b = reinterpret_cast<const float4*>(p)[1];
    out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
    out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
}

// Stores VEC f32 values at p (aligned to sizeof(T)*VEC), rounded to T.
template <typename T> __device__ __forceinline__ void store_vec(T* __restrict__ p, const float (&in)[VEC]) {
    Pack<T> pk;
#pragma unroll
    for (int i = 0; i < VEC; ++i) pk.v[i] = from_f32<T>(in[i]);
    *reinterpret_cast<Pack<T>*>(p) = pk;
}
template <> __device__ __forceinline__ void store_vec<float>(float* __restrict__ p, const float (&in)[VEC]) {
    reinterpret_cast<float4*>(p)[0] = make_float4(in[0], in[1], in[2], in[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(in[4], in[5], in[6], in[7]);
}

}  // namespace mk
