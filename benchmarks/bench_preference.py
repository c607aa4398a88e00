"""Fused linear preference losses (DPO, ORPO) benchmark: naive PyTorch, Liger-Kernel and fastalign in one run.

    python benchmarks/bench_preference.py --device cpu           # 4 pairs x T=512, D=1024, V=32000, float32
    python benchmarks/bench_preference.py --device cuda          # 8 pairs x T=2048, Llama-3-8B head, bf16
    python benchmarks/bench_preference.py --device cpu --quick   # tiny sizes, correctness only (CI)
    python benchmarks/bench_preference.py --device cpu --rounds 3 --reps 2   # the cases take turns 3 times

One timed step is the loss forward + backward from the last hidden states [2B, T, D] (B chosen rows, then B
rejected) and the LM head [V, D], for each (loss, mode, method). Every method's loss and gradients are checked
against an exact float32 reference computed from the same inputs, so a fast wrong answer cannot win; the exit
status is 1 on any correctness failure or when a fastalign method errors. See benchmarks/README.md.

Timing, peak memory (CPU: a subprocess per case, the allocator's events; CUDA: max_memory_allocated) and the
correctness comparison are bench_linear_ce.py's, imported from it: the two benchmarks measure the same way.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

# Same as bench_linear_ce.py: the Triton interpreter would make Triton "run" on CPU at interpreter speed.
if __name__ == "__main__":  # imported as a module (fastalign bench, tests), leave the caller's environment alone
    os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_linear_ce import (  # noqa: E402
    IGNORE_INDEX,
    LOGIT_STD,
    TOLERANCES,
    Mode,
    Step,
    Unavailable,
    compare,
    device_name,
    fastalign_impls,
    fmt,
    git_commit,
    measure,
    memory_method,
    pick,
    report_case,
    run_worker,
    versions,
    write_report,
)

LOSSES = ("dpo", "orpo")
# bench_linear_ce's Mode: kind "ce" is "a scalar loss, then loss.backward()", which is what every case here is.
MODES = {
    "frozen": Mode("ce", False, "loss fwd+bwd, frozen head (d hidden only)"),
    "trainable": Mode("ce", True, "loss fwd+bwd, trainable head (d hidden and d weight)"),
}

# Targets (printed, not asserted), per device: (what, limit). "liger" is Liger's default, torch.compile'd path.
TARGETS = {
    "cpu": (("memory vs liger", 0.5), ("time vs naive", 0.8)),
    "cuda": (("time vs liger", 0.5), ("memory vs liger", 1.0)),
}


# --------------------------------------------------------------------------------------------------------------------
# Inputs.


@dataclass(frozen=True)
class Config:
    device: str
    pairs: int
    seq: int
    dim: int
    vocab: int
    prompt_fraction: float
    dtype: str
    beta: float
    reps: int
    warmup: int
    seed: int
    quick: bool
    rounds: int = 1


@dataclass
class Inputs:
    hidden: torch.Tensor  # [2B, T, D]: rows 0..B-1 chosen, B..2B-1 rejected
    weight: torch.Tensor  # [V, D]
    labels: torch.Tensor  # [2B, T] int64, IGNORE_INDEX on each row's prompt (what fastalign takes, shift=True)
    targets: torch.Tensor  # [2B, T]: labels shifted left by one (what naive and Liger take), last position ignored
    ref_logps: torch.Tensor  # [2B] float32 precomputed reference summed log-probs (DPO); chosen then rejected


def make_inputs(cfg: Config, ref_logps: list[float] | None = None) -> Inputs:
    """The same inputs in every process: drawn on the CPU from one seeded generator, then moved."""
    g = torch.Generator().manual_seed(cfg.seed)
    n, dtype, device = 2 * cfg.pairs, getattr(torch, cfg.dtype), torch.device(cfg.device)
    hidden = torch.randn(n, cfg.seq, cfg.dim, generator=g)
    weight = torch.randn(cfg.vocab, cfg.dim, generator=g).mul_(LOGIT_STD / math.sqrt(cfg.dim))
    labels = torch.randint(0, cfg.vocab, (n, cfg.seq), generator=g)
    labels[:, : int(cfg.prompt_fraction * cfg.seq)] = IGNORE_INDEX
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    refs = torch.zeros(n) if ref_logps is None else torch.tensor(ref_logps, dtype=torch.float32)
    return Inputs(
        hidden.to(device, dtype), weight.to(device, dtype), labels.to(device), targets.to(device), refs.to(device)
    )


# --------------------------------------------------------------------------------------------------------------------
# The objectives, written once: from per-token log-probs [2B, T] (0 where the target is ignored) to the loss.
# The naive baseline and the exact reference both call them.


def dpo_objective(token_logps, mask, ref_logps, beta):
    """DPO, sigmoid: -mean logsigmoid(beta ((c - ref_c) - (r - ref_r))) on summed completion log-probs."""
    logps = token_logps.sum(-1) - ref_logps
    b = logps.shape[0] // 2
    return -F.logsigmoid(beta * (logps[:b] - logps[b:])).mean()


def orpo_objective(token_logps, mask, ref_logps, beta):
    """ORPO: NLL over the chosen tokens - beta * mean logsigmoid(log odds(A_c) - log odds(A_r)), A = mean log-prob."""
    b = token_logps.shape[0] // 2
    avg = token_logps.sum(-1) / mask.sum(-1)
    c, r = avg[:b], avg[b:]
    log_odds = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
    nll = -token_logps[:b].sum() / mask[:b].sum()
    return nll - beta * F.logsigmoid(log_odds).mean()


OBJECTIVES = {"dpo": dpo_objective, "orpo": orpo_objective}


def naive_token_logps(hidden, weight, targets):
    """TRL-style: the full float32 logits [.., T, V], log_softmax, gather; 0 at ignored targets."""
    logp = (hidden @ weight.T).float().log_softmax(-1)
    logp = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp.masked_fill(targets == IGNORE_INDEX, 0.0)


# --------------------------------------------------------------------------------------------------------------------
# Methods. A loader returns, for a loss and this process's inputs, fn(hidden, weight, targets) -> scalar loss (the
# signature bench_linear_ce's Step calls); it raises Unavailable (or ImportError) when the method cannot run here.


@dataclass(frozen=True)
class Method:
    name: str
    about: str
    load: Callable[[str, Inputs, Config], Callable]  # (loss, inputs, cfg) -> fn
    ours: bool = False  # fastalign: an error (not a skip) fails the run
    zero_reference: bool = False  # DPO without the precomputed reference log-probs (see load_liger)


def load_naive(loss, x, cfg):
    objective = OBJECTIVES[loss]

    def fn(hidden, weight, targets):
        return objective(naive_token_logps(hidden, weight, targets), targets != IGNORE_INDEX, x.ref_logps, cfg.beta)

    return fn


def liger_loader(compiled: bool):
    def load(loss, x, cfg):
        if cfg.quick and compiled:
            raise Unavailable("torch.compile warm-up does not fit --quick")
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss, LigerFusedLinearORPOLoss

        # Liger's DPO takes a reference model's hidden states (ref_input), or none; not precomputed log-probs. With
        # use_ref_model=False it does exactly the policy work of the precomputed case (the reference enters only
        # through 2B numbers), with reference log-probs 0, and is checked against the reference with zeros there.
        if loss == "dpo":
            module = LigerFusedLinearDPOLoss(beta=cfg.beta, use_ref_model=False, compiled=compiled)
        else:
            module = LigerFusedLinearORPOLoss(beta=cfg.beta, compiled=compiled)
        return lambda hidden, weight, targets: module(weight, hidden, targets)[0]  # Liger: (weight, input, target)

    return load


def fastalign_loader(impl: str):
    def load(loss, x, cfg):
        import fastalign
        from fastalign.core.dispatch import resolve

        if impl == "triton" and cfg.device != "cuda":
            raise Unavailable("Triton kernels need a CUDA device")
        try:
            resolve(impl, torch.device(cfg.device))
        except RuntimeError as error:
            raise Unavailable(str(error)) from error
        b = cfg.pairs
        if loss == "dpo":
            module = fastalign.FusedLinearDPOLoss(beta=cfg.beta, impl=impl)
            refs = {"ref_chosen_logps": x.ref_logps[:b], "ref_rejected_logps": x.ref_logps[b:]}
        else:
            module, refs = fastalign.FusedLinearORPOLoss(beta=cfg.beta, impl=impl), {}
        # fastalign takes the unshifted labels (shift=True, its default), as a trainer hands them over.
        return lambda hidden, weight, targets: module(hidden, weight, x.labels, **refs)[0]

    return load


METHODS = {
    m.name: m
    for m in [
        Method(
            "naive", "logits = (h @ W.T).float(), log_softmax, gather, per-sequence sums, loss (TRL-style)", load_naive
        ),
        Method(
            "liger",
            "liger_kernel.chunked_loss LigerFusedLinear{DPO,ORPO}Loss, compiled=True (its default; one pair per chunk)",
            liger_loader(compiled=True),
            zero_reference=True,
        ),
        Method(
            "liger_eager",
            "the same with compiled=False",
            liger_loader(compiled=False),
            zero_reference=True,
        ),
        *(
            Method(
                f"fastalign_{impl}",
                f"fastalign.FusedLinear{{DPO,ORPO}}Loss(impl='{impl}')",
                fastalign_loader(impl),
                ours=True,
            )
            for impl in fastalign_impls()
        ),
    ]
}


# --------------------------------------------------------------------------------------------------------------------
# The exact reference: the objectives on float32 copies of the inputs, one sequence's logits at a time, so that it
# fits where the naive baseline does not (16 x 2048 x 128256 float32 logits are 16.8 GB per copy).


def reference_token_logps(x: Inputs) -> torch.Tensor:
    """float32 per-token log-probs [2B, T] of the targets, without gradients."""
    w = x.weight.detach().float()
    with torch.no_grad():
        return torch.stack([naive_token_logps(h.float(), w, t) for h, t in zip(x.hidden.detach(), x.targets)])


def reference(x: Inputs, loss: str, beta: float, token_logps: torch.Tensor, zero_ref: bool) -> dict[str, torch.Tensor]:
    """Loss, d hidden and d weight in float32: dL/d(token log-probs) first, then each row's logits recomputed."""
    mask = x.targets != IGNORE_INDEX
    leaf = token_logps.clone().requires_grad_()
    refs = torch.zeros_like(x.ref_logps) if zero_ref else x.ref_logps
    value = OBJECTIVES[loss](leaf, mask, refs, beta)
    (upstream,) = torch.autograd.grad(value, leaf)
    w = x.weight.detach().float().requires_grad_()
    grad_hidden, grad_weight = torch.empty(x.hidden.shape, device=w.device), torch.zeros_like(w)
    for i in range(x.hidden.shape[0]):
        h = x.hidden[i].detach().float().requires_grad_()
        dh, dw = torch.autograd.grad(naive_token_logps(h, w, x.targets[i]), (h, w), upstream[i])
        grad_hidden[i] = dh
        grad_weight += dw
    return {"value": value.detach(), "grad_hidden": grad_hidden, "grad_weight": grad_weight}


def draw_reference_logps(cfg: Config, token_logps: torch.Tensor) -> list[float]:
    """Precomputed reference log-probs: the policy's own summed log-probs (as at the start of DPO, reference = policy)
    minus noise with std 1 / (beta sqrt 2), so that the DPO logits beta*z are ~N(0, 1): neither saturated nor 0."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    noise = torch.randn(token_logps.shape[0], generator=g) / (cfg.beta * math.sqrt(2))
    return (token_logps.sum(-1).cpu() - noise).tolist()


# --------------------------------------------------------------------------------------------------------------------
# Running cases: in this process (CUDA) or one subprocess per case (CPU: each case's imports and warnings kept apart).


def run_case(cfg: Config, method: Method, loss: str, mode_name: str, x: Inputs):
    fn = method.load(loss, x, cfg)
    return measure(Step(fn, x, MODES[mode_name]), cfg)


def worker(spec: dict) -> None:
    """Subprocess entry: run spec["cases"] ([method, loss, mode] each) one after the other, each with fresh inputs."""
    cfg = Config(**spec["config"])
    for name, loss, mode_name in spec["cases"]:
        x = make_inputs(cfg, spec["ref_logps"])
        measurement, outputs = run_case(cfg, METHODS[name], loss, mode_name, x)
        report_case(spec["outputs"], (name, loss, mode_name), measurement, outputs)
        del outputs, x


def paired_worker(spec: dict) -> None:
    """Subprocess entry for --paired: one loss and mode, every method in this one process, their steps taking turns
    (the order rotating every round); prints the step times as one ``PAIRED {method: [seconds]}`` line."""
    cfg = Config(**spec["config"])
    x = make_inputs(cfg, spec["ref_logps"])
    steps = {name: Step(METHODS[name].load(spec["loss"], x, cfg), x, MODES[spec["mode"]]) for name in spec["methods"]}
    for step in steps.values():
        for _ in range(cfg.warmup):
            step()
    names, times = list(steps), {name: [] for name in steps}
    for turn in range(spec["rounds"]):
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    print("PAIRED " + json.dumps(times), flush=True)


def run_paired(cfg: Config, loss: str, mode: str, methods: list[str], rounds: int, ref_logps: list[float]) -> dict:
    """{method: [seconds per round]} from a paired_worker process (naive first in ``methods``)."""
    spec = {"config": asdict(cfg), "loss": loss, "mode": mode, "methods": methods, "rounds": rounds,
            "ref_logps": ref_logps, "paired": True}  # fmt: skip
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800 + 60 * rounds * len(methods))
    for line in proc.stdout.splitlines():
        if line.startswith("PAIRED "):
            return json.loads(line[len("PAIRED ") :])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    raise RuntimeError(f"paired timing of {loss} {mode} failed: {lines[-1] if lines else proc.returncode}")


def add_paired_ratios(rows: list[dict], loss: str, mode: str, times: dict) -> None:
    """time vs naive (and vs liger) as the median over rounds of the ratio of two steps of the same round: a drift
    of the host's speed over seconds to minutes cancels in each ratio."""
    liger = "liger" if "liger" in times else "liger_eager" if "liger_eager" in times else None
    for r in rows:
        if r["loss"] != loss or r["mode"] != mode or r["method"] not in times:
            continue
        mine = times[r["method"]]
        r["paired_times_s"] = mine
        r["time_vs_naive_paired"] = statistics.median(t / n for t, n in zip(mine, times["naive"]))
        r["time_vs_liger_paired"] = statistics.median(t / n for t, n in zip(mine, times[liger])) if liger else None


def run_subprocess(cfg: Config, cases: list[tuple[str, str, str]], ref_logps: list[float], scratch: Path) -> dict:
    """{case: (Measurement, outputs) or the exception that stopped it} from one worker process."""
    spec = {"config": asdict(cfg), "cases": cases, "ref_logps": ref_logps, "outputs": str(scratch)}
    return run_worker(__file__, spec, [tuple(case) for case in cases], scratch, cfg.quick)


def run_in_process(cfg: Config, cases, x: Inputs) -> dict:
    """CUDA: the allocator's own peak statistics need no process of their own."""
    results = {}
    for case in cases:
        try:
            results[case] = run_case(cfg, METHODS[case[0]], case[1], case[2], x)
        except Exception as error:  # without its traceback, whose frames would keep the failed step's tensors
            results[case] = error.with_traceback(None)
        finally:
            x.hidden.grad = x.weight.grad = None
            torch.cuda.empty_cache()
    return results


def skip_reason(cfg: Config, method: Method, loss: str, x: Inputs) -> str | None:
    """None if the method loads here, else why it is skipped (loading builds modules only, it runs nothing)."""
    try:
        method.load(loss, x, cfg)
    except (Unavailable, ImportError) as error:
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"[:160]
    return None


def check(cfg: Config, method: Method, result, ref: dict) -> dict:
    """One row of the report from a (Measurement, outputs) result, or from the exception that stopped the method."""
    if isinstance(result, Exception):
        oom = isinstance(result, torch.OutOfMemoryError) or "out of memory" in str(result).lower()
        return {
            "status": f"error: {type(result).__name__}: {str(result)[:200]}",
            # a baseline running out of memory is a finding (the GPU config may not fit naive); anything else is a bug
            "fails_run": method.ours or (method.name == "naive" and not oom),
        }
    measurement, outputs = result
    errors = compare(outputs, ref, getattr(torch, cfg.dtype))
    bad = [f"{k} err {e['max_abs_err']:.1e} > tol {e['tol']:.1e}" for k, e in errors.items() if not e["ok"]]
    return {
        **asdict(measurement),
        "median_s": statistics.median(measurement.times_s),
        "errors": errors,
        "status": "FAIL: " + "; ".join(bad) if bad else "ok",
        "fails_run": bool(bad),
    }


def pool_rounds(earlier: dict | None, row: dict) -> dict:
    """One row from a case's rows of successive rounds: timed steps pooled, the largest peak and errors kept, the
    first failure kept."""
    if earlier is None:
        return row
    if "median_s" not in earlier or "median_s" not in row:
        return earlier if "median_s" not in earlier else row
    pooled = {**row, "times_s": earlier["times_s"] + row["times_s"]}
    pooled["cpu_times_s"] = earlier["cpu_times_s"] + row["cpu_times_s"]
    pooled["median_s"] = statistics.median(pooled["times_s"])
    pooled["peak_extra_bytes"] = max(earlier["peak_extra_bytes"], row["peak_extra_bytes"])
    pooled["notes"] = sorted(set(earlier["notes"]) | set(row["notes"]))
    pooled["errors"] = {
        k: max(earlier["errors"][k], e, key=lambda error: error["max_abs_err"]) for k, e in row["errors"].items()
    }
    if earlier["status"] != "ok":
        pooled["status"], pooled["fails_run"] = earlier["status"], earlier["fails_run"]
    return pooled


# --------------------------------------------------------------------------------------------------------------------
# Report.


def add_ratios(rows: list[dict]) -> None:
    """time vs naive, time vs liger, memory vs liger (same loss and mode; Liger's compiled path, else its eager one)."""
    measured = {(r["method"], r["loss"], r["mode"]): r for r in rows if "median_s" in r}
    for (_, loss, mode), r in measured.items():
        naive = measured.get(("naive", loss, mode))
        liger = measured.get(("liger", loss, mode)) or measured.get(("liger_eager", loss, mode))
        r["time_vs_naive"] = r["median_s"] / naive["median_s"] if naive else None
        r["time_vs_liger"] = r["median_s"] / liger["median_s"] if liger else None
        r["memory_vs_naive"] = r["peak_extra_bytes"] / naive["peak_extra_bytes"] if naive else None
        r["memory_vs_liger"] = r["peak_extra_bytes"] / liger["peak_extra_bytes"] if liger else None
        r["liger_compared"] = liger["method"] if liger else None


def check_targets(rows: list[dict], device: str) -> list[dict]:
    """Each fastalign row against the device's targets; a time ratio is the paired one when --paired measured it."""
    checks = []
    for r in rows:
        if not r["method"].startswith("fastalign_") or r["status"] != "ok":
            continue
        for what, limit in TARGETS[device]:
            key = what.replace(" ", "_")
            paired = r.get(key + "_paired") is not None
            ratio = r[key + "_paired"] if paired else r.get(key)
            if ratio is not None:
                checks.append({"method": r["method"], "loss": r["loss"], "mode": r["mode"], "what": what,
                               "paired": paired, "ratio": ratio, "limit": limit, "met": ratio <= limit})  # fmt: skip
    return checks


def print_table(rows: list[dict]) -> None:
    headers = ["loss", "mode", "method", "median ms", "cpu ms", "peak extra MiB", "time vs naive", "time vs liger",
               "paired vs naive", "paired vs liger", "mem vs naive", "mem vs liger", "loss err", "grad err",
               "status"]  # fmt: skip
    lines = [
        [
            r["loss"],
            r["mode"],
            r["method"],
            fmt(r["median_s"] * 1e3 if "median_s" in r else None, ".1f"),
            fmt(statistics.median(r["cpu_times_s"]) * 1e3 if r.get("cpu_times_s") else None, ".1f"),
            fmt(r["peak_extra_bytes"] / 2**20 if "peak_extra_bytes" in r else None, ".1f"),
            fmt(r.get("time_vs_naive"), ".2f"),
            fmt(r.get("time_vs_liger"), ".2f"),
            fmt(r.get("time_vs_naive_paired"), ".2f"),
            fmt(r.get("time_vs_liger_paired"), ".2f"),
            fmt(r.get("memory_vs_naive"), ".2f"),
            fmt(r.get("memory_vs_liger"), ".2f"),
            fmt(r.get("errors", {}).get("value", {}).get("max_abs_err"), ".1e"),
            fmt(max((e["max_abs_err"] for k, e in r.get("errors", {}).items() if k != "value"), default=None), ".1e"),
            r["status"],
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())


# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--pairs", type=int, help="B preference pairs, 2B rows (default: cpu 4, cuda 8, --quick 2)")
    p.add_argument("--seq", type=int, help="T tokens per row (default: cpu 512, cuda 2048, --quick 64)")
    p.add_argument("--dim", type=int, help="D hidden size (default: cpu 1024, cuda 4096, --quick 64)")
    p.add_argument("--vocab", type=int, help="V vocabulary (default: cpu 32000, cuda 128256, --quick 1000)")
    p.add_argument("--prompt-fraction", type=float, default=0.25, help="labels -100 on this first part of each row")
    p.add_argument("--dtype", choices=tuple(str(d).removeprefix("torch.") for d in TOLERANCES),
                   help="default: float32 on cpu, bfloat16 on cuda")  # fmt: skip
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--reps", type=int, help="timed steps per case (default: cpu 5, cuda 20, --quick 2)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: cpu 1, cuda 3)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="CPU: run every case this many times, the cases taking "
        "turns, and pool the timed steps (a drift of the machine's speed then hits every method alike)",
    )
    p.add_argument(
        "--paired",
        type=int,
        default=0,
        help="CPU: then time every (loss, mode) again with all its methods in one process, one step each per round "
        "for this many rounds, and take time ratios per round (paired; the targets use them)",
    )
    p.add_argument("--losses", default=",".join(LOSSES), help=f"comma list from {','.join(LOSSES)}")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list from {','.join(MODES)}")
    p.add_argument("--methods", help=f"comma list from {','.join(METHODS)} (default: all; naive always runs)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 reps: a correctness smoke run for CI")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write preference.json here (default: benchmarks/results/<device>/; "
                   "--quick writes nothing unless --out is given)")  # fmt: skip
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    cuda = args.device == "cuda"
    sizes = (2, 64, 64, 1000) if args.quick else (8, 2048, 4096, 128256) if cuda else (4, 512, 1024, 32000)
    cfg = Config(
        device=args.device,
        pairs=args.pairs or sizes[0],
        seq=args.seq or sizes[1],
        dim=args.dim or sizes[2],
        vocab=args.vocab or sizes[3],
        prompt_fraction=args.prompt_fraction,
        dtype=args.dtype or ("bfloat16" if cuda else "float32"),
        beta=args.beta,
        reps=args.reps or (2 if args.quick else 20 if cuda else 5),
        warmup=args.warmup if args.warmup is not None else (3 if cuda else 1),
        seed=args.seed,
        quick=args.quick,
        rounds=1 if cuda else max(1, args.rounds),
    )
    losses = pick(args.losses, LOSSES)
    modes = pick(args.modes, MODES)
    methods = pick(args.methods, METHODS) if args.methods else list(METHODS)
    if "naive" not in methods:
        methods = ["naive", *methods]  # the baseline every time ratio is taken against
    return args, cfg, losses, modes, methods


def main(argv=None) -> int:
    args, cfg, losses, modes, method_names = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        paired_worker(spec) if spec.get("paired") else worker(spec)
        return 0
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")

    started, load_start = time.time(), os.getloadavg()
    print(f"device {device_name(cfg.device)}; {cfg.pairs} pairs x T={cfg.seq}, D={cfg.dim}, V={cfg.vocab}, "
          f"{cfg.dtype}, prompt {cfg.prompt_fraction:.0%} of each row, beta={cfg.beta}, "
          f"{cfg.warmup} warm-up + {cfg.reps} timed steps, {cfg.rounds} round(s)", flush=True)  # fmt: skip
    if cfg.device == "cpu" and load_start[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load_start[0]:.1f} on {os.cpu_count()} CPUs: other work skews timings")

    # References first: the policy's token log-probs also give the precomputed DPO reference log-probs.
    x = make_inputs(cfg)
    token_logps = reference_token_logps(x)
    ref_logps = draw_reference_logps(cfg, token_logps)
    x = make_inputs(cfg, ref_logps)
    skipped = {(name, loss): skip_reason(cfg, METHODS[name], loss, x) for name in method_names for loss in losses}
    references = {}
    for loss in losses:
        for zero_ref in sorted({loss == "dpo" and METHODS[n].zero_reference for n in method_names}):
            references[loss, zero_ref] = reference(x, loss, cfg.beta, token_logps, zero_ref)
    del token_logps
    if cfg.device != "cuda":
        del x  # each worker makes its own

    cases = [(n, loss, mode) for loss in losses for mode in modes for n in method_names if not skipped[n, loss]]
    # CUDA: all in this process, one case at a time. CPU: one subprocess per case for a clean memory high-water mark;
    # --quick: one per method (start-up and imports cost more than the tiny cases).
    if cfg.device == "cuda":
        batches = [[c] for c in cases]
    elif cfg.quick:
        batches = [[c for c in cases if c[0] == name] for name in method_names]
    else:
        batches = [[c] for c in cases]
    checked = {}
    for batch in [batch for _ in range(cfg.rounds) for batch in batches if batch]:
        if cfg.device == "cuda":
            results = run_in_process(cfg, batch, x)
        else:
            with tempfile.TemporaryDirectory(prefix="bench_preference_") as scratch:
                results = run_subprocess(cfg, batch, ref_logps, Path(scratch))
        for (name, loss, mode), result in results.items():  # checked at once: the gradients are not kept around
            method = METHODS[name]
            ref = references[loss, loss == "dpo" and method.zero_reference]  # compared: what the step returned
            row = check(cfg, method, result, ref)
            row = checked[name, loss, mode] = pool_rounds(checked.get((name, loss, mode)), row)
            speed = (
                f"{row['median_s'] * 1e3:.1f} ms, {row['peak_extra_bytes'] / 2**20:.1f} MiB, "
                if "median_s" in row
                else ""
            )
            print(f"  {loss:<5} {mode:<10} {name:<16} {speed}{row['status']}", flush=True)
        del results
        if args.out is not None:  # rewritten after every case: a run stopped by a time limit keeps its rows
            partial = [{"loss": c[1], "mode": c[2], "method": c[0], **row} for c, row in checked.items()]
            write_report({"benchmark": "preference", "complete": False, "device": device_name(cfg.device),
                          "config": asdict(cfg), "rows": partial}, "preference.json", args.out, cfg.device,
                         cfg.quick)  # fmt: skip

    rows = [
        {
            "loss": loss,
            "mode": mode,
            "method": name,
            **checked.get((name, loss, mode), {"status": f"skipped: {skipped[name, loss]}"}),
        }
        for loss in losses
        for mode in modes
        for name in method_names
    ]
    add_ratios(rows)
    if cfg.device == "cpu" and args.paired > 0:
        for loss in losses:
            for mode in modes:
                ok = [r["method"] for r in rows if (r["loss"], r["mode"]) == (loss, mode) and r["status"] == "ok"]
                if "naive" in ok and len(ok) > 1:
                    print(f"  paired timing: {loss} {mode}, {', '.join(ok)}, {args.paired} rounds", flush=True)
                    times = run_paired(cfg, loss, mode, ok, args.paired, ref_logps)
                    add_paired_ratios(rows, loss, mode, times)
    targets = [] if cfg.quick else check_targets(rows, cfg.device)  # set for the default sizes, not tiny ones
    report = {
        "benchmark": "preference",
        "complete": True,
        "device": device_name(cfg.device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "versions": versions(),
        "config": {
            **asdict(cfg),
            "paired_rounds": args.paired,
            "rows": 2 * cfg.pairs,
            "scored_tokens_per_row": cfg.seq - int(cfg.prompt_fraction * cfg.seq),  # labels shifted by one
            "torch_threads": torch.get_num_threads(),
            "logit_std": LOGIT_STD,
        },
        "memory_method": memory_method(cfg.device),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "wall_s": time.time() - started,
        "tolerances": {str(k).removeprefix("torch."): v for k, v in TOLERANCES.items()},
        "methods": {name: METHODS[name].about for name in method_names},
        "modes": {name: MODES[name].about for name in modes},
        "targets": targets,
        "rows": rows,
    }
    written = write_report(report, "preference.json", args.out, cfg.device, cfg.quick)

    print()
    for r in rows:
        for note in r.get("notes", []):
            print(f"note: {r['loss']} {r['mode']} {r['method']}: {note}")
    for t in targets:
        how = " (paired)" if t["paired"] else ""
        print(f"target: {t['method']} {t['loss']} {t['mode']}: {t['what']}{how} {t['ratio']:.2f} (<= {t['limit']}): "
              f"{'met' if t['met'] else 'MISSED'}")  # fmt: skip
    if written is not None:
        print(f"wrote {written}")
    print()
    print_table(rows)
    return 1 if any(r.get("fails_run") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
