// kernels/preprocess.cu under the CUDA emulation (scripts/cuda-emu/run): u8 grey/RGB/RGBA and
// u16 grey, up- and down-scaling, scale or clamped window, grey replication, every output dtype,
// against PyTorch's bilinear formulas (align_corners = false) in f64.
#include "warp.h"
#include "preprocess.cu"
#include <cstdio>
#include <random>
std::mt19937_64 rng(8);
int rnd(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
double uni() { return std::uniform_real_distribution<double>(0, 1)(rng); }

template <typename S, typename O>
int run(int ci, void (*kern)(O*, const S*, int, int, int, int, int, int, int, float, float, float, float, int, float, float, float, float, float, float), double u) {
    bool u16 = sizeof(S) == 2;
    int N = rnd(1, 2), H = rnd(1, 40), W = rnd(1, 40), OH = rnd(1, 40), OW = rnd(1, 40);
    int Cin = u16 ? 1 : std::vector<int>{1, 3, 4}[rnd(0, 2)];
    int Cout = Cin == 1 ? (rnd(0, 1) ? 3 : 1) : 3;
    float lo = 0, range = 255; int clamp = 0;
    if (u16) { lo = (float)rnd(0, 1500); range = (float)rnd(100, 4000); clamp = 1; }
    else if (rnd(0, 1)) range = (float)rnd(1, 300);
    float m[3], sd[3];
    for (int c = 0; c < 3; ++c) { m[c] = (float)uni(); sd[c] = (float)(0.1 + 0.9 * uni()); }
    std::vector<S> x((size_t)N * H * W * Cin);
    for (auto& v : x) v = (S)(u16 ? (rnd(0, 49) == 0 ? 65535 : rnd(0, 4095)) : rnd(0, 255));
    std::vector<O> y((size_t)N * OH * OW * Cout, mk::from_f32<O>(NAN));
    float sh = (float)H / (float)OH, sw = (float)W / (float)OW;
    emu_launch({(unsigned)rnd(1, 4), 1, 1}, {(unsigned)(32 * rnd(1, 2)), 1, 1},
               [&] { kern(y.data(), x.data(), N, H, W, Cin, OH, OW, Cout, sh, sw, lo, range, clamp, m[0], m[1], m[2], sd[0], sd[1], sd[2]); });
    auto tap = [](int d, int in, int out, int& i0, int& i1, double& l1) {
        double s = std::max((d + 0.5) * in / out - 0.5, 0.0);
        i0 = std::min((int)s, in - 1); i1 = i0 + (i0 < in - 1); l1 = s - i0;
    };
    int bad = 0;
    for (int n = 0; n < N; ++n) for (int oh = 0; oh < OH; ++oh) for (int ow = 0; ow < OW; ++ow) for (int c = 0; c < Cout; ++c) {
        int y0, y1, x0, x1; double ly, lx;
        tap(oh, H, OH, y0, y1, ly); tap(ow, W, OW, x0, x1, lx);
        int ci_ = Cin == 1 ? 0 : c;
        auto t = [&](int yy, int xx) {
            double v = ((double)x[(((size_t)n * H + yy) * W + xx) * Cin + ci_] - lo) / range;
            return clamp ? std::min(std::max(v, 0.0), 1.0) : v;
        };
        double r = (1 - ly) * ((1 - lx) * t(y0, x0) + lx * t(y0, x1)) + ly * ((1 - lx) * t(y1, x0) + lx * t(y1, x1));
        double want = (r - m[c]) / sd[c], g = mk::to_f32<O>(y[(((size_t)n * OH + oh) * OW + ow) * Cout + c]);
        double tmax = clamp ? 1.0 : 255.0 / range;
        double tol = ((12 * 6e-8 * (std::max(H, W) + 1) + 16 * 6e-8) * tmax + 8 * 6e-8) / sd[c] + (u + 2.4e-7) * std::abs(want);
        if (!(std::abs(g - want) <= tol) && bad++ < 3)
            printf("  case %d [%d,%d,%d,%d]->%dx%dx%d: (%d,%d,%d,%d) got %g want %g\n", ci, N, H, W, Cin, OH, OW, Cout, n, oh, ow, c, g, want);
    }
    return bad ? -1 : 1;
}

int main(int argc, char** argv) {
    int cases = argc > 1 ? atoi(argv[1]) : 60, ran = 0, failed = 0;
    for (int i = 0; i < cases; ++i) {
        int r;
        switch (i % 6) {
            case 0: r = run<unsigned char, float>(i, preprocess_u8_f32, 6e-8); break;
            case 1: r = run<unsigned char, mk::f16>(i, preprocess_u8_f16, 4.9e-4); break;
            case 2: r = run<unsigned char, mk::bf16>(i, preprocess_u8_bf16, 3.9e-3); break;
            case 3: r = run<unsigned short, float>(i, preprocess_u16_f32, 6e-8); break;
            case 4: r = run<unsigned short, mk::f16>(i, preprocess_u16_f16, 4.9e-4); break;
            default: r = run<unsigned short, mk::bf16>(i, preprocess_u16_bf16, 3.9e-3);
        }
        ran++; failed += r < 0;
    }
    printf("preprocess emu: %d run, %d failed\n", ran, failed);
    return failed != 0;
}
