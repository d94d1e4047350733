// kernels/layernorm.cu under the CUDA emulation (scripts/cuda-emu/run): warp-per-row and
// block-per-row kernels, f32/f16/bf16, vector and scalar paths, with and without the fused
// residual (and its stored sum h), epsilons, large offsets and planted outliers (Welford must
// stay stable), the launcher's geometry, against f64 loops.
#include "warp.h"
#include "layernorm.cu"
#include <cstdio>
#include <random>
std::mt19937_64 rng(77);
int rnd(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
double nrm() { return std::normal_distribution<double>(0, 1)(rng); }
double worst_all = 0;  // largest error / tolerance seen (the margin)

int pick_n(bool warp) {
    static const int w[] = {1, 2, 7, 8, 9, 33, 64, 257, 384, 768, 1000, 1024};
    static const int b[] = {1025, 1031, 1536, 2049, 4096};
    return warp ? w[rnd(0, 11)] : b[rnd(0, 4)];
}

template <typename T>
int run(int ci, bool warp, void (*kern)(T*, T*, const T*, const T*, const T*, const T*, float, int, int, int),
        double eps) {
    const int n = pick_n(warp);
    const int rows = warp ? rnd(1, 27) : rnd(1, 4);
    const bool with_res = rnd(0, 1), with_h = with_res && rnd(0, 1);
    const float ln_eps = rnd(0, 1) ? 1e-12f : 1e-5f;
    const double offset = rnd(0, 2) == 0 ? 50.0 : 0.0;  // a large mean: the two-pass danger case
    auto gen = [&](size_t len, double sigma, double mean) {
        std::vector<T> v(len);
        for (auto& e : v) e = mk::from_f32<T>((float)(mean + (rnd(0, 49) == 0 ? 20 : 1) * sigma * nrm()));
        return v;
    };
    auto x = gen((size_t)rows * n, 1.0, offset), res = gen((size_t)rows * n, 0.5, 0.0);
    auto g = gen(n, 0.3, 1.0), b = gen(n, 0.2, 0.0);
    const int vec_ok = n % 8 == 0 && rnd(0, 3) != 0;
    std::vector<T> y(x.size()), h(x.size());
    std::memset(y.data(), 0xff, y.size() * sizeof(T));  // NaN in every dtype
    std::memset(h.data(), 0xff, h.size() * sizeof(T));
    const unsigned grid = warp ? (rows + 7) / 8 : rows;
    emu_warp::init(256);
    emu_launch({grid, 1, 1}, {256, 1, 1}, [&] {
        kern(y.data(), with_h ? h.data() : nullptr, x.data(), with_res ? res.data() : nullptr, g.data(), b.data(),
             ln_eps, rows, n, vec_ok);
    });
    int bad = 0;
    double worst = 0;
    for (int r = 0; r < rows; ++r) {
        std::vector<double> hv(n);
        for (int i = 0; i < n; ++i) {
            const size_t k = (size_t)r * n + i;
            // The residual sum is rounded to T once, as the unfused x + residual would be.
            const float s = mk::to_f32<T>(x[k]) + (with_res ? mk::to_f32<T>(res[k]) : 0.f);
            hv[i] = mk::to_f32<T>(with_res ? mk::from_f32<T>(s) : x[k]);
        }
        double mean = 0, var = 0;
        for (double v : hv) mean += v;
        mean /= n;
        for (double v : hv) var += (v - mean) * (v - mean);
        var /= n;
        const double rstd = 1 / std::sqrt(var + ln_eps);
        for (int i = 0; i < n; ++i) {
            const size_t k = (size_t)r * n + i;
            const double gi = mk::to_f32<T>(g[i]), bi = mk::to_f32<T>(b[i]);
            const double want = (hv[i] - mean) * rstd * gi + bi;
            const double got = mk::to_f32<T>(y[k]);
            // f32 statistics (Welford: mean and variance errors grow like sqrt(n) f32 ulps of the
            // operands |h|, |mean|, not of the small h - mean when the row has a large offset),
            // a few ulps in the normalisation, then rounding to T.
            const double scale = (std::abs(hv[i]) + std::abs(mean)) * rstd * std::abs(gi) + std::abs(bi);
            const double tol = 6e-8 * (8 + std::sqrt((double)n)) * scale + eps * std::abs(want) + 1e-7;
            const double err = std::abs(got - want);
            worst = std::max(worst, err / tol);
            if (!(err <= tol)) {
                if (bad++ < 3)
                    printf("layernorm case %d (%s, n=%d rows=%d res=%d vec=%d): row %d col %d got %.9g want %.9g\n",
                           ci, warp ? "warp" : "block", n, rows, with_res, vec_ok, r, i, got, want);
            }
            if (with_h && mk::to_f32<T>(h[k]) != hv[i]) {
                if (bad++ < 3) printf("layernorm case %d: h[%d,%d] = %g, want %g\n", ci, r, i, mk::to_f32<T>(h[k]), hv[i]);
            }
        }
    }
    worst_all = std::max(worst_all, worst);
    return bad ? -1 : 1;
}

int main(int argc, char** argv) {
    int cases = argc > 1 ? atoi(argv[1]) / 2 : 60, ran = 0, failed = 0;
    for (int i = 0; i < cases; ++i) {
        int r = 0;
        switch (i % 6) {
            case 0: r = run<float>(i, true, layernorm_warp_f32, 6e-8); break;
            case 1: r = run<mk::f16>(i, true, layernorm_warp_f16, 4.9e-4); break;
            case 2: r = run<mk::bf16>(i, true, layernorm_warp_bf16, 3.9e-3); break;
            case 3: r = run<float>(i, false, layernorm_block_f32, 6e-8); break;
            case 4: r = run<mk::f16>(i, false, layernorm_block_f16, 4.9e-4); break;
            default: r = run<mk::bf16>(i, false, layernorm_block_bf16, 3.9e-3);
        }
        ran += r != 0; failed += r < 0;
    }
    printf("layernorm emu: %d run, %d failed (largest error %.2f of the tolerance)\n", ran, failed, worst_all);
    return failed != 0;
}
