"""Per-token log-probabilities of targets under an LM head, without materializing the logits."""

from __future__ import annotations

import torch

from fastalign.core.dispatch import separable_loss, softmax_stats
from fastalign.core.head import LogitTransform
from fastalign.core.rows import group_rows, prepare_rows
from fastalign.core.stats import StatsRequest


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    temperature: float = 1.0,
    return_lse: bool = False,
    return_entropy: bool = False,
    impl: str = "auto",
):
    """``log p(target | h)`` with ``logits = softcap * tanh(logit_scale * (h @ W.T + b) / softcap) / temperature``.

    Args:
        hidden: [..., D] float32, bfloat16 or float16 hidden states.
        weight: [V, D] LM-head weight, same dtype and device as ``hidden``.
        targets: [...] integer token ids in ``[0, V)`` or ``ignore_index``.
        bias: optional [V] LM-head bias.
        softcap, logit_scale, temperature: the head's logit transform (softcap None: no tanh).
        return_lse, return_entropy: also return the log-partition and the softmax entropy of each position.
        impl: "auto", "triton", "torch" or "reference" (see :mod:`fastalign.core.dispatch`).

    Returns:
        float32 [...] log-probs, exactly 0.0 where ``targets == ignore_index`` (float64 for float64 inputs).
        With ``return_lse`` or ``return_entropy``: the tuple ``(logp, lse, entropy)``, the ones not asked for None;
        lse and entropy are 0.0 at ignored positions too. Everything is differentiable with respect to hidden,
        weight and bias. A frozen head (weight and bias without grad) uses the 2-matmul path unless the entropy is
        returned, whose gradient needs a recomputation of the logits in backward.
    """
    rows = prepare_rows(hidden, weight, targets, bias, ignore_index)
    transform = LogitTransform(softcap, logit_scale, temperature)
    stats = softmax_stats(rows, weight, bias, transform, StatsRequest(mean_logit=return_entropy), impl)
    logp = rows.scatter(stats.target_logit - stats.lse)
    if not (return_lse or return_entropy):
        return logp
    lse = rows.scatter(stats.lse) if return_lse else None
    entropy = rows.scatter(stats.lse - stats.mean_logit) if return_entropy else None
    return logp, lse, entropy


def linear_logprobs_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    objective,
    *,
    groups: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    temperature: float = 1.0,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``objective(logp)`` with ``logp = linear_logprobs(hidden, weight, targets, ...)``, for an objective that is a
    sum of independent terms, one per group of positions: a preference pair's two sequences, a KTO example.

    Equal in value and gradient to computing ``linear_logprobs`` and then the objective, but the gradients are
    formed in the forward pass, a few groups at a time, as soon as their terms are known. On a trainable head that
    lets the chunked PyTorch path keep the logits of many more rows than the composed route can (which must score
    every row before any gradient is known) and spare them a recomputation in backward.

    Args:
        hidden, weight, targets, bias, ignore_index, softcap, logit_scale, temperature, impl: as for
            ``linear_logprobs``.
        objective: float32 log-probs of targets' shape (0.0 where ignored) -> scalar loss. It must be a sum of
            terms that each read the positions of one group only (means over groups are fine): it is evaluated
            with the positions of groups not yet scored set to 0. When the chunked path works in several phases it
            checks this at the end (the gradient at the final log-probs against the one taken phase by phase) and
            raises ValueError for an objective that mixes groups.
        groups: integer group ids >= 0, targets' shape.

    Returns:
        ``(loss, logp)``: the loss, differentiable with respect to hidden, weight and bias, and the log-probs
        (detached), e.g. for metrics.
    """
    rows, group_sizes = group_rows(prepare_rows(hidden, weight, targets, bias, ignore_index), groups)
    transform = LogitTransform(softcap, logit_scale, temperature)

    def row_objective(row_logps: torch.Tensor) -> torch.Tensor:
        return objective(rows.scatter(row_logps))

    loss, row_logps = separable_loss(rows, weight, bias, transform, group_sizes, row_objective, impl)
    return loss, rows.scatter(row_logps)
