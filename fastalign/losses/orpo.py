"""Odds Ratio Preference Optimization (ORPO, Hong et al. 2024): an SFT loss plus an odds-ratio preference term.

With A_c, A_r the length-averaged log-probs of the chosen and rejected completions, odds(A) = e^A / (1 - e^A):
    log_odds = log odds(A_c) - log odds(A_r) = (A_c - A_r) - (log1mexp(A_c) - log1mexp(A_r))
    loss     = nll_loss - beta * mean(s(log_odds))
with log1mexp(a) = log(1 - e^a) and s = logsigmoid. No reference model.
"""

import torch
import torch.nn.functional as F

from fastalign.losses import _dispatch
from fastalign.losses._math import log1mexp
from fastalign.losses._validation import check_real, per_sequence_float32, scalar_float32

ORPO_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "log_odds_ratio",
    "log_odds_chosen",
    "nll_loss",
)


def orpo_terms(
    chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, nll_loss: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """ORPO loss and metrics from validated inputs (the ``orpo_terms`` op of ``_dispatch``).

    Args:
        chosen_logps, rejected_logps: float32 [B] length-averaged log-probs A_c, A_r (<= 0).
        nll_loss: float32 0-dim SFT loss on the chosen completions (0 when the caller has none).
        beta: weight of the odds-ratio term.

    Returns:
        loss: float32 0-dim.
        metrics: float32 [len(ORPO_METRICS)], detached.
    """
    # log_odds = (A_c - A_r) - (log(1 - e^A_c) - log(1 - e^A_r))
    log_odds = (chosen_logps - rejected_logps) - (log1mexp(chosen_logps) - log1mexp(rejected_logps))
    ratio = F.logsigmoid(log_odds)
    loss = nll_loss - beta * ratio.mean()

    a_c, a_r = chosen_logps.detach(), rejected_logps.detach()
    metrics = torch.stack(
        [
            (beta * a_c).mean(),
            (beta * a_r).mean(),
            (a_c > a_r).float().mean(),
            (beta * (a_c - a_r)).mean(),
            a_c.mean(),
            a_r.mean(),
            ratio.detach().mean(),
            log_odds.detach().mean(),
            nll_loss.detach(),
        ]
    )
    return loss, metrics


def orpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    nll_loss: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ORPO loss: ``nll_loss - beta * mean(logsigmoid(log_odds))`` (see the module docstring).

    log1mexp clamps its argument to <= -1e-12 (``fastalign.losses._math.LOG1MEXP_EPS``): an average log-prob of
    exactly 0 gives a finite loss and gradient, and values in (-1e-12, 0] are treated as -1e-12.

    Args:
        chosen_logps, rejected_logps: [B] length-averaged (per-token mean) log-probs of the chosen and rejected
            completions, <= 0. Any float dtype; computed in float32.
        beta: > 0, weight of the odds-ratio term (lambda in the paper).
        nll_loss: 0-dim SFT loss on the chosen completions, added as is (gradients flow); None means 0.

    Returns:
        loss: float32 0-dim.
        metrics: detached float32 0-dim tensors ``ORPO_METRICS``: rewards/chosen = mean(beta A_c),
            rewards/rejected = mean(beta A_r), rewards/accuracies = mean(A_c > A_r),
            rewards/margins = mean(beta (A_c - A_r)), logps/* = mean A, log_odds_ratio = mean s(log_odds),
            log_odds_chosen = mean log_odds, nll_loss.

    Raises:
        TypeError: non-tensor or non-float inputs, non-numeric beta.
        ValueError: mismatched shapes or devices, empty batch, beta <= 0, non-scalar nll_loss.
    """
    beta = check_real("beta", beta, positive=True)
    chosen_logps, rejected_logps = per_sequence_float32(chosen_logps=chosen_logps, rejected_logps=rejected_logps)
    nll_loss = scalar_float32("nll_loss", nll_loss, chosen_logps)
    loss, metrics = _dispatch.call("orpo_terms", orpo_terms, chosen_logps, rejected_logps, nll_loss, beta)
    return loss, _dispatch.metrics_dict(ORPO_METRICS, metrics)
