"""Direct Preference Optimization and its pairwise variants (the ``loss_type`` values of TRL's DPOTrainer).

Notation, per preference pair (log-probs summed over the completion tokens):
    r_c = pi_c - ref_c, r_r = pi_r - ref_r      implicit rewards (divided by beta)
    z   = r_c - r_r                             preference log-ratio
    z'  = r_c / len_c - r_r / len_r             length-normalised log-ratio (ipo, sigmoid_norm)
    x   = beta z
    s = logsigmoid, sigma = sigmoid, eps = label_smoothing, tau = discopop_tau
Every form below is written with logsigmoid / sigmoid of a scaled argument, so it is finite in fp32 for any finite
input; the loss is the mean over pairs.
"""

import math

import torch
import torch.nn.functional as F

from fastalign.losses import _dispatch
from fastalign.losses._validation import check_choice, check_real, lengths_float32, per_sequence_float32

DPO_LOSS_TYPES = (
    "sigmoid",
    "robust",
    "hinge",
    "ipo",
    "sigmoid_norm",
    "exo_pair",
    "bco_pair",
    "sppo_hard",
    "nca_pair",
    "apo_zero",
    "apo_down",
    "discopop",
)
DPO_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)
_NEEDS_LENGTHS = ("ipo", "sigmoid_norm")


def dpo_terms(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    loss_type: str,
    label_smoothing: float,
    discopop_tau: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO loss and metrics from validated inputs (the ``dpo_terms`` op of ``_dispatch``).

    Args:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected: float32 [B] summed log-probs.
        chosen_lengths, rejected_lengths: float32 [B] completion token counts, >= 1 (used by ipo, sigmoid_norm).
        beta, loss_type, label_smoothing, discopop_tau: see ``dpo_loss``.

    Returns:
        loss: float32 0-dim, mean over pairs.
        metrics: float32 [len(DPO_METRICS)], detached.
    """
    r_c = policy_chosen - ref_chosen
    r_r = policy_rejected - ref_rejected
    eps = label_smoothing
    x = beta * (r_c - r_r)
    if loss_type == "sigmoid":
        # -(1 - eps) s(x) - eps s(-x)
        losses = -(1 - eps) * F.logsigmoid(x) - eps * F.logsigmoid(-x)
    elif loss_type == "robust":
        # (-(1 - eps) s(x) + eps s(-x)) / (1 - 2 eps): unbiased under label noise eps
        losses = (-(1 - eps) * F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1 - 2 * eps)
    elif loss_type == "hinge":
        # relu(1 - x)
        losses = F.relu(1 - x)
    elif loss_type in _NEEDS_LENGTHS:
        z_norm = r_c / chosen_lengths - r_r / rejected_lengths
        if loss_type == "ipo":
            # (z' - 1 / (2 beta))^2
            losses = (z_norm - 1 / (2 * beta)) ** 2
        else:
            # -s(beta z')
            losses = -F.logsigmoid(beta * z_norm)
    elif loss_type == "exo_pair":
        # KL(softmax over {chosen, rejected} of x || [1 - eps, eps]) =
        #   sigma(x) (s(x) - log(1 - eps)) + sigma(-x) (s(-x) - log eps)
        losses = torch.sigmoid(x) * (F.logsigmoid(x) - math.log1p(-eps)) + torch.sigmoid(-x) * (
            F.logsigmoid(-x) - math.log(eps)
        )
    elif loss_type == "bco_pair":
        # -s(beta r_c) - s(-beta r_r)
        losses = -F.logsigmoid(beta * r_c) - F.logsigmoid(-beta * r_r)
    elif loss_type == "sppo_hard":
        # (r_c - 1 / (2 beta))^2 + (r_r + 1 / (2 beta))^2
        losses = (r_c - 1 / (2 * beta)) ** 2 + (r_r + 1 / (2 * beta)) ** 2
    elif loss_type == "nca_pair":
        # -s(beta r_c) - s(-beta r_c) / 2 - s(-beta r_r) / 2
        losses = -F.logsigmoid(beta * r_c) - 0.5 * F.logsigmoid(-beta * r_c) - 0.5 * F.logsigmoid(-beta * r_r)
    elif loss_type == "apo_zero":
        # (1 - sigma(beta r_c)) + sigma(beta r_r), with 1 - sigma(a) = sigma(-a) (no cancellation)
        losses = torch.sigmoid(-beta * r_c) + torch.sigmoid(beta * r_r)
    elif loss_type == "apo_down":
        # sigma(beta r_c) + (1 - sigma(x))
        losses = torch.sigmoid(beta * r_c) + torch.sigmoid(-x)
    else:  # discopop
        # m = sigma(x / tau):  -s(x) (1 - m) + e^-x m
        # with 1 - m = sigma(-x / tau) and e^-x m = exp(-x + s(x / tau)); the exponent is <= x (1/tau - 1) for
        # x < 0 and <= -x for x > 0, so it cannot overflow when tau <= 1.
        losses = -F.logsigmoid(x) * torch.sigmoid(-x / discopop_tau) + torch.exp(-x + F.logsigmoid(x / discopop_tau))
    loss = losses.mean()

    r_c, r_r = r_c.detach(), r_r.detach()
    metrics = torch.stack(
        [
            (beta * r_c).mean(),
            (beta * r_r).mean(),
            (r_c > r_r).float().mean(),
            (beta * (r_c - r_r)).mean(),
            policy_chosen.detach().mean(),
            policy_rejected.detach().mean(),
        ]
    )
    return loss, metrics


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    discopop_tau: float = 0.05,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO-family preference loss from per-sequence log-probs.

    Loss types (per pair; the returned loss is the mean over pairs; notation in the module docstring):
        sigmoid       -(1-eps) s(x) - eps s(-x)                         (DPO; conservative DPO when eps > 0)
        robust        (-(1-eps) s(x) + eps s(-x)) / (1 - 2 eps)         (rDPO; needs eps < 0.5)
        hinge         relu(1 - x)                                       (SLiC)
        ipo           (z' - 1/(2 beta))^2                               (IPO; needs lengths)
        sigmoid_norm  -s(beta z')                                       (needs lengths)
        exo_pair      sigma(x)(s(x) - log(1-eps)) + sigma(-x)(s(-x) - log eps)   (EXO; needs eps > 0)
        bco_pair      -s(beta r_c) - s(-beta r_r)
        sppo_hard     (r_c - 1/(2 beta))^2 + (r_r + 1/(2 beta))^2
        nca_pair      -s(beta r_c) - s(-beta r_c)/2 - s(-beta r_r)/2
        apo_zero      (1 - sigma(beta r_c)) + sigma(beta r_r)
        apo_down      sigma(beta r_c) + (1 - sigma(x))
        discopop      -s(x)(1 - m) + e^-x m,  m = sigma(x / tau)

    Args:
        policy_chosen, policy_rejected: [B] policy log-probs of the chosen / rejected completions, summed over
            tokens. Any float dtype; computed in float32.
        ref_chosen, ref_rejected: [B] reference-model log-probs, same layout.
        beta: > 0, inverse temperature of the implicit reward.
        loss_type: one of ``DPO_LOSS_TYPES``.
        label_smoothing: eps in [0, 0.5]; used by sigmoid, robust (< 0.5) and exo_pair (> 0).
        chosen_lengths, rejected_lengths: [B] completion token counts (integer or float); required by ipo and
            sigmoid_norm. A count of 0 (empty completion, summed log-prob 0) is treated as 1, giving z' terms 0.
        discopop_tau: tau in (0, 1] of discopop; above 1, e^-x m grows without bound as x -> -inf.

    Returns:
        loss: float32 0-dim.
        metrics: detached float32 0-dim tensors ``DPO_METRICS``: rewards/chosen = mean(beta r_c),
            rewards/rejected = mean(beta r_r), rewards/accuracies = mean(r_c > r_r), rewards/margins = mean(beta z),
            logps/chosen, logps/rejected = mean policy log-probs.

    Raises:
        TypeError: non-tensor or non-float log-probs, non-numeric options.
        ValueError: mismatched shapes or devices, empty batch, unknown loss_type, out-of-range options,
            missing lengths for ipo / sigmoid_norm.
    """
    check_choice("loss_type", loss_type, DPO_LOSS_TYPES)
    beta = check_real("beta", beta, positive=True)
    label_smoothing = check_real("label_smoothing", label_smoothing, minimum=0.0)
    if label_smoothing > 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    if loss_type == "robust" and label_smoothing >= 0.5:
        raise ValueError("loss_type='robust' divides by 1 - 2 * label_smoothing: label_smoothing must be < 0.5")
    if loss_type == "exo_pair" and label_smoothing == 0.0:
        raise ValueError("loss_type='exo_pair' needs label_smoothing > 0 (its target distribution is [1-eps, eps])")
    discopop_tau = check_real("discopop_tau", discopop_tau, positive=True)
    if discopop_tau > 1.0:
        raise ValueError(f"discopop_tau must be in (0, 1] (the loss is unbounded above 1), got {discopop_tau}")
    if loss_type in _NEEDS_LENGTHS and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError(
            f"loss_type={loss_type!r} normalises by completion length: pass chosen_lengths and rejected_lengths"
        )
    tensors = per_sequence_float32(
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        ref_chosen=ref_chosen,
        ref_rejected=ref_rejected,
    )
    lengths = [
        lengths_float32("chosen_lengths", chosen_lengths, tensors[0]),
        lengths_float32("rejected_lengths", rejected_lengths, tensors[0]),
    ]
    loss, metrics = _dispatch.call(
        "dpo_terms", dpo_terms, *tensors, *lengths, beta, loss_type, label_smoothing, discopop_tau
    )
    return loss, _dispatch.metrics_dict(DPO_METRICS, metrics)
