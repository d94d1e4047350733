// Row softmax: y[r,:] = softmax(x[r,:] * scale + mask[r / mask_div, :]).
//
// Online softmax (running max and sum, one read), then a second read that writes
// exp(v - max) / sum. A row whose every entry is -inf (fully masked) is written as zeros,
// never NaN; a row with a NaN score is written as NaN (never zeros: NaN is not "masked"). The
// mask is f32 and additive (0 keeps, -inf drops the entry whatever x holds, NaN included, as
// in the fused attention); mask_div broadcasts one mask row over mask_div consecutive rows
// (key padding over heads and queries).
// Kernels: softmax_{warp,block}_{f32,f16,bf16}: warp = one warp per row (8 rows per 256-thread
// block, for short rows), block = one 256-thread block per row (common/consts.cuh ROW_*).
// Launcher: src/ops/softmax.rs; reference: src/reference/softmax.rs.
#include "common/types.cuh"
#include "common/reduce.cuh"

namespace mk {

// The score of one entry: -inf where the mask drops it (x, NaN included, takes no part),
// else x·scale + mask.
__device__ __forceinline__ float softmax_score(float x, float scale, float m) {
    return m == neg_inf() ? m : x * scale + m;
}

template <typename T, int TPR>
__device__ __forceinline__ void softmax_rows(T* __restrict__ y, const T* __restrict__ x,
                                             const float* __restrict__ mask, float scale, int rows,
                                             int n, int mask_div, int vec_ok) {
    const int row = blockIdx.x * (blockDim.x / TPR) + threadIdx.x / TPR;
    const int lane = threadIdx.x % TPR;
    if (TPR == 32 && row >= rows) return;  // whole warps leave; block mode has one row per block
    const T* xr = x + (long long)row * n;
    T* yr = y + (long long)row * n;
    const float* mr = mask ? mask + (long long)(row / mask_div) * n : nullptr;
    const int nvec = vec_ok ? n / VEC : 0;

    MaxSum st = {neg_inf(), 0.f};
    for (int c = lane; c < nvec; c += TPR) {
        float v[VEC];
        load_vec<T>(xr + c * VEC, v);
        float m[VEC];
        if (mr) load_vec<float>(mr + c * VEC, m);
#pragma unroll
        for (int k = 0; k < VEC; ++k) maxsum_push(st, softmax_score(v[k], scale, mr ? m[k] : 0.f));
    }
    for (int i = nvec * VEC + lane; i < n; i += TPR)
        maxsum_push(st, softmax_score(to_f32<T>(xr[i]), scale, mr ? mr[i] : 0.f));
    st = group_allreduce<TPR>(st, merge_maxsum);

    // Empty: nothing was pushed (every score -inf). A NaN score leaves m at -inf when every
    // score is NaN, but makes s NaN, so that row is not empty: inv and every output are NaN.
    const bool empty = st.m == neg_inf() && st.s == 0.f;
    const float inv = empty ? 0.f : 1.f / st.s;
    for (int c = lane; c < nvec; c += TPR) {
        float v[VEC];
        load_vec<T>(xr + c * VEC, v);
        float m[VEC];
        if (mr) load_vec<float>(mr + c * VEC, m);
#pragma unroll
        for (int k = 0; k < VEC; ++k)
            v[k] = empty ? 0.f : expf(softmax_score(v[k], scale, mr ? m[k] : 0.f) - st.m) * inv;
        store_vec<T>(yr + c * VEC, v);
    }
    for (int i = nvec * VEC + lane; i < n; i += TPR) {
        const float v = softmax_score(to_f32<T>(xr[i]), scale, mr ? mr[i] : 0.f);
        yr[i] = from_f32<T>(empty ? 0.f : expf(v - st.m) * inv);
    }
}

}  // namespace mk

#define MK_SOFTMAX(MODE, TPR, T, TN)                                                          \
    extern "C" __global__ void __launch_bounds__(mk::ROW_THREADS)                             \
        softmax_##MODE##_##TN(T* y, const T* x, const float* mask, float scale, int rows, int n, \
                              int mask_div, int vec_ok) {                                     \
        mk::softmax_rows<T, TPR>(y, x, mask, scale, rows, n, mask_div, vec_ok);               \
    }
#define MK_SOFTMAX_ALL(T, TN) MK_SOFTMAX(warp, 32, T, TN) MK_SOFTMAX(block, mk::ROW_THREADS, T, TN)
MK_SOFTMAX_ALL(float, f32)
MK_SOFTMAX_ALL(mk::f16, f16)
MK_SOFTMAX_ALL(mk::bf16, bf16)
