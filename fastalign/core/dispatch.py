"""The one place that chooses between implementations. Nothing else in fastalign branches on device.

"auto"       Triton on CUDA tensors, chunked PyTorch elsewhere
"triton"     the Triton kernels (CUDA, or any device under TRITON_INTERPRET=1)
"torch"      chunked PyTorch, any device
"reference"  naive PyTorch that materializes the logits (the tests' ground truth)
"""

from __future__ import annotations

import functools
import os

import torch

from fastalign.core.chunked import ChunkedTorchBackend
from fastalign.core.head import LogitTransform
from fastalign.core.reference import reference_stats
from fastalign.core.rows import ScoredRows
from fastalign.core.stats import (
    LinearRowLossSum,
    LinearSeparableLoss,
    LinearSoftmaxStats,
    RowLoss,
    SoftmaxStats,
    StatsRequest,
)

IMPLEMENTATIONS = ("auto", "triton", "torch", "reference")


@functools.cache
def _triton_backend():
    from fastalign.core.triton_backend import TritonBackend

    return TritonBackend()


@functools.cache
def _torch_backend():
    return ChunkedTorchBackend()


def triton_runs_on(device: torch.device) -> bool:
    """Triton compiles for CUDA; on other devices only its interpreter (TRITON_INTERPRET=1) runs it."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def resolve(impl: str, device: torch.device) -> str:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if impl == "auto":
        return "triton" if device.type == "cuda" and triton_runs_on(device) else "torch"
    if impl == "triton" and not triton_runs_on(device):
        raise RuntimeError(
            f"impl='triton' needs a CUDA device and an importable triton (or TRITON_INTERPRET=1 on CPU); "
            f"got tensors on {device}"
        )
    return impl


def _backend(impl: str):
    return _triton_backend() if impl == "triton" else _torch_backend()


def softmax_stats(
    rows: ScoredRows,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    transform: LogitTransform,
    request: StatsRequest,
    impl: str,
) -> SoftmaxStats:
    """Differentiable statistics of the M scored rows (see ScoredRows) -> 4 x [M]."""
    impl = resolve(impl, rows.hidden.device)
    if impl == "reference":
        return reference_stats(rows.hidden_block(), weight, bias, rows.targets, transform, request)
    args = (*_head_inputs(rows.hidden, weight, bias), rows.targets, rows.index, transform, request, _backend(impl))
    return SoftmaxStats(*LinearSoftmaxStats.apply(*args))


def row_loss_sum(
    rows: ScoredRows,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    transform: LogitTransform,
    request: StatsRequest,
    row_loss: RowLoss,
    impl: str,
) -> torch.Tensor:
    """``sum_rows row_loss(stats)`` over the scored rows (a scalar), its gradient formed during the forward sweep."""
    impl = resolve(impl, rows.hidden.device)
    if impl == "reference":
        return row_loss(reference_stats(rows.hidden_block(), weight, bias, rows.targets, transform, request)).sum()
    head = _head_inputs(rows.hidden, weight, bias)
    return LinearRowLossSum.apply(*head, rows.targets, rows.index, transform, request, row_loss, _backend(impl))


def separable_loss(
    rows: ScoredRows,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    transform: LogitTransform,
    group_sizes: list[int],
    objective,
    impl: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(objective(logps), logps)`` for the log-probs [M] of the scored rows and an objective that is a sum of
    independent terms over groups of consecutive rows (see LinearSeparableLoss); logps detached."""
    impl = resolve(impl, rows.hidden.device)
    if impl == "reference":
        stats = reference_stats(rows.hidden_block(), weight, bias, rows.targets, transform, StatsRequest())
        logps = stats.target_logit - stats.lse
        return objective(logps), logps.detach()
    head = _head_inputs(rows.hidden, weight, bias)
    return LinearSeparableLoss.apply(*head, rows.targets, rows.index, transform, group_sizes, objective, _backend(impl))


def _head_inputs(hidden, weight, bias) -> tuple:
    """hidden, weight, bias as the autograd functions should see them: detached when grad mode is off. Inside
    ``forward`` ``ctx.needs_input_grad`` follows requires_grad even under ``torch.no_grad()``, and it decides how
    much gradient work the forward sweep does (an accumulator, kept logits, whole gradients for the row and
    separable losses): none of it is wanted in an evaluation pass."""
    if torch.is_grad_enabled():
        return hidden, weight, bias
    return hidden.detach(), weight.detach(), None if bias is None else bias.detach()
