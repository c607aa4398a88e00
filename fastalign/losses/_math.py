"""Small numerically stable helpers shared by the loss heads."""

import math

import torch

# log1mexp clamps its argument to x <= -LOG1MEXP_EPS. At x = 0 (a completion whose every token has log-prob 0,
# common in fp32 once a model is confident) log(1 - e^x) = -inf and its derivative 1 / (e^-x - 1) is infinite.
# Near 0, log1mexp(x) ~ log(-x) and d/dx ~ 1/x, so the clamp bounds the value at log(1e-12) ~ -27.6 and the
# derivative at 1e12. fp32 token log-probs (logit - logsumexp, with logits of magnitude ~10) resolve only ~1e-6,
# so no real average log-prob lies in (-1e-12, 0).
LOG1MEXP_EPS = 1e-12


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable in fp32 in value and gradient.

    log1mexp(x) = log1p(-e^x)     for x < -ln 2  (e^x is small: no cancellation in 1 - e^x)
                = log(-expm1(x))  otherwise      (expm1 is exact near 0 where 1 - e^x cancels)
    Each branch sees only arguments in its own range, so the branch ``torch.where`` discards cannot put an
    inf or NaN into the gradient. Arguments above -LOG1MEXP_EPS (including 0) are clamped to it and get zero
    gradient through this term.

    Args:
        x: log-probabilities, any shape; must be <= 0.

    Returns:
        Tensor of ``x``'s shape and dtype.
    """
    x = x.clamp(max=-LOG1MEXP_EPS)
    far = x < -math.log(2.0)
    far_branch = torch.log1p(-torch.exp(x.clamp(max=-math.log(2.0))))
    near_branch = torch.log(-torch.expm1(x.clamp(min=-math.log(2.0))))
    return torch.where(far, far_branch, near_branch)
