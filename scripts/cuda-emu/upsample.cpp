// kernels/upsample.cu under the CUDA emulation (scripts/cuda-emu/run): random sizes up and down,
// every mode and dtype, against PyTorch's formulas written out here.
#include "upsample.cu"
#include <cstdio>
#include <random>
std::mt19937_64 rng(5);
int rnd(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
double nrm() { return std::normal_distribution<double>(0, 1)(rng); }
template <typename T>
int run(int ci, bool bil, void (*kern)(const mk::UpParams), double u) {
    mk::UpParams p{};
    p.N = rnd(1, 2); p.H = rnd(1, 9); p.W = rnd(1, 9); p.C = rnd(0, 1) ? 8 * rnd(1, 3) : rnd(1, 13);
    p.OH = rnd(1, 25); p.OW = rnd(1, 25); p.mode = rnd(0, 1); p.vec_ok = p.C % 8 == 0;
    auto sc = [&](int in, int out) -> float {
        if (bil && p.mode) return out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.f;
        return (float)in / (float)out;
    };
    p.scale_h = sc(p.H, p.OH); p.scale_w = sc(p.W, p.OW);
    std::vector<T> x((size_t)p.N * p.H * p.W * p.C), y((size_t)p.N * p.OH * p.OW * p.C);
    for (auto& v : x) v = mk::from_f32<T>(nrm());
    for (auto& v : y) v = mk::from_f32<T>(NAN);
    p.x = x.data(); p.y = y.data();
    emu_launch({(unsigned)rnd(1, 5), 1, 1}, {(unsigned)(32 * rnd(1, 4)), 1, 1}, [&] { kern(p); });
    int bad = 0;
    auto X = [&](int n, int h, int w, int c) { return (double)mk::to_f32<T>(x[(((size_t)n * p.H + h) * p.W + w) * p.C + c]); };
    for (int n = 0; n < p.N; ++n) for (int oh = 0; oh < p.OH; ++oh) for (int ow = 0; ow < p.OW; ++ow) for (int c = 0; c < p.C; ++c) {
        double v;
        if (!bil) {
            auto src = [&](int d, float s, int in) { float f = p.mode ? ((float)d + 0.5f) * s : (float)d * s; return std::min((int)std::floor(f), in - 1); };
            v = X(n, src(oh, p.scale_h, p.H), src(ow, p.scale_w, p.W), c);
        } else {
            auto src = [&](int d, float s, int in, int& i0, double& l, int& st) {
                float f = p.mode ? s * (float)d : std::max(s * ((float)d + 0.5f) - 0.5f, 0.f);
                i0 = (int)f; l = f - i0; st = i0 < in - 1;
            };
            int h0, w0, hs, ws; double lh, lw;
            src(oh, p.scale_h, p.H, h0, lh, hs); src(ow, p.scale_w, p.W, w0, lw, ws);
            v = (1 - lh) * ((1 - lw) * X(n, h0, w0, c) + lw * X(n, h0, w0 + ws, c)) + lh * ((1 - lw) * X(n, h0 + hs, w0, c) + lw * X(n, h0 + hs, w0 + ws, c));
        }
        double g = mk::to_f32<T>(y[(((size_t)n * p.OH + oh) * p.OW + ow) * p.C + c]);
        if (!(std::abs(g - v) <= 1e-6 * 4 + 2 * u * std::abs(v)) && bad++ < 3)
            printf("  case %d bil%d mode%d [%d,%d,%d,%d]->%dx%d: n%d oh%d ow%d c%d got %g want %g\n", ci, bil, p.mode, p.N, p.H, p.W, p.C, p.OH, p.OW, n, oh, ow, c, g, v);
    }
    return bad ? -1 : 1;
}
int main(int argc, char** argv) {
    int cases = argc > 1 ? atoi(argv[1]) : 60, ran = 0, failed = 0;
    for (int i = 0; i < cases; ++i) {
        bool b = i % 2; int r;
        switch ((i / 2) % 3) {
            case 0: r = run<float>(i, b, b ? upsample_bilinear_f32 : upsample_nearest_f32, 6e-8); break;
            case 1: r = run<mk::f16>(i, b, b ? upsample_bilinear_f16 : upsample_nearest_f16, 4.9e-4); break;
            default: r = run<mk::bf16>(i, b, b ? upsample_bilinear_bf16 : upsample_nearest_bf16, 3.9e-3);
        }
        ran++; failed += r < 0;
    }
    printf("upsample emu: %d run, %d failed\n", ran, failed);
    return failed != 0;
}
