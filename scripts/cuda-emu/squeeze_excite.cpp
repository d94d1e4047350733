// kernels/squeeze_excite.cu under the CUDA emulation (scripts/cuda-emu/run): the SE scale vector
// through the one-kernel squeeze and the split squeeze (se_pool + ordered partials), x-dtype
// and f32 weights, then the channel scale, over random NHWC shapes, against f64 loops.
#include "warp.h"
#include "squeeze_excite.cu"
#include <cstdio>
#include <random>
std::mt19937_64 rng(91);
int rnd(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
double nrm() { return std::normal_distribution<double>(0, 1)(rng); }
template <typename T> std::vector<T> randvec(size_t n, double sigma) {
    std::vector<T> v(n);
    for (auto& e : v) e = mk::from_f32<T>((float)(sigma * (rnd(0, 49) == 0 ? 10 * nrm() : nrm())));
    return v;
}

template <typename T, typename W>
int run(int ci, void (*excite)(float*, const T*, const float*, const W*, const W*, const W*, const W*, int, int, int, int, int, int),
        void (*pool)(float*, const T*, int, int, int, int), void (*scale)(T*, const T*, const float*, long long, int, int), double u) {
    int N = rnd(1, 2), HW = rnd(0, 3) == 0 ? rnd(100, 400) : rnd(1, 50);
    int C = rnd(0, 1) ? 8 * rnd(1, 40) : rnd(1, 70), Cse = rnd(1, 20);
    int splits = rnd(0, 1) ? 1 : std::min(rnd(2, 6), HW);
    bool vec = C % 8 == 0 && rnd(0, 3) != 0;
    int units = vec ? C / 8 : C, lanes = 1;
    while (lanes < units && lanes < 32) lanes *= 2;
    auto x = randvec<T>((size_t)N * HW * C, 2.0);
    auto w1 = randvec<W>((size_t)Cse * C, 1 / std::sqrt((double)C)), b1 = randvec<W>(Cse, 0.5);
    auto w2 = randvec<W>((size_t)C * Cse, 1 / std::sqrt((double)Cse)), b2 = randvec<W>(C, 0.5);
    std::vector<float> s((size_t)N * C, NAN), part((size_t)N * splits * C, NAN);
    if (splits > 1) emu_launch({(unsigned)splits, (unsigned)N, 1}, {256, 1, 1}, [&] { pool(part.data(), x.data(), HW, C, lanes, vec); });
    emu_warp::init(512);
    emu_launch({(unsigned)N, 1, 1}, {512, 1, 1}, [&] {
        excite(s.data(), x.data(), splits > 1 ? part.data() : nullptr, w1.data(), b1.data(), w2.data(), b2.data(), HW, C, Cse, splits, lanes, vec);
    });
    std::vector<T> y(x.size(), mk::from_f32<T>(NAN));
    emu_launch({(unsigned)rnd(1, 3), (unsigned)N, 1}, {(unsigned)(32 * rnd(1, 4)), 1, 1}, [&] { scale(y.data(), x.data(), s.data(), (long long)HW * C, C, vec); });
    auto f = [](auto v) { return (double)mk::to_f32<decltype(v)>(v); };
    int bad = 0;
    for (int n = 0; n < N; ++n) {
        std::vector<double> p(C), h(Cse);
        for (int c = 0; c < C; ++c) { double a = 0; for (int q = 0; q < HW; ++q) a += f(x[((size_t)n * HW + q) * C + c]); p[c] = a / HW; }
        for (int j = 0; j < Cse; ++j) { double z = f(b1[j]); for (int c = 0; c < C; ++c) z += f(w1[(size_t)j * C + c]) * p[c]; h[j] = z / (1 + std::exp(-z)); }
        for (int c = 0; c < C; ++c) {
            double z = f(b2[c]); for (int j = 0; j < Cse; ++j) z += f(w2[(size_t)c * Cse + j]) * h[j];
            double want = 1 / (1 + std::exp(-z)), g = s[(size_t)n * C + c];
            if (!(std::abs(g - want) <= 2e-5) && bad++ < 3)
                printf("  case %d s [%d,%d,%d] cse %d splits %d vec%d: (%d,%d) got %g want %g\n", ci, N, HW, C, Cse, splits, vec, n, c, g, want);
            for (int q = 0; q < HW; ++q) {
                size_t i = ((size_t)n * HW + q) * C + c;
                double xv = f(x[i]), wy = xv * g, gy = f(y[i]);
                if (!(std::abs(gy - wy) <= u * std::abs(wy) + 6e-8) && bad++ < 3)  // + f16's subnormal step
                    printf("  case %d y [%d,%d,%d] vec%d: (%d,%d,%d) got %g want %g\n", ci, N, HW, C, vec, n, q, c, gy, wy);
            }
        }
    }
    return bad ? -1 : 1;
}

int main(int argc, char** argv) {
    int cases = argc > 1 ? atoi(argv[1]) : 40, ran = 0, failed = 0;
    for (int i = 0; i < cases; ++i) {
        int r;
        switch (i % 5) {
            case 0: r = run<float, float>(i, se_excite_f32_f32, se_pool_f32, se_scale_f32, 6e-8); break;
            case 1: r = run<mk::f16, mk::f16>(i, se_excite_f16_f16, se_pool_f16, se_scale_f16, 4.9e-4); break;
            case 2: r = run<mk::f16, float>(i, se_excite_f16_f32, se_pool_f16, se_scale_f16, 4.9e-4); break;
            case 3: r = run<mk::bf16, mk::bf16>(i, se_excite_bf16_bf16, se_pool_bf16, se_scale_bf16, 3.9e-3); break;
            default: r = run<mk::bf16, float>(i, se_excite_bf16_f32, se_pool_bf16, se_scale_bf16, 3.9e-3);
        }
        ran++; failed += r < 0;
    }
    printf("squeeze_excite emu: %d run, %d failed\n", ran, failed);
    return failed != 0;
}
