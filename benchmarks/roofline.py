"""Each method's fraction of the matmul roofline: measured matmul TFLOP/s on this device, then the benchmarks' JSON.

    python benchmarks/roofline.py --device cuda --results benchmarks/results/nvidia-h100-80gb-hbm3
    python benchmarks/roofline.py --device cpu --results benchmarks/results/cpu

A fused linear loss is matmul-bound: everything but the matmuls (softmax, gather, reductions) is O(N*V) elementwise
work next to O(N*D*V) multiply-adds. So the floor for one step is its matmul FLOPs at the device's matmul rate:

    frozen head     2 matmuls: logits = h @ W.T, dh = dlogits @ W            4*N*D*V FLOPs
    trainable head  3 matmuls: the same, plus dW = dlogits.T @ h             6*N*D*V FLOPs
    (the log-prob modes count the same; N = every row, ignored ones included, as the naive baseline computes them)

The device's rate is measured here, in the same run, on square [M, M] @ [M, M] matmuls of the benchmark's dtype (the
best of --reps), not taken from a datasheet. fraction = (FLOPs / measured rate) / median step time: 1.0 means the
method runs at matmul speed with nothing else costing time; a method that recomputes the logits in backward (as
fused kernels do) tops out near 2/3 (frozen: 3 logit-sized matmuls for 2 counted) or 3/4 (trainable).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

MATMULS = {"frozen": 2, "trainable": 3, "logprobs": 2, "logprobs_trainable": 3}


def matmul_tflops(device: str, dtype: torch.dtype, size: int, reps: int) -> float:
    """Best-of-reps TFLOP/s of one [size, size] @ [size, size] matmul."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 2):  # the first two warm up (cuBLAS heuristics, clocks)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10 if device == "cuda" else 1):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / (10 if device == "cuda" else 1))
    return 2 * size**3 / best / 1e12


def problem_size(report: dict) -> int:
    """N*D*V of one step: rows x hidden x vocabulary (preference: 2B pairs x T tokens rows)."""
    cfg = report["config"]
    rows = cfg.get("tokens") or 2 * cfg["pairs"] * cfg["seq"]
    return rows * cfg["dim"] * cfg["vocab"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--results", type=Path, required=True, help="folder with linear_ce.json / preference.json")
    p.add_argument("--size", type=int, help="matmul side (default: cuda 8192, cpu 1024)")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)

    reports = [json.loads(f.read_text()) for f in sorted(args.results.glob("*.json")) if f.stem in ("linear_ce",
               "preference")]  # fmt: skip
    if not reports:
        raise SystemExit(f"no linear_ce.json / preference.json under {args.results}")
    dtypes = sorted({r["config"]["dtype"] for r in reports})
    size = args.size or (8192 if args.device == "cuda" else 1024)
    rates = {d: matmul_tflops(args.device, getattr(torch, d), size, args.reps) for d in dtypes}
    for d, rate in rates.items():
        print(f"measured matmul rate: {rate:.3g} TFLOP/s ({d}, {size}^3, best of {args.reps})")

    out_rows = []
    print(f"\n{'benchmark':<11} {'loss':<5} {'mode':<19} {'method':<17} {'median ms':>10} {'roofline ms':>11} "
          f"{'TFLOP/s':>8} {'fraction':>8}")  # fmt: skip
    for report in reports:
        ndv, rate = problem_size(report), rates[report["config"]["dtype"]]
        for row in report["rows"]:
            if "median_s" not in row or row["mode"] not in MATMULS:
                continue
            flops = 2 * MATMULS[row["mode"]] * ndv
            floor_s = flops / (rate * 1e12)
            entry = {
                "benchmark": report["benchmark"],
                "loss": row.get("loss", "ce"),
                "mode": row["mode"],
                "method": row["method"],
                "median_s": row["median_s"],
                "matmuls": MATMULS[row["mode"]],
                "flops": flops,
                "roofline_s": floor_s,
                "achieved_tflops": flops / row["median_s"] / 1e12,
                "fraction_of_roofline": floor_s / row["median_s"],
            }
            out_rows.append(entry)
            print(f"{entry['benchmark']:<11} {entry['loss']:<5} {entry['mode']:<19} {entry['method']:<17} "
                  f"{row['median_s'] * 1e3:>10.2f} {floor_s * 1e3:>11.2f} {entry['achieved_tflops']:>8.2f} "
                  f"{entry['fraction_of_roofline']:>8.2f}")  # fmt: skip
    path = args.results / "roofline.json"
    device = torch.cuda.get_device_name() if args.device == "cuda" else reports[0]["device"]
    summary = {"device": device, "matmul_tflops": rates, "matmul_size": size, "rows": out_rows}
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
