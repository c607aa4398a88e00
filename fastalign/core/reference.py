"""Naive implementation: materializes the ``[M, V]`` logits and lets autograd differentiate.

It is the ground truth of the test suite (run on float64 inputs) and the baseline of the benchmarks; never use it
for training at scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastalign.core.head import LogitTransform
from fastalign.core.stats import SoftmaxStats, StatsRequest


def reference_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    transform: LogitTransform,
    request: StatsRequest,
) -> SoftmaxStats:
    """Statistics of ``transform(hidden @ weight.T + bias)``: hidden [M, D], weight [V, D], targets [M]."""
    raw = F.linear(hidden, weight, bias)
    logits = transform.apply(raw if raw.dtype == torch.float64 else raw.float())
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    zeros = torch.zeros_like(lse)
    logit_sum = logits.sum(-1) if request.logit_sum else zeros
    mean_logit = (torch.softmax(logits, dim=-1) * logits).sum(-1) if request.mean_logit else zeros
    return SoftmaxStats(lse, target_logit, logit_sum, mean_logit)
