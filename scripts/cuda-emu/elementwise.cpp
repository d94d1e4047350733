// kernels/elementwise.cu under the CUDA emulation (scripts/cuda-emu/run): the fused
// y = act(x·alpha + bias[col]) + residual for every activation and dtype, vector and scalar
// paths, rows whose length is off the vector width, grid-stride launches with few blocks; and
// the dtype casts (bit-exact round to nearest even), against f64 loops.
#include "elementwise.cu"
#include <cstdio>
#include <random>
std::mt19937_64 rng(404);
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
typedef void (*Elt)(void*, const void*, const void*, const void*, float, long long, long long, int);

template <typename T>
int run(int ci, int act, void (*kern)(T*, const T*, const T*, const T*, float, long long, long long, int), double eps) {
    static const int ns[] = {1, 7, 8, 16, 33, 257, 1025};
    const long long n = rnd(0, 1) ? ns[rnd(0, 6)] : rnd(1, 300), rows = rnd(1, 9), total = rows * n;
    const bool bias = rnd(0, 1), res = rnd(0, 1);
    const float alpha = rnd(0, 1) ? 1.f : 0.6f;
    auto gen = [&](size_t len) {
        std::vector<T> v(len);
        for (auto& e : v) e = mk::from_f32<T>((float)((rnd(0, 49) == 0 ? 20 : 2) * nrm()));
        return v;
    };
    auto x = gen(total), b = gen(n), r = gen(total);
    const int vec_ok = n % 8 == 0 && rnd(0, 3) != 0;
    std::vector<T> y(total);
    std::memset(y.data(), 0xff, y.size() * sizeof(T));
    emu_launch({(unsigned)rnd(1, 3), 1, 1}, {(unsigned)(32 * rnd(1, 8)), 1, 1}, [&] {
        kern(y.data(), x.data(), bias ? b.data() : nullptr, res ? r.data() : nullptr, alpha, total, n, vec_ok);
    });
    int bad = 0;
    for (long long i = 0; i < total; ++i) {
        const double pre = (double)mk::to_f32<T>(x[i]) * alpha + (bias ? (double)mk::to_f32<T>(b[i % n]) : 0.0);
        const double a = actd(act, pre);
        const double want = a + (res ? (double)mk::to_f32<T>(r[i]) : 0.0);
        const double got = mk::to_f32<T>(y[i]);
        // f32 arithmetic (a few ulps of the operands; the tanh form is ~1e-7 absolute), then T.
        const double tol = 1e-6 * (std::abs(pre) + std::abs(a) + std::abs(want)) + 3e-7 + eps * std::abs(want);
        if (!(std::abs(got - want) <= tol) && bad++ < 3)
            printf("eltwise case %d (act %d n=%lld vec=%d bias=%d res=%d) [%lld]: got %.9g want %.9g\n", ci, act, n,
                   vec_ok, bias, res, i, got, want);
    }
    return bad ? -1 : 1;
}

template <typename S, typename D>
int run_cast(int ci, void (*kern)(D*, const S*, long long, int)) {
    const long long total = rnd(0, 1) ? 8 * rnd(1, 40) : rnd(1, 333);
    std::vector<S> x(total);
    for (auto& e : x) e = mk::from_f32<S>((float)(rnd(0, 9) == 0 ? 1e4 * nrm() : (rnd(0, 9) == 0 ? 1e-6 * nrm() : nrm())));
    std::vector<D> y(total);
    std::memset(y.data(), 0xff, y.size() * sizeof(D));
    const int vec_ok = rnd(0, 3) != 0;
    emu_launch({(unsigned)rnd(1, 3), 1, 1}, {(unsigned)(32 * rnd(1, 4)), 1, 1}, [&] { kern(y.data(), x.data(), total, vec_ok); });
    int bad = 0;
    for (long long i = 0; i < total; ++i) {
        // Every source value is exact in f32, so one round to nearest even from f32 is the rule.
        const D want = mk::from_f32<D>((float)(double)mk::to_f32<S>(x[i]));
        if (std::memcmp(&want, &y[i], sizeof(D)) != 0 && bad++ < 3)
            printf("cast case %d [%lld]: got %.9g want %.9g\n", ci, i, (double)mk::to_f32<D>(y[i]), (double)mk::to_f32<D>(want));
    }
    return bad ? -1 : 1;
}

int main(int argc, char** argv) {
    int cases = argc > 1 ? atoi(argv[1]) : 100, ran = 0, failed = 0;
    void (*f32k[8])(float*, const float*, const float*, const float*, float, long long, long long, int) = {
        eltwise_identity_f32, eltwise_relu_f32, eltwise_relu6_f32, eltwise_gelu_erf_f32,
        eltwise_gelu_tanh_f32, eltwise_silu_f32, eltwise_sigmoid_f32, eltwise_tanh_f32};
    void (*f16k[8])(mk::f16*, const mk::f16*, const mk::f16*, const mk::f16*, float, long long, long long, int) = {
        eltwise_identity_f16, eltwise_relu_f16, eltwise_relu6_f16, eltwise_gelu_erf_f16,
        eltwise_gelu_tanh_f16, eltwise_silu_f16, eltwise_sigmoid_f16, eltwise_tanh_f16};
    void (*bf16k[8])(mk::bf16*, const mk::bf16*, const mk::bf16*, const mk::bf16*, float, long long, long long, int) = {
        eltwise_identity_bf16, eltwise_relu_bf16, eltwise_relu6_bf16, eltwise_gelu_erf_bf16,
        eltwise_gelu_tanh_bf16, eltwise_silu_bf16, eltwise_sigmoid_bf16, eltwise_tanh_bf16};
    for (int i = 0; i < cases; ++i) {
        int r = 0;
        const int act = (i / 3) % 8;
        switch (i % 5) {
            case 0: r = run<float>(i, act, f32k[act], 6e-8); break;
            case 1: r = run<mk::f16>(i, act, f16k[act], 4.9e-4); break;
            case 2: r = run<mk::bf16>(i, act, bf16k[act], 3.9e-3); break;
            case 3:
                switch ((i / 5) % 3) {
                    case 0: r = run_cast<float, mk::f16>(i, cast_f32_f16); break;
                    case 1: r = run_cast<float, mk::bf16>(i, cast_f32_bf16); break;
                    default: r = run_cast<mk::f16, mk::bf16>(i, cast_f16_bf16);
                }
                break;
            default:
                switch ((i / 5) % 3) {
                    case 0: r = run_cast<mk::f16, float>(i, cast_f16_f32); break;
                    case 1: r = run_cast<mk::bf16, float>(i, cast_bf16_f32); break;
                    default: r = run_cast<mk::bf16, mk::f16>(i, cast_bf16_f16);
                }
        }
        ran += r != 0; failed += r < 0;
    }
    printf("elementwise emu: %d run, %d failed\n", ran, failed);
    return failed != 0;
}
