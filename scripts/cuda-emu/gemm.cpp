// kernels/gemm.cu's tensor-core kernels under the CUDA emulation (scripts/cuda-emu/run), with
// ldmatrix / mma.sync / cp.async emulated from the PTX ISA's fragment layouts (mma.h): every
// tile config (s/m/l), f16/bf16 inputs, same-dtype and f32 outputs, alpha, bias, every
// activation, residual, strided batches, M/N tails and K spanning several 64-byte k-tiles with
// a tail, against f64 loops. (gemm_f32_f32, the SIMT path, is not run here: its static shared
// arrays need warp.h's __shared__, which clashes with the tensor-core kernels' extern one.)
#define MK_EMU 1
#include "mma.h"
#include "gemm.cu"
#include <cstdio>
#include <random>
namespace mk { alignas(16) char smem[1 << 18]; }
std::mt19937_64 rng(31);
int rnd(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
double nrm() { return std::normal_distribution<double>(0, 1)(rng); }
double actd(int a, double x) {
    switch (a) {
        case 1: return std::max(x, 0.0);
        case 2: return std::min(std::max(x, 0.0), 6.0);
        case 3: return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
        case 4: return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
        case 5: return x / (1 + std::exp(-x));
        case 6: return 1 / (1 + std::exp(-x));
        case 7: return std::tanh(x);
        default: return x;
    }
}
double worst_all = 0;

template <typename T, typename O, typename Cfg>
int run(int ci, void (*kern)(const mk::GemmParams), const char* name, double eps_in, double eps_out) {
    const int pick[] = {1, 7, 16, 33, 64, 100, 130};
    const int M = rnd(0, 1) ? pick[rnd(0, 6)] : rnd(1, 140), N = rnd(0, 1) ? pick[rnd(0, 6)] : rnd(1, 140);
    const int K = 8 * rnd(1, 24);  // K % 8 == 0 (16-byte rows), 1 to 7 k-tiles of 32 elements
    const int batch = rnd(0, 3) == 0 ? 2 : 1;
    const bool bias = rnd(0, 1), resid = rnd(0, 2) == 0;
    const int act = rnd(0, 7);
    const float alpha = rnd(0, 1) ? 1.f : 0.37f;
    auto gen = [&](size_t n, double s) {
        std::vector<T> v(n);
        for (auto& e : v) e = mk::from_f32<T>((float)((rnd(0, 49) == 0 ? 20 : 1) * s * nrm()));
        return v;
    };
    auto x = gen((size_t)batch * M * K, 1.0), w = gen((size_t)batch * N * K, 1.0 / std::sqrt(K)), b = gen(N, 0.5);
    std::vector<O> r((size_t)batch * M * N), y(r.size());
    for (auto& e : r) e = mk::from_f32<O>((float)nrm());
    std::memset(y.data(), 0xff, y.size() * sizeof(O));  // NaN: unwritten shows
    mk::GemmParams p{};
    p.x = x.data(); p.w = w.data(); p.y = y.data(); p.bias = bias ? b.data() : nullptr;
    p.residual = resid ? r.data() : nullptr;
    p.stride_x = (long long)M * K; p.stride_w = (long long)N * K; p.stride_y = p.stride_r = (long long)M * N;
    p.M = M; p.N = N; p.K = K; p.alpha = alpha; p.act = act;
    const unsigned gx = (N + Cfg::BN - 1) / Cfg::BN, gy = (M + Cfg::BM - 1) / Cfg::BM;
    mk_emu::launch({gx, gy, (unsigned)batch}, {(unsigned)Cfg::THREADS, 1, 1}, (unsigned char*)mk::smem, Cfg::SMEM,
                   [&] { kern(p); });
    int bad = 0;
    double worst = 0;
    for (int z = 0; z < batch; ++z)
        for (int i = 0; i < M; ++i)
            for (int j = 0; j < N; ++j) {
                double acc = 0, mag = 0;
                for (int k = 0; k < K; ++k) {
                    const double a = mk::to_f32<T>(x[((size_t)z * M + i) * K + k]) * mk::to_f32<T>(w[((size_t)z * N + j) * K + k]);
                    acc += a; mag += std::abs(a);
                }
                double v = alpha * acc + (bias ? (double)mk::to_f32<T>(b[j]) : 0.0);
                const double pre = v;
                v = actd(act, v);
                const size_t o = ((size_t)z * M + i) * N + j;
                if (resid) v += mk::to_f32<O>(r[o]);
                const double got = mk::to_f32<O>(y[o]);
                // f32 accumulation over K products (exact), alpha/bias/activation in f32
                // (slope ≤ ~1.1), residual, then one rounding to O.
                const double f32err = 6e-8 * (K + 8) * (alpha * mag + std::abs(pre) + 1) + 1e-6 * std::abs(pre);
                const double tol = 1.2 * f32err + eps_out * std::abs(v) + 1e-6;
                const double err = std::abs(got - v);
                worst = std::max(worst, err / tol);
                if (!(err <= tol) && bad++ < 3)
                    printf("%s case %d (M=%d N=%d K=%d b=%d act=%d bias=%d res=%d): [%d,%d,%d] got %.8g want %.8g\n", name, ci,
                           M, N, K, batch, act, bias, resid, z, i, j, got, v);
            }
    (void)eps_in;
    worst_all = std::max(worst_all, worst);
    return bad ? -1 : 1;
}

int main(int argc, char** argv) {
    int cases = argc > 1 ? atoi(argv[1]) / 5 : 40, ran = 0, failed = 0;
    for (int i = 0; i < cases; ++i) {
        int r = 0;
        switch (i % 12) {
            case 0: r = run<mk::f16, mk::f16, mk::CfgS>(i, gemm_f16_f16_s, "gemm_f16_f16_s", 4.9e-4, 4.9e-4); break;
            case 1: r = run<mk::f16, float, mk::CfgM>(i, gemm_f16_f32_m, "gemm_f16_f32_m", 4.9e-4, 0); break;
            case 2: r = run<mk::bf16, mk::bf16, mk::CfgL>(i, gemm_bf16_bf16_l, "gemm_bf16_bf16_l", 3.9e-3, 3.9e-3); break;
            case 3: r = run<mk::bf16, float, mk::CfgS>(i, gemm_bf16_f32_s, "gemm_bf16_f32_s", 3.9e-3, 0); break;
            case 4: r = run<mk::f16, mk::f16, mk::CfgM>(i, gemm_f16_f16_m, "gemm_f16_f16_m", 4.9e-4, 4.9e-4); break;
            case 5: r = run<mk::f16, float, mk::CfgL>(i, gemm_f16_f32_l, "gemm_f16_f32_l", 4.9e-4, 0); break;
            case 6: r = run<mk::bf16, mk::bf16, mk::CfgS>(i, gemm_bf16_bf16_s, "gemm_bf16_bf16_s", 3.9e-3, 3.9e-3); break;
            case 7: r = run<mk::bf16, float, mk::CfgM>(i, gemm_bf16_f32_m, "gemm_bf16_f32_m", 3.9e-3, 0); break;
            case 8: r = run<mk::f16, mk::f16, mk::CfgL>(i, gemm_f16_f16_l, "gemm_f16_f16_l", 4.9e-4, 4.9e-4); break;
            case 9: r = run<mk::f16, float, mk::CfgS>(i, gemm_f16_f32_s, "gemm_f16_f32_s", 4.9e-4, 0); break;
            case 10: r = run<mk::bf16, mk::bf16, mk::CfgM>(i, gemm_bf16_bf16_m, "gemm_bf16_bf16_m", 3.9e-3, 3.9e-3); break;
            default: r = run<mk::bf16, float, mk::CfgL>(i, gemm_bf16_f32_l, "gemm_bf16_f32_l", 3.9e-3, 0);
        }
        ran += r != 0; failed += r < 0;
    }
    printf("gemm emu: %d run, %d failed (largest error %.2f of the tolerance)\n", ran, failed, worst_all);
    return failed != 0;
}
