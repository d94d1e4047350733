// kernels/attention.cu's fused kernels under the CUDA emulation (scripts/cuda-emu/run), with
// ldmatrix (.trans too), mma.sync m16n8k16, cp.async and ex2 emulated (mma.h): every head dim
// (32, 64, 80, 96, 128), 64- and 128-row CTAs, f16/bf16, padded batches (zeros past q_len) and
// packed variable-length batches, q_len != k_len (bottom-right causal), key lengths off the
// 64-key block, empty key sets, causal, ALiBi, an additive f32 bias with -inf entries, against
// an f64 softmax(Q·Kᵀ·scale + bias + alibi)·V.
#define MK_EMU 1
#include "mma.h"
#include "attention.cu"
#include <cstdio>
#include <random>
namespace mk { alignas(16) char smem[1 << 18]; }
std::mt19937_64 rng(1234);
int rnd(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
double nrm() { return std::normal_distribution<double>(0, 1)(rng); }
double worst_all = 0;

template <typename T, int D, int W>
int run(int ci, void (*kern)(const mk::AttnParams), double eps) {
    typedef mk::AttnCfg<D, W> C;
    static const int lens[] = {1, 7, 16, 33, 64, 65, 100, 129};
    const int B = rnd(1, 2), H = rnd(1, 2);
    const bool padded = rnd(0, 1), causal = rnd(0, 2) == 0, alibi = rnd(0, 3) == 0, with_bias = rnd(0, 3) == 0;
    std::vector<int> ql(B), kl(B);
    for (int b = 0; b < B; ++b) {
        ql[b] = rnd(0, 1) ? lens[rnd(0, 7)] : rnd(1, 80);
        kl[b] = rnd(0, 4) == 0 ? ql[b] : (rnd(0, 1) ? lens[rnd(0, 7)] : rnd(0, 80));
    }
    const int max_q = *std::max_element(ql.begin(), ql.end()), max_k = std::max(1, *std::max_element(kl.begin(), kl.end()));
    std::vector<int> seqs(4 * B);
    int qt = 0, kt = 0;
    for (int b = 0; b < B; ++b) {
        seqs[4 * b] = padded ? b * max_q : qt; seqs[4 * b + 1] = ql[b];
        seqs[4 * b + 2] = padded ? b * max_k : kt; seqs[4 * b + 3] = kl[b];
        qt += padded ? max_q : ql[b]; kt += padded ? max_k : kl[b];
    }
    const int qtok = qt, ktok = std::max(kt, 1);
    auto gen = [&](size_t n) {
        std::vector<T> v(n);
        for (auto& e : v) e = mk::from_f32<T>((float)((rnd(0, 49) == 0 ? 8 : 1) * nrm()));
        return v;
    };
    auto q = gen((size_t)qtok * H * D), k = gen((size_t)ktok * H * D), v = gen((size_t)ktok * H * D);
    std::vector<float> bias, slopes(H);
    for (int h = 0; h < H; ++h) slopes[h] = std::pow(2.0, -(h + 1));
    if (with_bias) {
        bias.resize((size_t)B * H * max_q * max_k);
        for (auto& x : bias) x = rnd(0, 9) == 0 ? -INFINITY : (float)nrm();
    }
    std::vector<T> o((size_t)qtok * H * D);
    std::memset(o.data(), 0xff, o.size() * sizeof(T));  // NaN: unwritten shows
    const double scale = 1 / std::sqrt((double)D);
    mk::AttnParams p{};
    p.q = q.data(); p.k = k.data(); p.v = v.data(); p.o = o.data(); p.seqs = seqs.data();
    p.bias = with_bias ? bias.data() : nullptr; p.alibi = alibi ? slopes.data() : nullptr;
    p.q_tok = p.k_tok = p.v_tok = p.o_tok = (long long)H * D;
    p.q_head = p.k_head = p.v_head = p.o_head = D;
    p.bias_b = (long long)H * max_q * max_k; p.bias_h = (long long)max_q * max_k; p.bias_q = max_k;
    p.heads = H; p.max_q = padded ? max_q : 0; p.causal = causal; p.scale_log2 = (float)(scale * M_LOG2E);
    const int rows = std::max(padded ? max_q : 0, max_q);
    mk_emu::launch({(unsigned)((rows + C::BR - 1) / C::BR), (unsigned)H, (unsigned)B}, {(unsigned)C::THREADS, 1, 1},
                   (unsigned char*)mk::smem, C::SMEM, [&] { kern(p); });
    int bad = 0;
    double worst = 0;
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
            for (int i = 0; i < (padded ? max_q : ql[b]); ++i) {
                const int shift = kl[b] - ql[b];
                std::vector<double> s(kl[b], -INFINITY);
                double mx = -INFINITY, mag = 0;
                for (int j = 0; j < kl[b] && i < ql[b]; ++j) {
                    if (causal && j > i + shift) continue;
                    double dot = 0;
                    for (int d = 0; d < D; ++d)
                        dot += (double)mk::to_f32<T>(q[((size_t)(seqs[4 * b] + i) * H + h) * D + d]) *
                               mk::to_f32<T>(k[((size_t)(seqs[4 * b + 2] + j) * H + h) * D + d]);
                    double x = dot * scale;
                    mag = std::max(mag, std::abs(x));
                    if (with_bias) x += bias[(size_t)b * p.bias_b + h * p.bias_h + (size_t)i * max_k + j];
                    if (alibi) x -= slopes[h] * std::abs(i + shift - j);
                    s[j] = x;
                    mx = std::max(mx, x);
                }
                double l = 0;
                for (int j = 0; j < kl[b]; ++j) l += mx == -INFINITY ? 0 : std::exp(s[j] - mx);
                for (int d = 0; d < D; ++d) {
                    double acc = 0, wabs = 0;
                    for (int j = 0; j < kl[b] && mx != -INFINITY; ++j) {
                        const double pj = std::exp(s[j] - mx) / l, vj = mk::to_f32<T>(v[((size_t)(seqs[4 * b + 2] + j) * H + h) * D + d]);
                        acc += pj * vj;
                        wabs += pj * std::abs(vj);
                    }
                    const double got = mk::to_f32<T>(o[((size_t)(seqs[4 * b] + i) * H + h) * D + d]);
                    // P rounded to T before P·V (eps of the weighted |v|), the output's rounding,
                    // f32 scores (|score| up to mag) and sums.
                    const double tol = eps * (wabs + std::abs(acc)) + 2e-6 * (1 + mag) * wabs + 1e-6;
                    const double err = std::abs(got - acc);
                    worst = std::max(worst, err / tol);
                    if (!(err <= tol) && bad++ < 3)
                        printf("attention_d%d_m%d case %d (B=%d H=%d pad=%d causal=%d alibi=%d bias=%d ql=%d kl=%d): b%d h%d i%d d%d got %.7g want %.7g\n",
                               D, 16 * W, ci, B, H, padded, causal, alibi, with_bias, ql[b], kl[b], b, h, i, d, got, acc);
                }
            }
    worst_all = std::max(worst_all, worst);
    return bad ? -1 : 1;
}

int main(int argc, char** argv) {
    int cases = argc > 1 ? atoi(argv[1]) / 4 : 40, ran = 0, failed = 0;
    for (int i = 0; i < cases; ++i) {
        int r = 0;
        switch (i % 10) {
            case 0: r = run<mk::f16, 32, 4>(i, attention_f16_d32_m64, 4.9e-4); break;
            case 1: r = run<mk::bf16, 64, 8>(i, attention_bf16_d64_m128, 3.9e-3); break;
            case 2: r = run<mk::f16, 80, 4>(i, attention_f16_d80_m64, 4.9e-4); break;
            case 3: r = run<mk::bf16, 96, 8>(i, attention_bf16_d96_m128, 3.9e-3); break;
            case 4: r = run<mk::f16, 128, 4>(i, attention_f16_d128_m64, 4.9e-4); break;
            case 5: r = run<mk::bf16, 32, 8>(i, attention_bf16_d32_m128, 3.9e-3); break;
            case 6: r = run<mk::f16, 64, 4>(i, attention_f16_d64_m64, 4.9e-4); break;
            case 7: r = run<mk::bf16, 80, 8>(i, attention_bf16_d80_m128, 3.9e-3); break;
            case 8: r = run<mk::f16, 96, 4>(i, attention_f16_d96_m64, 4.9e-4); break;
            default: r = run<mk::bf16, 128, 8>(i, attention_bf16_d128_m128, 3.9e-3);
        }
        ran += r != 0; failed += r < 0;
    }
    printf("attention emu: %d run, %d failed (largest error %.2f of the tolerance)\n", ran, failed, worst_all);
    return failed != 0;
}
