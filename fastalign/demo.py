"""``fastalign demo``: the fused loss against naive PyTorch on a CPU-sized LM head, in a minute.

Each method runs one forward+backward of the mean cross-entropy in a fresh process, so that the peak resident
memory it reports belongs to that method alone; the demo prints the loss of each (they must agree), the time, and
the memory above the inputs.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DemoConfig:
    tokens: int = 4096
    dim: int = 512
    vocab: int = 32000
    ignored_fraction: float = 0.1
    frozen_head: bool = True
    seed: int = 0


def _inputs(config: DemoConfig):
    generator = torch.Generator().manual_seed(config.seed)
    hidden = torch.randn(config.tokens, config.dim, generator=generator).requires_grad_()
    weight = torch.randn(config.vocab, config.dim, generator=generator) / config.dim**0.5
    weight.requires_grad_(not config.frozen_head)
    targets = torch.randint(0, config.vocab, (config.tokens,), generator=generator)
    targets[torch.rand(config.tokens, generator=generator) < config.ignored_fraction] = -100
    return hidden, weight, targets


def _naive_loss(hidden, weight, targets):
    return F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index=-100)


def _fused_loss(hidden, weight, targets):
    from fastalign import linear_cross_entropy

    return linear_cross_entropy(hidden, weight, targets, impl="torch")


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _measure(method: str, config: DemoConfig, results) -> None:
    """Runs in a fresh process: one forward+backward; reports loss, seconds and peak bytes above the inputs."""
    torch.set_num_threads(torch.get_num_threads())
    hidden, weight, targets = _inputs(config)
    baseline = _resident_bytes()
    start = time.perf_counter()
    loss = {"naive": _naive_loss, "fastalign": _fused_loss}[method](hidden, weight, targets)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results.put((method, loss.item(), seconds, max(peak - baseline, 0), hidden.grad.norm().item()))


def run(config: DemoConfig = DemoConfig()) -> dict[str, tuple[float, float, int, float]]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    for method in ("naive", "fastalign"):
        process = context.Process(target=_measure, args=(method, config, results))
        process.start()
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"the {method} run failed with exit code {process.exitcode}")
    measured = {}
    while not results.empty():
        method, *values = results.get()
        measured[method] = tuple(values)
    return measured


def main(config: DemoConfig = DemoConfig()) -> int:
    head = "frozen (LoRA-style)" if config.frozen_head else "trainable"
    print(
        f"fastalign demo: mean cross-entropy forward+backward, {config.tokens} tokens "
        f"({config.ignored_fraction:.0%} ignored), hidden size {config.dim}, vocabulary {config.vocab}, "
        f"{head} head, float32 on CPU"
    )
    measured = run(config)
    print(f"{'method':<12}{'loss':>12}{'seconds':>10}{'peak MiB':>12}")
    for method, (loss, seconds, peak, _) in measured.items():
        print(f"{method:<12}{loss:>12.6f}{seconds:>10.2f}{peak / 2**20:>12.1f}")
    (naive_loss, naive_s, naive_peak, naive_grad), (loss, fused_s, fused_peak, grad) = (
        measured["naive"],
        measured["fastalign"],
    )
    agree = abs(loss - naive_loss) <= 1e-4 * abs(naive_loss) and abs(grad - naive_grad) <= 1e-4 * naive_grad
    print(
        f"fastalign used {naive_peak / max(fused_peak, 1):.1f}x less memory above the inputs "
        f"({(naive_peak - fused_peak) / 2**20:.0f} MiB saved) at {fused_s / naive_s:.2f}x the time; "
        f"losses and gradients {'agree' if agree else 'DISAGREE'}"
    )
    return 0 if agree else 1
