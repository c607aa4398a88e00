"""Inputs and tolerances shared by the tests of the loss heads (test_losses.py: PyTorch against the float64
reference; test_ext.py: the C++/CUDA extension against both)."""

import math

import torch

VALUE_TOL = {"rtol": 1e-5, "atol": 1e-6}
GRAD_TOL = {"rtol": 1e-4, "atol": 1e-7}
BATCH = 8


def summed_logps(batch=BATCH, scale=200.0):
    """(policy, ref) summed log-probs in [-scale, 0] whose difference r is O(1): beta r spans the sigmoid."""
    policy = -torch.rand(batch) * scale
    return policy, (policy + 3 * torch.randn(batch)).clamp(max=0)


def averaged_logps(batch=BATCH):
    """Length-averaged log-probs spread log-uniformly over [-5, -1e-3]."""
    return -torch.exp(torch.empty(batch).uniform_(math.log(1e-3), math.log(5.0)))


def lengths(batch=BATCH):
    """DPO's completion lengths (the length-normalised loss types)."""
    return {"chosen_lengths": torch.randint(1, 60, (batch,)), "rejected_lengths": torch.randint(1, 60, (batch,))}


EXTREME_CASES = ["near_zero", "near_minus_1e4", "equal", "huge_margin", "big_beta"]


def extreme_pairs(case, batch=BATCH):
    """(policy_c, policy_r, ref_c, ref_r, beta) for one kind of extreme input."""
    if case == "near_zero":  # log-probs in [-1e-6, 0]: r and z ~ 1e-6
        return [-torch.rand(batch) * 1e-6 for _ in range(4)] + [0.1]
    if case == "near_minus_1e4":  # large log-probs, O(1) differences: exact by Sterbenz, no fp32 cancellation
        base = -1e4 + torch.rand(batch)
        return [base + torch.randn(batch) for _ in range(4)] + [0.1]
    if case == "equal":  # chosen == rejected: z = 0 exactly
        policy, reference = summed_logps(batch)
        return [policy, policy.clone(), reference, reference.clone(), 0.1]
    if case == "huge_margin":  # beta z = +-2e5: every sigmoid saturates, e^|x| overflows any naive form
        sign = torch.where(torch.rand(batch) < 0.5, -1.0, 1.0)
        zeros = torch.zeros(batch)
        return [sign * 1e4, -sign * 1e4, zeros, zeros, 10.0]
    if case == "big_beta":
        policy_c, ref_c = summed_logps(batch)
        policy_r, ref_r = summed_logps(batch)
        return [policy_c, policy_r, ref_c, ref_r, 1e3]
    raise ValueError(case)


def cpo_case(magnitude, loss_type, eps):
    """(args, kwargs) of cpo_loss: length-averaged or summed log-probs, or averaged ones under beta = 1e3."""
    if magnitude == "averaged":
        args, beta = [averaged_logps(), averaged_logps()], 2.0
    elif magnitude == "summed":
        args, beta = [summed_logps()[0], summed_logps()[0]], 0.1
    else:
        args, beta = [averaged_logps(), averaged_logps()], 1e3
    kwargs = {
        "beta": beta,
        "gamma": 0.8,
        "loss_type": loss_type,
        "label_smoothing": eps,
        "nll_loss": torch.rand(()).requires_grad_(),
        "cpo_alpha": 0.7,
    }
    return args, kwargs


def metric_tolerance(*terms):
    """VALUE_TOL for a metric that averages ``terms`` (e.g. the rewards beta * r), plus the absolute error float32
    rounding leaves in such a mean however much the terms cancel: each term, and each partial sum, is off by up to
    2^-24 of its size, so the mean by up to n * 2^-24 * max|term|. Below 1e-7 for the usual inputs; with beta = 1e3
    (terms ~1e4) ~1e-3, where VALUE_TOL's rtol, relative to a mean that may have cancelled to ~1, failed about one
    seed in 300 (rewards/margins -0.738403 against the float64 -0.738382 for seed 1007837270)."""
    largest = max(float(t.detach().abs().max()) for t in terms)
    count = max(t.numel() for t in terms)
    return {"rtol": VALUE_TOL["rtol"], "atol": VALUE_TOL["atol"] + count * 2.0**-24 * largest}
