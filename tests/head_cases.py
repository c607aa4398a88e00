"""Inputs and comparisons shared by the tests of the fused LM-head primitives.

Every implementation is compared with ``impl="reference"`` run on float64 copies of the same inputs: the naive
computation that materializes the logits, differentiated by autograd.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# (impl, device) pairs every behaviour test runs on. Triton runs on CPU through its interpreter (small shapes only).
IMPLEMENTATIONS = [
    pytest.param("torch", "cpu", id="torch-cpu"),
    pytest.param(
        "triton",
        "cpu",
        id="triton-interpret",
        marks=pytest.mark.skipif(
            torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
            reason="interpreter run on CPU only",
        ),
    ),
] + [pytest.param(impl, "cuda", id=f"{impl}-cuda") for impl in ("torch", "triton") if "cuda" in DEVICES]

# Tolerances, as a fraction of the largest reference magnitude (see assert_close).
# float32: the reference is float64; fp32 matmul over D <= 64 terms and the softmax sums carry ~1e-6 relative error.
# bfloat16 / float16: inputs are rounded first and the reference uses the SAME rounded values, so only compute
# precision counts; the torch path rounds the logits of each chunk to the input dtype before upcasting (as a
# Hugging Face head does), so a logit of size ~4 carries an error of up to 4 * 2^-9 = 8e-3 in bfloat16 (8 bits of
# mantissa) and 4 * 2^-11 = 2e-3 in float16; gradients are returned in the input dtype (one more rounding).
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 8e-3}


@dataclass
class HeadInputs:
    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    targets: torch.Tensor

    def leaves(self):
        return [t for t in (self.hidden, self.weight, self.bias) if t is not None and t.requires_grad]

    def as_float64(self) -> HeadInputs:
        """Detached float64 copies with the same requires_grad flags: the reference's inputs."""

        def copy(t):
            return None if t is None else t.detach().double().requires_grad_(t.requires_grad)

        return HeadInputs(copy(self.hidden), copy(self.weight), copy(self.bias), self.targets)


def make_inputs(
    shape=(37,),
    dim=31,
    vocab=203,
    *,
    dtype=torch.float32,
    device="cpu",
    bias=False,
    frozen=False,
    ignored_fraction=0.25,
    logit_size=4.0,
    ignore_index=-100,
) -> HeadInputs:
    """Random head inputs whose logits have a standard deviation of about ``logit_size``."""
    hidden = torch.randn(*shape, dim, device=device)
    weight = torch.randn(vocab, dim, device=device) * (logit_size / dim**0.5)
    bias_tensor = torch.randn(vocab, device=device) if bias else None
    targets = torch.randint(0, vocab, shape, device=device)
    targets[torch.rand(shape, device=device) < ignored_fraction] = ignore_index
    hidden = hidden.to(dtype).requires_grad_()
    weight = weight.to(dtype).requires_grad_(not frozen)
    if bias_tensor is not None:
        bias_tensor = bias_tensor.to(dtype).requires_grad_(not frozen)
    return HeadInputs(hidden, weight, bias_tensor, targets)


def grads_of(output: torch.Tensor, inputs: HeadInputs, upstream: torch.Tensor | None = None):
    """Gradients of sum(output * upstream) with respect to every input that requires grad."""
    total = output.sum() if upstream is None else (output * upstream.to(output.dtype)).sum()
    return torch.autograd.grad(total, inputs.leaves(), allow_unused=True)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """max |actual - expected| <= tol * max(1, max |expected|), and no NaN/inf."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    error = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert error <= tol * scale, f"{what}: max error {error:.3g} > {tol:.3g} * {scale:.3g}"
