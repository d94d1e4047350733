// kernels/depthwise.cu under the CUDA emulation (scripts/cuda-emu/run): random NHWC shapes, every
// variant and dtype, random tile plans within the kernel's contract (DwParams), against f64 loops.
#include "depthwise.cu"
#include <cstdio>
#include <random>
#include <string>

template <typename T> float tof(T v) { return mk::to_f32<T>(v); }
template <typename T> T fromf(float v) { return mk::from_f32<T>(v); }
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
std::mt19937_64 rng(12345);
int rnd(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
double nrm() { return std::normal_distribution<double>(0, 1)(rng); }

// (out, pad_before) as conv_geom::axis
bool axis(int in, int k, int s, int d, int before, int after, bool same, int& out, int& pb) {
    int span = d * (k - 1) + 1;
    if (same) { out = (in + s - 1) / s; int total = std::max((out - 1) * s + span - in, 0); pb = total / 2; return out > 0; }
    int padded = in + before + after; if (padded < span) return false;
    out = (padded - span) / s + 1; pb = before; return true;
}

template <typename T>
int run_case(int ci, const char* kname, void (*kern)(const mk::DwParams), int K, int S, int R) {
    int N = rnd(1, 2), H = rnd(1, 3) == 1 ? rnd(1, 3) : rnd(1, 19), W = rnd(1, 3) == 1 ? rnd(1, 3) : rnd(1, 23);
    int C = rnd(0, 1) ? 8 * rnd(1, 5) : rnd(1, 37);
    int kh = K, kw = K, sh = S, sw = S, dh = 1, dw = 1;
    if (K == 0) { kh = rnd(1, 6); kw = rnd(1, 6); sh = rnd(1, 3); sw = rnd(1, 3); dh = rnd(1, 3); dw = rnd(1, 3); }
    int pm = rnd(0, 2), OH, OW, pt, pl;
    int pb[4] = {rnd(0, 3), rnd(0, 3), rnd(0, 3), rnd(0, 3)};
    if (pm == 2) for (int& v : pb) v = 0;
    if (!axis(H, kh, sh, dh, pb[0], pb[1], pm == 1, OH, pt) || !axis(W, kw, sw, dw, pb[2], pb[3], pm == 1, OW, pl)) return 0;
    mk::DwParams p{};
    p.N = N; p.H = H; p.W = W; p.C = C; p.OH = OH; p.OW = OW; p.kh = kh; p.kw = kw; p.sh = sh; p.sw = sw;
    p.dh = dh; p.dw = dw; p.pad_top = pt; p.pad_left = pl; p.act = rnd(0, 6);
    p.vec_ok = C % 8 == 0;
    p.ncv = 1 << rnd(0, 2); p.th = rnd(1, 8); p.twg = rnd(1, 5);
    while (p.ncv * p.th * p.twg > 256) p.th = 1;
    int tw = p.twg * R;
    p.tiles_w = (OW + tw - 1) / tw; int tiles_h = (OH + p.th - 1) / p.th;
    p.in_rows = (p.th - 1) * sh + (kh - 1) * dh + 1; p.in_cols = (tw - 1) * sw + (kw - 1) * dw + 1;
    int cb = p.ncv * 8;
    p.row_pitch = p.in_cols * cb + 8 * rnd(0, 3);
    p.w_off = ((p.in_rows * p.row_pitch * (int)sizeof(T)) + 15) / 16 * 16;
    size_t smem = p.w_off + kh * kw * cb * 4;
    if (smem > (1 << 16)) return 0;
    std::vector<T> x((size_t)N * H * W * C), w((size_t)kh * kw * C), res((size_t)N * OH * OW * C), y(res.size());
    std::vector<float> sc(C), bi(C);
    for (auto& v : x) v = fromf<T>(rnd(0, 49) == 0 ? 20 * nrm() : nrm());
    for (auto& v : w) v = fromf<T>(nrm() * 0.5);
    for (auto& v : res) v = fromf<T>(nrm());
    for (auto& v : sc) v = 0.5 + std::abs(nrm());
    for (auto& v : bi) v = nrm();
    for (auto& v : y) v = fromf<T>(NAN);
    bool use_sc = rnd(0, 1), use_bi = rnd(0, 1), use_res = rnd(0, 1);
    p.x = x.data(); p.w = w.data(); p.scale = use_sc ? sc.data() : nullptr; p.bias = use_bi ? bi.data() : nullptr;
    p.residual = use_res ? res.data() : nullptr; p.y = y.data();
    emu_launch({(unsigned)(p.tiles_w * tiles_h), (unsigned)((C + cb - 1) / cb), (unsigned)N}, {(unsigned)(p.ncv * p.th * p.twg), 1, 1},
               [&] { kern(p); });
    double u = sizeof(T) == 4 ? 6e-8 : sizeof(T) == 2 && std::string(kname).find("bf16") == std::string::npos ? 4.9e-4 : 3.9e-3;
    int bad = 0;
    for (int n = 0; n < N; ++n) for (int oh = 0; oh < OH; ++oh) for (int ow = 0; ow < OW; ++ow) for (int c = 0; c < C; ++c) {
        double s = 0, sa = 0;
        for (int a = 0; a < kh; ++a) for (int b = 0; b < kw; ++b) {
            int ih = oh * sh + a * dh - pt, iw = ow * sw + b * dw - pl;
            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
            double t = tof<T>(x[(((size_t)n * H + ih) * W + iw) * C + c]) * tof<T>(w[((size_t)a * kw + b) * C + c]);
            s += t; sa += std::abs(t);
        }
        double scv = use_sc ? sc[c] : 1, v = actd(p.act, s * scv + (use_bi ? bi[c] : 0));
        size_t o = (((size_t)n * OH + oh) * OW + ow) * C + c;
        if (use_res) v += tof<T>(res[o]);
        double g = tof<T>(y[o]);
        double tol = 1e-5 * (sa * scv + 1) + 2 * u * std::abs(v) + 1e-6;
        if (!(std::abs(g - v) <= tol)) {
            if (bad++ < 5) printf("  case %d %s [%d,%d,%d,%d] k%dx%d s%dx%d d%dx%d pad %d/%d ncv %d th %d twg %d: at n%d oh%d ow%d c%d got %g want %g\n",
                                  ci, kname, N, H, W, C, kh, kw, sh, sw, dh, dw, pt, pl, p.ncv, p.th, p.twg, n, oh, ow, c, g, v);
        }
    }
    return bad ? -1 : 1;
}

int main(int argc, char** argv) {
    int cases = argc > 1 ? atoi(argv[1]) : 40, ran = 0, failed = 0;
    struct V { const char* name; int K, S, R; void (*f32)(const mk::DwParams); void (*f16)(const mk::DwParams); void (*bf16)(const mk::DwParams); };
    V vs[] = {{"k3s1", 3, 1, 4, depthwise_k3s1_f32, depthwise_k3s1_f16, depthwise_k3s1_bf16},
              {"k3s2", 3, 2, 2, depthwise_k3s2_f32, depthwise_k3s2_f16, depthwise_k3s2_bf16},
              {"k5s1", 5, 1, 4, depthwise_k5s1_f32, depthwise_k5s1_f16, depthwise_k5s1_bf16},
              {"k5s2", 5, 2, 2, depthwise_k5s2_f32, depthwise_k5s2_f16, depthwise_k5s2_bf16},
              {"any", 0, 1, 1, depthwise_any_f32, depthwise_any_f16, depthwise_any_bf16}};
    for (int i = 0; i < cases; ++i) {
        V& v = vs[i % 5];
        int dt = (i / 5) % 3, r;
        std::string nm = std::string(v.name) + (dt == 0 ? "_f32" : dt == 1 ? "_f16" : "_bf16");
        if (dt == 0) r = run_case<float>(i, nm.c_str(), v.f32, v.K, v.S, v.R);
        else if (dt == 1) r = run_case<mk::f16>(i, nm.c_str(), v.f16, v.K, v.S, v.R);
        else r = run_case<mk::bf16>(i, nm.c_str(), v.bf16, v.K, v.S, v.R);
        ran += r != 0; failed += r < 0;
    }
    printf("depthwise emu: %d cases run, %d failed\n", ran, failed);
    return failed != 0;
}
