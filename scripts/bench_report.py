#!/usr/bin/env python3
"""Joins criterion results (CRITERION_HOME) with scripts/peer_bench.py output into a markdown
table per bench group: our time and throughput, PyTorch's, the speed ratio (peer time / ours;
> 1 means medkern is faster) and the fraction of the device ceiling measured in the same run.

The work of a bench (FLOPs or bytes per call) is the peer's "work" field, or else the criterion
throughput the bench declared (benchmark.json): Elements = FLOPs (gemm, attention), Bytes =
bytes moved; ElementsAndBytes (conv) = FLOPs plus bytes moved, shown as TFLOP/s and GB/s (the
peer's optional "bytes" field is the same second figure). The attention group also gets a line
comparing its head_dim-64 rates with FlashAttention-3's published H100 figures (not measured
here).

The bert group (benches/bert.rs) declares Elements = sequences per call: unit "seq", shown as
sequences/s, no ceiling fraction. The resnet, efficientnet and exam groups (benches/resnet.rs,
efficientnet.rs, exam.rs) declare Elements = images per call: unit "img", shown as images/s, no
ceiling fraction.

With --json OUT it also writes a machine-readable report (schema "medkern-bench-report/1",
read by `medkern chart` and src/viz/chart.rs): the device, the ceilings measured in the run
(FLOP/s, bytes/s) and per bench id its group, median ms, FLOPs and bytes per call, achieved
FLOP/s and bytes/s, arithmetic intensity (FLOPs / bytes, where both are known), the peer's ms
and the speed ratio (peer ms / ours). Figures that are not known are null.

usage: bench_report.py CRITERION_HOME PEER_JSON [--json OUT] > report.md
"""
import json
import os
import re
import sys

# FlashAttention-3 (Shah et al. 2024, arXiv:2407.08608), published forward FP16 figures on an
# H100 SXM5, head_dim 64, non-causal, batch*seq = 16k tokens, 2048 hidden: seq -> TFLOP/s.
FA3_PUBLISHED_D64 = {512: 333, 16384: 497}


def load_criterion(home):
    """({full_id: (median ms, (work, unit) or None)}, {full_id: bytes} for the benches that also
    declare bytes moved (ElementsAndBytes)) from every `new` result under home."""
    out, nbytes = {}, {}
    for root, _dirs, files in os.walk(home):
        if os.path.basename(root) != "new" or "benchmark.json" not in files:
            continue
        with open(os.path.join(root, "benchmark.json")) as f:
            meta = json.load(f)
        with open(os.path.join(root, "estimates.json")) as f:
            est = json.load(f)
        tp = meta.get("throughput") or {}
        work = None
        if "Elements" in tp:
            unit = {"bert": "seq", "resnet": "img", "efficientnet": "img", "exam": "img"}.get(
                meta["full_id"].split("/")[0], "flop")
            work = (tp["Elements"], unit)
        elif "Bytes" in tp or "BytesDecimal" in tp:
            work = (tp.get("Bytes", tp.get("BytesDecimal")), "byte")
        elif "ElementsAndBytes" in tp:
            work = (tp["ElementsAndBytes"]["elements"], "flop")
            nbytes[meta["full_id"]] = tp["ElementsAndBytes"]["bytes"]
        out[meta["full_id"]] = (est["median"]["point_estimate"] / 1e6, work)  # ns -> ms
    return out, nbytes


def rate_value(work, unit, ms):
    """TFLOP/s for flops, GB/s for bytes, sequences/s for "seq", images/s for "img"."""
    if unit in ("seq", "img"):
        return work / ms * 1e3
    return work / ms / 1e9 if unit == "flop" else work / ms / 1e6


def fmt_rate(work, unit, ms):
    if ms is None or work is None:
        return "-"
    v = rate_value(work, unit, ms)
    if unit in ("seq", "img"):
        return f"{v:.0f} {unit}/s"
    return f"{v:.1f} TFLOP/s" if unit == "flop" else f"{v:.0f} GB/s"


def fmt_ms(ms):
    if not ms:
        return "-"
    return f"{ms:.4f}" if ms >= 0.01 else f"{ms:.2e}"


def fa3_line(ours):
    """Our non-causal f16 head_dim-64 rates next to FlashAttention-3's published ones."""
    long_d64 = []
    bert512 = None
    for bid, (ms, work) in ours.items():
        parts = bid.split("/")
        if len(parts) != 4 or work is None or work[1] != "flop":
            continue
        _, kind, dt, shape = parts
        if kind == "full" and dt == "f16" and "d64s" in shape:
            long_d64.append((int(shape.rsplit("s", 1)[1]), shape, rate_value(work[0], "flop", ms)))
        if kind == "packed" and shape == "b32h12d64s512":
            bert512 = rate_value(work[0], "flop", ms)
    pub = ", ".join(f"{v} TFLOP/s at seq {s}" for s, v in sorted(FA3_PUBLISHED_D64.items()))
    line = (f"\nFlashAttention-3, **published figure, not measured here** (Shah et al. 2024, H100 SXM5, "
            f"FP16 forward, head_dim 64, non-causal, batch*seq = 16k, hidden 2048): {pub}.")
    if long_d64:
        long_d64.sort()
        mine = ", ".join(f"{r:.1f} at seq {s}" for s, _, r in long_d64)
        line += f" medkern here, same setting (f16, head_dim 64, non-causal): {mine} TFLOP/s"
        s, _, r = long_d64[-1]
        if s in FA3_PUBLISHED_D64:
            line += f" ({r / FA3_PUBLISHED_D64[s]:.2f} of FA3's published seq-{s} figure)"
        line += "."
    if bert512 is not None:
        line += (f" BERT packed b32 s512 (12 heads, ragged lengths, so not the same setting): "
                 f"{bert512:.1f} TFLOP/s ({bert512 / FA3_PUBLISHED_D64[512]:.2f} of FA3's seq-512 figure).")
    return line


def natural(bid):
    """Sort key with numbers compared as numbers (b8 before b16, s512 before s1024)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", bid)]


def kernel_row(bid, ours, ours_bytes, peer):
    """The JSON report's entry of one bench id (see the module docstring)."""
    p = peer["results"].get(bid)
    o, own_work = ours.get(bid, (None, None))
    work, unit = (p["work"], p["unit"]) if p else own_work or (None, None)
    nb = (p or {}).get("bytes", ours_bytes.get(bid))
    flops = work if unit == "flop" else None
    nbytes = work if unit == "byte" else nb if unit == "flop" else None
    row = {"name": bid, "group": bid.split("/")[0], "unit": unit, "ms": o,
           "flops_per_call": flops, "bytes_per_call": nbytes,
           "flops_per_s": flops / o * 1e3 if flops and o else None,
           "bytes_per_s": nbytes / o * 1e3 if nbytes and o else None,
           "intensity": flops / nbytes if flops and nbytes else None,
           "peer_ms": p["ms"] if p else None,
           "peer_ratio": p["ms"] / o if p and p.get("ms") and o else None}
    return row


def json_report(ours, ours_bytes, peer):
    ceil = peer.get("ceilings", {})
    flops = ceil.get("bf16_matmul_TFLOPs")
    gbps = ceil.get("copy_GBps")
    ids = sorted(set(ours) | set(peer["results"]), key=natural)
    return {
        "schema": "medkern-bench-report/1",
        "device": peer.get("device"),
        "ceilings": {
            "flops_per_s": flops * 1e12 if flops else None,
            "bytes_per_s": gbps * 1e9 if gbps else None,
            "source": "measured in the same run by peer_bench.py: bf16 8192^3 matmul (PyTorch), "
                      "large device-to-device copy" if ceil else None,
        },
        "kernels": [kernel_row(bid, ours, ours_bytes, peer) for bid in ids],
    }


def main():
    args = sys.argv[1:]
    json_out = None
    if "--json" in args:
        i = args.index("--json")
        if i + 1 >= len(args):
            sys.exit("usage: bench_report.py CRITERION_HOME PEER_JSON [--json OUT]")
        json_out = args[i + 1]
        del args[i:i + 2]
    ours, ours_bytes = load_criterion(args[0])
    peer = {"results": {}, "ceilings": {}}
    if len(args) > 1 and os.path.exists(args[1]):
        with open(args[1]) as f:
            peer = json.load(f)
    if json_out:
        # Temporary file + rename: a reader never sees half a report.
        tmp = json_out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(json_report(ours, ours_bytes, peer), f, indent=1)
        os.replace(tmp, json_out)
    ceil = peer.get("ceilings", {})
    print(f"Device: {peer.get('device', '?')}, PyTorch {peer.get('torch', '?')}. Ceilings measured in this run: "
          f"copy {ceil.get('copy_GBps', 0):.0f} GB/s, bf16 matmul {ceil.get('bf16_matmul_TFLOPs', 0):.0f} TFLOP/s.\n")
    groups = {}
    for bid in sorted(set(ours) | set(peer["results"]), key=natural):
        groups.setdefault(bid.split("/")[0], []).append(bid)
    for g, ids in groups.items():
        print(f"\n### {g}\n")
        print("| bench | medkern ms | medkern rate | PyTorch ms | PyTorch rate | speed vs PyTorch | fraction of ceiling |")
        print("|---|---|---|---|---|---|---|")
        for bid in ids:
            p = peer["results"].get(bid)
            o, own_work = ours.get(bid, (None, None))
            work, unit = (p["work"], p["unit"]) if p else own_work or (None, None)
            pms = p["ms"] if p else None
            ratio = f"{pms / o:.2f}x" if pms and o else "-"
            frac = "-"
            if o and work:
                c = {"flop": ceil.get("bf16_matmul_TFLOPs"), "byte": ceil.get("copy_GBps")}.get(unit)
                if c:
                    frac = f"{rate_value(work, unit, o) / c:.2f}"
            rate, prate = fmt_rate(work, unit, o), fmt_rate(work, unit, pms)
            nb = (p or {}).get("bytes", ours_bytes.get(bid))
            if nb and unit == "flop":  # a second figure: bytes moved -> GB/s next to the TFLOP/s
                rate += f", {fmt_rate(nb, 'byte', o)}" if o else ""
                prate += f", {fmt_rate(nb, 'byte', pms)}" if pms else ""
                if o and ceil.get("copy_GBps"):
                    frac += f" ({rate_value(nb, 'byte', o) / ceil['copy_GBps']:.2f} of copy)"
            print(f"| {bid} | {fmt_ms(o)} | {rate} | {fmt_ms(pms)} | {prate} | {ratio} | {frac} |")
        if g == "attention":
            print("\nAttention work = 4*heads*head_dim*sum(q_len*k_len) over the real lengths (halved when "
                  "causal): padding is not counted, so packed, padded and unfused rows of one batch share it. "
                  "The PyTorch column of the packed, padded and unfused ids is the same key-padding-masked "
                  "SDPA on the padded batch (SDPA has no varlen path).")
            print(fa3_line(ours))
        if g == "bert":
            print("\nBERT forward latency, random weights, f16, ragged batches (lengths uniform in [seq/4, seq]); "
                  "rate = sequences/s. The PyTorch column is eager PyTorch BERT dense f16 (SDPA, padded to the "
                  "batch's longest sequence with an attention mask) on every row, so the speed column of a "
                  "compressed configuration is its speedup over PyTorch dense f16.")
        if g == "efficientnet":
            print("\nEfficientNet forward, random weights (BN folded), f16, NHWC input already normalised; "
                  "rate = images/s. The PyTorch column is torchvision's efficientnet_b0 / efficientnet_b7 "
                  "in eager mode, f16, channels_last, torch.inference_mode (BatchNorm not folded).")
        if g == "conv":
            print("\nConv work = 2*N*OH*OW*OC*KH*KW*C FLOPs; GB/s counts input + weight + output (+ residual), "
                  "f16, once each. medkern fuses the folded-BN scale/bias, activation and residual into the conv; "
                  "PyTorch runs cuDNN conv2d with the folded bias (channels_last, cudnn.benchmark), then the "
                  "residual add and the activation as separate in-place ops (and F.pad before the TF-SAME stem).")


if __name__ == "__main__":
    main()
