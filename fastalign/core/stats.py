"""Softmax statistics of an LM head, and the autograd functions every implementation shares.

Every objective fastalign computes is a function of four per-row statistics of the softmax over the vocabulary,
with ``z = transform(h @ W.T + b)`` the logits of one row (``transform``: see :mod:`fastalign.core.head`):

    lse          = log sum_v exp(z_v)                 log-partition
    target_logit = z_y                                logit of the row's target
    logit_sum    = sum_v z_v                          (label smoothing)
    mean_logit   = sum_v p_v z_v,  p = softmax(z)     (entropy = lse - mean_logit)

so ``log p(y) = target_logit - lse`` and cross-entropy with smoothing eps is
``lse - (1 - eps) * target_logit - eps / V * logit_sum``. A backend computes the statistics in one sweep over the
vocabulary without materializing ``[rows, V]``; the losses are plain PyTorch on ``[rows]`` vectors.

Backward. With upstream gradients ``c_lse, c_target, c_sum, c_mean`` (one per statistic and row), the gradient with
respect to one logit is

    dL/dz_v = c_lse * p_v + c_target * [v == y] + c_sum + c_mean * p_v * (1 + z_v - mean_logit)

and ``dL/da_v = dL/dz_v * dz/da_v``; ``dh = dL/da @ W``, ``dW = dL/da.T @ h``, ``db = sum_rows dL/da``.

Frozen head (only ``h`` needs a gradient, the LoRA/QLoRA case). For ``c_sum``/``c_mean`` zero,
``dh = c_target * z'_y * W_y + c_lse * acc`` with ``acc = sum_v p_v z'_v W_v``. A backend accumulates ``acc`` in the
same sweep that computes ``lse`` (rescaling it when the running max moves, as flash attention does), so backward is
elementwise: 2 vocabulary-sized matmuls in all instead of 3. ``c_sum`` is covered too when there is no softcap,
since then ``sum_v z'_v W_v = slope * sum_v W_v``.

Known upstream gradient (cross-entropy with ``mean``/``sum``). The loss is ``sum_rows f(stats_row)`` for a known
``f``, so the gradient can be formed during the forward sweep (:class:`LinearRowLossSum`), with no recomputation.

Separable loss of the log-probs (the preference losses). The loss is ``sum_groups f_g(log p of the group's rows)``
(a pair's two sequences), so a group's gradients can be formed as soon as its rows are scored
(:class:`LinearSeparableLoss`), before the next group is: a backend needs to keep only a few groups' logits at a
time to spare them the recomputation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

from fastalign.core.head import LogitTransform
from fastalign.core.rows import ScoredRows, expand_rows


class SoftmaxStats(NamedTuple):
    """Per-row statistics, each float32 ``[M]``. Statistics that were not requested are zeros (or None inside a
    backend's chunk loop)."""

    lse: torch.Tensor
    target_logit: torch.Tensor
    logit_sum: torch.Tensor
    mean_logit: torch.Tensor


class StatsGrad(NamedTuple):
    """Gradient of a loss with respect to each statistic: float32 ``[M]`` or ``None`` where it is zero."""

    lse: torch.Tensor | None
    target_logit: torch.Tensor | None
    logit_sum: torch.Tensor | None
    mean_logit: torch.Tensor | None


@dataclass(frozen=True)
class StatsRequest:
    """Which optional statistics a caller needs (``lse`` and ``target_logit`` are always computed)."""

    logit_sum: bool = False
    mean_logit: bool = False


@dataclass(frozen=True)
class GradNeeds:
    hidden: bool
    weight: bool
    bias: bool

    @property
    def any(self) -> bool:
        return self.hidden or self.weight or self.bias

    @property
    def frozen_head(self) -> bool:
        """Only the hidden states need a gradient: the 2-matmul accumulator path applies."""
        return self.hidden and not self.weight and not self.bias


class Gradients(NamedTuple):
    """float32 gradients; ``None`` where not needed. hidden ``[M, D]`` (the scored rows), weight ``[V, D]``,
    bias ``[V]``."""

    hidden: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None


RowLoss = Callable[[SoftmaxStats], torch.Tensor]
"""A loss that is a sum over rows of a function of that row's statistics: returns the ``[M]`` terms to sum."""

RowGrad = Callable[[torch.Tensor, slice], torch.Tensor]
"""``row_grad(logps, rows)``: the gradient [len(rows)] of a separable loss with respect to the log-probs of the
scored rows ``rows`` (whole groups), given the log-probs [M] of every row scored so far (the later ones 0)."""


class Backend(Protocol):
    """What an implementation (chunked PyTorch, Triton) provides. Inputs: the M scored rows (hidden states and
    targets in ``[0, V)``, see :class:`ScoredRows`), weight ``[V, D]``, bias ``[V]`` or None."""

    def sweep(
        self,
        rows: ScoredRows,
        weight,
        bias,
        transform: LogitTransform,
        request: StatsRequest,
        accumulate: bool,
        keep_logits: bool = False,
    ) -> tuple[SoftmaxStats, torch.Tensor | None]:
        """Statistics, and what backward uses in place of a recomputation: with ``accumulate`` (frozen head) the
        accumulator ``sum_v p_v z'_v W_v`` [M, D] fp32; with ``keep_logits`` (trainable head) None, or the float32
        buffer that ``gradients`` will turn into dW, holding the logits of the first rows meanwhile (a backend's
        own layout, e.g. ChunkedTorchBackend's)."""
        ...

    def gradients(
        self,
        rows: ScoredRows,
        weight,
        bias,
        transform: LogitTransform,
        stats: SoftmaxStats,
        grad: StatsGrad,
        needs: GradNeeds,
        kept: torch.Tensor | None = None,
    ) -> Gradients:
        """Recompute the logits tile by tile (except those in ``kept``, from ``sweep(keep_logits=True)``) and form
        the gradients for the given statistic gradients."""
        ...

    def row_loss_sum(
        self,
        rows: ScoredRows,
        weight,
        bias,
        transform: LogitTransform,
        request: StatsRequest,
        row_loss: RowLoss,
        needs: GradNeeds,
    ) -> tuple[torch.Tensor, Gradients]:
        """``sum_rows row_loss(stats)`` and its gradients, formed during the forward sweep where possible."""
        ...

    def separable_loss(
        self,
        rows: ScoredRows,
        weight,
        bias,
        transform: LogitTransform,
        group_sizes: list[int],
        row_grad: RowGrad,
        needs: GradNeeds,
    ) -> tuple[torch.Tensor, Gradients]:
        """The log-probs ``target_logit - lse`` [M] of the scored rows and the gradients of a loss of them that is a
        sum of independent terms, one per group of consecutive rows (``group_sizes``): ``row_grad`` gives the
        loss's gradient with respect to a group's log-probs once they are known. See :class:`LinearSeparableLoss`."""
        ...


def row_loss_and_grad(row_loss: RowLoss, stats: SoftmaxStats) -> tuple[torch.Tensor, StatsGrad]:
    """Evaluate ``sum(row_loss(stats))`` and its gradient with respect to each statistic (cheap: ``[M]`` vectors)."""
    with torch.enable_grad():
        leaves = [None if s is None else s.detach().requires_grad_() for s in stats]
        total = row_loss(SoftmaxStats(*leaves)).sum()
        present = [leaf for leaf in leaves if leaf is not None]
        grads = iter(torch.autograd.grad(total, present, allow_unused=True))
    return total.detach(), StatsGrad(*(None if leaf is None else next(grads) for leaf in leaves))


def logprob_grad(grad_logps: torch.Tensor) -> StatsGrad:
    """The statistics' gradients for a gradient with respect to ``log p(y) = target_logit - lse``."""
    return StatsGrad(-grad_logps, grad_logps, None, None)


def sweep_then_gradients(backend, rows, weight, bias, transform, request, loss_and_grad, needs):
    """One statistics sweep, then one gradient sweep with known coefficients (or, on a frozen head, the elementwise
    accumulator path): the default of :meth:`Backend.row_loss_sum` and :meth:`Backend.separable_loss`.
    ``loss_and_grad(stats) -> (value, StatsGrad)``; returns ``(value, Gradients)``. A trainable head keeps the
    logits the backend can keep (``sweep(keep_logits=True)``)."""
    accumulate = accumulator_pays_off(needs, request, transform)
    stats, saved = backend.sweep(
        rows, weight, bias, transform, request, accumulate=accumulate, keep_logits=needs.weight
    )
    value, grad = loss_and_grad(stats)
    if not needs.any:
        return value, Gradients(None, None, None)
    if accumulate and accumulator_covers(grad, transform):
        dh = hidden_grad_from_accumulator(saved, weight, rows.targets, stats, grad, transform, overwrite=True)
        return value, Gradients(dh, None, None)
    kept = None if accumulate else saved
    return value, backend.gradients(rows, weight, bias, transform, stats, grad, needs, kept)


def gradients_via_recompute(backend, rows, weight, bias, transform, request, row_loss, needs):
    """Default :meth:`Backend.row_loss_sum` (see sweep_then_gradients)."""
    loss_and_grad = functools.partial(row_loss_and_grad, row_loss)
    return sweep_then_gradients(backend, rows, weight, bias, transform, request, loss_and_grad, needs)


def separable_loss_via_stats(backend, rows, weight, bias, transform, group_sizes, row_grad, needs):
    """Default :meth:`Backend.separable_loss`: every group at once (see sweep_then_gradients)."""

    def loss_and_grad(stats):
        logps = stats.target_logit - stats.lse
        return logps, (logprob_grad(row_grad(logps, slice(0, rows.num_rows))) if needs.any else None)

    return sweep_then_gradients(backend, rows, weight, bias, transform, StatsRequest(), loss_and_grad, needs)


def accumulator_pays_off(needs: GradNeeds, request: StatsRequest, transform: LogitTransform) -> bool:
    """Build the frozen-head accumulator only when it can serve the whole backward (see accumulator_covers): a
    requested mean_logit, or a logit_sum under a softcap, would need the recompute path anyway."""
    return needs.frozen_head and not request.mean_logit and (transform.softcap is None or not request.logit_sum)


def accumulator_covers(grad: StatsGrad, transform: LogitTransform) -> bool:
    """Whether the frozen-head accumulator alone gives ``dh`` for these statistic gradients."""
    return grad.mean_logit is None and (grad.logit_sum is None or transform.softcap is None)


GATHER_ROWS = 1024
"""Rows of W_y gathered at a time when forming dh from the accumulator (bounds that temporary)."""


def hidden_grad_from_accumulator(
    acc: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    stats: SoftmaxStats,
    grad: StatsGrad,
    transform: LogitTransform,
    *,
    overwrite: bool = False,
) -> torch.Tensor:
    """dh [M, D] fp32 = c_target * z'_y * W_y + c_lse * acc (+ c_sum * slope * sum_v W_v without softcap).

    With ``overwrite`` dh is formed in ``acc``'s own memory (for a caller that no longer needs ``acc``).
    """
    if overwrite:
        dh = acc.mul_(grad.lse.unsqueeze(1)) if grad.lse is not None else acc.zero_()
    else:
        dh = acc * grad.lse.unsqueeze(1) if grad.lse is not None else torch.zeros_like(acc)
    if grad.target_logit is not None:
        coeff = (grad.target_logit * transform.derivative(stats.target_logit)).unsqueeze(1)
        for start in range(0, len(targets), GATHER_ROWS):
            rows = slice(start, start + GATHER_ROWS)
            dh[rows].addcmul_(coeff[rows], weight.index_select(0, targets[rows]).to(acc.dtype))
    if grad.logit_sum is not None:
        column_sum = weight.to(acc.dtype).sum(0) * transform.slope
        dh.addcmul_(grad.logit_sum.unsqueeze(1), column_sum.unsqueeze(0))
    return dh


def _cast_gradients(grads: Gradients, index, num_hidden_rows: int, weight, bias) -> tuple:
    """The gradients in the inputs' dtypes (hidden's is weight's), dh expanded from the scored rows to all
    ``num_hidden_rows`` rows of hidden."""
    return (
        None if grads.hidden is None else expand_rows(grads.hidden.to(weight.dtype), index, num_hidden_rows),
        None if grads.weight is None else grads.weight.to(weight.dtype),
        None if grads.bias is None else grads.bias.to(bias.dtype),
    )


class LinearSoftmaxStats(torch.autograd.Function):
    """Differentiable :class:`SoftmaxStats` of the scored rows of ``transform(hidden @ weight.T + bias)``, computed
    by ``backend``: hidden [N, D] every row, targets [M] and index [M] (or None) the scored ones (see ScoredRows)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, index, transform, request, backend):
        needs = GradNeeds(*ctx.needs_input_grad[:3])
        accumulate = accumulator_pays_off(needs, request, transform)
        rows = ScoredRows(hidden, targets, index)
        stats, saved = backend.sweep(
            rows, weight, bias, transform, request, accumulate=accumulate, keep_logits=needs.weight
        )
        acc, kept = (saved, None) if accumulate else (None, saved)
        ctx.transform, ctx.backend, ctx.needs = transform, backend, needs
        ctx.set_materialize_grads(False)  # statistics no loss used arrive as None, not as zeros
        # The accumulator path needs no hidden states in backward, only their number of rows.
        ctx.num_hidden_rows = hidden.shape[0]
        ctx.save_for_backward(hidden if acc is None else None, weight, bias, targets, index, *stats, acc, kept)
        unrequested = [s for s, on in zip(stats[2:], (request.logit_sum, request.mean_logit)) if not on]
        ctx.mark_non_differentiable(*unrequested)
        return stats

    @staticmethod
    def backward(ctx, *stat_grads):
        hidden, weight, bias, targets, index, *saved_stats, acc, kept = ctx.saved_tensors
        stats = SoftmaxStats(*saved_stats)
        grad = StatsGrad(*(None if g is None else g.to(stats.lse.dtype) for g in stat_grads))
        if acc is not None:
            dh = hidden_grad_from_accumulator(acc, weight, targets, stats, grad, ctx.transform)
            grads = Gradients(dh, None, None)
        else:
            rows = ScoredRows(hidden, targets, index)
            grads = ctx.backend.gradients(rows, weight, bias, ctx.transform, stats, grad, ctx.needs, kept)
        return (*_cast_gradients(grads, index, ctx.num_hidden_rows, weight, bias), None, None, None, None, None)


class LinearRowLossSum(torch.autograd.Function):
    """``sum_rows row_loss(stats)`` as a scalar over the scored rows (hidden, targets, index: as for
    LinearSoftmaxStats), with gradients formed in the forward sweep."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, index, transform, request, row_loss, backend):
        needs = GradNeeds(*ctx.needs_input_grad[:3])
        rows = ScoredRows(hidden, targets, index)
        total, grads = backend.row_loss_sum(rows, weight, bias, transform, request, row_loss, needs)
        _save_gradients(ctx, _cast_gradients(grads, index, hidden.shape[0], weight, bias))
        return total

    @staticmethod
    def backward(ctx, grad_total):
        return (*_saved_gradients_times(ctx, grad_total), None, None, None, None, None, None)


class LinearSeparableLoss(torch.autograd.Function):
    """``objective(logps)`` of the log-probs [M] of the scored rows (hidden, targets, index: as for
    LinearSoftmaxStats), for an objective that is a sum of independent terms, one per group of consecutive scored
    rows (``group_sizes``: a DPO pair's two sequences, a KTO example). Returns ``(loss, logps)``, logps detached.

    Separability lets the gradients be formed in the forward pass one group at a time: as soon as a group's rows
    are scored its terms, hence its rows' gradients, are known, so a backend can keep just those rows' logits to
    form them and reuse the memory for the next group (see ChunkedTorchBackend.separable_loss). The objective is
    evaluated with the later groups' log-probs still 0; it must not mix groups (a mean over groups is fine).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, index, transform, group_sizes, objective, backend):
        needs = GradNeeds(*ctx.needs_input_grad[:3])
        rows = ScoredRows(hidden, targets, index)
        logps, grads = backend.separable_loss(
            rows, weight, bias, transform, group_sizes, _objective_grad(objective), needs
        )
        _save_gradients(ctx, _cast_gradients(grads, index, hidden.shape[0], weight, bias))
        ctx.mark_non_differentiable(logps)
        return objective(logps).detach(), logps

    @staticmethod
    def backward(ctx, grad_loss, _grad_logps):
        return (*_saved_gradients_times(ctx, grad_loss), None, None, None, None, None, None)


def _objective_grad(objective: Callable[[torch.Tensor], torch.Tensor]) -> RowGrad:
    """The RowGrad of ``objective`` (logps [M] -> scalar), by autograd through it (cheap: [M] vectors)."""

    def row_grad(logps: torch.Tensor, rows: slice) -> torch.Tensor:
        with torch.enable_grad():
            leaf = logps.detach().requires_grad_()
            (grad,) = torch.autograd.grad(objective(leaf), leaf, allow_unused=True, materialize_grads=True)
        return grad[rows]

    return row_grad


def _save_gradients(ctx, grads: tuple) -> None:
    """Keep gradients formed in forward (None where not needed) for backward."""
    ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in grads))
    ctx.present = [g is not None for g in grads]


def _saved_gradients_times(ctx, grad_output: torch.Tensor) -> list:
    """The saved gradients times the upstream gradient of the scalar loss."""
    # The usual upstream gradient is exactly 1 (loss.backward()): hand the saved gradients over as they are
    # rather than allocate scaled copies (a [V, D] dW copy would double the trainable head's peak).
    unit = bool(torch.equal(grad_output, torch.ones_like(grad_output)))
    return [(g if unit else g * grad_output) if present else None for g, present in zip(ctx.saved_tensors, ctx.present)]
