// kernels/pool.cu under the CUDA emulation (scripts/cuda-emu/run): windowed max / average
// pooling over random NHWC shapes, windows, padding (explicit, asymmetric, TF SAME), strides,
// dilations and launch geometries, and the global average pool, against f64 loops written here.
#include "warp.h"
#include "pool.cu"
#include <cstdio>
#include <random>
std::mt19937_64 rng(77);
int rnd(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
double nrm() { return std::normal_distribution<double>(0, 1)(rng); }

template <typename T>
std::vector<T> randvec(size_t n) {
    std::vector<T> v(n);
    for (auto& e : v) e = mk::from_f32<T>((float)(rnd(0, 49) == 0 ? 30 * nrm() : nrm()));
    return v;
}

template <typename T>
int run_window(int ci, bool is_max, void (*kern)(T*, const T*, int, int, int, int, int, int, int, int, int, int, int, int, int, int, int, int), double u) {
    int N = rnd(1, 2), H = rnd(1, 12), W = rnd(1, 12), C = rnd(0, 1) ? 8 * rnd(1, 3) : rnd(1, 13);
    int KH = rnd(1, 4), KW = rnd(1, 4), SH = rnd(1, 2), SW = rnd(1, 2), DH = is_max ? rnd(1, 2) : 1, DW = is_max ? rnd(1, 2) : 1;
    int spanh = DH * (KH - 1) + 1, spanw = DW * (KW - 1) + 1, OH, OW, PT, PL;
    if (rnd(0, 2) == 0) {  // TF SAME
        OH = (H + SH - 1) / SH; OW = (W + SW - 1) / SW;
        PT = std::max((OH - 1) * SH + spanh - H, 0) / 2; PL = std::max((OW - 1) * SW + spanw - W, 0) / 2;
    } else {
        PT = rnd(0, spanh / 2); PL = rnd(0, spanw / 2);
        int PB = rnd(0, spanh / 2), PR = rnd(0, spanw / 2);
        if (H + PT + PB < spanh || W + PL + PR < spanw) return 0;
        OH = (H + PT + PB - spanh) / SH + 1; OW = (W + PL + PR - spanw) / SW + 1;
    }
    int inc = rnd(0, 1), vec = C % 8 == 0 && rnd(0, 3) != 0;
    auto x = randvec<T>((size_t)N * H * W * C);
    std::vector<T> y((size_t)N * OH * OW * C, mk::from_f32<T>(NAN));
    emu_launch({(unsigned)rnd(1, 4), 1, 1}, {(unsigned)(32 * rnd(1, 2)), 1, 1},
               [&] { kern(y.data(), x.data(), N, H, W, C, OH, OW, KH, KW, SH, SW, DH, DW, PT, PL, inc, vec); });
    int bad = 0, empty = 0;
    for (int n = 0; n < N; ++n) for (int oh = 0; oh < OH; ++oh) for (int ow = 0; ow < OW; ++ow) for (int c = 0; c < C; ++c) {
        double m = -INFINITY, s = 0, sa = 0; int cnt = 0;
        for (int kh = 0; kh < KH; ++kh) for (int kw = 0; kw < KW; ++kw) {
            int ih = oh * SH - PT + kh * DH, iw = ow * SW - PL + kw * DW;
            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
            double v = mk::to_f32<T>(x[(((size_t)n * H + ih) * W + iw) * C + c]);
            m = std::max(m, v); s += v; sa += std::abs(v); ++cnt;
        }
        if (cnt == 0) { empty = 1; continue; }  // the launcher rejects these geometries
        double g = mk::to_f32<T>(y[(((size_t)n * OH + oh) * OW + ow) * C + c]);
        double div = inc ? KH * KW : cnt;
        double want = is_max ? m : s / div, tol = is_max ? 0 : (KH * KW + 2) * 6e-8 * sa / div + u * std::abs(want);
        if (!(std::abs(g - want) <= tol) && bad++ < 3)
            printf("  case %d %s [%d,%d,%d,%d] k%dx%d s%dx%d d%dx%d p%d,%d inc%d vec%d: (%d,%d,%d,%d) got %g want %g\n", ci, is_max ? "max" : "avg",
                   N, H, W, C, KH, KW, SH, SW, DH, DW, PT, PL, inc, vec, n, oh, ow, c, g, want);
    }
    (void)empty;
    return bad ? -1 : 1;
}

template <typename T, typename O>
int run_gap(int ci, void (*kern)(O*, const T*, int, int, int, int), double u) {
    int N = rnd(1, 3), HW = rnd(0, 3) == 0 ? rnd(200, 700) : rnd(1, 60);
    int C = rnd(0, 1) ? 8 * rnd(1, 40) : rnd(1, 70);
    bool vec = C % 8 == 0 && rnd(0, 3) != 0;
    int units = vec ? C / 8 : C, lanes = 1;
    while (lanes < units && lanes < 32) lanes *= 2;  // ops/pool.rs channel_lanes
    unsigned chunks = (units + lanes - 1) / lanes;
    auto x = randvec<T>((size_t)N * HW * C);
    std::vector<O> y((size_t)N * C, mk::from_f32<O>(NAN));
    emu_launch({chunks, (unsigned)N, 1}, {256, 1, 1}, [&] { kern(y.data(), x.data(), HW, C, lanes, vec); });
    int bad = 0;
    for (int n = 0; n < N; ++n) for (int c = 0; c < C; ++c) {
        double s = 0, sa = 0;
        for (int p = 0; p < HW; ++p) { double v = mk::to_f32<T>(x[((size_t)n * HW + p) * C + c]); s += v; sa += std::abs(v); }
        double want = s / HW, g = mk::to_f32<O>(y[(size_t)n * C + c]);
        double tol = ((HW + 7) / 8 + 258) * 6e-8 * sa / HW + u * std::abs(want);
        if (!(std::abs(g - want) <= tol) && bad++ < 3)
            printf("  case %d gap [%d,%d,%d] vec%d lanes %d: (%d,%d) got %g want %g\n", ci, N, HW, C, vec, lanes, n, c, g, want);
    }
    return bad ? -1 : 1;
}

int main(int argc, char** argv) {
    int cases = argc > 1 ? atoi(argv[1]) : 60, ran = 0, failed = 0;
    for (int i = 0; i < cases; ++i) {
        int r = 0;
        switch (i % 8) {
            case 0: r = run_window<float>(i, true, pool_max_f32, 6e-8); break;
            case 1: r = run_window<mk::f16>(i, true, pool_max_f16, 4.9e-4); break;
            case 2: r = run_window<mk::bf16>(i, false, pool_avg_bf16, 3.9e-3); break;
            case 3: r = run_window<float>(i, false, pool_avg_f32, 6e-8); break;
            case 4: r = run_window<mk::f16>(i, false, pool_avg_f16, 4.9e-4); break;
            case 5: r = run_gap<float, float>(i, gap_f32_f32, 6e-8); break;
            case 6: r = run_gap<mk::f16, mk::f16>(i, gap_f16_f16, 4.9e-4); break;
            default: r = run_gap<mk::bf16, float>(i, gap_bf16_f32, 6e-8);
        }
        ran += r != 0; failed += r < 0;
    }
    printf("pool emu: %d run, %d failed\n", ran, failed);
    return failed != 0;
}
