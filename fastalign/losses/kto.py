"""Kahneman-Tversky Optimization (KTO, Ethayarajh et al. 2024): unpaired desirable / undesirable examples.

Per example, r = pi - ref (summed log-probs), w = desirable_weight or undesirable_weight, sigma = sigmoid:
    kto                desirable: 1 - sigma(beta (r - kl))    undesirable: 1 - sigma(beta (kl - r))
    apo_zero_unpaired  desirable: 1 - sigma(beta r)           undesirable: sigma(beta r)
    loss = mean over all examples of w * term
kl is a detached batch estimate of KL(policy || ref) on mismatched (prompt, completion) pairs: ``kto_kl``.
"""

import torch

from fastalign.losses import _dispatch
from fastalign.losses._validation import (
    check_choice,
    check_real,
    per_sequence_float32,
    scalar_float32,
)

KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")
KTO_METRICS = ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")


def kto_terms(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
    loss_type: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO loss and metrics from validated inputs (the ``kto_terms`` op of ``_dispatch``).

    Args:
        policy_logps, ref_logps: float32 [B] summed log-probs.
        desirable: bool [B], True for desirable (chosen) examples.
        kl: float32 0-dim, detached.
        beta, desirable_weight, undesirable_weight, loss_type: see ``kto_loss``.

    Returns:
        loss: float32 0-dim.
        metrics: float32 [len(KTO_METRICS)], detached.
    """
    r = policy_logps - ref_logps
    shift = kl if loss_type == "kto" else torch.zeros_like(kl)
    # desirable: 1 - sigma(beta (r - kl)) = sigma(beta (kl - r));  undesirable: 1 - sigma(beta (kl - r)) =
    # sigma(beta (r - kl)); apo_zero_unpaired is the same with kl = 0. 1 - sigma(a) = sigma(-a) avoids cancellation.
    sign = torch.where(desirable, -1.0, 1.0)
    weight = torch.where(desirable, desirable_weight, undesirable_weight)
    loss = (weight * torch.sigmoid(sign * beta * (r - shift))).mean()

    # Per-group means; a group with no examples reports 0 (its count is clamped to 1 over a zero sum).
    r, logps = r.detach(), policy_logps.detach()
    chosen, rejected = desirable.float(), (~desirable).float()
    n_chosen, n_rejected = chosen.sum(), rejected.sum()
    rewards_chosen = (beta * r * chosen).sum() / n_chosen.clamp(min=1)
    rewards_rejected = (beta * r * rejected).sum() / n_rejected.clamp(min=1)
    both = ((n_chosen > 0) & (n_rejected > 0)).float()
    metrics = torch.stack(
        [
            kl,
            rewards_chosen,
            rewards_rejected,
            both * (rewards_chosen - rewards_rejected),
            (logps * chosen).sum() / n_chosen.clamp(min=1),
            (logps * rejected).sum() / n_rejected.clamp(min=1),
        ]
    )
    return loss, metrics


def kto_kl(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """The KTO reference point: ``max(mean(policy_kl_logps - ref_kl_logps), 0)``, detached.

    The inputs are summed log-probs of completions paired with the wrong prompts (TRL's "KL" batch). Under data
    parallelism TRL all-reduces the mean over ranks before the clamp; do the same before passing it to
    ``kto_loss`` if ranks must agree.

    Args:
        policy_kl_logps, ref_kl_logps: [B] summed log-probs (any float dtype).

    Returns:
        float32 0-dim tensor, detached.
    """
    policy_kl_logps, ref_kl_logps = per_sequence_float32(policy_kl_logps=policy_kl_logps, ref_kl_logps=ref_kl_logps)
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    *,
    kl,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: str = "kto",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KTO loss over a batch of unpaired examples (see the module docstring for the math).

    Args:
        policy_logps, ref_logps: [B] summed completion log-probs (any float dtype; computed in float32).
        desirable: [B] bool (or 0/1 integer) tensor, True where the example is desirable.
        kl: reference point, a real number or a one-element tensor (detached here), e.g. ``kto_kl(...)``.
            Unused by ``apo_zero_unpaired`` (pass 0) but still reported.
        beta: > 0.
        desirable_weight, undesirable_weight: >= 0 weights of the two kinds of example.
        loss_type: one of ``KTO_LOSS_TYPES``.

    Returns:
        loss: float32 0-dim, the mean of the weighted per-example terms over all B examples.
        metrics: detached float32 0-dim tensors ``KTO_METRICS`` (TRL's KTOTrainer names): kl;
            rewards/chosen, logps/chosen = mean of beta r, of policy log-probs over desirable examples;
            rewards/rejected, logps/rejected = the same over undesirable examples; rewards/margins = rewards/chosen
            - rewards/rejected. A group with no examples reports 0, and margins is 0 unless both groups are present
            (TRL skips logging these instead).

    Raises:
        TypeError: non-tensor or non-float log-probs, float ``desirable``, non-numeric options.
        ValueError: mismatched shapes or devices, empty batch, unknown loss_type, out-of-range options.
    """
    check_choice("loss_type", loss_type, KTO_LOSS_TYPES)
    beta = check_real("beta", beta, positive=True)
    desirable_weight = check_real("desirable_weight", desirable_weight, minimum=0.0)
    undesirable_weight = check_real("undesirable_weight", undesirable_weight, minimum=0.0)
    policy_logps, ref_logps = per_sequence_float32(policy_logps=policy_logps, ref_logps=ref_logps)
    if not isinstance(desirable, torch.Tensor):
        raise TypeError(f"desirable must be a bool torch.Tensor, got {type(desirable).__name__}")
    if desirable.is_floating_point() or desirable.is_complex():
        raise TypeError(f"desirable must be a bool (or 0/1 integer) tensor, got dtype {desirable.dtype}")
    if desirable.shape != policy_logps.shape:
        raise ValueError(
            f"desirable has shape {tuple(desirable.shape)} but policy_logps has shape {tuple(policy_logps.shape)}"
        )
    if desirable.device != policy_logps.device:
        raise ValueError(f"desirable is on {desirable.device} but policy_logps is on {policy_logps.device}")
    kl = scalar_float32("kl", kl, policy_logps).detach()
    loss, metrics = _dispatch.call(
        "kto_terms",
        kto_terms,
        policy_logps,
        ref_logps,
        desirable.bool(),
        kl,
        beta,
        desirable_weight,
        undesirable_weight,
        loss_type,
    )
    return loss, _dispatch.metrics_dict(KTO_METRICS, metrics)
