// medkern common: per-channel sums over the positions of an NHWC image, for global average
// pooling (kernels/pool.cu) and the squeeze of squeeze-and-excitation (kernels/squeeze_excite.cu).
// Deterministic: every sum is added in one fixed order, whatever the timing.
#pragma once
#include "common/types.cuh"

namespace mk {

// Block-wide f32 sums of channels [c0, c0 + lanes·V) over positions [p0, p1) of an image stored
// as rows of C elements (NHWC, H·W flattened). The block is `lanes` channel lanes × `slices =
// blockDim.x / lanes` position slices (lanes divides blockDim.x): thread t = slice·lanes + lane
// owns channels c0 + lane·V .. + V and adds positions p0 + slice, p0 + slice + slices, ... in
// order; then the slice-0 thread of each lane adds the slices' partials in slice order.
// V = VEC needs C % VEC == 0 and a 16-byte-aligned image; V = 1 is the scalar path.
// `scratch`: blockDim.x·V floats of shared memory. On return the slice-0 threads hold their
// lane's V sums (zeros for lanes past C); the other threads hold partials. Every thread of the
// block must call it (it synchronises twice).
template <typename T, int V>
__device__ __forceinline__ void channel_sums(const T* __restrict__ img, long long p0, long long p1,
                                             int C, int c0, int lanes, float* scratch,
                                             float (&sum)[V]) {
    const int lane = threadIdx.x % lanes;
    const int slice = threadIdx.x / lanes;
    const int slices = blockDim.x / lanes;
    const int c = c0 + lane * V;
#pragma unroll
    for (int k = 0; k < V; ++k) sum[k] = 0.f;
    if (c < C) {
#pragma unroll 4
        for (long long p = p0 + slice; p < p1; p += slices) {
            if constexpr (V == VEC) {
                float v[VEC];
                load_vec<T>(img + p * C + c, v);
#pragma unroll
                for (int k = 0; k < VEC; ++k) sum[k] += v[k];
            } else {
                sum[0] += to_f32<T>(img[p * C + c]);
            }
        }
    }
#pragma unroll
    for (int k = 0; k < V; ++k) scratch[threadIdx.x * V + k] = sum[k];
    __syncthreads();
    if (slice == 0) {
        for (int s = 1; s < slices; ++s) {
#pragma unroll
            for (int k = 0; k < V; ++k) sum[k] += scratch[(s * lanes + lane) * V + k];
        }
    }
    __syncthreads();  // scratch may be reused by the next call
}

}  // namespace mk
