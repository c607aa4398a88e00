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
