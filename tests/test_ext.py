"""The compiled extension (csrc/, ``fastalign.ext``) against the PyTorch path and the float64 references.

Every op of the dispatch contract (fastalign/losses/_dispatch.py) runs three ways on the same fresh random fp32
inputs, through the public functions: with ``FASTALIGN_EXT=1`` (the C++ ops; the test checks that they really
ran), with ``FASTALIGN_EXT=0`` (the PyTorch implementation), and through ``reference_losses`` in float64. Loss,
every metric and every gradient must agree. The extension is built once per machine (cached under
~/.cache/fastalign/ext); without a C++ compiler the module is skipped. CUDA kernels are tested when a GPU is
present (``DEVICES``).

Tolerances are those of test_losses.py, for the same reason: both fp32 paths compute a short chain of rounded ops
on inputs that float64 represents exactly (a few ulp, ~1e-7 relative). Values: rtol 1e-5, atol 1e-6; gradients:
rtol 1e-4, atol 1e-7. Extreme inputs where the naive float64 reference overflows are compared only where it is
finite, and must be finite in both fp32 paths everywhere.
"""

import math
import os
import warnings

import pytest
import reference_losses as ref
import torch
from loss_inputs import (
    BATCH,
    GRAD_TOL,
    VALUE_TOL,
    averaged_logps,
    cpo_case,
    extreme_pairs,
    lengths,
    metric_tolerance,
    summed_logps,
)

from fastalign import ext, losses
from fastalign.ext import _build, _loader
from fastalign.ext.__main__ import main as build_main
from fastalign.sequence_logprobs import sequence_logprobs, sequence_token_counts

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module", autouse=True)
def extension():
    """Build (or reuse) the extension once for the module; skip everything when there is no C++ compiler."""
    try:
        _build.check_toolchain()
    except RuntimeError as error:
        pytest.skip(f"cannot build fastalign's C++ extension here: {error}")
    return ext.build()


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


# --------------------------------------------------------------------------------------------------------------
# Harness


def evaluate(fn, args, kwargs, *, dtype, device):
    """Call ``fn`` on ``dtype`` copies of the float tensors in args / kwargs and backpropagate its output.

    Positional float tensors, and keyword float tensors created with ``requires_grad``, are the leaves. The
    output is ``(loss, metrics)`` for a loss head or a tensor (sequence_logprobs, weighted by fixed ``weights``).
    Returns (output, metrics dict or {}, gradients), all on the CPU.
    """
    leaves = []

    def convert(t, differentiate):
        if not isinstance(t, torch.Tensor):
            return t
        if not t.is_floating_point():
            return t.to(device)
        t = t.detach().to(device=device, dtype=dtype).requires_grad_(differentiate)
        if differentiate:
            leaves.append(t)
        return t

    a = [convert(t, True) for t in args]
    k = {key: convert(v, isinstance(v, torch.Tensor) and v.requires_grad) for key, v in kwargs.items()}
    out = fn(*a, **k)
    if isinstance(out, tuple):
        out, metrics = out
        out.backward()
    else:
        metrics = {}
        weights = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype, device=out.device)
        (out * weights).sum().backward()
    return out, {n: m.cpu() for n, m in metrics.items()}, [leaf.grad.cpu() for leaf in leaves]


def compare(name, got, expected, tol, msg, finite_only=False):
    got, expected = got.detach().cpu().double(), expected.detach().cpu().double()
    assert torch.isfinite(got).all(), f"{name} is not finite: {got} ({msg})"
    if finite_only:
        keep = torch.isfinite(expected)
        got, expected = got[keep], expected[keep]
    torch.testing.assert_close(got, expected, **tol, msg=lambda m: f"{name} ({msg}): {m}")


def check_three_ways(
    monkeypatch, device, seed, fn, reference, args, kwargs, *, finite_reference_only=False, metric_tol=VALUE_TOL
):
    """The extension, the PyTorch path and the float64 reference agree on ``fn(*args, **kwargs)`` (metrics to
    ``metric_tol``)."""
    monkeypatch.setenv(ext.ENV_VAR, "1")
    out, metrics, grads = evaluate(fn, args, kwargs, dtype=torch.float32, device=device)
    assert "fastalign" in type(out.grad_fn).__name__, f"the extension did not run: {out.grad_fn}"
    assert out.dtype == torch.float32 and all(not m.requires_grad for m in metrics.values())
    monkeypatch.setenv(ext.ENV_VAR, "0")
    torch_out, torch_metrics, torch_grads = evaluate(fn, args, kwargs, dtype=torch.float32, device=device)
    assert "fastalign" not in type(torch_out.grad_fn).__name__
    ref_out, ref_metrics, ref_grads = evaluate(reference, args, kwargs, dtype=torch.float64, device="cpu")

    msg = f"seed={seed} device={device} options={ {k: v for k, v in kwargs.items() if not torch.is_tensor(v)} }"
    assert list(metrics) == list(torch_metrics) and set(metrics) == set(ref_metrics), msg
    pairs = [("output", out, torch_out, ref_out, VALUE_TOL)]
    pairs += [(f"metric {n}", metrics[n], torch_metrics[n], ref_metrics[n], metric_tol) for n in metrics]
    pairs += [
        (f"gradient {i}", g, tg, rg, GRAD_TOL) for i, (g, tg, rg) in enumerate(zip(grads, torch_grads, ref_grads))
    ]
    for name, got, torch_value, ref_value, tol in pairs:
        compare(f"{name} vs PyTorch", got, torch_value, tol, msg)
        compare(f"{name} vs reference", got, ref_value, tol, msg, finite_only=finite_reference_only)


# --------------------------------------------------------------------------------------------------------------
# Inputs


def dpo_inputs():
    return [t.requires_grad_() for t in summed_logps() + summed_logps()]


def dpo_smoothing(loss_type):
    return 0.2 if loss_type in ("sigmoid", "robust", "exo_pair") else 0.0


# --------------------------------------------------------------------------------------------------------------
# Loss heads


@pytest.mark.parametrize("loss_type", losses.DPO_LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_dpo_matches_pytorch_and_reference(loss_type, beta, device, monkeypatch, fresh_seed):
    policy_c, ref_c = summed_logps()
    policy_r, ref_r = summed_logps()
    kwargs = {"beta": beta, "loss_type": loss_type, "label_smoothing": dpo_smoothing(loss_type), **lengths()}
    check_three_ways(
        monkeypatch, device, fresh_seed, losses.dpo_loss, ref.dpo, [policy_c, policy_r, ref_c, ref_r], kwargs
    )


@pytest.mark.parametrize("loss_type", losses.DPO_LOSS_TYPES)
@pytest.mark.parametrize("case", ["near_zero", "near_minus_1e4", "equal", "huge_margin", "big_beta"])
def test_dpo_extreme_inputs(loss_type, case, device, monkeypatch, fresh_seed):
    *tensors, beta = extreme_pairs(case)
    kwargs = {"beta": beta, "loss_type": loss_type, "label_smoothing": dpo_smoothing(loss_type), **lengths()}
    policy_c, policy_r, ref_c, ref_r = tensors
    tol = metric_tolerance(beta * (policy_c - ref_c), beta * (policy_r - ref_r))  # the rewards
    check_three_ways(
        monkeypatch, device, fresh_seed, losses.dpo_loss, ref.dpo, tensors, kwargs, finite_reference_only=True,
        metric_tol=tol,
    )  # fmt: skip


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "discopop"])
def test_dpo_large_batch_spans_many_chunks_and_threads(loss_type, device, monkeypatch, fresh_seed):
    # 10_000 pairs: the CPU forward folds 10 chunks of 1024 in parallel, the backward splits 4096-pair ranges.
    batch = 10_000
    policy_c, ref_c = summed_logps(batch)
    policy_r, ref_r = summed_logps(batch)
    kwargs = {"beta": 0.5, "loss_type": loss_type, **lengths(batch)}
    check_three_ways(
        monkeypatch, device, fresh_seed, losses.dpo_loss, ref.dpo, [policy_c, policy_r, ref_c, ref_r], kwargs
    )


@pytest.mark.parametrize("beta", [0.1, 1e3])
@pytest.mark.parametrize("with_nll", [False, True])
def test_orpo_matches_pytorch_and_reference(beta, with_nll, device, monkeypatch, fresh_seed):
    kwargs = {"beta": beta}
    if with_nll:
        kwargs["nll_loss"] = (torch.rand(()) * 3).requires_grad_()
    check_three_ways(
        monkeypatch, device, fresh_seed, losses.orpo_loss, ref.orpo, [averaged_logps(), averaged_logps()], kwargs
    )


@pytest.mark.parametrize("case", ["near_zero", "near_minus_1e4", "equal", "mixed", "exactly_zero"])
def test_orpo_extreme_inputs(case, device, monkeypatch, fresh_seed):
    if case == "near_zero":  # log(1 - e^A) ~ log|A| where a naive fp32 1 - e^A rounds to 0
        args = [-torch.exp(torch.empty(BATCH).uniform_(math.log(1e-9), math.log(1e-6))) for _ in range(2)]
    elif case == "near_minus_1e4":  # e^A underflows: log1mexp(A) = 0
        args = [-1e4 + 10 * torch.rand(BATCH) for _ in range(2)]
    elif case == "equal":
        a = averaged_logps()
        args = [a, a.clone()]
    elif case == "mixed":
        args = [-torch.rand(BATCH) * 1e-6 - 1e-9, -1e4 + torch.rand(BATCH)]
    else:  # A = 0: clamped to -1e-12 (the naive reference is -inf there)
        args = [torch.where(torch.rand(BATCH) < 0.5, 0.0, averaged_logps()) for _ in range(2)]
    check_three_ways(
        monkeypatch, device, fresh_seed, losses.orpo_loss, ref.orpo, args, {"beta": 0.5}, finite_reference_only=True
    )


@pytest.mark.parametrize("loss_type", losses.KTO_LOSS_TYPES)
@pytest.mark.parametrize("groups", ["mixed", "all_desirable", "all_undesirable"])
def test_kto_matches_pytorch_and_reference(loss_type, groups, device, monkeypatch, fresh_seed):
    policy, reference = summed_logps()
    desirable = torch.rand(BATCH) < 0.6 if groups == "mixed" else torch.full((BATCH,), groups == "all_desirable")
    kwargs = {
        "desirable": desirable,
        "kl": float(torch.rand(())) * 2,
        "beta": 0.3,
        "desirable_weight": 1.5,
        "undesirable_weight": 0.7,
        "loss_type": loss_type,
    }
    check_three_ways(monkeypatch, device, fresh_seed, losses.kto_loss, ref.kto, [policy, reference], kwargs)


@pytest.mark.parametrize("loss_type", losses.KTO_LOSS_TYPES)
def test_kto_extreme_inputs(loss_type, device, monkeypatch, fresh_seed):
    policy = torch.tensor([1e4, -1e4, 0.0, -1e-6, 3e4, -3e4])
    desirable = torch.tensor([True, False, True, False, False, True])
    kwargs = {"desirable": desirable, "kl": 1e4, "beta": 10.0, "loss_type": loss_type}
    check_three_ways(
        monkeypatch,
        device,
        fresh_seed,
        losses.kto_loss,
        ref.kto,
        [policy, torch.zeros(6)],
        kwargs,
        finite_reference_only=True,
    )


@pytest.mark.parametrize("loss_type", losses.CPO_LOSS_TYPES)
@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("magnitude", ["averaged", "summed", "big_beta"])
def test_cpo_matches_pytorch_and_reference(loss_type, eps, magnitude, device, monkeypatch, fresh_seed):
    args, kwargs = cpo_case(magnitude, loss_type, eps)
    tol = metric_tolerance(*(kwargs["beta"] * a for a in args))  # rewards = beta * log-probs
    check_three_ways(monkeypatch, device, fresh_seed, losses.cpo_loss, ref.cpo, args, kwargs, metric_tol=tol)


@pytest.mark.parametrize("loss_type", ["simpo", "sigmoid", "hinge"])
def test_cpo_extreme_inputs(loss_type, device, monkeypatch, fresh_seed):
    chosen = torch.tensor([-1e4, 0.0, -1e-6, -3.0])
    rejected = torch.tensor([0.0, -1e4, -1e-6, -3.0])
    kwargs = {"beta": 10.0, "loss_type": loss_type, "label_smoothing": 0.1}
    check_three_ways(
        monkeypatch,
        device,
        fresh_seed,
        losses.cpo_loss,
        ref.cpo,
        [chosen, rejected],
        kwargs,
        finite_reference_only=True,
    )


@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("coefficient", [None, 0.01])
@pytest.mark.parametrize("scale", [3.0, 1e4])
def test_bradley_terry_matches_pytorch_and_reference(with_margin, coefficient, scale, device, monkeypatch, fresh_seed):
    kwargs = {"center_rewards_coefficient": coefficient}
    if with_margin:
        kwargs["margin"] = torch.rand(BATCH) * 2
    args = [torch.randn(BATCH) * scale, torch.randn(BATCH) * scale]
    check_three_ways(monkeypatch, device, fresh_seed, losses.bradley_terry_loss, ref.bradley_terry, args, kwargs)


# --------------------------------------------------------------------------------------------------------------
# Segment reduction


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_packed_segment_sum_matches_pytorch_and_reference(reduction, device, monkeypatch, fresh_seed):
    # Segments of length 0..300 (some empty), a mask with whole-segment gaps, and NaN / -inf where masked out.
    seg_lengths = torch.randint(0, 300, (12,))
    seg_lengths[3] = 0
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), seg_lengths.cumsum(0)])
    total = int(cu_seqlens[-1])
    values = -torch.rand(total) * 10
    mask = torch.rand(total) < 0.7
    mask[cu_seqlens[5] : cu_seqlens[6]] = False  # a non-empty segment with nothing scored: mean 0.0
    values[~mask] = torch.where(torch.rand(int((~mask).sum())) < 0.5, float("nan"), float("-inf"))
    kwargs = {"mask": mask, "cu_seqlens": cu_seqlens, "reduction": reduction}
    check_three_ways(monkeypatch, device, fresh_seed, sequence_logprobs, ref.sequence_logprobs, [values], kwargs)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_padded_segment_sum_matches_pytorch_and_reference(reduction, device, monkeypatch, fresh_seed):
    token_logps = -torch.rand(6, 700) * 5
    mask = torch.rand(6, 700) < 0.5
    mask[2] = False  # an all-padding row
    kwargs = {"mask": mask, "reduction": reduction}
    check_three_ways(monkeypatch, device, fresh_seed, sequence_logprobs, ref.sequence_logprobs, [token_logps], kwargs)


def test_token_counts_through_the_extension(device, monkeypatch):
    mask = torch.rand(4, 50, device=device) < 0.5
    monkeypatch.setenv(ext.ENV_VAR, "1")
    counts = sequence_token_counts(torch.zeros(4, 50, device=device), mask=mask)
    assert torch.equal(counts, mask.sum(1))


# --------------------------------------------------------------------------------------------------------------
# Registration: schemas, autograd and fake kernels (torch.compile tracing)

OPCHECK_ARGS = {
    "segment_sum": lambda d: (
        torch.randn(10, device=d),
        torch.rand(10, device=d) < 0.7,
        torch.tensor([0, 3, 3, 10], device=d),
        True,
    ),
    "dpo_terms": lambda d: (
        *[torch.randn(5, device=d) for _ in range(4)],
        *[torch.ones(5, device=d)] * 2,
        0.1,
        "sigmoid",
        0.1,
        0.05,
    ),
    "orpo_terms": lambda d: (-torch.rand(5, device=d), -torch.rand(5, device=d), torch.tensor(1.0, device=d), 0.1),
    "kto_terms": lambda d: (
        torch.randn(5, device=d),
        torch.randn(5, device=d),
        torch.rand(5, device=d) < 0.5,
        torch.tensor(0.2, device=d),
        0.1,
        1.0,
        0.5,
        "kto",
    ),
    "cpo_terms": lambda d: (
        torch.randn(5, device=d),
        torch.randn(5, device=d),
        torch.tensor(1.0, device=d),
        0.1,
        0.5,
        "simpo",
        0.0,
        1.0,
    ),
    "bradley_terry_terms": lambda d: (
        torch.randn(5, device=d),
        torch.randn(5, device=d),
        torch.zeros(5, device=d),
        0.01,
    ),
}


@pytest.mark.parametrize("name", list(OPCHECK_ARGS))
def test_op_registration_passes_opcheck(name, device):
    args = OPCHECK_ARGS[name](device)
    args = tuple(
        a.requires_grad_() if torch.is_tensor(a) and a.is_floating_point() and i < 2 else a for i, a in enumerate(args)
    )
    torch.library.opcheck(getattr(torch.ops.fastalign, name).default, args)


def test_ops_compile_into_one_graph(monkeypatch):
    # fullgraph: the dispatch decision and the ops' fake kernels must trace without a graph break.
    monkeypatch.setenv(ext.ENV_VAR, "1")

    def step(policy_c, policy_r, ref_c, ref_r, token_logps, mask):
        loss, metrics = losses.dpo_loss(policy_c, policy_r, ref_c, ref_r)
        return loss + sequence_logprobs(token_logps, mask=mask, reduction="mean").sum(), metrics

    inputs = [*dpo_inputs(), (-torch.rand(3, 20)).requires_grad_(), torch.rand(3, 20) < 0.5]
    compiled, metrics = torch.compile(step, backend="aot_eager", fullgraph=True)(*inputs)
    eager, eager_metrics = step(*inputs)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(metrics, eager_metrics)
    leaves = [t for t in inputs if t.requires_grad]
    torch.testing.assert_close(torch.autograd.grad(compiled, leaves), torch.autograd.grad(eager, leaves))


# --------------------------------------------------------------------------------------------------------------
# The FASTALIGN_EXT switch and the fallback


def test_env_zero_takes_the_pytorch_path(monkeypatch):
    monkeypatch.setenv(ext.ENV_VAR, "0")
    assert not ext.loaded()
    assert not ext.handles("dpo_terms", dpo_inputs())
    loss, _ = losses.dpo_loss(*dpo_inputs())
    assert "fastalign" not in type(loss.grad_fn).__name__


def test_env_unset_uses_the_extension_when_it_builds(monkeypatch):
    monkeypatch.delenv(ext.ENV_VAR, raising=False)
    loss, _ = losses.dpo_loss(*dpo_inputs())
    assert "fastalign" in type(loss.grad_fn).__name__


def test_env_rejects_unknown_values(monkeypatch):
    monkeypatch.setenv(ext.ENV_VAR, "maybe")
    with pytest.raises(ValueError, match="FASTALIGN_EXT"):
        ext.loaded()


@pytest.fixture
def failing_build(monkeypatch):
    """A process in which the extension has not been loaded yet and every build attempt fails."""

    def fail(verbose=False):
        raise RuntimeError("simulated compiler failure")

    monkeypatch.setattr(_loader, "_library", None)
    monkeypatch.setattr(_loader, "_failure", None)
    monkeypatch.setattr(_loader, "_warned", False)
    monkeypatch.setattr(_loader, "_prebuilt", lambda: None)
    monkeypatch.setattr(_build, "jit_build", fail)


def test_failed_build_warns_once_and_falls_back(failing_build, monkeypatch):
    monkeypatch.delenv(ext.ENV_VAR, raising=False)
    inputs = dpo_inputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, _ = losses.dpo_loss(*inputs)
        second, _ = losses.dpo_loss(*inputs)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "simulated compiler failure" in messages[0] and "PyTorch implementations" in messages[0]
    assert "fastalign" not in type(first.grad_fn).__name__
    monkeypatch.setenv(ext.ENV_VAR, "0")
    torch.testing.assert_close(second, losses.dpo_loss(*inputs)[0], rtol=0, atol=0)


def test_failed_build_is_an_error_when_forced(failing_build, monkeypatch):
    monkeypatch.setenv(ext.ENV_VAR, "1")
    with pytest.raises(RuntimeError, match="FASTALIGN_EXT=1.*simulated compiler failure"):
        losses.dpo_loss(*dpo_inputs())


def test_device_without_kernels_falls_back_once(monkeypatch):
    # A CUDA torch without nvcc builds CPU kernels only; simulate that on the inputs' device.
    monkeypatch.setattr(_loader, "has_kernel", lambda name, device: False)
    monkeypatch.setattr(_loader, "_warned", False)
    monkeypatch.delenv(ext.ENV_VAR, raising=False)
    with pytest.warns(RuntimeWarning, match="no cpu kernel for dpo_terms"):
        loss, _ = losses.dpo_loss(*dpo_inputs())
    assert "fastalign" not in type(loss.grad_fn).__name__
    monkeypatch.setenv(ext.ENV_VAR, "1")
    with pytest.raises(RuntimeError, match="no cpu kernel"):
        losses.dpo_loss(*dpo_inputs())


def test_missing_compiler_is_named(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(RuntimeError, match=r"no C\+\+ compiler"):
        _build.check_toolchain()


def test_build_command_prints_the_library(capsys):
    assert build_main([]) == 0
    path, kernels = capsys.readouterr().out.strip().splitlines()
    assert path == str(ext.build()) and os.path.isfile(path)
    assert kernels.startswith("kernels: cpu")
