"""``fastalign bench``: the kernel benchmarks in ``benchmarks/`` as one command, with one combined table at the end.

    fastalign bench --quick --device cpu                         # tiny sizes, correctness smoke run (~1 min)
    fastalign bench --device cuda --heads llama3-8b              # the issue's GPU sizes for the Llama-3-8B head
    fastalign bench --kernels ce,dpo --peers naive,liger --out /tmp/bench

Each benchmark script runs as a subprocess of its own (``python benchmarks/bench_<name>.py ...``), exactly as a user
would run it, and writes its JSON; this command only translates the filters below into the scripts' flags, then
reads the JSON files back for the combined table.

    --kernels   ce (mean cross-entropy, frozen and trainable head), logprobs (per-token log-probs): bench_linear_ce.py
                dpo, orpo (fused preference losses): bench_preference.py
    --peers     naive, torch (torch's chunked F.linear_cross_entropy), trl, liger, cce (Cut Cross-Entropy), unsloth.
                fastalign's own implementations always run. A peer that is not installed, or that has no adapter
                for a kernel, is listed as skipped.
    --heads     model LM heads from benchmarks/heads.py (D and V forwarded as --dim/--vocab; one run per head).
                Without it the scripts' own defaults per device apply.

The benchmarks live in the repository checkout, next to the package; a wheel install does not ship them (the command
then says so and exits 2). ``FASTALIGN_BENCHMARKS=DIR`` points it at a checkout elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# kernel -> (script stem, what to forward). Script stems name the JSON each script writes (stem.json).
KERNELS = {
    "ce": ("linear_ce", ("--modes", "frozen,trainable")),
    "logprobs": ("linear_ce", ("--modes", "logprobs")),
    "dpo": ("preference", ("--losses", "dpo")),
    "orpo": ("preference", ("--losses", "orpo")),
}
SCRIPTS = {"linear_ce": "bench_linear_ce.py", "preference": "bench_preference.py"}

# peer -> (module that must be importable, {script stem: method names in that script}).
PEERS = {
    "naive": (None, {"linear_ce": ["naive"], "preference": ["naive"]}),
    "torch": (None, {"linear_ce": ["torch_chunked"]}),
    "trl": ("trl", {"linear_ce": ["trl"]}),
    "liger": ("liger_kernel", {"linear_ce": ["liger"], "preference": ["liger", "liger_eager"]}),
    "cce": ("cut_cross_entropy", {"linear_ce": ["cce", "cce_compile"]}),
    "unsloth": ("unsloth", {}),  # no adapter in the scripts yet: always reported as skipped
}
HEAD_NAMES = ("llama2-7b", "llama3-8b", "qwen2.5-7b", "gemma2-2b")  # benchmarks/heads.py; checked against it at run


def find_benchmarks() -> Path | None:
    """The ``benchmarks/`` folder of the checkout fastalign is imported from, or $FASTALIGN_BENCHMARKS."""
    candidates = [os.environ.get("FASTALIGN_BENCHMARKS"), Path(__file__).resolve().parent.parent / "benchmarks"]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "bench_linear_ce.py").is_file():
            return Path(candidate).resolve()
    return None


def _comma_list(value: str, known, what: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"fastalign bench: unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}")
    return names


def add_bench(commands) -> None:
    parser = commands.add_parser("bench", help="run the kernel benchmarks (benchmarks/) and print one table")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 reps: a correctness smoke run")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when visible, else cpu")
    parser.add_argument("--kernels", default=",".join(KERNELS), help=f"comma list from {','.join(KERNELS)}")
    parser.add_argument("--heads", help=f"comma list from {','.join(HEAD_NAMES)} (default: the scripts' sizes)")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma list from {','.join(PEERS)}")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: cpu fp32, cuda bf16")
    parser.add_argument("--reps", type=int, help="timed steps per case (default: the scripts')")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/<device>/ (--quick: .../quick/)")
    parser.set_defaults(run=run_bench)


def run_bench(args) -> int:
    bench_dir = find_benchmarks()
    if bench_dir is None:
        print(
            "fastalign bench: the benchmarks/ folder was not found. It is part of the source checkout, not of the "
            "wheel: clone the repository (pip install -e . there), or set FASTALIGN_BENCHMARKS=/path/to/benchmarks.",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, str(bench_dir))
    import bench_linear_ce  # noqa: PLC0415  (torch is imported here, not at `fastalign --help`)
    import heads as head_registry  # noqa: PLC0415

    device = args.device or ("cuda" if bench_linear_ce.torch.cuda.is_available() else "cpu")
    if device == "cuda" and not bench_linear_ce.torch.cuda.is_available():
        print("fastalign bench: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    kernels = _comma_list(args.kernels, KERNELS, "kernel")
    peers = _comma_list(args.peers, PEERS, "peer")
    heads = _comma_list(args.heads, head_registry.HEADS, "head") if args.heads else [None]
    out = args.out or bench_dir / "results" / bench_linear_ce.results_slug(device) / ("quick" if args.quick else "")

    # Peers: which are missing (skipped, never a failure), and which method names each script gets.
    skipped: list[tuple[str, str, str]] = []  # (peer, kernel or "*", reason)
    methods: dict[str, list[str]] = {stem: [] for stem in SCRIPTS}
    for peer in peers:
        module, per_script = PEERS[peer]
        if module and importlib.util.find_spec(module) is None:
            skipped.append((peer, "*", f"{module} is not installed"))
            continue
        for kernel in kernels:
            stem = KERNELS[kernel][0]
            if stem not in per_script:
                skipped.append((peer, kernel, "no adapter for this kernel in benchmarks/"))
        for stem, names in per_script.items():
            methods[stem] += [n for n in names if n not in methods[stem]]
    ours = {"linear_ce": [m for m in bench_linear_ce.METHODS if m.startswith("fastalign_")]}
    ours["preference"] = ours["linear_ce"]  # both scripts take fastalign_<impl> for every impl the dispatch offers

    # One run per (script, head): the kernels of one script are merged into one flag (--modes / --losses).
    runs: list[tuple[str, str | None, list[str]]] = []
    for stem in SCRIPTS:
        flags: dict[str, list[str]] = {}
        for kernel in kernels:
            if KERNELS[kernel][0] == stem:
                flag, value = KERNELS[kernel][1]
                flags.setdefault(flag, []).extend(value.split(","))
        if not flags:
            continue
        argv = ["--device", device, "--methods", ",".join(methods[stem] + ours[stem])]
        for flag, values in flags.items():
            argv += [flag, ",".join(dict.fromkeys(values))]
        argv += ["--quick"] * args.quick + ["--dtype", args.dtype] * bool(args.dtype)
        argv += ["--reps", str(args.reps)] * bool(args.reps)
        for head in heads:
            head_argv = head_registry.head_args(head) if head else []
            runs.append((stem, head, argv + head_argv + ["--out", str(out / head if head else out)]))

    failed = []
    for stem, head, argv in runs:
        command = [sys.executable, str(bench_dir / SCRIPTS[stem]), *argv]
        print(f"\n$ {' '.join(command[1:])}", flush=True)
        started = time.time()
        code = subprocess.call(command, cwd=bench_dir)
        print(f"[{SCRIPTS[stem]}{f' {head}' if head else ''}: exit {code}, {time.time() - started:.0f} s]", flush=True)
        if code:
            failed.append((stem, head, code))

    print_combined(runs, skipped, out)
    for stem, head, code in failed:
        print(f"FAILED: {SCRIPTS[stem]}{f' --head {head}' if head else ''} exited {code}")
    return 1 if failed else 0


def _row_line(kernel, head, mode, method, row) -> str:
    ms = f"{row['median_s'] * 1e3:10.2f}" if "median_s" in row else f"{'-':>10}"
    mib = f"{row['peak_extra_bytes'] / 2**20:10.1f}" if "peak_extra_bytes" in row else f"{'-':>10}"
    ratio = row.get("time_vs_naive")
    ratio = f"{ratio:8.2f}" if ratio is not None else f"{'-':>8}"
    return f"{kernel:<9} {head or '-':<11} {mode:<10} {method:<17} {ms} {mib} {ratio}  {row.get('status', '-')}"


def print_combined(runs, skipped, out: Path) -> None:
    """One table over every JSON the runs wrote, then the peers that were skipped."""
    print(f"\n{'kernel':<9} {'head':<11} {'mode':<10} {'method':<17} {'median ms':>10} {'peak MiB':>10} "
          f"{'vs naive':>8}  status")  # fmt: skip
    for stem, head, _ in runs:
        path = (out / head if head else out) / f"{stem}.json"
        if not path.is_file():
            print(f"{stem:<9} {head or '-':<11} (no {path.name}: the run did not finish)")
            continue
        for row in json.loads(path.read_text())["rows"]:
            kernel = row.get("loss") or ("logprobs" if row["mode"].startswith("logprobs") else "ce")
            print(_row_line(kernel, head, row["mode"], row["method"], row))
    for peer, kernel, reason in skipped:
        print(f"{kernel:<9} {'-':<11} {'-':<10} {peer:<17} {'-':>10} {'-':>10} {'-':>8}  skipped: {reason}")
    print(f"\nJSON under {out}")


if __name__ == "__main__":  # python -m fastalign.bench ... (until cli.py registers it)
    import argparse

    root = argparse.ArgumentParser(prog="fastalign")
    add_bench(root.add_subparsers(dest="command", required=True))
    parsed = root.parse_args()
    sys.exit(parsed.run(parsed))
