#!/usr/bin/env python3
"""PyTorch peer timings for the medkern benches, measured on the same GPU in the same run.

Prints one JSON object: {"device": ..., "ceilings": {...}, "results": {bench_id: {"ms": median,
"work": flops_or_bytes, "unit": "flop" | "byte"}}}. Bench ids match the criterion ids of
benches/*.rs, so scripts/bench_report.py can put each medkern figure next to its peer.
PyTorch pays separate passes for what medkern fuses (bias+GELU after a GEMM, the dequantise
after torch._int_mm): that is the comparison a user faces. Attention peers are
torch.nn.functional.scaled_dot_product_attention (attention_peers); conv peers are cuDNN
conv2d in channels_last with PyTorch's separate activation / residual ops (conv_peers). A result
may carry "bytes" next to a FLOP "work": bytes moved, for a second (GB/s) rate.

"checks" holds correctness checks against transformers (not timings): "mobilebert"
(mobilebert_check) compares the bundle's `medkern embed` on a MobileBERT folder with
transformers' MobileBertForSequenceClassification on the same weights.
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F


def timed(fn, iters=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


M64 = (1 << 64) - 1


class SeedRng:
    """tests/common/mod.rs SeedRng (SplitMix64), bit for bit, so ragged lengths match the benches."""

    def __init__(self, seed):
        self.s = (seed ^ 0x9E3779B97F4A7C15) & M64

    def next_u64(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n):
        return self.next_u64() % max(n, 1)


def ragged_lens(batch, seq):
    """benches/attention.rs ragged_lens: uniform integers in [seq/4, seq], SeedRng(1000*seq + batch)."""
    rng = SeedRng(1000 * seq + batch)
    lo = seq // 4
    return [lo + rng.below(seq - lo + 1) for _ in range(batch)]  # benches/common.rs ragged_lens


def attention_peers(dev, put):
    """torch SDPA at the ids of benches/attention.rs (see its doc for the shapes and the work).

    Layout: medkern reads token-major [batch*seq, (3,) heads, d] (a QKV projection output); SDPA
    wants [batch, heads, seq, d]. The tensors are made in SDPA's layout outside the timing, as a
    user already holding that layout would have them; a BERT implementation going from the
    projection output to SDPA pays a transpose (copy) of q, k, v and of the output, not counted
    here. SDPA has no varlen path: the packed ids get the same key-padding-masked SDPA on the
    padded batch (what a PyTorch user runs), as do the padded and unfused ids. The additive mask
    [batch, 1, 1, seq] (0 or -inf, q's dtype; SDPA picks a backend that takes a mask, e.g.
    memory-efficient, depending on the version) is built once outside the timing, as a model reuses it in every layer. Work = 4*heads*d*sum of
    q_len*k_len over the real lengths (halved when causal), the benches' FLOP count. Each shape
    runs in its own try: a failure (OOM, a backend limit) records nothing for it and goes on.
    """

    def bert(bsz, seq, heads=12, d=64):
        lens = ragged_lens(bsz, seq)
        work = 4 * heads * d * sum(n * n for n in lens)
        q, k, v = (torch.randn(bsz, heads, seq, d, device=dev, dtype=torch.float16) for _ in range(3))
        mask = torch.zeros(bsz, 1, 1, seq, device=dev, dtype=torch.float16)
        for i, n in enumerate(lens):
            mask[i, ..., n:] = float("-inf")
        ms = timed(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        for kind in ["packed", "padded", "unfused"]:
            put(f"attention/{kind}/f16/b{bsz}h{heads}d{d}s{seq}", ms, work, "flop")

    def long_seq(seq, d, dn, causal):
        heads, bsz = 2048 // d, 16384 // seq
        q, k, v = (torch.randn(bsz, heads, seq, d, device=dev, dtype=dt_of[dn]) for _ in range(3))
        work = 4 * heads * d * bsz * seq * seq // (2 if causal else 1)
        ms = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
        put(f"attention/{'causal' if causal else 'full'}/{dn}/b{bsz}h{heads}d{d}s{seq}", ms, work, "flop")

    dt_of = {"f16": torch.float16, "bf16": torch.bfloat16}
    cases = [(bert, (bsz, seq)) for seq in [128, 384, 512] for bsz in [1, 8, 32, 128, 256]]
    # Long sequences, no padding: batch*seq = 16k, heads*d = 2048; no mask (flash backend, or
    # whatever SDPA prefers on this version), is_causal for the causal ids (q_len == k_len, so
    # its top-left alignment equals medkern's bottom-right one).
    for d in [64, 128]:
        for seq in [1024, 2048, 4096, 8192, 16384]:
            cases += [(long_seq, (seq, d, "f16", False)), (long_seq, (seq, d, "f16", True))]
            if d == 128 and seq == 4096:
                cases.append((long_seq, (seq, d, "bf16", False)))
    for fn, args in cases:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - record nothing for this shape, keep going
            print(f"peer_bench: attention {fn.__name__}{args}: {e}", file=sys.stderr)
        torch.cuda.empty_cache()


def depthwise_peers(dev, put):
    """cuDNN depthwise conv at the ids of benches/depthwise.rs: EfficientNet-B0's depthwise layers,
    f16 channels_last, BatchNorm folded into the weights and bias, then SiLU (two kernels; medkern
    fuses them). Work = (N*H*W*C + N*OH*OW*C + k*k*C) * 2 bytes, as the bench counts it."""
    b0 = [(112, 32, 3, 1), (112, 96, 3, 2), (56, 144, 3, 1), (56, 144, 5, 2), (28, 240, 5, 1), (28, 240, 3, 2),
          (14, 480, 3, 1), (14, 480, 5, 1), (14, 672, 5, 1), (14, 672, 5, 2), (7, 1152, 5, 1), (7, 1152, 3, 1)]
    for (hw, c, k, s) in b0:
        for bsz in [1, 32]:
            for dn in (["f16", "bf16", "f32"] if (hw, c, bsz) == (112, 96, 32) else ["f16"]):
                try:
                    dt = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}[dn]
                    x = torch.randn(bsz, c, hw, hw, device=dev, dtype=dt).to(memory_format=torch.channels_last)
                    w = (torch.randn(c, 1, k, k, device=dev, dtype=dt) * 0.3).to(memory_format=torch.channels_last)
                    b = torch.randn(c, device=dev, dtype=dt) * 0.1
                    y = F.conv2d(x, w, b, s, k // 2, 1, c)
                    work = (x.numel() + y.numel() + w.numel()) * x.element_size()
                    put(f"depthwise/bn_silu/{dn}/b{bsz}/{hw}x{hw}x{c}k{k}s{s}",
                        timed(lambda: F.silu(F.conv2d(x, w, b, s, k // 2, 1, c))), work, "byte")
                except Exception as e:  # noqa: BLE001 - record nothing for this shape, keep going
                    print(f"peer_bench: depthwise {hw}x{hw}x{c}k{k}s{s} b{bsz} {dn}: {e}", file=sys.stderr)


# ResNet-18 at 224: (input side, c, oc, k, stride, act, residual), benches/conv.rs RESNET18.
RESNET18_CONVS = [(224, 3, 64, 7, 2, "relu", False), (56, 64, 64, 3, 1, "relu", True),
                  (56, 64, 128, 3, 2, "relu", False), (56, 64, 128, 1, 2, None, False),
                  (28, 128, 128, 3, 1, "relu", True), (28, 128, 256, 3, 2, "relu", False),
                  (28, 128, 256, 1, 2, None, False), (14, 256, 256, 3, 1, "relu", True),
                  (14, 256, 512, 3, 2, "relu", False), (14, 256, 512, 1, 2, None, False),
                  (7, 512, 512, 3, 1, "relu", True)]
# EfficientNet-B0 MBConv stages: (expand ratio, depthwise kernel, stride, out channels, repeats).
B0_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
             (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


def efficientnet_convs(res, width, depth):
    """benches/conv.rs efficientnet: the distinct dense convs as (side, c, oc, k, stride, act,
    residual, same), in network order: TF-SAME stem, 1x1 expand / project per block, 1x1 head."""
    def filters(f):
        f *= width
        n = max(8, int(f + 4) // 8 * 8)
        return n + 8 if n < 0.9 * f else n

    layers = [(res, 3, filters(32), 3, 2, "silu", False, True)]
    hw, cin = -(-res // 2), filters(32)
    for expand, _k, stride, out, repeats in B0_STAGES:
        cout = filters(out)
        for i in range(math.ceil(depth * repeats)):
            s = stride if i == 0 else 1
            mid = cin * expand
            if expand != 1:
                layers.append((hw, cin, mid, 1, 1, "silu", False, False))
            hw = -(-hw // s)
            layers.append((hw, mid, cout, 1, 1, None, s == 1 and cin == cout, False))
            cin = cout
    layers.append((hw, cin, filters(1280), 1, 1, "silu", False, False))
    seen, out = set(), []
    for l in layers:
        key = l[:5]
        if key not in seen:
            seen.add(key)
            out.append(l)
    return out


def same_pad(size, k, s):
    """TF SAME padding of one axis: (before, after), the extra one after."""
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def conv_peers(dev, put):
    """cuDNN conv2d at the ids of benches/conv.rs: ResNet-18 at 224 and EfficientNet-B0 at 224
    (batch 1, 32, 128) and B7 at 600 (batch 1, 32), f16, channels_last, cudnn.benchmark on (each
    shape is autotuned by the untimed first call, then timed() warms up again).

    BatchNorm is folded into the conv weight and bias (what a deployment does; fair to cuDNN,
    which applies the bias in its conv kernel). What PyTorch pays separately where medkern fuses
    it into the conv's epilogue: the activation (an in-place relu_/silu pass over the output,
    as torchvision's inplace ReLU/SiLU) and the residual add (an in-place add_ pass reading the
    identity, before the ReLU as in torchvision's BasicBlock; after the project conv as in
    MBConv); each is one extra read+write of the output in eager mode (torch.compile could fuse
    them). The EfficientNet stem uses TF SAME padding: F.pad (asymmetric, the extra row/column
    at the bottom/right) then conv2d with no padding, as timm's Conv2dSame does: one more pass
    over the input. Work = FLOPs 2*N*OH*OW*OC*KH*KW*C, and "bytes" = input + weight + output
    (+ residual), f16, read or written once (bench_report.py shows TFLOP/s and GB/s). Each
    shape runs in its own try: a failure (OOM) records nothing for it and goes on."""
    torch.backends.cudnn.benchmark = True
    nets = [("resnet18", [l + (False,) for l in RESNET18_CONVS], [1, 32, 128]),
            ("effnet_b0", efficientnet_convs(224, 1.0, 1.0), [1, 32, 128]),
            ("effnet_b7", efficientnet_convs(600, 2.0, 3.1), [1, 32])]
    acts = {None: lambda y: y, "relu": F.relu_, "silu": lambda y: F.silu(y, inplace=True)}
    cl = torch.channels_last
    for net, layers, batches in nets:
        for (hw, c, oc, k, s, act, residual, same) in layers:
            for bsz in batches:
                bid = f"conv/{net}/{k}x{k}s{s}_{c}-{oc}_{hw}/f16/b{bsz}"
                try:
                    x = torch.randn(bsz, c, hw, hw, device=dev, dtype=torch.float16).to(memory_format=cl)
                    w = (torch.randn(oc, c, k, k, device=dev, dtype=torch.float16)
                         * (2 / (k * k * c)) ** 0.5).to(memory_format=cl)
                    b = torch.randn(oc, device=dev, dtype=torch.float16) * 0.1
                    f = acts[act]
                    if same:
                        ph, pw = same_pad(hw, k, s), same_pad(hw, k, s)
                        pads = (pw[0], pw[1], ph[0], ph[1])
                        fn = lambda: f(F.conv2d(F.pad(x, pads), w, b, s))  # noqa: E731
                    else:
                        fn = lambda: f(F.conv2d(x, w, b, s, k // 2))  # noqa: E731
                    y = fn()
                    r = torch.randn_like(y) if residual else None
                    if residual:
                        fn = lambda: f(F.conv2d(x, w, b, s, k // 2).add_(r))  # noqa: E731
                        fn()
                    flops = 2 * y.numel() * k * k * c
                    nbytes = (x.numel() + w.numel() + y.numel() * (2 if residual else 1)) * 2
                    put(bid, timed(fn), flops, "flop", nbytes)
                    del x, w, b, y, r
                except Exception as e:  # noqa: BLE001 - record nothing for this shape, keep going
                    print(f"peer_bench: {bid}: {e}", file=sys.stderr)
                torch.cuda.empty_cache()


def decoder_peers(dev, put):
    """F.conv_transpose2d and F.interpolate at the ids of benches/conv_transpose.rs and
    benches/upsample.rs: the sepsis autoencoder decoder (assumed 12x12x8 -> 24x24x32 -> 48x48x16
    -> 96x96x3, k3 s2 p1 output_padding 1, ReLU, ReLU, sigmoid; PyTorch weight [C_in, C_out, 3, 3]),
    channels_last. Work = bytes: input + output (+ weights for the transposed convs)."""
    dts = {"f16": torch.float16, "f32": torch.float32}
    for (hw, ci, co, act) in [(12, 8, 32, "relu"), (24, 32, 16, "relu"), (48, 16, 3, "sigmoid")]:
        for bsz in [1, 64]:
            for dn, dt in dts.items():
                try:
                    x = torch.randn(bsz, ci, hw, hw, device=dev, dtype=dt).to(memory_format=torch.channels_last)
                    w = torch.randn(ci, co, 3, 3, device=dev, dtype=dt) * 0.2
                    b = torch.full((co,), 0.05, device=dev, dtype=dt)
                    f = torch.relu if act == "relu" else torch.sigmoid
                    y = F.conv_transpose2d(x, w, b, 2, 1, 1)
                    work = (x.numel() + y.numel() + w.numel()) * x.element_size()
                    put(f"conv_transpose/{act}/{dn}/b{bsz}/{hw}x{hw}x{ci}-{co}k3s2",
                        timed(lambda: f(F.conv_transpose2d(x, w, b, 2, 1, 1))), work, "byte")
                except Exception as e:  # noqa: BLE001 - record nothing for this shape, keep going
                    print(f"peer_bench: conv_transpose {hw}x{hw}x{ci}-{co} b{bsz} {dn}: {e}", file=sys.stderr)
    shapes = [(1, 12, 8, 24), (1, 24, 32, 48), (1, 48, 16, 96), (64, 12, 8, 24), (64, 24, 32, 48), (64, 48, 16, 96),
              (32, 28, 256, 56), (8, 512, 3, 224), (1, 512, 3, 224)]
    for (bsz, hw, c, out) in shapes:
        modes = [("bilinear", "bilinear")] if out < hw else [("nearest", "nearest"), ("bilinear", "bilinear")]
        for dn, dt in dts.items():
            for name, mode in modes:
                try:
                    x = torch.randn(bsz, c, hw, hw, device=dev, dtype=dt).to(memory_format=torch.channels_last)
                    kw = {} if mode == "nearest" else {"align_corners": False}
                    work = (x.numel() + bsz * c * out * out) * x.element_size()
                    put(f"upsample/{name}/{dn}/b{bsz}/{hw}x{hw}x{c}-{out}",
                        timed(lambda: F.interpolate(x, size=(out, out), mode=mode, **kw)), work, "byte")
                except Exception as e:  # noqa: BLE001 - record nothing for this shape, keep going
                    print(f"peer_bench: upsample {name} {hw}->{out} b{bsz} {dn}: {e}", file=sys.stderr)


def cnn_aux_peers(dev, put):
    """PyTorch at the ids of benches/pool.rs, squeeze_excite.rs, layout.rs and preprocess.rs
    (work = the bytes those benches count; each shape in its own try).

    pool: F.max_pool2d(x, 3, 2, 1) and F.adaptive_avg_pool2d(x, 1) on channels_last tensors.
    se: EfficientNet-B0's SE block as PyTorch ops on a channels_last f16 x: mean over H, W,
    linear, silu, linear, sigmoid, x * s (timm's SqueezeExcite with 1x1 convs does the same
    passes). layout: NCHW <-> NHWC as .contiguous(memory_format=...). preprocess: the
    torchvision-style GPU pipeline from a u8 NHWC batch (permute view, float / 255,
    F.interpolate bilinear align_corners=False antialias=False, (x - mean) / std, cast, NHWC
    memory) and for u16 grey: window + clamp, interpolate, normalise to 3 channels."""
    cl = torch.channels_last
    f16 = torch.float16
    dt_of = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}

    def attempt(what, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - record nothing for this shape, keep going
            print(f"peer_bench: {what}: {e}", file=sys.stderr)

    for bsz in [1, 32]:
        for dn in (["f16", "bf16", "f32"] if bsz == 32 else ["f16"]):
            def maxpool(bsz=bsz, dn=dn):
                x = torch.randn(bsz, 64, 112, 112, device=dev, dtype=dt_of[dn]).to(memory_format=cl)
                work = (x.numel() + x.numel() // 4) * x.element_size()
                put(f"pool/max3x3s2/{dn}/b{bsz}/112x112x64", timed(lambda: F.max_pool2d(x, 3, 2, 1)), work, "byte")
            attempt(f"max_pool2d b{bsz} {dn}", maxpool)
        for ch in [512, 1280]:
            def gap(bsz=bsz, ch=ch):
                x = torch.randn(bsz, ch, 7, 7, device=dev, dtype=f16).to(memory_format=cl)
                work = (x.numel() + bsz * ch) * 2
                put(f"pool/gap/f16/b{bsz}/7x7x{ch}", timed(lambda: F.adaptive_avg_pool2d(x, 1)), work, "byte")
            attempt(f"adaptive_avg_pool2d b{bsz} {ch}", gap)
        for (hw, ch, cse) in [(112, 32, 8), (56, 144, 6), (28, 240, 10), (14, 672, 28), (7, 1152, 48)]:
            def se(bsz=bsz, hw=hw, ch=ch, cse=cse):
                x = torch.randn(bsz, ch, hw, hw, device=dev, dtype=f16).to(memory_format=cl)
                w1 = torch.randn(cse, ch, device=dev, dtype=f16) * 0.05
                b1 = torch.randn(cse, device=dev, dtype=f16) * 0.1
                w2 = torch.randn(ch, cse, device=dev, dtype=f16) * 0.2
                b2 = torch.randn(ch, device=dev, dtype=f16) * 0.1

                def block():
                    s = torch.sigmoid(F.linear(F.silu(F.linear(x.mean((2, 3)), w1, b1)), w2, b2))
                    return x * s[:, :, None, None]
                work = (3 * x.numel() + 2 * ch * cse + ch + cse) * 2
                put(f"se/f16/b{bsz}/{hw}x{hw}x{ch}se{cse}", timed(block), work, "byte")
            attempt(f"se b{bsz} {hw}x{hw}x{ch}", se)
        for (ch, hw) in [(3, 224), (64, 56)]:
            for dn in ["f16", "f32"]:
                def layout(bsz=bsz, ch=ch, hw=hw, dn=dn):
                    x = torch.randn(bsz, ch, hw, hw, device=dev, dtype=dt_of[dn])
                    xc = x.contiguous(memory_format=cl)
                    work = 2 * x.numel() * x.element_size()
                    put(f"layout/nchw_to_nhwc/{dn}/b{bsz}/{ch}x{hw}x{hw}",
                        timed(lambda: x.contiguous(memory_format=cl)), work, "byte")
                    put(f"layout/nhwc_to_nchw/{dn}/b{bsz}/{ch}x{hw}x{hw}",
                        timed(lambda: xc.contiguous(memory_format=torch.contiguous_format)), work, "byte")
                attempt(f"layout b{bsz} {ch}x{hw}x{hw} {dn}", layout)
        for dn in ["f16", "f32"]:
            def pre_rgb(bsz=bsz, dn=dn):
                x = torch.randint(0, 256, (bsz, 256, 256, 3), device=dev, dtype=torch.uint8)
                mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
                std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)

                def pipe():
                    t = x.permute(0, 3, 1, 2).float() / 255
                    r = F.interpolate(t, size=(224, 224), mode="bilinear", align_corners=False, antialias=False)
                    return ((r - mean) / std).to(dt_of[dn]).contiguous(memory_format=cl)
                work = x.numel() + bsz * 224 * 224 * 3 * dt_of[dn].itemsize
                put(f"preprocess/u8_rgb_256-224/{dn}/b{bsz}", timed(pipe), work, "byte")
            attempt(f"preprocess u8 b{bsz} {dn}", pre_rgb)

            def pre_grey(bsz=bsz, dn=dn):
                x = torch.randint(0, 4096, (bsz, 1, 512, 512), device=dev, dtype=torch.int32).to(torch.uint16)
                mean = torch.full((1, 3, 1, 1), 0.5, device=dev)
                std = torch.full((1, 3, 1, 1), 0.25, device=dev)

                def pipe():
                    t = (x.float() / 4095).clamp_(0, 1)
                    r = F.interpolate(t, size=(224, 224), mode="bilinear", align_corners=False, antialias=False)
                    return ((r - mean) / std).to(dt_of[dn]).contiguous(memory_format=cl)
                work = x.numel() * 2 + bsz * 224 * 224 * 3 * dt_of[dn].itemsize
                put(f"preprocess/u16_grey_512-224x3/{dn}/b{bsz}", timed(pipe), work, "byte")
            attempt(f"preprocess u16 b{bsz} {dn}", pre_grey)
        torch.cuda.empty_cache()


# benches/bert.rs: (layers, hidden, heads, intermediate) per model, its configuration names, and
# the (model, batch, seq) pairs it times with every configuration (SUBSET); every other pair has
# the dense and the most compressed ids only.
BERT_MODELS = {"bert-base": (12, 768, 12, 3072), "minilm-l6": (6, 384, 12, 1536)}
BERT_CONFIGS = ["dense", "int8", "sparse24", "sparse24_int8", "heads8", "heads8_halflayers_sparse24_int8"]
BERT_ALL_CONFIGS = [("bert-base", 32, 128), ("bert-base", 128, 512)]


class EagerBert(torch.nn.Module):
    """A self-contained eager BERT encoder (HF BertModel's computation without the pooler): word +
    position + token-type embeddings, LayerNorm, then per layer a fused QKV Linear,
    F.scaled_dot_product_attention with an additive key-padding mask, output Linear + residual +
    LayerNorm, GELU (erf) FFN + residual + LayerNorm. Used when transformers is not installed."""

    def __init__(self, layers, hidden, heads, inter, vocab=30522, positions=512):
        super().__init__()
        nn = torch.nn
        self.heads = heads
        self.word, self.pos, self.type = nn.Embedding(vocab, hidden), nn.Embedding(positions, hidden), nn.Embedding(2, hidden)
        self.ln = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(nn.ModuleDict({
            "qkv": nn.Linear(hidden, 3 * hidden), "o": nn.Linear(hidden, hidden), "ln1": nn.LayerNorm(hidden, eps=1e-12),
            "i": nn.Linear(hidden, inter), "o2": nn.Linear(inter, hidden), "ln2": nn.LayerNorm(hidden, eps=1e-12),
        }) for _ in range(layers))

    def forward(self, ids, mask):
        b, n = ids.shape
        pos = torch.arange(n, device=ids.device)
        x = self.ln(self.word(ids) + self.pos(pos)[None] + self.type(torch.zeros_like(ids)))
        bias = torch.zeros(b, 1, 1, n, device=ids.device, dtype=x.dtype)
        bias.masked_fill_(mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        h, d = x.shape[-1], x.shape[-1] // self.heads
        for l in self.layers:
            q, k, v = l["qkv"](x).view(b, n, 3, self.heads, d).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b, n, h)
            x = l["ln1"](x + l["o"](a))
            x = l["ln2"](x + l["o2"](F.gelu(l["i"](x))))
        return x


def bert_peers(dev, put):
    """Eager PyTorch BERT forward at the ids of benches/bert.rs: transformers.BertModel (no
    pooler, f16, attn_implementation="sdpa") when transformers imports, else EagerBert above;
    random weights, same shapes (vocab 30522, 512 positions). Each batch is the bench's ragged
    lengths (ragged_lens) padded to its longest sequence, as a tokenizer with padding=True gives,
    with an attention mask (0 on padding); ids are random. Timed in torch.inference_mode. The
    figure is recorded under the dense id and, unchanged, under every compressed configuration's
    id at that shape, so the report's ratio is each configuration's speedup over PyTorch dense
    f16 (PyTorch has no packed varlen BERT: it computes the padding tokens that medkern skips).
    Work = batch, unit "seq" (rate = sequences/s). Each model and each shape runs in its own try:
    a failure records nothing for it and goes on."""
    try:
        import transformers
    except Exception:  # noqa: BLE001 - no transformers: the self-contained module
        transformers = None
    print(f"peer_bench: bert peer = {'transformers ' + transformers.__version__ if transformers else 'EagerBert'}",
          file=sys.stderr)
    most = BERT_CONFIGS[-1]
    for name, (layers, hidden, heads, inter) in BERT_MODELS.items():
        try:
            if transformers is not None:
                kw = dict(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                          intermediate_size=inter, hidden_act="gelu", max_position_embeddings=512)
                try:
                    cfg = transformers.BertConfig(attn_implementation="sdpa", **kw)
                except TypeError:  # older versions: set the private field
                    cfg = transformers.BertConfig(**kw)
                cfg._attn_implementation = "sdpa"
                model = transformers.BertModel(cfg, add_pooling_layer=False)
                fwd = lambda ids, mask: model(input_ids=ids, attention_mask=mask).last_hidden_state  # noqa: E731
            else:
                model = EagerBert(layers, hidden, heads, inter)
                fwd = model
            model = model.half().to(dev).eval()
        except Exception as e:  # noqa: BLE001 - record nothing for this model, keep going
            print(f"peer_bench: bert {name}: {e}", file=sys.stderr)
            continue
        for seq in [128, 512]:
            for bsz in [1, 8, 32, 128]:
                try:
                    lens = ragged_lens(bsz, seq)
                    n = max(lens)
                    ids = torch.randint(0, 30522, (bsz, n), device=dev)
                    mask = torch.zeros(bsz, n, dtype=torch.long, device=dev)
                    for i, ln in enumerate(lens):
                        mask[i, :ln] = 1
                    with torch.inference_mode():
                        ms = timed(lambda: fwd(ids, mask), iters=10)
                    configs = BERT_CONFIGS if (name, bsz, seq) in BERT_ALL_CONFIGS else ["dense", most]
                    for c in configs:
                        put(f"bert/{name}/{c}/f16/b{bsz}s{seq}", ms, bsz, "seq")
                except Exception as e:  # noqa: BLE001 - record nothing for this shape, keep going
                    print(f"peer_bench: bert/{name}/dense/f16/b{bsz}s{seq}: {e}", file=sys.stderr)
                torch.cuda.empty_cache()
        del model
        torch.cuda.empty_cache()


# The f16 per-token bound of tests/mobilebert.rs (low_precision_rel: 4·u·sqrt(1 + 7·layers)),
# for google/mobilebert-uncased's 24 layers: 4 · 2^-11 · sqrt(169) = 2.5e-2.
MOBILEBERT_F16_REL = 4 * 2.0**-11 * math.sqrt(1 + 7 * 24)


def mobilebert_check(dev):
    """medkern's MobileBERT against transformers' MobileBertForSequenceClassification.

    The google/mobilebert-uncased architecture (MobileBertConfig's defaults: 24 layers, hidden
    512, bottleneck 128, 4 heads, 4 FFNs, trigram input, NoNorm, relu) with 3 labels and random
    weights: transformers' init, then every NoNorm weight ~ 1 ± 0.3 and every bias ~ N(0, 0.05²)
    (the init's γ = 1, β = 0, b = 0 would hide a wrong NoNorm fold). Saved by save_pretrained
    (model.safetensors, "mobilebert."-prefixed names, config.json) next to a WordPiece
    tokenizer.json built here with the `tokenizers` package. The bundle's `medkern` (next to
    this script, or $MEDKERN_BIN) runs `embed --classify --pooling cls --device gpu --dtype f16`
    on four texts; transformers runs each text alone (no padding) in f32 on the same GPU.
    Compared per text: the first token's last hidden state and the logits, relative L2 error,
    against MOBILEBERT_F16_REL. Returns a dict (with "error" when something could not run)."""
    try:
        import torch
        import transformers
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    except Exception as e:  # noqa: BLE001 - the check is optional where transformers is missing
        return {"error": f"transformers / tokenizers unavailable: {e}"}
    here = os.path.dirname(os.path.abspath(__file__))
    binary = os.environ.get("MEDKERN_BIN", os.path.join(here, "medkern"))
    if not os.path.exists(binary):
        return {"error": f"no medkern binary at {binary}"}
    texts = ["chest pain radiating to the left arm", "no fever", "patient denies shortness of breath",
             "oxygen saturation dropped to eighty nine percent on room air and the cough got worse"]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for t in texts for w in t.split()})
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    labels = {0: "normal", 1: "abnormal", 2: "unsure"}
    cfg = transformers.MobileBertConfig(num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(18)
    model = transformers.MobileBertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.normal_(1.0, 0.3)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.05)
    with tempfile.TemporaryDirectory(prefix="medkern-mobilebert-") as d:
        try:
            model.save_pretrained(d, safe_serialization=True)
        except TypeError:  # versions where safetensors is the only format take no such argument
            model.save_pretrained(d)
        if not os.path.exists(os.path.join(d, "model.safetensors")):
            return {"error": f"save_pretrained wrote {sorted(os.listdir(d))}, no model.safetensors"}
        tok.save(os.path.join(d, "tokenizer.json"))
        run = subprocess.run([binary, "embed", "--model", d, "--device", "gpu", "--dtype", "f16", "--pooling",
                              "cls", "--classify", *texts], capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            return {"error": f"medkern embed exited {run.returncode}: {run.stderr.strip()[-2000:]}"}
        ours = json.loads(run.stdout)
    model = model.to(dev)
    worst_h, worst_l, rows = 0.0, 0.0, []
    for text, o in zip(texts, ours):
        ids = tok.encode(text).ids
        if o["tokens"] != len(ids):
            return {"error": f"{text!r}: medkern saw {o['tokens']} tokens, the tokenizer gives {len(ids)}"}
        x = torch.tensor([ids], device=dev)
        with torch.inference_mode():
            out = model.mobilebert(input_ids=x, attention_mask=torch.ones_like(x),
                                   token_type_ids=torch.zeros_like(x))
            h = out.last_hidden_state[0, 0].double().cpu()
            logits = model.classifier(out.pooler_output)[0].double().cpu()
        rel = lambda got, want: float(torch.linalg.norm(torch.tensor(got, dtype=torch.float64) - want)  # noqa: E731
                                      / torch.linalg.norm(want).clamp_min(1e-30))
        rh, rl = rel(o["embedding"], h), rel(o["logits"], logits)
        worst_h, worst_l = max(worst_h, rh), max(worst_l, rl)
        rows.append({"text": text, "tokens": len(ids), "rel_hidden": rh, "rel_logits": rl,
                     "label": o.get("label"), "hf_label": labels[int(torch.argmax(logits))]})
    ok = worst_h <= MOBILEBERT_F16_REL and worst_l <= MOBILEBERT_F16_REL
    print(f"peer_bench: mobilebert check vs transformers {transformers.__version__}: worst relative error "
          f"hidden {worst_h:.2e}, logits {worst_l:.2e} (bound {MOBILEBERT_F16_REL:.2e}): "
          f"{'ok' if ok else 'FAILED'}", file=sys.stderr)
    return {"transformers": transformers.__version__, "max_rel_hidden": worst_h, "max_rel_logits": worst_l,
            "bound": MOBILEBERT_F16_REL, "ok": ok, "texts": rows}


class EagerEfficientNet(torch.nn.Module):
    """A self-contained eager EfficientNet-B (torchvision's efficientnet_b* computation: stem conv
    3x3 s2 + BN + SiLU, MBConv blocks = 1x1 expand + BN + SiLU, depthwise kxk + BN + SiLU,
    squeeze-excitation (SiLU, sigmoid), 1x1 project + BN, identity add; head 1x1 + BN + SiLU,
    average pool, Linear), symmetric padding. Used when torchvision is not installed."""

    def __init__(self, width, depth):
        super().__init__()
        nn = torch.nn

        def filters(f):
            f *= width
            n = max(8, int(f + 4) // 8 * 8)
            return n + 8 if n < 0.9 * f else n

        def cna(i, o, k, s=1, g=1, act=True):
            layers = [nn.Conv2d(i, o, k, s, (k - 1) // 2, groups=g, bias=False), nn.BatchNorm2d(o)]
            return nn.Sequential(*(layers + ([nn.SiLU(inplace=True)] if act else [])))

        class SE(nn.Module):
            def __init__(self, c, sq):
                super().__init__()
                self.fc1, self.fc2 = nn.Conv2d(c, sq, 1), nn.Conv2d(sq, c, 1)

            def forward(self, x):
                s = F.adaptive_avg_pool2d(x, 1)
                return x * torch.sigmoid(self.fc2(F.silu(self.fc1(s))))

        class MBConv(nn.Module):
            def __init__(self, i, o, e, k, s):
                super().__init__()
                mid = i * e
                layers = [cna(i, mid, 1)] if e != 1 else []
                layers += [cna(mid, mid, k, s, mid), SE(mid, max(1, i // 4)), cna(mid, o, 1, act=False)]
                self.block = nn.Sequential(*layers)
                self.res = s == 1 and i == o

            def forward(self, x):
                y = self.block(x)
                return y + x if self.res else y

        stem = filters(32)
        feats, cin = [cna(3, stem, 3, 2)], stem
        for expand, k, stride, out, repeats in B0_STAGES:
            cout, blocks = filters(out), []
            for r in range(math.ceil(depth * repeats)):
                blocks.append(MBConv(cin, cout, expand, k, stride if r == 0 else 1))
                cin = cout
            feats.append(nn.Sequential(*blocks))
        feats.append(cna(cin, 4 * cin, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * cin, 1000))

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def efficientnet_peers(dev, put):
    """Eager PyTorch EfficientNet forward at the ids of benches/efficientnet.rs: torchvision's
    efficientnet_b0 at 224 (batch 1, 32, 128) and efficientnet_b7 at 600 (batch 1, 32), random
    weights, f16, channels_last, eval + torch.inference_mode (BatchNorm as separate kernels:
    eager PyTorch does not fold it); EagerEfficientNet above when torchvision is not installed.
    Input: a random normalised NCHW batch in channels_last already on the GPU; output the logits.
    Work = batch, unit "img" (rate = images/s). Each model and each shape runs in its own try:
    a failure (OOM) records nothing for it and goes on."""
    try:
        import torchvision
    except Exception:  # noqa: BLE001 - no torchvision: the self-contained module
        torchvision = None
    print(f"peer_bench: efficientnet peer = "
          f"{'torchvision ' + torchvision.__version__ if torchvision else 'EagerEfficientNet'}", file=sys.stderr)
    cl = torch.channels_last
    for b, res, batches, (width, depth) in [(0, 224, [1, 32, 128], (1.0, 1.0)), (7, 600, [1, 32], (2.0, 3.1))]:
        try:
            if torchvision is not None:
                model = getattr(torchvision.models, f"efficientnet_b{b}")(weights=None)
            else:
                model = EagerEfficientNet(width, depth)
            model = model.half().to(dev).to(memory_format=cl).eval()
        except Exception as e:  # noqa: BLE001 - record nothing for this model, keep going
            print(f"peer_bench: efficientnet b{b}: {e}", file=sys.stderr)
            continue
        for bsz in batches:
            bid = f"efficientnet/b{b}/f16/b{bsz}"
            try:
                x = torch.randn(bsz, 3, res, res, device=dev, dtype=torch.float16).to(memory_format=cl)
                with torch.inference_mode():
                    ms = timed(lambda: model(x), iters=10)
                put(bid, ms, bsz, "img")
                del x
            except Exception as e:  # noqa: BLE001 - record nothing for this shape, keep going
                print(f"peer_bench: {bid}: {e}", file=sys.stderr)
            torch.cuda.empty_cache()
        del model
        torch.cuda.empty_cache()


def resnet_peers(dev, put):
    """Eager torchvision at the ids of benches/resnet.rs: resnet18(num_classes=1000) and the sepsis
    classifier (resnet18's conv1, bn1, relu, maxpool, layer1, layer2, then AdaptiveAvgPool2d(1),
    flatten, Linear(128, 2), softmax), random weights, f16, channels_last, eval, cudnn.benchmark on,
    timed in torch.inference_mode on a random 224x224 batch of 1, 32, 128. The BatchNorms stay
    unfolded (what an eager torchvision model runs). Work = batch, unit "img" (rate = images/s).
    Without torchvision: nothing recorded. Each model and batch runs in its own try."""
    try:
        import torchvision
    except Exception as e:  # noqa: BLE001 - no torchvision: no peer for these ids
        print(f"peer_bench: resnet peers need torchvision: {e}", file=sys.stderr)
        return
    torch.backends.cudnn.benchmark = True
    cl = torch.channels_last

    def sepsis_net():
        r = torchvision.models.resnet18(num_classes=1000)
        return torch.nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2,
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(128, 2), torch.nn.Softmax(dim=-1))

    for name, make in [("resnet18_224", lambda: torchvision.models.resnet18(num_classes=1000)),
                       ("sepsis_224", sepsis_net)]:
        try:
            model = make().half().to(dev).to(memory_format=cl).eval()
        except Exception as e:  # noqa: BLE001 - record nothing for this model, keep going
            print(f"peer_bench: resnet {name}: {e}", file=sys.stderr)
            continue
        for bsz in [1, 32, 128]:
            bid = f"resnet/{name}/f16/b{bsz}"
            try:
                x = torch.randn(bsz, 3, 224, 224, device=dev, dtype=torch.float16).to(memory_format=cl)
                with torch.inference_mode():
                    model(x)  # cudnn.benchmark autotuning, untimed
                    put(bid, timed(lambda: model(x), iters=10), bsz, "img")
                del x
            except Exception as e:  # noqa: BLE001 - record nothing for this shape, keep going
                print(f"peer_bench: {bid}: {e}", file=sys.stderr)
            torch.cuda.empty_cache()
        del model
        torch.cuda.empty_cache()


def exam_peers(dev, put):
    """Eager PyTorch at the ids of benches/exam.rs. EXAM = torchvision resnet34 with fc = Identity
    (the 512-d pooled feature; f16, channels_last, eval, cudnn.benchmark on) + the EXAM head in
    f32: Deep & Cross EMR branch (46 inputs, 3 cross layers x_{l+1} = x0 * (W x_l + b) + x_l,
    deep MLP 46 -> 128 -> 64 with ReLU), Linear(512 + 46 + 64, 256) + ReLU over the
    concatenation, Linear(256, 2) + sigmoid (24 h / 72 h), cumulative-logit ordinal head
    (Linear(256, 1, bias=False), 4 cut points, class probabilities as differences), outputs
    copied to the host as medkern's forward does. Ids exam/resnet34_224/f16/b{1,32,128} (images
    224x224) and exam/head/f32/b{batch} (the head alone on given features). Work = batch, unit
    "img". Without torchvision: nothing recorded. Each batch runs in its own try."""
    try:
        import torchvision
    except Exception as e:  # noqa: BLE001 - no torchvision: no peer for these ids
        print(f"peer_bench: exam peers need torchvision: {e}", file=sys.stderr)
        return
    torch.backends.cudnn.benchmark = True
    nn = torch.nn

    class ExamHead(nn.Module):
        def __init__(self, d=46, cross=3, deep=(128, 64), img=512, fusion=256):
            super().__init__()
            self.cross = nn.ModuleList([nn.Linear(d, d) for _ in range(cross)])
            layers, prev = [], d
            for h in deep:
                layers += [nn.Linear(prev, h), nn.ReLU()]
                prev = h
            self.deep = nn.Sequential(*layers)
            self.fusion = nn.Linear(img + d + prev, fusion)
            self.oxygen = nn.Linear(fusion, 2)
            self.ordinal = nn.Linear(fusion, 1, bias=False)
            self.register_buffer("cuts", torch.tensor([-1.5, -0.5, 0.5, 1.5]))

        def forward(self, feat, x0):
            x = x0
            for layer in self.cross:
                x = x0 * layer(x) + x
            h = self.deep(x0)
            z = torch.relu(self.fusion(torch.cat([feat.float(), x, h], dim=1)))
            oxy = torch.sigmoid(self.oxygen(z))
            s = self.ordinal(z)
            gt = torch.sigmoid(s - self.cuts)
            one, zero = torch.ones_like(s), torch.zeros_like(s)
            above = torch.cat([one, gt, zero], dim=1)
            return oxy.cpu(), s.cpu(), (above[:, :-1] - above[:, 1:]).cpu()

    try:
        trunk = torchvision.models.resnet34()
        trunk.fc = nn.Identity()
        trunk = trunk.half().to(dev).to(memory_format=torch.channels_last).eval()
        head = ExamHead().to(dev).eval()
    except Exception as e:  # noqa: BLE001 - record nothing, keep going
        print(f"peer_bench: exam: {e}", file=sys.stderr)
        return
    for bsz in [1, 32, 128]:
        try:
            x = torch.randn(bsz, 3, 224, 224, device=dev, dtype=torch.float16).to(
                memory_format=torch.channels_last)
            emr = torch.randn(bsz, 46, device=dev)
            feat = torch.randn(bsz, 512, device=dev)
            with torch.inference_mode():
                head(trunk(x), emr)  # cudnn.benchmark autotuning, untimed
                put(f"exam/resnet34_224/f16/b{bsz}", timed(lambda: head(trunk(x), emr), iters=10), bsz, "img")
                put(f"exam/head/f32/b{bsz}", timed(lambda: head(feat, emr)), bsz, "img")
            del x, emr, feat
        except Exception as e:  # noqa: BLE001 - record nothing for this shape, keep going
            print(f"peer_bench: exam b{bsz}: {e}", file=sys.stderr)
        torch.cuda.empty_cache()
    del trunk, head
    torch.cuda.empty_cache()


def main():
    dev = torch.device("cuda")
    torch.manual_seed(0)
    res = {}

    def put(bid, ms, work, unit, nbytes=None):
        res[bid] = {"ms": ms, "work": work, "unit": unit}
        if nbytes is not None:  # a second work figure: bytes moved, for a GB/s next to the FLOP/s
            res[bid]["bytes"] = nbytes

    # Device ceilings measured now: a large device-to-device copy and a bf16 8192^3 matmul.
    big = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(big)
    copy_ms = timed(lambda: dst.copy_(big), iters=10)
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    mm_ms = timed(lambda: a @ a, iters=10)
    ceilings = {"copy_GBps": 2 * big.numel() / copy_ms / 1e6, "bf16_matmul_TFLOPs": 2 * 8192**3 / mm_ms / 1e9}
    del big, dst, a

    dt_of = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
    gemm_shapes = [(128, 768, 768), (128, 3072, 768), (2048, 768, 768), (2048, 3072, 768), (2048, 768, 3072),
                   (16384, 768, 768), (16384, 3072, 768), (16384, 768, 3072), (1, 768, 768),
                   (4096, 4096, 4096), (8192, 8192, 8192)]
    for (m, n, k) in gemm_shapes:
        for dn in (["f16", "bf16", "f32"] if m == 4096 else ["f16"]):
            dt = dt_of[dn]
            x = torch.randn(m, k, device=dev, dtype=dt)
            w = torch.randn(n, k, device=dev, dtype=dt) * 0.05
            b = torch.randn(n, device=dev, dtype=dt) * 0.1
            put(f"gemm/plain/{dn}/{m}x{n}x{k}", timed(lambda: torch.matmul(x, w.t())), 2 * m * n * k, "flop")
            if not (m >= 4096 and n == 4096) and dn != "f32":
                put(f"gemm/bias_gelu/{dn}/{m}x{n}x{k}", timed(lambda: F.gelu(F.linear(x, w, b))), 2 * m * n * k, "flop")
    # benches/gemm.rs times the Hopper kernels (gemm_hopper/..., sm_90a) at the same shapes: the
    # same PyTorch (cuBLAS) figures are their peer.
    for bid in [b for b in res if b.startswith("gemm/")]:
        res["gemm_hopper/" + bid[len("gemm/"):]] = dict(res[bid])

    for (m, n, k) in [(128, 3072, 768), (2048, 768, 768), (2048, 3072, 768), (16384, 768, 768),
                      (16384, 3072, 768), (16384, 768, 3072), (4096, 4096, 4096), (8192, 8192, 8192)]:
        x = torch.randint(-16, 17, (m, k), device=dev, dtype=torch.int8)
        w = torch.randint(-16, 17, (n, k), device=dev, dtype=torch.int8)
        sx = torch.full((m, 1), 0.02, device=dev)
        sw = torch.full((1, n), 0.003, device=dev)
        wt = w.t()
        try:
            put(f"gemm_i8/raw/{m}x{n}x{k}", timed(lambda: torch._int_mm(x, wt)), 2 * m * n * k, "flop")
            put(f"gemm_i8/dequant_f16/{m}x{n}x{k}",
                timed(lambda: (torch._int_mm(x, wt).float() * sx * sw).half()), 2 * m * n * k, "flop")
        except RuntimeError as e:  # _int_mm shape limits differ between versions
            print(f"peer_bench: _int_mm {m}x{n}x{k}: {e}", file=sys.stderr)

    # PyTorch's 2:4 semi-structured path (cuSPARSELt or CUTLASS), where this GPU and build have it.
    try:
        from torch.sparse import to_sparse_semi_structured
        for (m, n, k) in [(128, 3072, 768), (2048, 3072, 768), (16384, 768, 768), (16384, 3072, 768),
                          (16384, 768, 3072), (8192, 8192, 8192)]:
            w = torch.randn(n, k, device=dev, dtype=torch.float16) * 0.05
            mask = torch.tensor([1, 1, 0, 0], device=dev, dtype=torch.bool).tile(n, k // 4)
            ws = to_sparse_semi_structured(w * mask)
            x = torch.randn(m, k, device=dev, dtype=torch.float16)
            put(f"gemm_sp/sparse/f16/{m}x{n}x{k}", timed(lambda: F.linear(x, ws)), 2 * m * n * k, "flop")
    except Exception as e:  # noqa: BLE001 - report and go on: the peer is optional per GPU/build
        print(f"peer_bench: semi-structured sparse unavailable: {e}", file=sys.stderr)

    for (rows, n) in [(128, 768), (4096, 768), (16384, 768), (4096, 3072)]:
        for dn, dt in dt_of.items():
            x = torch.randn(rows, n, device=dev, dtype=dt)
            r = torch.randn_like(x)
            b = torch.randn(n, device=dev, dtype=dt)
            g = torch.randn(n, device=dev, dtype=dt)
            sz = x.element_size()
            put(f"eltwise/bias_gelu_erf_residual/{dn}/{rows}x{n}", timed(lambda: F.gelu(x + b) + r), (3 * rows * n + n) * sz, "byte")
            put(f"layernorm/residual/{dn}/{rows}x{n}", timed(lambda: F.layer_norm(x + r, (n,), g, b, 1e-12)), 3 * rows * n * sz, "byte")
            if dn != "f32":
                put(f"eltwise/cast/{dn}->f32/{rows}x{n}", timed(lambda: x.float()), rows * n * (sz + 4), "byte")
        x16 = torch.randn(rows, n, device=dev, dtype=torch.float16)
        put(f"quantize/rows/f16/{rows}x{n}",
            timed(lambda: torch.round(x16 / (x16.abs().amax(-1, keepdim=True) / 127)).clamp(-128, 127).to(torch.int8)),
            rows * n * 3, "byte")

    for (bsz, heads, seq) in [(32, 12, 128), (8, 12, 512), (1, 12, 2048), (2, 16, 4096)]:
        for dn in ["f16", "bf16", "f32"]:
            dt = dt_of[dn]
            x = torch.randn(bsz, heads, seq, seq, device=dev, dtype=dt)
            mask = torch.zeros(bsz, 1, 1, seq, device=dev, dtype=torch.float32)
            for i in range(bsz):
                mask[i, ..., seq - (i * 7) % seq:] = float("-inf")
            put(f"softmax/masked/{dn}/b{bsz}h{heads}s{seq}",
                timed(lambda: torch.softmax(x.float() * 0.125 + mask, -1).to(dt)), 2 * x.numel() * x.element_size(), "byte")

    attention_peers(dev, put)
    bert_peers(dev, put)
    depthwise_peers(dev, put)
    decoder_peers(dev, put)
    conv_peers(dev, put)
    cnn_aux_peers(dev, put)
    efficientnet_peers(dev, put)
    resnet_peers(dev, put)
    exam_peers(dev, put)

    try:
        checks = {"mobilebert": mobilebert_check(dev)}
    except Exception as e:  # noqa: BLE001 - a failing check is reported, the timings still print
        checks = {"mobilebert": {"error": repr(e)}}

    print(json.dumps({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                      "ceilings": ceilings, "results": res, "checks": checks}, indent=1))


if __name__ == "__main__":
    main()
