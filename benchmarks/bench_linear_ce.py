"""Fused linear cross-entropy / log-prob benchmark: every implementation side by side, in one run.

    python benchmarks/bench_linear_ce.py --device cpu            # N=4096 D=1024 V=32000 float32
    python benchmarks/bench_linear_ce.py --device cuda           # Llama-3-8B head: N=16384 D=4096 V=128256 bf16
    python benchmarks/bench_linear_ce.py --device cpu --quick    # tiny sizes, correctness only (CI)

Each (method, mode) is timed (median of --reps after --warmup steps), its peak memory above the inputs is measured,
and its loss/log-probs and gradients are checked against a float32 naive reference computed from the same inputs,
so a fast wrong answer cannot win. The exit status is 1 if any correctness check fails, or if the naive baseline or
a fastalign method errors. See benchmarks/README.md for the columns.

Memory, above what is in use once the inputs exist and the warm-up steps have run:
    CPU   each (method, mode) runs in a subprocess of its own (--quick: one per method). One more, untimed step runs
          under torch.profiler with profile_memory: the peak of the running sum of the CPU allocator's allocation
          and free events (exact tensor memory, like CUDA's max_memory_allocated; see cpu_tensor_peak).
    CUDA  one process; baseline = memory_allocated() after warm-up, peak = max_memory_allocated() over the timed steps.
Both include the gradients each step returns (dh [N, D], and dW [V, D] for a trainable head).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The Triton interpreter (tests/conftest.py sets it on CPU) makes Triton "run" on CPU at interpreter speed: useless
# for timings, so the benchmark never uses it. It is read when triton is imported, hence before `import torch`.
if __name__ == "__main__":  # imported as a module (fastalign bench, tests), leave the caller's environment alone
    os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

IGNORE_INDEX = -100
LOGIT_STD = 2.0  # weight ~ N(0, (LOGIT_STD / sqrt(D))^2) with hidden ~ N(0, 1): logits of std ~2, like a trained LM
TRL_VOCAB_CHUNK = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE: the vocabulary tile add_fused_lm_head uses
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Correctness tolerance, relative to the largest |reference| entry of each output (loss or log-probs, dh, dW):
#   float32   chunked sums differ from one big reduction by ~1e-6 relative; 1e-4 / 1e-3 leaves room for that and
#             still catches any real bug (a wrong denominator or a dropped term is a >1% error).
#   bf16/fp16 the naive baseline itself rounds the logits to bf16 before the upcast (|z| ~ 10 -> ~0.04 absolute) and
#             every method returns bf16 gradients (2^-8 relative); fused methods also skip tiny gradient terms
#             (Cut Cross-Entropy's filter_eps).
TOLERANCES = {
    torch.float32: {"value": 1e-4, "grad": 1e-3},
    torch.bfloat16: {"value": 2e-2, "grad": 5e-2},
    torch.float16: {"value": 1e-2, "grad": 2e-2},
}

# Targets the project set for fastalign's chunked PyTorch path (printed, not asserted).
TIME_TARGET_VS_NAIVE = 0.9
MEMORY_TARGET_VS_TORCH_CHUNKED = 1.0


# --------------------------------------------------------------------------------------------------------------------
# Modes: what one timed step computes.


@dataclass(frozen=True)
class Mode:
    kind: str  # "ce": mean cross-entropy, loss.backward();  "logprobs": per-token log p, logp.backward(random [N])
    trainable_head: bool  # False: only hidden requires grad (LoRA / frozen LM head)
    about: str


MODES = {
    "frozen": Mode("ce", False, "mean CE fwd+bwd, frozen head (d hidden only)"),
    "trainable": Mode("ce", True, "mean CE fwd+bwd, trainable head (d hidden and d weight)"),
    "logprobs": Mode("logprobs", False, "per-token log-probs fwd+bwd with a random upstream gradient, frozen head"),
    "logprobs_trainable": Mode("logprobs", True, "per-token log-probs fwd+bwd, trainable head"),
}
DEFAULT_MODES = ("frozen", "trainable", "logprobs")


# --------------------------------------------------------------------------------------------------------------------
# Methods. A loader imports the library and returns its functions, each (hidden [N, D], weight [V, D], targets [N]):
# `ce` returns the mean cross-entropy over non-ignored targets, `logprobs` returns float [N] log p(target), 0.0 at
# ignored positions. A loader raises Unavailable (or ImportError) when the method cannot run here: reported as
# "skipped: <reason>", never as a failure.


class Unavailable(Exception):
    pass


@dataclass
class Impl:
    ce: Callable | None
    logprobs: Callable | None = None


@dataclass(frozen=True)
class Method:
    name: str
    about: str
    load: Callable[[torch.device, bool], Impl]  # (device, quick) -> Impl
    probe: bool = False  # Triton kernels: run once on tiny inputs first, skipped unless they genuinely run
    ours: bool = False  # fastalign: an error (not a skip) fails the run


def naive_ce(hidden, weight, targets):
    return F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index=IGNORE_INDEX)


def naive_logprobs(hidden, weight, targets):
    logp = (hidden @ weight.T).float().log_softmax(-1)
    logp = logp.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)
    return logp.masked_fill(targets == IGNORE_INDEX, 0.0)


def load_naive(device, quick):
    return Impl(naive_ce, naive_logprobs)


def load_torch_chunked(device, quick):
    if not (hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions")):
        raise Unavailable(f"torch {torch.__version__} has no chunked F.linear_cross_entropy")
    options = torch.nn.LinearCrossEntropyOptions()
    return Impl(lambda h, w, t: F.linear_cross_entropy(h, w, t, ignore_index=IGNORE_INDEX, options=options))


def load_trl(device, quick):
    from trl.kernels import ChunkedLogProbFunction

    # Called as trl.trainer.utils.add_fused_lm_head calls it on GPU: only the scored rows, no bias, temperature 1.
    def scored_logprobs(hidden, weight, targets):
        valid = targets != IGNORE_INDEX
        args = (hidden[valid], weight, None, targets[valid], 1.0, TRL_VOCAB_CHUNK, None, 1.0, ("log_probs",))
        return ChunkedLogProbFunction.apply(*args)[0], valid

    def ce(hidden, weight, targets):
        logp, valid = scored_logprobs(hidden, weight, targets)
        return -logp.sum() / valid.sum().clamp(min=1)

    def logprobs(hidden, weight, targets):
        logp, valid = scored_logprobs(hidden, weight, targets)
        return logp.new_zeros(valid.shape).masked_scatter(valid, logp)

    return Impl(ce, logprobs)


def load_liger(device, quick):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return Impl(lambda h, w, t: liger_fused_linear_cross_entropy(h, w, t, ignore_index=IGNORE_INDEX))


def load_cce(device, quick):
    from cut_cross_entropy import linear_cross_entropy

    return Impl(lambda h, w, t: linear_cross_entropy(h, w, t, ignore_index=IGNORE_INDEX, impl="cce"))


def load_cce_compile(device, quick):
    if device.type == "cuda":
        raise Unavailable("CCE's torch.compile path is its CPU/macOS fallback; on CUDA the 'cce' kernel is measured")
    if quick:
        raise Unavailable("torch.compile warm-up (~20 s) does not fit --quick")
    from cut_cross_entropy import linear_cross_entropy

    return Impl(lambda h, w, t: linear_cross_entropy(h, w, t, ignore_index=IGNORE_INDEX, impl="torch_compile"))


def fastalign_loader(impl: str):
    def load(device, quick):
        import fastalign
        from fastalign.core.dispatch import resolve

        if impl == "triton" and device.type != "cuda":
            raise Unavailable("Triton kernels need a CUDA device")
        try:
            resolve(impl, device)
        except RuntimeError as error:
            raise Unavailable(str(error)) from error
        return Impl(
            lambda h, w, t: fastalign.linear_cross_entropy(h, w, t, ignore_index=IGNORE_INDEX, impl=impl),
            lambda h, w, t: fastalign.linear_logprobs(h, w, t, ignore_index=IGNORE_INDEX, impl=impl),
        )

    return load


def fastalign_impls() -> tuple[str, ...]:
    """Every implementation fastalign's dispatch offers, so a new backend shows up here without editing this file."""
    try:
        from fastalign.core.dispatch import IMPLEMENTATIONS
    except ImportError:
        return ("torch", "triton")
    return tuple(impl for impl in IMPLEMENTATIONS if impl not in ("auto", "reference"))


METHODS = {
    m.name: m
    for m in [
        Method(
            "naive", "logits = (h @ W.T).float(); F.cross_entropy / log_softmax + gather (the baseline)", load_naive
        ),
        Method(
            "torch_chunked",
            "torch.nn.functional.linear_cross_entropy(..., options=LinearCrossEntropyOptions())",
            load_torch_chunked,
        ),
        Method(
            "trl",
            "trl.kernels.ChunkedLogProbFunction (TRL's fused LM head; Triton fold on CUDA, torch tiles elsewhere)",
            load_trl,
        ),
        Method("liger", "liger_kernel FusedLinearCrossEntropy (Triton)", load_liger, probe=True),
        Method(
            "cce", "cut_cross_entropy.linear_cross_entropy(impl='cce') (Apple's Triton kernels)", load_cce, probe=True
        ),
        Method(
            "cce_compile",
            "cut_cross_entropy.linear_cross_entropy(impl='torch_compile'): torch.compile of the naive math",
            load_cce_compile,
        ),
        *(
            Method(
                f"fastalign_{impl}",
                f"fastalign linear_cross_entropy / linear_logprobs, impl='{impl}'",
                fastalign_loader(impl),
                ours=True,
            )
            for impl in fastalign_impls()
        ),
    ]
}


def method_fn(impl: Impl, mode: Mode) -> Callable | None:
    return impl.ce if mode.kind == "ce" else impl.logprobs


# --------------------------------------------------------------------------------------------------------------------
# Inputs, one step, and its measurement.


@dataclass
class Config:
    device: str
    tokens: int
    dim: int
    vocab: int
    ignored: float
    dtype: str
    reps: int
    warmup: int
    seed: int
    quick: bool


@dataclass
class Inputs:
    hidden: torch.Tensor  # [N, D]
    weight: torch.Tensor  # [V, D]
    targets: torch.Tensor  # [N] int64, IGNORE_INDEX at a random `ignored` fraction of positions
    upstream: torch.Tensor  # [N] float32: d(objective)/d(logp) for the log-prob modes


def make_inputs(cfg: Config) -> Inputs:
    """The same inputs in every process: drawn on the CPU from one seeded generator, then moved."""
    g = torch.Generator().manual_seed(cfg.seed)
    dtype, device = getattr(torch, cfg.dtype), torch.device(cfg.device)
    hidden = torch.randn(cfg.tokens, cfg.dim, generator=g)
    weight = torch.randn(cfg.vocab, cfg.dim, generator=g).mul_(LOGIT_STD / math.sqrt(cfg.dim))
    targets = torch.randint(0, cfg.vocab, (cfg.tokens,), generator=g)
    targets[torch.rand(cfg.tokens, generator=g) < cfg.ignored] = IGNORE_INDEX
    upstream = torch.randn(cfg.tokens, generator=g)
    return Inputs(hidden.to(device, dtype), weight.to(device, dtype), targets.to(device), upstream.to(device))


class Step:
    """One forward + backward of `fn` in `mode`; gradients are cleared first, so one set is alive at a time."""

    def __init__(self, fn: Callable, inputs: Inputs, mode: Mode):
        self.fn, self.inputs, self.mode = fn, inputs, mode
        inputs.hidden.requires_grad_(True)
        inputs.weight.requires_grad_(mode.trainable_head)

    def clear(self):
        self.inputs.hidden.grad = None
        self.inputs.weight.grad = None

    def __call__(self) -> torch.Tensor:
        self.clear()
        x = self.inputs
        out = self.fn(x.hidden, x.weight, x.targets)
        if self.mode.kind == "ce":
            out.backward()
        else:
            out.backward(x.upstream)
        return out.detach()

    def outputs(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.inputs
        outs = {"value": value, "grad_hidden": x.hidden.grad}
        if self.mode.trainable_head:
            outs["grad_weight"] = x.weight.grad
        return outs


@dataclass
class Measurement:
    times_s: list[float]
    peak_extra_bytes: int
    notes: list[str] = field(default_factory=list)  # warnings the method raised during warm-up
    load_average: float = 0.0  # 1-minute load average as the timed steps began: other work on the machine skews them
    cpu_times_s: list[float] = field(default_factory=list)  # CPU: process CPU time (all threads) of each timed step


def memory_method(device: str) -> str:
    """How measure() takes peak memory on ``device``, for the JSON record."""
    if device == "cuda":
        return "CUDA max_memory_allocated - memory_allocated before the timed steps"
    return (
        "one untimed step under torch.profiler(profile_memory=True): the largest running sum of the CPU allocator's "
        "allocation and free events, from the step's start"
    )


def cpu_tensor_peak(step: Step) -> tuple[int, torch.Tensor]:
    """Run one step and return the peak of the tensor memory allocated during it, above what was allocated when it
    began (the CPU counterpart of CUDA's max_memory_allocated), with the step's value.

    The profiler records every allocation and free of PyTorch's CPU allocator with its size; their running sum in
    time order is the live tensor memory. Unlike the process RSS, it is exact and the same in every run (the RSS
    peak of one step moved by up to 18 MiB between runs on this machine: per-CPU counters of the kernel, pages the
    allocator keeps, scratch of the math libraries).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        value = step()
    events = prof.profiler.kineto_results.events()  # the raw events: FunctionEvents fold allocations into their ops
    changes = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return peak, value


def measure(step: Step, cfg: Config) -> tuple[Measurement, dict[str, torch.Tensor]]:
    """Warm up, time cfg.reps steps, and take the peak memory of a step above the memory in use before it.

    Memory is measured after warm-up, not from right after the inputs: a first call pages in hundreds of MiB of
    library code and lazily imported modules (~150-300 MiB measured on CPU at any size), not the method's memory.
    CUDA: the allocator's peak over the timed steps. CPU: one more, untimed step under the profiler (cpu_tensor_peak).
    """
    cuda = cfg.device == "cuda"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(cfg.warmup):
            step()
    # what the method warned about (e.g. a fallback to an unchunked path); deprecations of imported modules are noise
    kept = [w for w in caught if not issubclass(w.category, DeprecationWarning)]
    notes = sorted({f"{w.category.__name__}: {str(w.message)[:200]}" for w in kept})
    step.clear()
    if cuda:
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()

    times, cpu_times, load = [], [], os.getloadavg()[0]
    for _ in range(cfg.reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            value = step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0, c0 = time.perf_counter(), time.process_time()
            value = step()
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)

    if cuda:
        extra = torch.cuda.max_memory_allocated() - baseline
    else:
        step.clear()
        del value
        extra, value = cpu_tensor_peak(step)
    return Measurement(times, extra, notes, load, cpu_times), step.outputs(value)


# --------------------------------------------------------------------------------------------------------------------
# Correctness: a float32 naive reference from the same inputs (on CPU float32 it is the naive baseline itself).


def reference(inputs: Inputs, kind: str) -> dict[str, torch.Tensor]:
    """The naive math on float32 copies of the inputs, with dW too (frozen and trainable modes share it)."""
    x = Inputs(inputs.hidden.detach().float(), inputs.weight.detach().float(), inputs.targets, inputs.upstream)
    if kind == "ce":
        step = Step(naive_ce, x, MODES["trainable"])
    else:
        step = Step(naive_logprobs, x, MODES["logprobs_trainable"])
    return step.outputs(step())


def compare(outputs: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], dtype: torch.dtype) -> dict:
    """Max abs difference of each output from the reference, against rtol * max |reference|."""
    errors = {}
    for name, out in outputs.items():
        if out is None:
            errors[name] = {"max_abs_err": math.inf, "tol": 0.0, "ok": False, "missing": True}
            continue
        expected = ref[name]
        rtol = TOLERANCES[dtype]["value" if name == "value" else "grad"]
        tol = rtol * float(expected.abs().max()) + 1e-12
        if out.shape != expected.shape:
            errors[name] = {"max_abs_err": math.inf, "tol": tol, "ok": False, "shape": list(out.shape)}
            continue
        err = float((out.to(expected.device, torch.float32) - expected).abs().max())
        errors[name] = {"max_abs_err": err, "tol": tol, "ok": err <= tol}  # NaN compares False
    return errors


# --------------------------------------------------------------------------------------------------------------------
# Running a case: in this process (CUDA) or in a fresh subprocess per case (CPU: each case's imports and warnings
# kept apart).


def run_case(cfg: Config, method: Method, mode: Mode, inputs: Inputs | None = None):
    fn = method_fn(method.load(torch.device(cfg.device), cfg.quick), mode)
    if inputs is None:
        inputs = make_inputs(cfg)
    return measure(Step(fn, inputs, mode), cfg)


# The worker protocol both benchmark scripts use on CPU: the parent runs `script --worker SPEC`; for each case (a
# tuple of names) the worker saves the outputs to `<scratch>/<names joined by ->.pt` and prints one RESULT line.


def report_case(scratch: str, case: tuple[str, ...], measurement: Measurement, outputs: dict) -> None:
    """Worker side: hand one case's Measurement and outputs to the parent."""
    path = Path(scratch) / ("-".join(case) + ".pt")
    torch.save({k: v.detach().cpu() for k, v in outputs.items() if v is not None}, path)
    print("RESULT " + json.dumps({"case": list(case), **asdict(measurement)}), flush=True)


def run_worker(script: str, spec: dict, cases: list[tuple[str, ...]], scratch: Path, quick: bool) -> dict:
    """Parent side: {case: (Measurement, outputs) or the exception that stopped it} from one worker process running
    ``script --worker spec`` (spec["outputs"] must be ``scratch``)."""
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", json.dumps(spec)]
    timeout = (120 if quick else 1800) * len(cases)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as expired:
        stdout, stderr, code = expired.stdout or "", f"worker timed out after {timeout} s", 1
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    results = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            fields = json.loads(line[len("RESULT ") :])
            case = tuple(fields.pop("case"))
            path = scratch / ("-".join(case) + ".pt")
            results[case] = (Measurement(**fields), torch.load(path))
            path.unlink()
    if code < 0:
        failure = RuntimeError(f"worker killed by signal {-code} (out of memory?)")
    else:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        failure = RuntimeError(lines[-1] if lines else f"worker exited with {code}")
    return {case: results.get(case, failure) for case in map(tuple, cases)}


def worker(spec: dict) -> None:
    """Subprocess entry: run `spec["modes"]` of one method, one after the other, each with fresh inputs."""
    cfg = Config(**spec["config"])
    for mode_name in spec["modes"]:
        measurement, outputs = run_case(cfg, METHODS[spec["method"]], MODES[mode_name])
        report_case(spec["outputs"], (spec["method"], mode_name), measurement, outputs)
        del outputs


def run_subprocess(cfg: Config, method: Method, mode_names: list[str], scratch: Path) -> dict:
    """{mode: (Measurement, outputs) or the exception that stopped it} from one worker process."""
    spec = {"config": asdict(cfg), "method": method.name, "modes": mode_names, "outputs": str(scratch)}
    cases = [(method.name, mode) for mode in mode_names]
    results = run_worker(__file__, spec, cases, scratch, cfg.quick)
    return {mode: results[(method.name, mode)] for mode in mode_names}


def load(method: Method, device: torch.device, dtype: torch.dtype, quick: bool) -> Impl | str:
    """The method's functions if it can run here, else the reason it is skipped."""
    try:
        impl = method.load(device, quick)
        if method.probe:  # a tiny fwd+bwd: Triton kernels import fine on CPU and fail only when launched
            g = torch.Generator().manual_seed(0)
            h = torch.randn(64, 64, generator=g).to(device, dtype).requires_grad_()
            w = torch.randn(256, 64, generator=g).to(device, dtype).requires_grad_()
            impl.ce(h, w, torch.randint(0, 256, (64,), generator=g).to(device)).backward()
    except Exception as error:  # anything that stops it from running here is a reason to skip, not a failure
        message = str(error).strip().splitlines()
        return f"{type(error).__name__}: {message[0] if message else ''}"[:160]
    return impl


# --------------------------------------------------------------------------------------------------------------------
# Report.


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("torch", "triton", "trl", "liger-kernel", "cut-cross-entropy", "transformers", "fastalign"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} ({torch.get_num_threads()} threads)"


def results_slug(device: str) -> str:
    """The folder name results of ``device`` go under: ``cpu``, or the GPU's name (e.g. ``nvidia-h100-80gb-hbm3``)."""
    return "cpu" if device == "cpu" else re.sub(r"[^a-z0-9]+", "-", device_name("cuda").lower()).strip("-")


def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.strip() else "")


def write_report(report: dict, filename: str, out: Path | None, device: str, quick: bool) -> Path | None:
    """Write the JSON report to ``out`` (default benchmarks/results/<device slug>/; none for --quick without
    --out) and return its path."""
    out_dir = out if out is not None or quick else RESULTS_DIR / results_slug(device)
    if out_dir is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    scratch = path.with_name(path.name + ".tmp")  # then renamed: a run killed mid-write leaves the last whole file
    scratch.write_text(json.dumps(report, indent=1, default=str) + "\n")
    scratch.replace(path)
    return path


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    headers = ["method", "mode", "median ms", "cpu ms", "peak extra MiB", "time vs naive", "mem vs torch_chunked",
               "mem / N*D*4B", "value err", "grad err", "status"]  # fmt: skip
    lines = [
        [
            r["method"],
            r["mode"],
            fmt(r["median_s"] * 1e3 if "median_s" in r else None, ".1f"),
            fmt(statistics.median(r["cpu_times_s"]) * 1e3 if r.get("cpu_times_s") else None, ".1f"),
            fmt(r["peak_extra_bytes"] / 2**20 if "peak_extra_bytes" in r else None, ".1f"),
            fmt(r.get("time_vs_naive"), ".2f"),
            fmt(r.get("memory_vs_torch_chunked"), ".2f"),
            fmt(r.get("memory_vs_ND4"), ".2f"),
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
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)))


def check_targets(rows: list[dict]) -> list[dict]:
    """fastalign's chunked PyTorch path: time <= 0.9x naive and peak memory <= torch's chunked linear_cross_entropy."""
    by_key = {(r["method"], r["mode"]): r for r in rows if r["status"] == "ok"}
    checks = []
    for (method, mode), r in by_key.items():
        if not method.startswith("fastalign_") or MODES[mode].kind != "ce":
            continue
        for what, ratio, limit, aside in (
            ("time vs naive", r.get("time_vs_naive"), TIME_TARGET_VS_NAIVE, r.get("cpu_time_vs_naive")),
            ("memory vs torch_chunked", r.get("memory_vs_torch_chunked"), MEMORY_TARGET_VS_TORCH_CHUNKED, None),
        ):
            if ratio is not None:
                checks.append({"method": method, "mode": mode, "what": what, "ratio": ratio, "limit": limit,
                               "met": ratio <= limit, "cpu_time_ratio": aside})  # fmt: skip
    return checks


# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tokens", type=int, help="N rows (default: cpu 4096, cuda 16384, --quick 256)")
    p.add_argument("--dim", type=int, help="D hidden size (default: cpu 1024, cuda 4096, --quick 64)")
    p.add_argument("--vocab", type=int, help="V vocabulary (default: cpu 32000, cuda 128256, --quick 1000)")
    p.add_argument("--ignored", type=float, default=0.1, help="fraction of targets set to ignore_index")
    p.add_argument("--dtype", choices=tuple(str(d).removeprefix("torch.") for d in TOLERANCES),
                   help="default: float32 on cpu, bfloat16 on cuda")  # fmt: skip
    p.add_argument("--reps", type=int, help="timed steps per case (default: cpu 5, cuda 20, --quick 2)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: cpu 1, cuda 3)")
    p.add_argument("--methods", help=f"comma list from {','.join(METHODS)} (default: all)")
    p.add_argument("--modes", help=f"comma list from {','.join(MODES)} (default: {','.join(DEFAULT_MODES)})")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 reps: a correctness smoke run for CI")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write linear_ce.json here (default: benchmarks/results/<device>/; "
                   "--quick writes nothing unless --out is given)")  # fmt: skip
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    cuda = args.device == "cuda"
    sizes = (256, 64, 1000) if args.quick else (16384, 4096, 128256) if cuda else (4096, 1024, 32000)
    cfg = Config(
        device=args.device,
        tokens=args.tokens or sizes[0],
        dim=args.dim or sizes[1],
        vocab=args.vocab or sizes[2],
        ignored=args.ignored,
        dtype=args.dtype or ("bfloat16" if cuda else "float32"),
        reps=args.reps or (2 if args.quick else 20 if cuda else 5),
        warmup=args.warmup if args.warmup is not None else (3 if cuda else 1),
        seed=args.seed,
        quick=args.quick,
    )
    methods = pick(args.methods, METHODS, tuple(METHODS))
    modes = pick(args.modes, MODES, DEFAULT_MODES)
    if "naive" not in methods:
        methods = ["naive", *methods]  # the baseline every ratio is taken against
    return args, cfg, methods, modes


def pick(arg: str | None, known, default: tuple[str, ...] = ()) -> list[str]:
    """The names in a comma list (``default`` when None), each checked against ``known``."""
    names = default if arg is None else [n.strip() for n in arg.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {unknown}; choose from {', '.join(known)}")
    return list(names)


def check(cfg: Config, method: Method, mode_name: str, result, references) -> dict:
    """One row of the report from a (Measurement, outputs) result, or from the exception that stopped the method."""
    if isinstance(result, Exception):
        return {
            "status": f"error: {type(result).__name__}: {str(result)[:200]}",
            "fails_run": method.ours or method.name == "naive",  # third-party errors are reported, not fatal
        }
    measurement, outputs = result
    errors = compare(outputs, references[MODES[mode_name].kind], getattr(torch, cfg.dtype))
    bad = [f"{k} err {e['max_abs_err']:.1e} > tol {e['tol']:.1e}" for k, e in errors.items() if not e["ok"]]
    return {
        **asdict(measurement),
        "median_s": statistics.median(measurement.times_s),
        "errors": errors,
        "status": "FAIL: " + "; ".join(bad) if bad else "ok",
        "fails_run": bool(bad),
    }


def run_in_process(cfg: Config, method: Method, mode_names: list[str], inputs: Inputs) -> dict:
    """CUDA: the allocator's own peak statistics need no process of their own."""
    results = {}
    for mode_name in mode_names:
        try:
            results[mode_name] = run_case(cfg, method, MODES[mode_name], inputs)
        except Exception as error:
            results[mode_name] = error
        finally:
            inputs.hidden.grad = inputs.weight.grad = None
            torch.cuda.empty_cache()
    return results


def main(argv=None) -> int:
    args, cfg, method_names, mode_names = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")

    device = torch.device(cfg.device)
    started, load_start = time.time(), os.getloadavg()
    print(f"device {device_name(cfg.device)}; N={cfg.tokens} D={cfg.dim} V={cfg.vocab} {cfg.dtype}, "
          f"{cfg.ignored:.0%} ignored, {cfg.warmup} warm-up + {cfg.reps} timed steps", flush=True)  # fmt: skip
    if cfg.device == "cpu" and load_start[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load_start[0]:.1f} on {os.cpu_count()} CPUs: other work skews timings")

    loaded = {name: load(METHODS[name], device, getattr(torch, cfg.dtype), cfg.quick) for name in method_names}
    inputs = make_inputs(cfg)
    cases = [
        (mode, name)
        for mode in mode_names
        for name in method_names
        # a method without such an output (e.g. no per-token log-probs) is not listed for that mode
        if isinstance(loaded[name], str) or method_fn(loaded[name], MODES[mode]) is not None
    ]
    references = {kind: reference(inputs, kind) for kind in sorted({MODES[mode].kind for mode, _ in cases})}
    inputs.hidden.grad = inputs.weight.grad = None
    # CPU: one subprocess per (method, mode) for a clean memory high-water mark; --quick: one per method, since
    # starting a process and importing the libraries (TRL: ~5 s) costs more than the tiny cases themselves.
    checked = {}
    for name in method_names:
        mode_list = [mode for mode, n in cases if n == name and not isinstance(loaded[n], str)]
        batches = [mode_list] if cfg.quick or cfg.device == "cuda" else [[mode] for mode in mode_list]
        for batch in filter(None, batches):
            print(f"  {name:<18} {','.join(batch):<18}", end=" ", flush=True)
            if cfg.device == "cuda":
                results = run_in_process(cfg, METHODS[name], batch, inputs)
            else:
                with tempfile.TemporaryDirectory(prefix="bench_linear_ce_") as scratch:
                    results = run_subprocess(cfg, METHODS[name], batch, Path(scratch))
            for mode_name, result in results.items():  # checked at once: the gradients are not kept around
                row = checked[name, mode_name] = check(cfg, METHODS[name], mode_name, result, references)
                speed = (
                    f"{row['median_s'] * 1e3:.1f} ms, {row['peak_extra_bytes'] / 2**20:.1f} MiB, "
                    if "median_s" in row
                    else ""
                )
                print(f"{mode_name}: {speed}{row['status']}", end="; ", flush=True)
            del results
            print(flush=True)
            if args.out is not None:  # rewritten after every method: a run stopped by a time limit keeps its rows
                partial = [{"method": n, "mode": m, **row} for (n, m), row in checked.items()]
                write_report({"benchmark": "linear_ce", "complete": False, "device": device_name(cfg.device),
                              "config": asdict(cfg), "rows": partial}, "linear_ce.json", args.out, cfg.device,
                             cfg.quick)  # fmt: skip
    rows = [
        {"method": name, "mode": mode_name, **checked.get((name, mode_name), {"status": f"skipped: {loaded[name]}"})}
        for mode_name, name in cases
    ]

    # Ratios against the naive baseline (time) and torch's chunked linear_cross_entropy (memory), same mode.
    measured = {(r["method"], r["mode"]): r for r in rows if "median_s" in r}
    for r in measured.values():
        naive, chunked = measured.get(("naive", r["mode"])), measured.get(("torch_chunked", r["mode"]))
        r["time_vs_naive"] = r["median_s"] / naive["median_s"] if naive else None
        r["cpu_time_vs_naive"] = (
            statistics.median(r["cpu_times_s"]) / statistics.median(naive["cpu_times_s"])
            if naive and r["cpu_times_s"] and naive["cpu_times_s"]
            else None
        )
        r["memory_vs_torch_chunked"] = (
            r["peak_extra_bytes"] / chunked["peak_extra_bytes"] if chunked and chunked["peak_extra_bytes"] > 0 else None
        )
        r["memory_vs_ND4"] = r["peak_extra_bytes"] / (cfg.tokens * cfg.dim * 4)

    targets = check_targets(rows)
    report = {
        "benchmark": "linear_ce",
        "complete": True,
        "device": device_name(cfg.device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "versions": versions(),
        "config": {
            **asdict(cfg),
            "scored_rows": int((inputs.targets != IGNORE_INDEX).sum()),
            "torch_threads": torch.get_num_threads(),
            "logit_std": LOGIT_STD,
        },  # fmt: skip
        "memory_method": memory_method(cfg.device),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "wall_s": time.time() - started,
        "tolerances": {str(k).removeprefix("torch."): v for k, v in TOLERANCES.items()},
        "methods": {name: METHODS[name].about for name in method_names},
        "modes": {name: MODES[name].about for name in mode_names},
        "targets": targets,
        "rows": rows,
    }
    written = write_report(report, "linear_ce.json", args.out, cfg.device, cfg.quick)

    print()
    for r in rows:
        for note in r.get("notes", []):
            print(f"note: {r['method']} {r['mode']}: {note}")
    for t in targets:
        cpu = "" if t["cpu_time_ratio"] is None else f" [CPU time {t['cpu_time_ratio']:.2f}]"
        print(f"target: {t['method']} {t['mode']}: {t['what']} {t['ratio']:.2f}{cpu} (<= {t['limit']}): "
              f"{'met' if t['met'] else 'MISSED'}")  # fmt: skip
    if written is not None:
        print(f"wrote {written}")
    print()
    print_table(rows)
    return 1 if any(r.get("fails_run") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
