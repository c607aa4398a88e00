"""Fused linear cross-entropy: ``cross_entropy(h @ W.T + b, targets)`` without materializing the logits."""

from __future__ import annotations

import torch
from torch import nn

from fastalign.core.dispatch import row_loss_sum, softmax_stats
from fastalign.core.head import LogitTransform
from fastalign.core.rows import prepare_rows
from fastalign.core.stats import SoftmaxStats, StatsRequest

REDUCTIONS = ("mean", "sum", "none")


def cross_entropy_rows(stats: SoftmaxStats, vocab_size: int, label_smoothing: float, z_loss: float) -> torch.Tensor:
    """Per-row loss [M]: the one place the cross-entropy math lives.

        (1 - eps) * (lse - z_y) + eps * mean_v (lse - z_v) + z_loss * lse^2
      = lse - (1 - eps) * z_y - eps / V * sum_v z_v + z_loss * lse^2

    i.e. the smoothed target puts 1 - eps on y and eps / V on every class (as torch.nn.functional.cross_entropy
    does), and z_loss is the PaLM auxiliary term that keeps the log-partition near 0.
    """
    loss = stats.lse - (1.0 - label_smoothing) * stats.target_logit
    if label_smoothing:
        loss = loss - (label_smoothing / vocab_size) * stats.logit_sum
    if z_loss:
        loss = loss + z_loss * stats.lse.square()
    return loss


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    temperature: float = 1.0,
    shift: bool = False,
    num_items_in_batch: int | torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Cross-entropy of ``targets`` under ``logits = transform(hidden @ weight.T + bias)``.

    Args:
        hidden: [..., D] (or [..., T, D] with ``shift``) float32/bfloat16/float16.
        weight: [V, D]; bias: [V] or None.
        targets: [...] integer ids; ``ignore_index`` positions are skipped (no cost, no loss).
        reduction: "mean" (over non-ignored targets, or divided by ``num_items_in_batch`` when given, as
            transformers.Trainer passes it under gradient accumulation), "sum", or "none" ([...] float32, 0.0 at
            ignored positions). A mean over zero targets is 0.0 with zero gradients.
        label_smoothing: eps in [0, 1); z_loss: coefficient of lse^2.
        softcap, logit_scale, temperature: the head's logit transform.
        shift: predict ``targets[..., 1:]`` from ``hidden[..., :-1, :]`` like Hugging Face causal LMs.
        impl: "auto", "triton", "torch" or "reference".

    For "mean"/"sum" the gradient is formed during the forward sweep (no recomputation in backward).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if z_loss < 0.0:
        raise ValueError(f"z_loss must be >= 0, got {z_loss}")
    if shift:
        if hidden.dim() < 2 or targets.dim() < 1:
            raise ValueError("shift=True needs hidden [..., T, D] and targets [..., T]")
        hidden, targets = hidden[..., :-1, :], targets[..., 1:]
    rows = prepare_rows(hidden, weight, targets, bias, ignore_index)
    transform = LogitTransform(softcap, logit_scale, temperature)
    request = StatsRequest(logit_sum=label_smoothing > 0.0)
    vocab_size = weight.shape[0]

    def per_row(stats: SoftmaxStats) -> torch.Tensor:
        return cross_entropy_rows(stats, vocab_size, label_smoothing, z_loss)

    if reduction == "none":
        stats = softmax_stats(rows, weight, bias, transform, request, impl)
        return rows.scatter(per_row(stats))

    if reduction == "mean":
        denominator = rows.num_rows if num_items_in_batch is None else num_items_in_batch
        if isinstance(denominator, torch.Tensor):
            denominator = denominator.to(hidden.device).clamp(min=1)
        else:
            denominator = max(int(denominator), 1)

        def weighted_row(stats: SoftmaxStats) -> torch.Tensor:
            return per_row(stats) / denominator

        return row_loss_sum(rows, weight, bias, transform, request, weighted_row, impl)
    return row_loss_sum(rows, weight, bias, transform, request, per_row, impl)


class FusedLinearCrossEntropyLoss(nn.Module):
    """Module form of :func:`linear_cross_entropy`; ``forward(hidden, weight, targets, bias=None)``."""

    def __init__(
        self,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        logit_scale: float = 1.0,
        temperature: float = 1.0,
        shift: bool = False,
        impl: str = "auto",
    ):
        super().__init__()
        self.options = dict(
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            logit_scale=logit_scale,
            temperature=temperature,
            shift=shift,
            impl=impl,
        )

    def forward(self, hidden, weight, targets, bias=None, num_items_in_batch=None) -> torch.Tensor:
        return linear_cross_entropy(
            hidden, weight, targets, bias=bias, num_items_in_batch=num_items_in_batch, **self.options
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
