// kernels/softmax.cu under the CUDA emulation (scripts/cuda-emu/run): the warp-per-row and
// block-per-row kernels, f32/f16/bf16, vector and scalar paths, scale, additive f32 masks with
// -inf entries broadcast over mask_div rows, fully masked rows (zeros), planted outliers, the
// launcher's geometry (256 threads; 8 rows per block in warp mode), against f64 loops.
#include "warp.h"
#include "softmax.cu"
#include <cstdio>
#include <random>
std::mt19937_64 rng(2024);
int rnd(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
double nrm() { return std::normal_distribution<double>(0, 1)(rng); }

// Lengths around the vector width, the warp/block switch (1024) and the tails.
int pick_n(bool warp) {
    static const int w[] = {1, 7, 8, 9, 31, 33, 64, 100, 257, 512, 1000, 1024};
    static const int b[] = {1025, 1031, 1536, 2049, 3000};
    return warp ? w[rnd(0, 11)] : b[rnd(0, 4)];
}

double worst_all = 0;  // largest error / tolerance seen (the margin)

template <typename T>
int run(int ci, bool warp, void (*kern)(T*, const T*, const float*, float, int, int, int, int), double eps) {
    const int n = pick_n(warp);
    const int rows = warp ? rnd(1, 27) : rnd(1, 5);
    const float scale = rnd(0, 1) ? 1.0f : (float)(0.05 + 0.5 * rnd(0, 4));
    std::vector<T> x((size_t)rows * n);
    for (auto& v : x) v = mk::from_f32<T>((float)(rnd(0, 49) == 0 ? 20 * nrm() : 3 * nrm()));
    // Mask: none, or mrows rows (dividing rows) of 0 / -inf / small offsets; one row fully masked.
    std::vector<float> mask;
    int mask_div = 1;
    if (rnd(0, 2) != 0) {
        std::vector<int> divs;
        for (int d = 1; d <= rows; ++d) if (rows % d == 0) divs.push_back(d);
        const int mrows = divs[rnd(0, (int)divs.size() - 1)];
        mask_div = rows / mrows;
        mask.resize((size_t)mrows * n);
        for (auto& m : mask) m = rnd(0, 3) == 0 ? -INFINITY : (rnd(0, 1) ? 0.f : (float)nrm());
        const int full = rnd(0, mrows - 1);
        if (rnd(0, 1)) std::fill(mask.begin() + (size_t)full * n, mask.begin() + (size_t)(full + 1) * n, -INFINITY);
    }
    const int vec_ok = n % 8 == 0 && rnd(0, 3) != 0;
    std::vector<T> y(x.size());
    std::memset(y.data(), 0xff, y.size() * sizeof(T));  // NaN in every dtype: unwritten shows
    const unsigned grid = warp ? (rows + 7) / 8 : rows;
    emu_warp::init(256);
    emu_launch({grid, 1, 1}, {256, 1, 1}, [&] {
        kern(y.data(), x.data(), mask.empty() ? nullptr : mask.data(), scale, rows, n, mask_div, vec_ok);
    });
    int bad = 0;
    double worst = 0;
    for (int r = 0; r < rows; ++r) {
        const float* m = mask.empty() ? nullptr : mask.data() + (size_t)(r / mask_div) * n;
        std::vector<double> v(n);
        double mx = -INFINITY;
        for (int i = 0; i < n; ++i) {
            v[i] = (double)mk::to_f32<T>(x[(size_t)r * n + i]) * scale + (m ? m[i] : 0.0);
            mx = std::max(mx, v[i]);
        }
        double s = 0;
        for (int i = 0; i < n; ++i) s += mx == -INFINITY ? 0 : std::exp(v[i] - mx);
        for (int i = 0; i < n; ++i) {
            const double want = mx == -INFINITY ? 0 : std::exp(v[i] - mx) / s;
            const double got = mk::to_f32<T>(y[(size_t)r * n + i]);
            // f32 arithmetic inside (|arg| up to ~100: a few f32 ulps of exp), then rounding to T.
            const double tol = 1e-7 + want * (eps + 2e-5);
            const double err = std::abs(got - want);
            worst = std::max(worst, err / (tol));
            if (!(err <= tol) || (mx == -INFINITY && got != 0)) {
                if (bad++ < 3)
                    printf("softmax case %d (%s, n=%d rows=%d div=%d vec=%d): row %d col %d got %.9g want %.9g\n",
                           ci, warp ? "warp" : "block", n, rows, mask_div, vec_ok, r, i, got, want);
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
            case 0: r = run<float>(i, true, softmax_warp_f32, 6e-8); break;
            case 1: r = run<mk::f16>(i, true, softmax_warp_f16, 4.9e-4); break;
            case 2: r = run<mk::bf16>(i, true, softmax_warp_bf16, 3.9e-3); break;
            case 3: r = run<float>(i, false, softmax_block_f32, 6e-8); break;
            case 4: r = run<mk::f16>(i, false, softmax_block_f16, 4.9e-4); break;
            default: r = run<mk::bf16>(i, false, softmax_block_bf16, 3.9e-3);
        }
        ran += r != 0; failed += r < 0;
    }
    printf("softmax emu: %d run, %d failed (largest error %.2f of the tolerance)\n", ran, failed, worst_all);
    return failed != 0;
}
