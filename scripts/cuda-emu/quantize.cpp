// kernels/quantize.cu under the CUDA emulation (scripts/cuda-emu/run): per-row absmax int8
// quantisation (warp and block kernels, every dtype, vector and scalar paths, all-zero rows,
// exact .5 ties, outliers), the fused LayerNorm-quantise (with and without residual), and
// dequantisation (per row and per tensor, grid-stride with few blocks), against loops written
// here: the documented rule s = absmax/127 (1 for a zero row), q = clamp(rne(x / s)) in f32
// for the plain kernels (exact), f64 LayerNorm for the fused one (scale within f32 error, q
// within one step where y/s sits near a rounding boundary).
#include "warp.h"
#include "quantize.cu"
#include <cstdio>
#include <random>
std::mt19937_64 rng(8);
int rnd(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
double nrm() { return std::normal_distribution<double>(0, 1)(rng); }

int pick_n(bool warp) {
    static const int w[] = {1, 7, 8, 9, 33, 64, 127, 257, 384, 1024};
    static const int b[] = {1025, 1031, 1536, 3072};
    return warp ? w[rnd(0, 9)] : b[rnd(0, 3)];
}

template <typename T> std::vector<T> gen(size_t len, double sigma, double mean) {
    std::vector<T> v(len);
    for (auto& e : v) e = mk::from_f32<T>((float)(mean + (rnd(0, 49) == 0 ? 20 : 1) * sigma * nrm()));
    return v;
}

// The documented rule, in f32 as specified (IEEE division, round half to even, saturate).
int8_t q_rule(float x, float s) {
    const float r = std::nearbyint(x / s);  // default rounding mode: to nearest, ties to even
    return (int8_t)std::max(-128.f, std::min(127.f, r));
}

template <typename T>
int run_plain(int ci, bool warp, void (*kern)(signed char*, float*, const T*, int, int, int)) {
    const int n = pick_n(warp), rows = warp ? rnd(1, 27) : rnd(1, 4);
    auto x = gen<T>((size_t)rows * n, 1.0, 0.0);
    const int zero_row = rnd(0, rows - 1);
    if (rnd(0, 2) == 0)  // an all-zero row: scale 1, q 0
        for (int i = 0; i < n; ++i) x[(size_t)zero_row * n + i] = mk::from_f32<T>(0.f);
    if (rnd(0, 2) == 0 && n > 2) {  // exact ties: absmax 127 makes s = 1 and x = k + .5 a tie
        for (int i = 0; i < n; ++i) x[(size_t)zero_row * n + i] = mk::from_f32<T>((float)(rnd(-20, 20) + 0.5));
        x[(size_t)zero_row * n] = mk::from_f32<T>(127.f);
    }
    const int vec_ok = n % 8 == 0 && rnd(0, 3) != 0;
    std::vector<signed char> q(x.size(), (signed char)0x5a);  // poison: 90 is rarely right
    std::vector<float> s(rows, NAN);
    const unsigned grid = warp ? (rows + 7) / 8 : rows;
    emu_warp::init(256);
    emu_launch({grid, 1, 1}, {256, 1, 1}, [&] { kern(q.data(), s.data(), x.data(), rows, n, vec_ok); });
    int bad = 0;
    for (int r = 0; r < rows; ++r) {
        float am = 0;
        for (int i = 0; i < n; ++i) am = std::max(am, std::abs(mk::to_f32<T>(x[(size_t)r * n + i])));
        const float want_s = am > 0 ? am / 127.f : 1.f;
        if (!(s[r] == want_s) && bad++ < 3) printf("quantize case %d row %d: scale %.9g want %.9g\n", ci, r, s[r], want_s);
        for (int i = 0; i < n; ++i) {
            const int8_t want = q_rule(mk::to_f32<T>(x[(size_t)r * n + i]), want_s);
            if (q[(size_t)r * n + i] != want && bad++ < 3)
                printf("quantize case %d (%s n=%d vec=%d) [%d,%d]: q %d want %d (x %.9g)\n", ci, warp ? "warp" : "block",
                       n, vec_ok, r, i, q[(size_t)r * n + i], want, mk::to_f32<T>(x[(size_t)r * n + i]));
        }
    }
    return bad ? -1 : 1;
}

template <typename T>
int run_ln(int ci, bool warp,
           void (*kern)(signed char*, float*, const T*, const T*, const T*, const T*, float, int, int, int)) {
    const int n = pick_n(warp), rows = warp ? rnd(1, 19) : rnd(1, 3);
    const bool with_res = rnd(0, 1);
    const float eps = 1e-5f;
    auto x = gen<T>((size_t)rows * n, 1.0, rnd(0, 2) == 0 ? 30.0 : 0.0), res = gen<T>((size_t)rows * n, 0.5, 0.0);
    auto g = gen<T>(n, 0.3, 1.0), b = gen<T>(n, 0.2, 0.0);
    const int vec_ok = n % 8 == 0 && rnd(0, 3) != 0;
    std::vector<signed char> q(x.size(), (signed char)0x5a);
    std::vector<float> s(rows, NAN);
    const unsigned grid = warp ? (rows + 7) / 8 : rows;
    emu_warp::init(256);
    emu_launch({grid, 1, 1}, {256, 1, 1}, [&] {
        kern(q.data(), s.data(), x.data(), with_res ? res.data() : nullptr, g.data(), b.data(), eps, rows, n, vec_ok);
    });
    int bad = 0;
    for (int r = 0; r < rows; ++r) {
        std::vector<double> h(n), y(n);
        double mean = 0, var = 0, am = 0;
        for (int i = 0; i < n; ++i) {
            const size_t k = (size_t)r * n + i;
            const float sum = mk::to_f32<T>(x[k]) + (with_res ? mk::to_f32<T>(res[k]) : 0.f);
            h[i] = with_res ? mk::to_f32<T>(mk::from_f32<T>(sum)) : mk::to_f32<T>(x[k]);
            mean += h[i];
        }
        mean /= n;
        for (double v : h) var += (v - mean) * (v - mean);
        const double rstd = 1 / std::sqrt(var / n + eps);
        double mag = 0;  // the operands' size, for the f32 error of the statistics
        for (int i = 0; i < n; ++i) {
            y[i] = (h[i] - mean) * rstd * mk::to_f32<T>(g[i]) + mk::to_f32<T>(b[i]);
            am = std::max(am, std::abs(y[i]));
            mag = std::max(mag, (std::abs(h[i]) + std::abs(mean)) * rstd * std::abs(mk::to_f32<T>(g[i])) + std::abs(mk::to_f32<T>(b[i])));
        }
        const double ferr = 6e-8 * (8 + std::sqrt((double)n)) * mag;  // as tests of layernorm
        const double want_s = am > 0 ? am / 127 : 1;
        if (!(std::abs(s[r] - want_s) <= ferr / 127 + 1e-7 * want_s) && bad++ < 3)
            printf("layernorm_quant case %d row %d: scale %.9g want %.9g\n", ci, r, s[r], want_s);
        for (int i = 0; i < n; ++i) {
            // q must be the rounding of y/s for the kernel's own s, up to the f32 error of y.
            const double t = y[i] / s[r];
            const int got = q[(size_t)r * n + i];
            const double slack = ferr / s[r] + 1e-6;
            const bool ok = got >= std::max(-128.0, std::floor(t - 0.5 - slack)) && got <= std::min(127.0, std::ceil(t + 0.5 + slack)) &&
                            std::abs(got - std::max(-128.0, std::min(127.0, t))) <= 0.5 + slack;
            if (!ok && bad++ < 3)
                printf("layernorm_quant case %d (%s n=%d res=%d vec=%d) [%d,%d]: q %d, y/s %.6f\n", ci,
                       warp ? "warp" : "block", n, with_res, vec_ok, r, i, got, t);
        }
    }
    return bad ? -1 : 1;
}

template <typename T>
int run_deq(int ci, void (*kern)(T*, const signed char*, const float*, long long, long long, int)) {
    const int rows = rnd(1, 40), n = rnd(1, 300), per_row = rnd(0, 1);
    const long long total = (long long)rows * n;
    std::vector<signed char> q(total);
    for (auto& v : q) v = (signed char)rnd(-128, 127);
    std::vector<float> s(per_row ? rows : 1);
    for (auto& v : s) v = (float)std::exp(nrm() * 3);
    std::vector<T> y(total);
    std::memset(y.data(), 0xff, y.size() * sizeof(T));
    emu_launch({(unsigned)rnd(1, 5), 1, 1}, {(unsigned)(32 * rnd(1, 8)), 1, 1},
               [&] { kern(y.data(), q.data(), s.data(), total, n, per_row); });
    int bad = 0;
    for (long long i = 0; i < total; ++i) {
        // q·s is exact in f64; the kernel's f32 product then its rounding to T.
        const T want = mk::from_f32<T>((float)((double)q[i] * s[per_row ? i / n : 0]));
        if (std::memcmp(&want, &y[i], sizeof(T)) != 0 && bad++ < 3)
            printf("dequantize case %d [%lld]: got %.9g want %.9g\n", ci, i, mk::to_f32<T>(y[i]), mk::to_f32<T>(want));
    }
    return bad ? -1 : 1;
}

int main(int argc, char** argv) {
    int cases = argc > 1 ? atoi(argv[1]) / 2 : 60, ran = 0, failed = 0;
    for (int i = 0; i < cases; ++i) {
        int r = 0;
        switch (i % 12) {
            case 0: r = run_plain<float>(i, true, quantize_rows_warp_f32); break;
            case 1: r = run_plain<mk::f16>(i, true, quantize_rows_warp_f16); break;
            case 2: r = run_plain<mk::bf16>(i, false, quantize_rows_block_bf16); break;
            case 3: r = run_plain<float>(i, false, quantize_rows_block_f32); break;
            case 4: r = run_plain<mk::f16>(i, false, quantize_rows_block_f16); break;
            case 5: r = run_plain<mk::bf16>(i, true, quantize_rows_warp_bf16); break;
            case 6: r = run_ln<float>(i, true, layernorm_quant_warp_f32); break;
            case 7: r = run_ln<mk::f16>(i, true, layernorm_quant_warp_f16); break;
            case 8: r = run_ln<mk::bf16>(i, false, layernorm_quant_block_bf16); break;
            case 9: r = run_ln<mk::f16>(i, false, layernorm_quant_block_f16); break;
            case 10: r = run_deq<mk::f16>(i, dequantize_rows_f16); break;
            default: r = i % 24 == 11 ? run_deq<float>(i, dequantize_rows_f32) : run_deq<mk::bf16>(i, dequantize_rows_bf16);
        }
        ran += r != 0; failed += r < 0;
    }
    printf("quantize emu: %d run, %d failed\n", ran, failed);
    return failed != 0;
}
