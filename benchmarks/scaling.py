"""Peak memory and time vs tokens N and vs vocabulary V, per method: bench_linear_ce.py at several sizes, then plots.

    python benchmarks/scaling.py --device cpu                  # tiny sweep (D=256; N 256..2048, V 2k..32k), ~3 min
    python benchmarks/scaling.py --device cuda                 # Llama-3-8B head, bf16, N 1k..64k, V 32k..256k
    python benchmarks/scaling.py --device cuda --head gemma2-2b --only tokens   # another head (benchmarks/heads.py)
    python benchmarks/scaling.py --device cpu --from-json benchmarks/results/cpu/scaling.json   # re-plot only
    python benchmarks/scaling.py --device cuda --time-budget 120 --point-timeout 25   # stops by itself in 120 s

Each point is one `bench_linear_ce.py` run (subprocess, --modes frozen by default) writing its linear_ce.json under
a scratch folder; the rows are gathered into scaling.json, and two PNGs are drawn next to it:

    scaling_tokens.png   peak extra memory (MiB) and median step time (ms) vs N, log-log, at fixed D and V
    scaling_vocab.png    the same vs V at fixed N and D

Dashed lines show the two sizes that separate the methods: N*D*4 bytes (dh, one float32 copy of the hidden states:
what a fused loss must allocate anyway, O(N*D)) and N*V*4 bytes (the float32 logits a naive loss materialises,
O(N*V)). A method that errors at a size (out of memory, say) simply has no point there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SWEEPS = {
    # device: (D, fixed V for the token sweep, tokens, fixed N for the vocab sweep, vocabularies, dtype, reps)
    "cpu": (256, 8000, (256, 512, 1024, 2048), 1024, (2000, 8000, 32000), "float32", 2),
    "cuda": (4096, 128256, (1024, 4096, 16384, 65536), 8192, (32000, 128256, 256000), "bfloat16", 3),
}
DEFAULT_METHODS = "naive,torch_chunked,trl,liger,cce,fastalign_torch,fastalign_triton"


def run_point(device: str, tokens: int, dim: int, vocab: int, args, scratch: Path, timeout=None) -> list[dict]:
    """One bench_linear_ce.py run; killed after ``timeout`` s (default --point-timeout), keeping the rows it wrote."""
    timeout = args.point_timeout if timeout is None else timeout
    out = scratch / f"n{tokens}_d{dim}_v{vocab}"
    dtype, reps = SWEEPS[device][5], args.reps or SWEEPS[device][6]
    command = [sys.executable, str(HERE / "bench_linear_ce.py"), "--device", device, "--tokens", str(tokens),
               "--dim", str(dim), "--vocab", str(vocab), "--dtype", dtype, "--reps", str(reps), "--warmup", "1",
               "--methods", args.methods, "--modes", args.modes, "--out", str(out)]  # fmt: skip
    if device == "cpu":
        command.append("--quick")  # one subprocess per method (all modes): the sweep's sizes are set explicitly
    print(f"N={tokens} D={dim} V={vocab}", flush=True)
    # A non-zero exit (e.g. naive out of memory at the largest N) still leaves the other rows: keep them.
    quiet = None if args.verbose else subprocess.DEVNULL
    process = subprocess.Popen(command, cwd=HERE, stdout=quiet, start_new_session=True)  # its own process group
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the run and its worker subprocesses
        process.wait()
        # bench_linear_ce.py rewrites its JSON after every method: the methods it finished are kept
        print(f"  N={tokens} V={vocab}: over its time limit ({timeout:.0f} s), stopped")
    path = out / "linear_ce.json"
    if not path.is_file():
        print(f"  no result at N={tokens} V={vocab}")
        return []
    report = json.loads(path.read_text())
    return [
        {"tokens": tokens, "dim": dim, "vocab": vocab, "dtype": dtype, "device_name": report["device"], **row}
        for row in report["rows"]
    ]


def plot(rows: list[dict], sweep: str, out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = "tokens" if sweep == "tokens" else "vocab"
    rows = [r for r in rows if r["sweep"] == sweep and "median_s" in r]
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (method, mode), points in sorted(_group(rows).items()):
        points.sort(key=lambda r: r[x_key])
        xs = [r[x_key] for r in points]
        label = f"{method} ({mode})" if len({r["mode"] for r in rows}) > 1 else method
        style = {"linewidth": 2.5} if method.startswith("fastalign") else {"linewidth": 1.2}
        ax_mem.plot(xs, [max(r["peak_extra_bytes"], 1) / 2**20 for r in points], "o-", label=label, **style)
        ax_time.plot(xs, [r["median_s"] * 1e3 for r in points], "o-", label=label, **style)
    if rows:  # the two reference sizes, float32 bytes, at the sweep's fixed sizes
        xs = sorted({r[x_key] for r in rows})
        first = rows[0]
        nd = [(x if sweep == "tokens" else first["tokens"]) * first["dim"] * 4 / 2**20 for x in xs]
        nv = [(x if sweep == "tokens" else first["tokens"]) * (first["vocab"] if sweep == "tokens" else x) * 4 / 2**20
              for x in xs]  # fmt: skip
        ax_mem.plot(xs, nd, "k--", linewidth=0.8, label="N·D·4 B (dh: O(N·D))")
        ax_mem.plot(xs, nv, "k:", linewidth=0.8, label="N·V·4 B (fp32 logits: O(N·V))")
    for ax, what in ((ax_mem, "peak extra memory (MiB)"), (ax_time, "median step time (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens N" if sweep == "tokens" else "vocabulary V")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    ax_mem.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = out / f"scaling_{sweep}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _group(rows):
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["mode"]), []).append(r)
    return groups


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=tuple(SWEEPS), default="cpu")
    p.add_argument("--head", help="a model head from heads.py: its D, and its V for the token sweep")
    p.add_argument("--dim", type=int, help="D (default: cpu 256, cuda 4096)")
    p.add_argument("--tokens", help="comma list of N for the token sweep")
    p.add_argument("--vocabs", help="comma list of V for the vocabulary sweep")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="forwarded to bench_linear_ce.py (missing: skipped)")
    p.add_argument("--modes", default="frozen", help="forwarded to bench_linear_ce.py")
    p.add_argument("--reps", type=int, help="timed steps per point (default: cpu 2, cuda 5)")
    p.add_argument(
        "--point-timeout", type=float, help="seconds per size; a size over it is stopped (what it finished stays)"
    )
    p.add_argument("--time-budget", type=float, help="seconds for the whole sweep: each size gets at most what is "
                   "left, and none starts with under 15 s left (the JSON keeps what was measured)")  # fmt: skip
    p.add_argument("--only", choices=("tokens", "vocab"), help="run one sweep only")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/<device>/")
    p.add_argument("--from-json", type=Path, help="plot an existing scaling.json, run nothing")
    p.add_argument("--verbose", action="store_true", help="show each bench_linear_ce.py run's output")
    args = p.parse_args(argv)

    out = args.out or HERE / "results" / args.device
    out.mkdir(parents=True, exist_ok=True)
    dim, fixed_vocab, tokens, fixed_tokens, vocabs, _, _ = SWEEPS[args.device]
    if args.head:
        from heads import get_head

        dim, fixed_vocab = get_head(args.head).dim, get_head(args.head).vocab
    dim = args.dim or dim
    tokens = [int(t) for t in args.tokens.split(",")] if args.tokens else tokens
    vocabs = [int(v) for v in args.vocabs.split(",")] if args.vocabs else vocabs

    if args.from_json:
        rows = json.loads(args.from_json.read_text())["rows"]
    else:
        rows, start = [], time.monotonic()
        points = [("tokens", n, fixed_vocab) for n in tokens if args.only != "vocab"]
        points += [("vocab", fixed_tokens, v) for v in vocabs if args.only != "tokens"]
        with tempfile.TemporaryDirectory(prefix="scaling_") as scratch:
            for sweep, n, v in points:
                timeout = args.point_timeout
                if args.time_budget is not None:
                    left = args.time_budget - (time.monotonic() - start)
                    if left < 15:
                        print(f"--time-budget {args.time_budget:.0f} s: {left:.0f} s left; N={n} V={v} on left out")
                        break
                    timeout = left if timeout is None else min(timeout, left)
                rows += [{"sweep": sweep, **r} for r in run_point(args.device, n, dim, v, args, Path(scratch), timeout)]
                # written after every size, so a run stopped by a time limit keeps what it measured
                (out / "scaling.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
        print(f"wrote {out / 'scaling.json'}")
    device_name = rows[0]["device_name"] if rows else args.device
    for sweep in ("tokens", "vocab"):
        if any(r["sweep"] == sweep for r in rows):
            first = next(r for r in rows if r["sweep"] == sweep)  # the fixed sizes, as run (also with --from-json)
            fixed = f"N={first['tokens']}" if sweep == "vocab" else f"V={first['vocab']}"
            title = f"{device_name}, {first['dtype']}, D={first['dim']} {fixed}: vs {sweep}"
            print(f"wrote {plot(rows, sweep, out, title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
