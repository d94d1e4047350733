#!/usr/bin/env python3
"""Joins criterion results (CRITERION_HOME) with scripts/peer_bench.py output into a markdown
table per bench group: our time and throughput, PyTorch's, the speed ratio (peer time / ours;
> 1 means medkern is faster) and the fraction of the device ceiling measured in the same run.

usage: bench_report.py CRITERION_HOME PEER_JSON > report.md
"""
import json
import os
import sys


def load_criterion(home):
    out = {}
    for root, _dirs, files in os.walk(home):
        if os.path.basename(root) != "new" or "benchmark.json" not in files:
            continue
        meta = json.load(open(os.path.join(root, "benchmark.json")))
        est = json.load(open(os.path.join(root, "estimates.json")))
        out[meta["full_id"]] = est["median"]["point_estimate"] / 1e6  # ns -> ms
    return out


def main():
    ours = load_criterion(sys.argv[1])
    peer = json.load(open(sys.argv[2])) if len(sys.argv) > 2 and os.path.exists(sys.argv[2]) else {"results": {}, "ceilings": {}}
    ceil = peer.get("ceilings", {})
    print(f"Device: {peer.get('device', '?')}, PyTorch {peer.get('torch', '?')}. Ceilings measured in this run: "
          f"copy {ceil.get('copy_GBps', 0):.0f} GB/s, bf16 matmul {ceil.get('bf16_matmul_TFLOPs', 0):.0f} TFLOP/s.\n")
    groups = {}
    for bid in sorted(set(ours) | set(peer["results"])):
        groups.setdefault(bid.split("/")[0], []).append(bid)
    for g, ids in groups.items():
        print(f"\n### {g}\n")
        print("| bench | medkern ms | medkern rate | PyTorch ms | PyTorch rate | speed vs PyTorch | fraction of ceiling |")
        print("|---|---|---|---|---|---|---|")
        for bid in ids:
            p = peer["results"].get(bid)
            o = ours.get(bid)
            work, unit = (p["work"], p["unit"]) if p else (None, None)

            def rate(ms):
                if ms is None or work is None:
                    return "-"
                return f"{work / ms / 1e9:.1f} TFLOP/s" if unit == "flop" else f"{work / ms / 1e6:.0f} GB/s"

            ratio = f"{p['ms'] / o:.2f}x" if p and o else "-"
            frac = "-"
            if o and work:
                c = ceil.get("bf16_matmul_TFLOPs") if unit == "flop" else ceil.get("copy_GBps")
                if c:
                    v = work / o / 1e9 if unit == "flop" else work / o / 1e6
                    frac = f"{v / c:.2f}"
            print(f"| {bid} | {o:.4f} | {rate(o)} | {p['ms']:.4f} | {rate(p['ms'])} | {ratio} | {frac} |"
                  if p and o else f"| {bid} | {o if o else '-'} | {rate(o)} | {p['ms'] if p else '-'} | {rate(p['ms'] if p else None)} | {ratio} | {frac} |")


if __name__ == "__main__":
    main()
