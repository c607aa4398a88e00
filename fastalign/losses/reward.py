"""Bradley-Terry reward-model loss (TRL's RewardTrainer): scalar rewards of a chosen and a rejected completion.

    loss = -mean(s(r_c - r_r - margin)) + c * mean((r_c + r_r)^2)
with s = logsigmoid, margin an optional per-pair required gap and c = center_rewards_coefficient (Eisenstein et al.
2023: pulls the rewards towards zero mean).
"""

import torch
import torch.nn.functional as F

from fastalign.losses import _dispatch
from fastalign.losses._validation import check_real, per_sequence_float32

BRADLEY_TERRY_METRICS = ("accuracy", "margin", "mean_reward", "min_reward", "max_reward")


def bradley_terry_terms(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor,
    center_rewards_coefficient: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bradley-Terry loss and metrics from validated inputs (the ``bradley_terry_terms`` op of ``_dispatch``).

    Args:
        chosen_rewards, rejected_rewards: float32 [B].
        margin: float32 [B] (zeros when not given).
        center_rewards_coefficient: c (0.0 when not given).

    Returns:
        loss: float32 0-dim.
        metrics: float32 [len(BRADLEY_TERRY_METRICS)], detached.
    """
    # -mean s(r_c - r_r - margin) + c mean((r_c + r_r)^2)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards - margin).mean()
    if center_rewards_coefficient:  # skipped at 0, where 0 * inf would turn huge rewards into a NaN loss
        loss = loss + center_rewards_coefficient * ((chosen_rewards + rejected_rewards) ** 2).mean()

    r_c, r_r = chosen_rewards.detach(), rejected_rewards.detach()
    rewards = torch.cat([r_c, r_r])
    metrics = torch.stack(
        [(r_c > r_r).float().mean(), (r_c - r_r).mean(), rewards.mean(), rewards.min(), rewards.max()]
    )
    return loss, metrics


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pairwise Bradley-Terry loss for reward models (see the module docstring for the math).

    Args:
        chosen_rewards, rejected_rewards: [B] scalar rewards (any float dtype; computed in float32).
        margin: [B] required reward gap per pair, not differentiated; None means 0.
        center_rewards_coefficient: c >= 0; None means 0 (no centring term).

    Returns:
        loss: float32 0-dim.
        metrics: detached float32 0-dim tensors ``BRADLEY_TERRY_METRICS`` (TRL's RewardTrainer names):
            accuracy = mean(r_c > r_r), margin = mean(r_c - r_r) (the achieved gap, not the ``margin`` input),
            mean_reward, min_reward, max_reward over all 2B rewards.

    Raises:
        TypeError: non-tensor or non-float inputs, non-numeric coefficient.
        ValueError: mismatched shapes or devices, empty batch, negative coefficient.
    """
    coefficient = 0.0
    if center_rewards_coefficient is not None:
        coefficient = check_real("center_rewards_coefficient", center_rewards_coefficient, minimum=0.0)
    if margin is None:
        chosen_rewards, rejected_rewards = per_sequence_float32(
            chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards
        )
        margin = torch.zeros_like(chosen_rewards)
    else:
        chosen_rewards, rejected_rewards, margin = per_sequence_float32(
            chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards, margin=margin
        )
        margin = margin.detach()
    loss, metrics = _dispatch.call(
        "bradley_terry_terms", bradley_terry_terms, chosen_rewards, rejected_rewards, margin, coefficient
    )
    return loss, _dispatch.metrics_dict(BRADLEY_TERRY_METRICS, metrics)
