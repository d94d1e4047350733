// Layout transforms NCHW ↔ NHWC as batched 2-D transposes of [batch][rows][cols] into
// [batch][cols][rows]: NCHW → NHWC is rows = C, cols = H·W; NHWC → NCHW is rows = H·W, cols = C.
// A pure copy, so the kernels go by element size: b1 (u8, i8), b2 (f16, bf16), b4 (f32, i32).
//
// transpose_tiled_{b1,b2,b4}: 32×32 tiles through shared memory (a 33-element row pitch keeps
// the column reads free of bank conflicts), 32×8 threads, 4 rows each; global reads and writes
// both run along rows of 32 consecutive elements. Grid stride over batch·row tiles·col tiles.
// transpose_small_{b1,b2,b4}: when rows or cols ≤ 8 (LAYOUT_SMALL, 3-channel images) a tile
// would be mostly empty: one thread per output element in output order (coalesced writes), grid
// (blocks per image, images); the reads of a warp fall in at most 8 short runs (rows ≤ 8) or one
// span of ≤ 8·32 elements (cols ≤ 8). Tile and block sizes: common/consts.cuh LAYOUT_*.
// Launcher: src/ops/layout.rs; reference: src/reference/layout.rs.
#include "common/types.cuh"

namespace mk {

constexpr int TILE = LAYOUT_TILE;            // common/consts.cuh
constexpr int TILE_ROWS = LAYOUT_TILE_ROWS;  // blocks are TILE x TILE_ROWS threads
static_assert(TILE * TILE_ROWS == LAYOUT_THREADS, "a block is TILE x TILE_ROWS threads");

template <typename T>
__device__ __forceinline__ void transpose_tiled(T* __restrict__ y, const T* __restrict__ x,
                                                long long batch, int rows, int cols) {
    MK_STATIC_SMEM(T, tile, [TILE][TILE + 1]);
    const long long tr = (rows + TILE - 1) / TILE, tc = (cols + TILE - 1) / TILE;
    const long long tiles = batch * tr * tc;
    const long long plane = (long long)rows * cols;
    for (long long t = blockIdx.x; t < tiles; t += gridDim.x) {
        const int c_tile = (int)(t % tc);
        const int r_tile = (int)((t / tc) % tr);
        const long long b = t / (tc * tr);
        const T* xb = x + b * plane;
        T* yb = y + b * plane;
        const int c = c_tile * TILE + threadIdx.x;
#pragma unroll
        for (int i = threadIdx.y; i < TILE; i += TILE_ROWS) {
            const int r = r_tile * TILE + i;
            if (r < rows && c < cols) tile[i][threadIdx.x] = xb[(long long)r * cols + c];
        }
        __syncthreads();
        const int r = r_tile * TILE + threadIdx.x;  // the output row runs along input rows
#pragma unroll
        for (int i = threadIdx.y; i < TILE; i += TILE_ROWS) {
            const int cc = c_tile * TILE + i;
            if (r < rows && cc < cols) yb[(long long)cc * rows + r] = tile[threadIdx.x][i];
        }
        __syncthreads();  // the tile is refilled by the next iteration
    }
}

template <typename T>
__device__ __forceinline__ void transpose_small(T* __restrict__ y, const T* __restrict__ x,
                                                long long batch, int rows, int cols) {
    // Grid (blocks per image, images): 32-bit index arithmetic within an image (rows·cols < 2^31).
    const unsigned plane = (unsigned)rows * (unsigned)cols;
    const unsigned stride = gridDim.x * blockDim.x;
    for (long long b = blockIdx.y; b < batch; b += gridDim.y) {
        const T* xb = x + b * plane;
        T* yb = y + b * plane;
        for (unsigned o = blockIdx.x * blockDim.x + threadIdx.x; o < plane; o += stride) {
            const unsigned cc = o / (unsigned)rows;  // o = cc·rows + r in the output
            const unsigned r = o - cc * (unsigned)rows;
            yb[o] = xb[(size_t)r * cols + cc];
        }
    }
}

}  // namespace mk

#define MK_TRANSPOSE(T, TN)                                                                      \
    extern "C" __global__ void __launch_bounds__(mk::LAYOUT_THREADS)                             \
        transpose_tiled_##TN(T* y, const T* x, long long batch, int rows, int cols) {            \
        mk::transpose_tiled<T>(y, x, batch, rows, cols);                                         \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(mk::LAYOUT_THREADS)                             \
        transpose_small_##TN(T* y, const T* x, long long batch, int rows, int cols) {            \
        mk::transpose_small<T>(y, x, batch, rows, cols);                                         \
    }
MK_TRANSPOSE(unsigned char, b1)
MK_TRANSPOSE(unsigned short, b2)
MK_TRANSPOSE(unsigned int, b4)
