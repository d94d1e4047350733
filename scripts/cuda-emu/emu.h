// CPU emulation of the CUDA thread model, for running kernels/*.cu without a GPU (scripts/cuda-emu/run):
// one std::thread per CUDA thread, blocks run one at a time (so static/dynamic shared memory
// can be plain globals), __syncthreads is a std::barrier.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <vector_types.h>
#include <vector_functions.h>
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
struct emu_dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local emu_dim3 threadIdx;
inline emu_dim3 blockIdx, blockDim, gridDim;
inline std::unique_ptr<std::barrier<>> emu_bar;
inline void __syncthreads() { emu_bar->arrive_and_wait(); }
using std::min;
using std::max;
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float2int_rn(float f) { return (int)std::nearbyint(f); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
namespace mk { alignas(16) inline unsigned char mk_dyn_smem[1 << 20]; }

template <typename F>
void emu_launch(emu_dim3 grid, emu_dim3 block, F kernel) {
    gridDim = grid;
    blockDim = block;
    const unsigned nt = block.x * block.y * block.z;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                std::memset(mk::mk_dyn_smem, 0xA5, sizeof mk::mk_dyn_smem);  // garbage, like real smem
                emu_bar = std::make_unique<std::barrier<>>(nt);
                std::vector<std::thread> ts;
                ts.reserve(nt);
                for (unsigned t = 0; t < nt; ++t)
                    ts.emplace_back([&, t] {
                        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        kernel();
                        emu_bar->arrive_and_drop();
                    });
                for (auto& th : ts) th.join();
            }
}
