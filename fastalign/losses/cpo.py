"""Contrastive Preference Optimization (CPO, Xu et al. 2024) and SimPO (Meng et al. 2024): reference-free.

With z = chosen - rejected (log-probs of the policy only), s = logsigmoid, eps = label_smoothing:
    simpo    -(1-eps) s(beta z - gamma) - eps s(-(beta z - gamma))
    sigmoid  the same with gamma = 0
    hinge    relu(1 - beta z)
    ipo      (z - 1/(2 beta))^2
    loss = mean over pairs + cpo_alpha * nll_loss
"""

import torch
import torch.nn.functional as F

from fastalign.losses import _dispatch
from fastalign.losses._validation import check_choice, check_real, per_sequence_float32, scalar_float32

CPO_LOSS_TYPES = ("simpo", "sigmoid", "hinge", "ipo")
CPO_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "nll_loss",
)


def cpo_terms(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    nll_loss: torch.Tensor,
    beta: float,
    gamma: float,
    loss_type: str,
    label_smoothing: float,
    cpo_alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CPO / SimPO loss and metrics from validated inputs (the ``cpo_terms`` op of ``_dispatch``).

    Args:
        chosen_logps, rejected_logps: float32 [B] policy log-probs (averaged or summed, the caller's choice).
        nll_loss: float32 0-dim SFT loss on the chosen completions (0 when the caller has none).
        beta, gamma, loss_type, label_smoothing, cpo_alpha: see ``cpo_loss``.

    Returns:
        loss: float32 0-dim.
        metrics: float32 [len(CPO_METRICS)], detached.
    """
    z = chosen_logps - rejected_logps
    eps = label_smoothing
    if loss_type in ("simpo", "sigmoid"):
        # -(1-eps) s(u) - eps s(-u),  u = beta z - gamma (gamma = 0 for sigmoid)
        u = beta * z - (gamma if loss_type == "simpo" else 0.0)
        losses = -(1 - eps) * F.logsigmoid(u) - eps * F.logsigmoid(-u)
    elif loss_type == "hinge":
        # relu(1 - beta z)
        losses = F.relu(1 - beta * z)
    else:  # ipo
        # (z - 1/(2 beta))^2
        losses = (z - 1 / (2 * beta)) ** 2
    loss = losses.mean() + cpo_alpha * nll_loss

    a_c, a_r = chosen_logps.detach(), rejected_logps.detach()
    metrics = torch.stack(
        [
            (beta * a_c).mean(),
            (beta * a_r).mean(),
            (a_c > a_r).float().mean(),
            (beta * (a_c - a_r)).mean(),
            a_c.mean(),
            a_r.mean(),
            nll_loss.detach(),
        ]
    )
    return loss, metrics


def cpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    gamma: float = 0.5,
    loss_type: str = "simpo",
    label_smoothing: float = 0.0,
    nll_loss: torch.Tensor | None = None,
    cpo_alpha: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CPO-family preference loss from policy log-probs (see the module docstring for the math).

    The head only sees z = chosen_logps - rejected_logps. Like TRL's CPOTrainer, the caller passes length-averaged
    (per-token mean) log-probs for ``simpo`` and ``ipo`` and summed log-probs for ``sigmoid`` and ``hinge``.
    For plain SimPO set ``cpo_alpha=0``; CPO is ``sigmoid`` with ``cpo_alpha=1``.

    Args:
        chosen_logps, rejected_logps: [B] policy log-probs (any float dtype; computed in float32).
        beta: > 0.
        gamma: SimPO target reward margin (used by simpo only).
        loss_type: one of ``CPO_LOSS_TYPES``.
        label_smoothing: eps in [0, 0.5] (simpo and sigmoid).
        nll_loss: 0-dim SFT loss on the chosen completions (gradients flow); None means 0.
        cpo_alpha: weight of nll_loss.

    Returns:
        loss: float32 0-dim.
        metrics: detached float32 0-dim tensors ``CPO_METRICS`` (TRL's CPOTrainer names): rewards/chosen =
            mean(beta chosen_logps), rewards/rejected = mean(beta rejected_logps), rewards/accuracies =
            mean(chosen > rejected), rewards/margins = mean(beta z), logps/* = mean log-probs, nll_loss.

    Raises:
        TypeError: non-tensor or non-float inputs, non-numeric options.
        ValueError: mismatched shapes or devices, empty batch, unknown loss_type, out-of-range options.
    """
    check_choice("loss_type", loss_type, CPO_LOSS_TYPES)
    beta = check_real("beta", beta, positive=True)
    gamma = check_real("gamma", gamma)
    label_smoothing = check_real("label_smoothing", label_smoothing, minimum=0.0)
    if label_smoothing > 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    cpo_alpha = check_real("cpo_alpha", cpo_alpha)
    chosen_logps, rejected_logps = per_sequence_float32(chosen_logps=chosen_logps, rejected_logps=rejected_logps)
    nll_loss = scalar_float32("nll_loss", nll_loss, chosen_logps)
    loss, metrics = _dispatch.call(
        "cpo_terms",
        cpo_terms,
        chosen_logps,
        rejected_logps,
        nll_loss,
        beta,
        gamma,
        loss_type,
        label_smoothing,
        cpo_alpha,
    )
    return loss, _dispatch.metrics_dict(CPO_METRICS, metrics)
