// kernels/layout.cu under the CUDA emulation (scripts/cuda-emu/run): the tiled and the
// small-dimension batched transposes for 1-, 2- and 4-byte elements over random shapes and
// launch geometries (including fewer blocks than tiles), checked element by element.
#include "warp.h"
#include "layout.cu"
#include <cstdio>
#include <random>
std::mt19937_64 rng(3);
int rnd(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

template <typename T>
int run(int ci, bool tiled, void (*kern)(T*, const T*, long long, int, int)) {
    int B = rnd(1, 3), R = tiled ? rnd(9, 80) : rnd(1, 8), Cc = tiled ? rnd(9, 80) : rnd(1, 70);
    if (!tiled && rnd(0, 1)) std::swap(R, Cc);
    std::vector<T> x((size_t)B * R * Cc), y(x.size(), (T)0xEE);
    for (size_t i = 0; i < x.size(); ++i) x[i] = (T)(i * 2654435761u);
    if (tiled) emu_launch({(unsigned)rnd(1, 6), 1, 1}, {32, 8, 1}, [&] { kern(y.data(), x.data(), B, R, Cc); });
    else emu_launch({(unsigned)rnd(1, 4), (unsigned)rnd(1, B), 1}, {(unsigned)(32 * rnd(1, 3)), 1, 1}, [&] { kern(y.data(), x.data(), B, R, Cc); });
    int bad = 0;
    for (int b = 0; b < B; ++b) for (int r = 0; r < R; ++r) for (int c = 0; c < Cc; ++c) {
        T want = x[((size_t)b * R + r) * Cc + c], got = y[((size_t)b * Cc + c) * R + r];
        if (got != want && bad++ < 3) printf("  case %d %s [%d,%d,%d] (%d,%d,%d) wrong\n", ci, tiled ? "tiled" : "small", B, R, Cc, b, r, c);
    }
    return bad ? -1 : 1;
}

int main(int argc, char** argv) {
    int cases = argc > 1 ? atoi(argv[1]) : 60, ran = 0, failed = 0;
    for (int i = 0; i < cases; ++i) {
        int r;
        switch (i % 6) {
            case 0: r = run<unsigned char>(i, true, transpose_tiled_b1); break;
            case 1: r = run<unsigned short>(i, true, transpose_tiled_b2); break;
            case 2: r = run<unsigned int>(i, true, transpose_tiled_b4); break;
            case 3: r = run<unsigned char>(i, false, transpose_small_b1); break;
            case 4: r = run<unsigned short>(i, false, transpose_small_b2); break;
            default: r = run<unsigned int>(i, false, transpose_small_b4);
        }
        ran++; failed += r < 0;
    }
    printf("layout emu: %d run, %d failed\n", ran, failed);
    return failed != 0;
}
