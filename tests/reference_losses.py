"""float64 ground truth for every alignment loss head and for sequence_logprobs.

Written directly from the formulas of the spec, as naively as float64 allows and without importing fastalign:
every backend (PyTorch, Triton, C++/CUDA) is tested against these functions. Inputs must be float64 tensors;
outputs are float64, differentiable by autograd. Notation: r_c = pi_c - ref_c, r_r = pi_r - ref_r, z = r_c - r_r,
s = logsigmoid, sigma = sigmoid, eps = label_smoothing.

Naive means, for example, that discopop computes exp(-x) * sigma(x / tau) literally: it overflows to NaN for
x < -709 where a stable implementation stays finite, so tests of extreme inputs compare only where these
references are finite.
"""

import math

import torch
from torch.nn.functional import logsigmoid as s

sigma = torch.sigmoid


def _f64(*tensors):
    for t in tensors:
        assert t.dtype == torch.float64, f"reference inputs must be float64, got {t.dtype}"


def _pair_metrics(beta, chosen_scores, rejected_scores, chosen_logps, rejected_logps):
    """TRL's pair metrics: rewards = beta * score, accuracy of score_c > score_r, margins, mean log-probs."""
    c, r = chosen_scores.detach(), rejected_scores.detach()
    return {
        "rewards/chosen": (beta * c).mean(),
        "rewards/rejected": (beta * r).mean(),
        "rewards/accuracies": (c > r).double().mean(),
        "rewards/margins": (beta * c - beta * r).mean(),
        "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(),
    }


def dpo(
    policy_chosen,
    policy_rejected,
    ref_chosen,
    ref_rejected,
    *,
    beta=0.1,
    loss_type="sigmoid",
    label_smoothing=0.0,
    chosen_lengths=None,
    rejected_lengths=None,
    discopop_tau=0.05,
):
    """DPO family: mean over pairs of the per-pair loss of ``loss_type``; returns (loss, metrics)."""
    _f64(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    eps = label_smoothing
    r_c = policy_chosen - ref_chosen
    r_r = policy_rejected - ref_rejected
    z = r_c - r_r
    if loss_type in ("ipo", "sigmoid_norm"):
        zn = r_c / chosen_lengths.double() - r_r / rejected_lengths.double()
    if loss_type == "sigmoid":
        losses = -(1 - eps) * s(beta * z) - eps * s(-beta * z)
    elif loss_type == "robust":
        losses = (-(1 - eps) * s(beta * z) + eps * s(-beta * z)) / (1 - 2 * eps)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * z)
    elif loss_type == "ipo":
        losses = (zn - 1 / (2 * beta)) ** 2
    elif loss_type == "sigmoid_norm":
        losses = -s(beta * zn)
    elif loss_type == "exo_pair":
        losses = sigma(beta * z) * (s(beta * z) - math.log(1 - eps)) + sigma(-beta * z) * (s(-beta * z) - math.log(eps))
    elif loss_type == "bco_pair":
        losses = -s(beta * r_c) - s(-beta * r_r)
    elif loss_type == "sppo_hard":
        losses = (r_c - 1 / (2 * beta)) ** 2 + (r_r + 1 / (2 * beta)) ** 2
    elif loss_type == "nca_pair":
        losses = -s(beta * r_c) - 0.5 * s(-beta * r_c) - 0.5 * s(-beta * r_r)
    elif loss_type == "apo_zero":
        losses = (1 - sigma(beta * r_c)) + sigma(beta * r_r)
    elif loss_type == "apo_down":
        losses = sigma(beta * r_c) + (1 - sigma(beta * (r_c - r_r)))
    elif loss_type == "discopop":
        x = beta * z
        m = sigma(x / discopop_tau)
        losses = -s(x) * (1 - m) + torch.exp(-x) * m
    else:
        raise ValueError(loss_type)
    return losses.mean(), _pair_metrics(beta, r_c, r_r, policy_chosen, policy_rejected)


def log1mexp(x):
    """log(1 - e^x), naive (float64 keeps it accurate for the -x >= 1e-9 the tests use)."""
    return torch.log(1 - torch.exp(x))


def orpo(chosen_logps, rejected_logps, *, beta=0.1, nll_loss=None):
    """ORPO on length-averaged log-probs A_c, A_r; returns (loss, metrics)."""
    _f64(chosen_logps, rejected_logps)
    nll = torch.zeros((), dtype=torch.float64) if nll_loss is None else nll_loss
    log_odds = (chosen_logps - rejected_logps) - (log1mexp(chosen_logps) - log1mexp(rejected_logps))
    loss = nll - beta * s(log_odds).mean()
    metrics = _pair_metrics(beta, chosen_logps, rejected_logps, chosen_logps, rejected_logps)
    metrics["log_odds_ratio"] = s(log_odds).detach().mean()
    metrics["log_odds_chosen"] = log_odds.detach().mean()
    metrics["nll_loss"] = nll.detach()
    return loss, metrics


def kto_kl(policy_kl_logps, ref_kl_logps):
    """max(mean(policy - ref), 0), detached."""
    _f64(policy_kl_logps, ref_kl_logps)
    return torch.clamp((policy_kl_logps - ref_kl_logps).mean(), min=0).detach()


def kto(
    policy_logps,
    ref_logps,
    desirable,
    *,
    kl,
    beta=0.1,
    desirable_weight=1.0,
    undesirable_weight=1.0,
    loss_type="kto",
):
    """KTO over unpaired examples, as TRL's KTOTrainer: (loss, metrics); empty groups report 0."""
    _f64(policy_logps, ref_logps)
    kl = float(kl)
    d = desirable.bool()
    r = policy_logps - ref_logps
    if loss_type == "kto":
        chosen_losses = 1 - sigma(beta * (r[d] - kl))
        rejected_losses = 1 - sigma(beta * (kl - r[~d]))
    elif loss_type == "apo_zero_unpaired":
        chosen_losses = 1 - sigma(beta * r[d])
        rejected_losses = sigma(beta * r[~d])
    else:
        raise ValueError(loss_type)
    loss = torch.cat([desirable_weight * chosen_losses, undesirable_weight * rejected_losses]).mean()

    def group_mean(values):
        return values.detach().mean() if values.numel() else torch.zeros((), dtype=torch.float64)

    metrics = {
        "kl": torch.tensor(kl, dtype=torch.float64),
        "rewards/chosen": group_mean(beta * r[d]),
        "rewards/rejected": group_mean(beta * r[~d]),
        "logps/chosen": group_mean(policy_logps[d]),
        "logps/rejected": group_mean(policy_logps[~d]),
    }
    both = bool(d.any()) and bool((~d).any())
    metrics["rewards/margins"] = (
        metrics["rewards/chosen"] - metrics["rewards/rejected"] if both else torch.zeros((), dtype=torch.float64)
    )
    return loss, metrics


def cpo(
    chosen_logps,
    rejected_logps,
    *,
    beta=0.1,
    gamma=0.5,
    loss_type="simpo",
    label_smoothing=0.0,
    nll_loss=None,
    cpo_alpha=1.0,
):
    """CPO / SimPO on policy log-probs: (loss, metrics)."""
    _f64(chosen_logps, rejected_logps)
    eps = label_smoothing
    nll = torch.zeros((), dtype=torch.float64) if nll_loss is None else nll_loss
    z = chosen_logps - rejected_logps
    if loss_type == "simpo":
        losses = -(1 - eps) * s(beta * z - gamma) - eps * s(-(beta * z - gamma))
    elif loss_type == "sigmoid":
        losses = -(1 - eps) * s(beta * z) - eps * s(-(beta * z))
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * z)
    elif loss_type == "ipo":
        losses = (z - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(loss_type)
    loss = losses.mean() + cpo_alpha * nll
    metrics = _pair_metrics(beta, chosen_logps, rejected_logps, chosen_logps, rejected_logps)
    metrics["nll_loss"] = nll.detach()
    return loss, metrics


def bradley_terry(chosen_rewards, rejected_rewards, *, margin=None, center_rewards_coefficient=None):
    """Bradley-Terry reward-model loss, as TRL's RewardTrainer: (loss, metrics)."""
    _f64(chosen_rewards, rejected_rewards)
    m = 0.0 if margin is None else margin
    loss = -s(chosen_rewards - rejected_rewards - m).mean()
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * ((chosen_rewards + rejected_rewards) ** 2).mean()
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    everything = torch.cat([c, r])
    metrics = {
        "accuracy": (c > r).double().mean(),
        "margin": (c - r).mean(),
        "mean_reward": everything.mean(),
        "min_reward": everything.min(),
        "max_reward": everything.max(),
    }
    return loss, metrics


def sequence_logprobs(token_logps, *, mask=None, cu_seqlens=None, reduction="sum"):
    """Per-sequence sum / mean of token log-probs, one Python loop iteration per sequence; mean of nothing = 0."""
    _f64(token_logps)
    flat = token_logps.reshape(-1)
    keep = torch.ones_like(flat, dtype=torch.bool) if mask is None else mask.reshape(-1).bool()
    if cu_seqlens is None:
        length = token_logps.shape[1]
        bounds = [b * length for b in range(token_logps.shape[0] + 1)]
    else:
        bounds = [int(b) for b in cu_seqlens]
    out = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        scored = [flat[t] for t in range(start, end) if keep[t]]
        total = sum(scored, torch.zeros((), dtype=torch.float64))
        if reduction == "mean":
            total = total / len(scored) if scored else torch.zeros((), dtype=torch.float64)
        out.append(total)
    return torch.stack(out)
