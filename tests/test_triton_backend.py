"""The Triton backend (kernels/softmax_stats.py, kernels/logit_grad.py) against the float64 reference.

Statistics and gradients go through the same autograd functions the library uses (LinearSoftmaxStats,
LinearRowLossSum) with a TritonBackend, and are compared with autograd through ``reference_stats`` on float64 copies
of the same inputs. Without CUDA the kernels run under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), one program at a time in numpy, so shapes stay small: M <= 64, V <= 256, D <= 64. The odd sizes
(V = 203, D = 31, M = 1 or 37) leave partial tiles in every dimension; 64 x 256 x 64 fills them exactly.
"""

import pytest
import torch
import torch.nn.functional as F
from head_cases import HeadInputs, assert_close, make_inputs

from fastalign.core.head import LogitTransform
from fastalign.core.reference import reference_stats
from fastalign.core.rows import ScoredRows
from fastalign.core.stats import (
    GradNeeds,
    LinearRowLossSum,
    LinearSoftmaxStats,
    SoftmaxStats,
    StatsGrad,
    StatsRequest,
)
from fastalign.core.triton_backend import TritonBackend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Tolerances, as a fraction of the largest reference magnitude (see head_cases.assert_close).
# float32: fp32 dot products over D <= 64 terms and fp32 softmax sums over V <= 256 entries, in a different order
#   than the float64 reference: ~1e-6 relative; the dW/db atomics only reorder fp32 additions.
# bfloat16/float16, statistics: the reference sees the same rounded inputs, their products are exact in fp32 and
#   accumulate in fp32, so the statistics are as accurate as in float32 (1e-4 leaves room for the GPU's order).
# bfloat16/float16, gradients: on a GPU the kernels round the logit gradient (or p * z' for the accumulator) to the
#   input dtype for the tensor-core matmuls (unit roundoff 2^-8 in bfloat16, 2^-11 in float16) and return the result
#   in the input dtype, a second rounding. (The interpreter upcasts after loading and skips the first rounding.)
#   Emulating both roundings in float64 over 300 seeds of these cases gave worst errors of 5.0e-3 (bfloat16) and
#   6.4e-4 (float16); the tolerances leave a 4x margin.
STATS_TOL = {torch.float32: 2e-5, torch.bfloat16: 1e-4, torch.float16: 1e-4}
GRAD_TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}

TRANSFORMS = {
    "identity": LogitTransform(),
    "scaled": LogitTransform(logit_scale=1.3, temperature=0.7),
    "softcap": LogitTransform(softcap=3.0, logit_scale=1.3, temperature=0.7),
}
ALL_STATS = SoftmaxStats._fields


class RecordingBackend(TritonBackend):
    """A TritonBackend that records which kernels each call ran (to pin down the frozen-head accumulator path)."""

    def __init__(self):
        self.calls = []

    def sweep(self, *args, accumulate, keep_logits=False):
        self.calls.append("sweep+accumulate" if accumulate else "sweep")
        return super().sweep(*args, accumulate=accumulate, keep_logits=keep_logits)

    def gradients(self, *args):
        self.calls.append("gradients")
        return super().gradients(*args)


def head(M=37, V=203, D=31, *, dtype=torch.float32, bias=False, frozen=False):
    return make_inputs((M,), D, V, dtype=dtype, device=DEVICE, bias=bias, frozen=frozen, ignored_fraction=0.0)


def request_for(used) -> StatsRequest:
    return StatsRequest(logit_sum="logit_sum" in used, mean_logit="mean_logit" in used)


def weighted_loss(stats: SoftmaxStats, coefficients: dict) -> torch.Tensor:
    """sum_rows sum_s c_s * stat_s: a loss whose statistic gradients are the random coefficients c_s."""
    return sum((c * getattr(stats, name).double()).sum() for name, c in coefficients.items())


def leaves(inputs: HeadInputs) -> dict:
    """The inputs that need a gradient, by name, in the order of ``inputs.leaves()``."""
    named = {"hidden": inputs.hidden, "weight": inputs.weight, "bias": inputs.bias}
    return {name: t for name, t in named.items() if t is not None and t.requires_grad}


def check_against_reference(inputs: HeadInputs, transform, used, seed, backend=None):
    """Statistics, and the gradients of a random combination of the ``used`` statistics: Triton vs float64."""
    request = request_for(used)
    dtype = inputs.hidden.dtype
    ref = inputs.as_float64()
    expected = reference_stats(ref.hidden, ref.weight, ref.bias, ref.targets, transform, request)
    args = (inputs.hidden, inputs.weight, inputs.bias, inputs.targets, None, transform, request)
    actual = SoftmaxStats(*LinearSoftmaxStats.apply(*args, backend or TritonBackend()))
    for name in ("lse", "target_logit", *used):
        assert getattr(actual, name).dtype == torch.float32
        assert_close(getattr(actual, name), getattr(expected, name), STATS_TOL[dtype], f"{name} (seed={seed})")

    coefficients = {name: torch.randn(len(inputs.targets), device=DEVICE, dtype=torch.float64) for name in used}
    grads = torch.autograd.grad(weighted_loss(actual, coefficients), inputs.leaves())
    expected_grads = torch.autograd.grad(weighted_loss(expected, coefficients), ref.leaves())
    for name, g, e in zip(leaves(inputs), grads, expected_grads):
        assert g.dtype == dtype, f"d{name}: dtype {g.dtype}"
        assert_close(g, e, GRAD_TOL[dtype], f"d{name} (seed={seed})")


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
@pytest.mark.parametrize(
    "used",
    [("lse", "target_logit"), ALL_STATS],
    ids=["lse+target", "all-statistics"],
)
def test_trainable_head_statistics_and_gradients_match_reference(transform, bias, used, fresh_seed):
    check_against_reference(head(bias=bias), transform, used, fresh_seed)


@pytest.mark.parametrize(
    "M,V,D",
    [(1, 203, 31), (64, 256, 64), (5, 20, 16), (3, 17, 40)],
    ids=["one-row", "exact-tiles", "one-partial-vocab-tile", "D-spans-tiles"],
)
def test_odd_sizes_match_reference(M, V, D, fresh_seed):
    check_against_reference(head(M, V, D, bias=True), TRANSFORMS["softcap"], ALL_STATS, fresh_seed)


SUBSETS = [("target_logit",), ("logit_sum",), ("mean_logit",), ("lse", "mean_logit"), ("target_logit", "logit_sum")]


@pytest.mark.parametrize("used", SUBSETS, ids=["+".join(u) for u in SUBSETS])
def test_statistic_gradients_alone_and_in_pairs(used, fresh_seed):
    """The gradient kernel's coefficient flags (C_LSE, C_TARGET, C_SUM, C_MEAN) on their own and in pairs."""
    check_against_reference(head(bias=True), TRANSFORMS["softcap"], used, fresh_seed)


# The frozen head (only hidden needs a gradient): the accumulator sum_v p_v z'_v W_v, formed in the statistics sweep,
# serves c_lse and c_target always and c_sum without softcap; mean_logit (or logit_sum under a softcap) falls back to
# the gradient kernel. (transform, statistics the loss uses, the kernels expected to run)
FROZEN_CASES = [
    ("scaled", ("lse",), ["sweep+accumulate"]),
    ("scaled", ("target_logit",), ["sweep+accumulate"]),
    ("scaled", ("logit_sum",), ["sweep+accumulate"]),
    ("scaled", ("lse", "target_logit"), ["sweep+accumulate"]),
    ("scaled", ("lse", "logit_sum"), ["sweep+accumulate"]),
    ("scaled", ("target_logit", "logit_sum"), ["sweep+accumulate"]),
    ("scaled", ("lse", "target_logit", "logit_sum"), ["sweep+accumulate"]),
    ("softcap", ("lse",), ["sweep+accumulate"]),
    ("softcap", ("target_logit",), ["sweep+accumulate"]),
    ("softcap", ("lse", "target_logit"), ["sweep+accumulate"]),
    ("softcap", ("lse", "target_logit", "logit_sum"), ["sweep", "gradients"]),
    ("scaled", ("lse", "target_logit", "mean_logit"), ["sweep", "gradients"]),
]


@pytest.mark.parametrize("transform,used,calls", FROZEN_CASES, ids=[f"{t}-{'+'.join(u)}" for t, u, _ in FROZEN_CASES])
def test_frozen_head_gradient_matches_reference(transform, used, calls, fresh_seed):
    backend = RecordingBackend()
    check_against_reference(head(bias=True, frozen=True), TRANSFORMS[transform], used, fresh_seed, backend)
    assert backend.calls == calls


@pytest.mark.parametrize("transform", ["identity", "softcap"])
def test_accumulator_equals_weighted_sum_of_weight_rows(transform, fresh_seed):
    """The sweep's accumulator is sum_v p_v z'_v W_v, also alongside the optional statistics."""
    inputs, transform = head(bias=True), TRANSFORMS[transform]
    request = StatsRequest(logit_sum=True, mean_logit=True)
    rows = ScoredRows(inputs.hidden.detach(), inputs.targets)
    stats, acc = TritonBackend().sweep(rows, inputs.weight.detach(), inputs.bias.detach(), transform, request, True)
    ref = inputs.as_float64()
    logits = transform.apply(F.linear(ref.hidden, ref.weight, ref.bias)).detach()
    expected = (logits.softmax(-1) * transform.derivative(logits)) @ ref.weight.detach()
    assert acc.dtype == torch.float32
    assert_close(acc, expected, STATS_TOL[torch.float32], f"accumulator (seed={fresh_seed})")
    expected_stats = reference_stats(ref.hidden, ref.weight, ref.bias, ref.targets, transform, request)
    for name, a, e in zip(ALL_STATS, stats, expected_stats):
        assert_close(a, e, STATS_TOL[torch.float32], f"{name} with the accumulator (seed={fresh_seed})")


def smoothed_cross_entropy(stats: SoftmaxStats, vocab_size: int, eps: float = 0.1) -> torch.Tensor:
    return stats.lse - (1 - eps) * stats.target_logit - eps / vocab_size * stats.logit_sum


ROW_LOSS_CASES = [
    # (transform, frozen head, entropy bonus (mean_logit), whether a gradient pass must run after the sweep)
    ("scaled", True, False, False),  # the accumulator serves lse, target_logit and logit_sum
    ("softcap", True, False, True),  # logit_sum under a softcap: not covered by the accumulator
    ("softcap", True, True, True),
    ("softcap", False, True, True),
]


@pytest.mark.parametrize("transform,frozen,entropy,gradient_pass", ROW_LOSS_CASES)
def test_row_loss_sum_matches_reference(transform, frozen, entropy, gradient_pass, fresh_seed):
    """Cross-entropy with label smoothing (+ an entropy bonus), gradients formed before backward."""
    inputs, transform, backend = head(bias=True, frozen=frozen), TRANSFORMS[transform], RecordingBackend()
    V = inputs.weight.shape[0]
    request = StatsRequest(logit_sum=True, mean_logit=entropy)

    def row_loss(stats):
        loss = smoothed_cross_entropy(stats, V)
        return loss - 0.1 * (stats.lse - stats.mean_logit) if entropy else loss

    total = LinearRowLossSum.apply(
        inputs.hidden, inputs.weight, inputs.bias, inputs.targets, None, transform, request, row_loss, backend
    )
    ref = inputs.as_float64()
    expected = row_loss(reference_stats(ref.hidden, ref.weight, ref.bias, ref.targets, transform, request)).sum()
    assert_close(total, expected, STATS_TOL[torch.float32], f"total (seed={fresh_seed})")
    grads = torch.autograd.grad(total * 0.5, inputs.leaves())
    expected_grads = torch.autograd.grad(expected * 0.5, ref.leaves())
    for name, g, e in zip(leaves(inputs), grads, expected_grads):
        assert_close(g, e, GRAD_TOL[torch.float32], f"d{name} (seed={fresh_seed})")
    assert ("gradients" in backend.calls) == gradient_pass, backend.calls


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_matches_reference(dtype, frozen, fresh_seed):
    """Same rounded inputs for both sides: statistics at fp32 accuracy, gradients at the input dtype's."""
    used = ("lse", "target_logit") if frozen else ALL_STATS
    check_against_reference(head(dtype=dtype, bias=True, frozen=frozen), TRANSFORMS["softcap"], used, fresh_seed)


def test_non_contiguous_inputs(fresh_seed):
    """Strided hidden states and a transposed weight (e.g. a tied embedding view) are made contiguous."""
    M, V, D = 9, 40, 24
    hidden = torch.randn(M, 2 * D, device=DEVICE)[:, ::2].requires_grad_()
    weight = (torch.randn(D, V, device=DEVICE) * D**-0.5).t().requires_grad_()
    inputs = HeadInputs(hidden, weight, None, torch.randint(0, V, (M,), device=DEVICE))
    assert not hidden.is_contiguous() and not weight.is_contiguous()
    check_against_reference(inputs, TRANSFORMS["scaled"], ALL_STATS, fresh_seed)


def test_no_rows_launches_nothing():
    inputs, backend = head(M=0), TritonBackend()
    hidden, weight, targets = inputs.hidden.detach(), inputs.weight.detach(), inputs.targets
    rows = ScoredRows(hidden, targets)
    stats, acc = backend.sweep(rows, weight, None, LogitTransform(), StatsRequest(), True)
    assert all(s.shape == (0,) for s in stats) and acc.shape == (0, weight.shape[1])
    grad = StatsGrad(torch.ones_like(stats.lse), None, None, None)
    grads = backend.gradients(rows, weight, None, LogitTransform(), stats, grad, GradNeeds(True, True, False))
    assert grads.hidden.shape == hidden.shape and not grads.weight.any() and grads.bias is None


def test_float64_is_rejected_with_a_clear_error():
    inputs = head(M=4, V=16, D=16, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        rows = ScoredRows(inputs.hidden, inputs.targets)
        TritonBackend().sweep(rows, inputs.weight, None, LogitTransform(), StatsRequest(), False)
