// kernels/conv_transpose.cu under the CUDA emulation (scripts/cuda-emu/run): random shapes,
// strides, padding, output_padding, both variants and every dtype, against an f64 scatter loop.
#include "conv_transpose.cu"
#include <cstdio>
#include <random>
#include <string>
double actd(int a, double x) {
    switch (a) {
        case 1: return std::max(x, 0.0);
        case 2: return std::min(std::max(x, 0.0), 6.0);
        case 3: return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
        case 4: return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
        case 5: return x / (1 + std::exp(-x));
        case 6: return 1 / (1 + std::exp(-x));
        default: return x;
    }
}
std::mt19937_64 rng(99);
int rnd(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
double nrm() { return std::normal_distribution<double>(0, 1)(rng); }

template <typename T>
int run(int ci, bool vec, void (*kern)(const mk::CtParams), double u) {
    mk::CtParams p{};
    p.N = rnd(1, 2); p.H = rnd(1, 9); p.W = rnd(1, 9);
    p.Cin = vec ? 8 * rnd(1, 3) : rnd(1, 13); p.Cout = vec ? 8 * rnd(1, 3) : rnd(1, 13);
    p.kh = rnd(1, 5); p.kw = rnd(1, 5); p.sh = rnd(1, 3); p.sw = rnd(1, 3); p.ph = rnd(0, 2); p.pw = rnd(0, 2);
    int oph = rnd(0, p.sh - 1), opw = rnd(0, p.sw - 1);
    p.OH = (p.H - 1) * p.sh - 2 * p.ph + p.kh + oph; p.OW = (p.W - 1) * p.sw - 2 * p.pw + p.kw + opw;
    if (p.OH < 1 || p.OW < 1) return 0;
    p.act = rnd(0, 6);
    std::vector<T> x((size_t)p.N * p.H * p.W * p.Cin), w((size_t)p.kh * p.kw * p.Cin * p.Cout), y((size_t)p.N * p.OH * p.OW * p.Cout);
    std::vector<float> b(p.Cout);
    for (auto& v : x) v = mk::from_f32<T>(rnd(0, 49) == 0 ? 20 * nrm() : nrm());
    for (auto& v : w) v = mk::from_f32<T>(nrm() * 0.3);
    for (auto& v : b) v = nrm();
    for (auto& v : y) v = mk::from_f32<T>(NAN);
    bool ub = rnd(0, 1);
    p.x = x.data(); p.w = w.data(); p.bias = ub ? b.data() : nullptr; p.y = y.data();
    int threads = 32 * rnd(1, 8), blocks = rnd(1, 7);
    emu_launch({(unsigned)blocks, (unsigned)(p.sh * p.sw), 1}, {(unsigned)threads, 1, 1}, [&] { kern(p); });
    // scatter-form reference
    std::vector<double> ref(y.size(), 0.0), mag(y.size(), 0.0);
    for (int n = 0; n < p.N; ++n) for (int ih = 0; ih < p.H; ++ih) for (int iw = 0; iw < p.W; ++iw)
        for (int a = 0; a < p.kh; ++a) for (int bb = 0; bb < p.kw; ++bb) {
            int oh = ih * p.sh - p.ph + a, ow = iw * p.sw - p.pw + bb;
            if (oh < 0 || oh >= p.OH || ow < 0 || ow >= p.OW) continue;
            for (int c = 0; c < p.Cin; ++c) for (int o = 0; o < p.Cout; ++o) {
                double t = (double)mk::to_f32<T>(x[(((size_t)n * p.H + ih) * p.W + iw) * p.Cin + c]) *
                           mk::to_f32<T>(w[(((size_t)a * p.kw + bb) * p.Cin + c) * p.Cout + o]);
                size_t oi = (((size_t)n * p.OH + oh) * p.OW + ow) * p.Cout + o;
                ref[oi] += t; mag[oi] += std::abs(t);
            }
        }
    int bad = 0;
    for (size_t i = 0; i < y.size(); ++i) {
        double v = actd(p.act, ref[i] + (ub ? b[i % p.Cout] : 0)), g = mk::to_f32<T>(y[i]);
        if (!(std::abs(g - v) <= 1e-5 * (mag[i] + 1) + 2 * u * std::abs(v) + 1e-6) && bad++ < 3)
            printf("  case %d vec%d [%d,%d,%d,%d]->%d k%dx%d s%dx%d p%dx%d op%dx%d: i%zu got %g want %g\n", ci, vec, p.N, p.H, p.W, p.Cin, p.Cout,
                   p.kh, p.kw, p.sh, p.sw, p.ph, p.pw, oph, opw, i, g, v);
    }
    return bad ? -1 : 1;
}
int main(int argc, char** argv) {
    int cases = argc > 1 ? atoi(argv[1]) : 60, ran = 0, failed = 0;
    for (int i = 0; i < cases; ++i) {
        int r; bool v = i % 2;
        switch ((i / 2) % 3) {
            case 0: r = run<float>(i, v, v ? conv_transpose_vec_f32 : conv_transpose_any_f32, 6e-8); break;
            case 1: r = run<mk::f16>(i, v, v ? conv_transpose_vec_f16 : conv_transpose_any_f16, 4.9e-4); break;
            default: r = run<mk::bf16>(i, v, v ? conv_transpose_vec_bf16 : conv_transpose_any_bf16, 3.9e-3);
        }
        ran += r != 0; failed += r < 0;
    }
    printf("conv_transpose emu: %d run, %d failed\n", ran, failed);
    return failed != 0;
}
