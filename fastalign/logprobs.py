"""Per-token log-probabilities of targets under an LM head, without materializing the logits."""

from __future__ import annotations

import torch

from fastalign.core.dispatch import softmax_stats
from fastalign.core.head import LogitTransform
from fastalign.core.rows import prepare_rows
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
