"""The loss heads of ``fastalign.losses`` against the float64 references of ``reference_losses``.

Inputs are fresh random draws each run; conftest.py's ``fresh_seed`` fixture prints the seed (pytest shows it on
failure), and ``FASTALIGN_TEST_SEED=<seed> pytest tests/test_losses.py`` replays it.

Tolerances: the heads compute in fp32 on fp32 inputs that float64 represents exactly, so the only error is fp32
rounding along a short chain of ops (a few ulp, ~1e-7 relative). Values: rtol 1e-5 with atol 1e-6 for results
that cancel to ~0; gradients: rtol 1e-4 and atol 1e-7 (one more chain of rounded ops, per-element gradients
~beta / B).
"""

import math

import pytest
import reference_losses as ref
import torch
from loss_inputs import (
    BATCH,
    EXTREME_CASES,
    GRAD_TOL,
    VALUE_TOL,
    averaged_logps,
    cpo_case,
    extreme_pairs,
    lengths,
    metric_tolerance,
    summed_logps,
)

from fastalign import losses
from fastalign.losses import _dispatch

# --------------------------------------------------------------------------------------------------------------
# Helpers


def run_both(impl, reference, args, kwargs):
    """Call ``impl`` on fp32 copies and ``reference`` on float64 copies of the float tensors in args / kwargs.

    Positional float tensors and keyword float tensors created with ``requires_grad`` are differentiated; the
    losses are backpropagated. Returns ((loss, metrics, grads) of impl, (loss, metrics, grads) of reference).
    """
    results = []
    for dtype in (torch.float32, torch.float64):
        leaves = []

        def convert(t, differentiate, dtype=dtype, leaves=leaves):
            if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
                return t
            t = t.detach().to(dtype).requires_grad_(differentiate)
            if differentiate:
                leaves.append(t)
            return t

        a = [convert(t, True) for t in args]
        k = {key: convert(v, isinstance(v, torch.Tensor) and v.requires_grad) for key, v in kwargs.items()}
        fn = impl if dtype == torch.float32 else reference
        loss, metrics = fn(*a, **k)
        loss.backward()
        results.append((loss, metrics, [leaf.grad for leaf in leaves]))
    return results


def assert_matches_reference(
    impl, reference, args, kwargs, names, seed, *, finite_reference_only=False, metric_tol=VALUE_TOL
):
    """Loss, every metric (to ``metric_tol``) and every gradient of ``impl`` (fp32) match ``reference`` (float64).

    With ``finite_reference_only``, the comparison is skipped for quantities where the naive reference overflows,
    but the implementation must still be finite everywhere.
    """
    (loss, metrics, grads), (ref_loss, ref_metrics, ref_grads) = run_both(impl, reference, args, kwargs)
    msg = f"seed={seed} kwargs={ {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)} }"

    assert loss.dtype == torch.float32 and loss.dim() == 0, msg
    assert torch.isfinite(loss), f"non-finite loss {loss}: {msg}"
    if not finite_reference_only or torch.isfinite(ref_loss):
        torch.testing.assert_close(loss.double(), ref_loss.detach(), **VALUE_TOL, msg=f"loss: {msg}")

    assert tuple(metrics) == names, msg
    assert set(ref_metrics) == set(names), msg
    for name in names:
        value = metrics[name]
        assert value.dtype == torch.float32 and value.dim() == 0 and not value.requires_grad, f"{name}: {msg}"
        torch.testing.assert_close(value.double(), ref_metrics[name], **metric_tol, msg=f"metric {name}: {msg}")

    for i, (grad, ref_grad) in enumerate(zip(grads, ref_grads, strict=True)):
        assert grad is not None and torch.isfinite(grad).all(), f"gradient {i} {grad}: {msg}"
        if ref_grad is None:
            ref_grad = torch.zeros_like(grad, dtype=torch.float64)
        if not finite_reference_only or torch.isfinite(ref_grad).all():
            torch.testing.assert_close(grad.double(), ref_grad, **GRAD_TOL, msg=f"gradient {i}: {msg}")


# --------------------------------------------------------------------------------------------------------------
# DPO

DPO_CASES = [
    (loss_type, eps)
    for loss_type in losses.DPO_LOSS_TYPES
    for eps in ((0.0, 0.2) if loss_type in ("sigmoid", "robust") else (0.2,) if loss_type == "exo_pair" else (0.0,))
]


@pytest.mark.parametrize(("loss_type", "eps"), DPO_CASES)
@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_dpo_matches_reference(loss_type, eps, beta, fresh_seed):
    policy_c, ref_c = summed_logps()
    policy_r, ref_r = summed_logps()
    kwargs = {"beta": beta, "loss_type": loss_type, "label_smoothing": eps, **lengths()}
    assert_matches_reference(
        losses.dpo_loss, ref.dpo, [policy_c, policy_r, ref_c, ref_r], kwargs, losses.DPO_METRICS, fresh_seed
    )


@pytest.mark.parametrize("loss_type", losses.DPO_LOSS_TYPES)
@pytest.mark.parametrize("case", EXTREME_CASES)
def test_dpo_extreme_inputs_are_finite_and_match_reference(loss_type, case, fresh_seed):
    *tensors, beta = extreme_pairs(case)
    eps = 0.1 if loss_type in ("robust", "exo_pair") else 0.0
    kwargs = {"beta": beta, "loss_type": loss_type, "label_smoothing": eps, **lengths()}
    policy_c, policy_r, ref_c, ref_r = tensors
    tol = metric_tolerance(beta * (policy_c - ref_c), beta * (policy_r - ref_r))  # the rewards
    assert_matches_reference(
        losses.dpo_loss, ref.dpo, tensors, kwargs, losses.DPO_METRICS, fresh_seed, finite_reference_only=True,
        metric_tol=tol,
    )  # fmt: skip


def test_dpo_equal_pair_values():
    policy, reference = summed_logps()
    args = (policy, policy.clone(), reference, reference.clone())
    assert losses.dpo_loss(*args)[0].item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert losses.dpo_loss(*args, loss_type="hinge")[0].item() == pytest.approx(1.0, rel=1e-6)
    assert losses.dpo_loss(*args)[1]["rewards/accuracies"].item() == 0.0


def test_discopop_is_finite_where_the_naive_form_overflows():
    # beta z = -1e3: exp(-x) = e^1000 overflows even in float64, sigma(x / tau) = 0; the true product is
    # exp(x (1/tau - 1)) ~ 0 and the loss ~ -s(x) = 1e3.
    zeros = torch.zeros(1)
    policy_c = torch.tensor([-1e4], requires_grad=True)
    loss, _ = losses.dpo_loss(policy_c, zeros, zeros, zeros, loss_type="discopop")
    loss.backward()
    assert loss.item() == pytest.approx(1e3, rel=1e-6)
    assert policy_c.grad.item() == pytest.approx(-0.1, rel=1e-6)


def test_dpo_length_normalised_types_need_lengths():
    args = summed_logps() + summed_logps()
    for loss_type in ("ipo", "sigmoid_norm"):
        with pytest.raises(ValueError, match="chosen_lengths and rejected_lengths"):
            losses.dpo_loss(*args, loss_type=loss_type)


@pytest.mark.parametrize("loss_type", ["ipo", "sigmoid_norm"])
def test_dpo_empty_completion_counts_as_length_one(loss_type, fresh_seed):
    # An empty completion has summed log-prob 0 under both models: r = 0, and r / max(len, 1) = 0.
    policy_c, ref_c = summed_logps()
    policy_r, ref_r = summed_logps()
    policy_c[0] = ref_c[0] = 0.0
    given = lengths()
    zero_length = dict(given, chosen_lengths=given["chosen_lengths"].index_fill(0, torch.tensor([0]), 0))
    unit_length = dict(given, chosen_lengths=given["chosen_lengths"].index_fill(0, torch.tensor([0]), 1))
    args = (policy_c, policy_r, ref_c, ref_r)
    loss_zero = losses.dpo_loss(*args, loss_type=loss_type, **zero_length)[0]
    assert torch.isfinite(loss_zero), f"seed={fresh_seed}"
    torch.testing.assert_close(
        loss_zero, losses.dpo_loss(*args, loss_type=loss_type, **unit_length)[0], msg=f"seed={fresh_seed}"
    )


# --------------------------------------------------------------------------------------------------------------
# ORPO


@pytest.mark.parametrize("beta", [0.1, 1.0, 1e3])
@pytest.mark.parametrize("with_nll", [False, True])
def test_orpo_matches_reference(beta, with_nll, fresh_seed):
    kwargs = {"beta": beta}
    if with_nll:
        kwargs["nll_loss"] = (torch.rand(()) * 3).requires_grad_()
    args = [averaged_logps(), averaged_logps()]
    assert_matches_reference(losses.orpo_loss, ref.orpo, args, kwargs, losses.ORPO_METRICS, fresh_seed)


@pytest.mark.parametrize(
    "case",
    [
        "near_zero",  # |A| in [1e-9, 1e-6]: log(1 - e^A) ~ log|A|, where naive fp32 1 - e^A rounds to 0
        "near_minus_1e4",  # e^A underflows: log1mexp(A) = 0
        "equal",  # A_c == A_r: log_odds = 0
        "mixed",  # one side near 0, the other near -1e4
    ],
)
def test_orpo_extreme_inputs_match_reference(case, fresh_seed):
    if case == "near_zero":
        args = [-torch.exp(torch.empty(BATCH).uniform_(math.log(1e-9), math.log(1e-6))) for _ in range(2)]
    elif case == "near_minus_1e4":
        args = [-1e4 + 10 * torch.rand(BATCH) for _ in range(2)]
    elif case == "equal":
        a = averaged_logps()
        args = [a, a.clone()]
    else:
        args = [-torch.rand(BATCH) * 1e-6 - 1e-9, -1e4 + torch.rand(BATCH)]
    assert_matches_reference(losses.orpo_loss, ref.orpo, args, {"beta": 0.5}, losses.ORPO_METRICS, fresh_seed)


def test_orpo_log_prob_zero_is_finite_and_clamped():
    # A = 0 (every token certain) is clamped to -1e-12: same loss as -1e-12, finite gradient.
    chosen = torch.tensor([0.0, -0.5, 0.0], requires_grad=True)
    rejected = torch.tensor([-0.3, 0.0, 0.0], requires_grad=True)
    loss, metrics = losses.orpo_loss(chosen, rejected, beta=10.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    assert all(torch.isfinite(v) for v in metrics.values())
    clamped = losses.orpo_loss(chosen.detach().clamp(max=-1e-12), rejected.detach().clamp(max=-1e-12), beta=10.0)
    torch.testing.assert_close(loss.detach(), clamped[0])


def test_orpo_nll_loss_gets_unit_gradient():
    nll = torch.tensor(2.5, requires_grad=True)
    loss, metrics = losses.orpo_loss(averaged_logps(), averaged_logps(), nll_loss=nll)
    loss.backward()
    assert nll.grad.item() == 1.0
    assert metrics["nll_loss"].item() == 2.5


# --------------------------------------------------------------------------------------------------------------
# KTO


@pytest.mark.parametrize("loss_type", losses.KTO_LOSS_TYPES)
@pytest.mark.parametrize("groups", ["mixed", "all_desirable", "all_undesirable"])
def test_kto_matches_reference(loss_type, groups, fresh_seed):
    policy, reference = summed_logps()
    if groups == "mixed":
        desirable = torch.arange(BATCH) % 3 != 0
    else:
        desirable = torch.full((BATCH,), groups == "all_desirable")
    kwargs = {
        "desirable": desirable,
        "kl": float(torch.rand(())) * 2,
        "beta": 0.3,
        "desirable_weight": 1.5,
        "undesirable_weight": 0.7,
        "loss_type": loss_type,
    }

    assert_matches_reference(losses.kto_loss, ref.kto, [policy, reference], kwargs, losses.KTO_METRICS, fresh_seed)


def test_kto_empty_group_reports_zero():
    policy, reference = summed_logps()
    _, metrics = losses.kto_loss(policy, reference, torch.ones(BATCH, dtype=torch.bool), kl=0.0)
    assert metrics["rewards/rejected"].item() == 0.0
    assert metrics["logps/rejected"].item() == 0.0
    assert metrics["rewards/margins"].item() == 0.0


def test_kto_accepts_integer_desirable_and_tensor_kl():
    policy, reference = summed_logps()
    flags = torch.arange(BATCH) % 2
    kl = torch.tensor(0.4, requires_grad=True)
    loss_int, metrics = losses.kto_loss(policy, reference, flags, kl=kl)
    loss_bool, _ = losses.kto_loss(policy, reference, flags.bool(), kl=0.4)
    torch.testing.assert_close(loss_int, loss_bool)
    assert not loss_int.requires_grad and not metrics["kl"].requires_grad  # kl is detached


def test_kto_extreme_inputs_are_finite():
    policy = torch.tensor([1e4, -1e4, 0.0, -1e-6], requires_grad=True)
    loss, metrics = losses.kto_loss(policy, torch.zeros(4), torch.tensor([1, 0, 1, 0]).bool(), kl=1e4, beta=10.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(policy.grad).all()
    assert all(torch.isfinite(v) for v in metrics.values())


def test_kto_kl_matches_reference(fresh_seed):
    policy, reference = summed_logps(16)
    expected = ref.kto_kl(policy.double(), reference.double())
    got = losses.kto_kl(policy.requires_grad_(), reference)
    assert got.dtype == torch.float32 and not got.requires_grad
    torch.testing.assert_close(got.double(), expected, **VALUE_TOL, msg=f"seed={fresh_seed}")
    assert losses.kto_kl(reference - 1.0, reference).item() == 0.0  # negative mean clamps to 0


# --------------------------------------------------------------------------------------------------------------
# CPO / SimPO


@pytest.mark.parametrize("loss_type", losses.CPO_LOSS_TYPES)
@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("magnitude", ["averaged", "summed", "big_beta"])
def test_cpo_matches_reference(loss_type, eps, magnitude, fresh_seed):
    args, kwargs = cpo_case(magnitude, loss_type, eps)
    tol = metric_tolerance(*(kwargs["beta"] * a for a in args))  # rewards = beta * log-probs
    assert_matches_reference(losses.cpo_loss, ref.cpo, args, kwargs, losses.CPO_METRICS, fresh_seed, metric_tol=tol)


def test_cpo_sigmoid_ignores_gamma():
    args = (averaged_logps(), averaged_logps())
    torch.testing.assert_close(
        losses.cpo_loss(*args, loss_type="sigmoid", gamma=0.0)[0],
        losses.cpo_loss(*args, loss_type="sigmoid", gamma=5.0)[0],
    )


def test_cpo_extreme_inputs_are_finite():
    chosen = torch.tensor([-1e4, 0.0, -1e-6, -3.0], requires_grad=True)
    rejected = torch.tensor([0.0, -1e4, -1e-6, -3.0], requires_grad=True)
    for loss_type in ("simpo", "sigmoid", "hinge"):
        loss, metrics = losses.cpo_loss(chosen, rejected, loss_type=loss_type, beta=10.0, label_smoothing=0.1)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(chosen.grad).all(), loss_type
        assert all(torch.isfinite(v) for v in metrics.values())


# --------------------------------------------------------------------------------------------------------------
# Bradley-Terry


@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("coefficient", [None, 0.01])
@pytest.mark.parametrize("scale", [3.0, 1e4])
def test_bradley_terry_matches_reference(with_margin, coefficient, scale, fresh_seed):
    kwargs = {"center_rewards_coefficient": coefficient}
    if with_margin:
        kwargs["margin"] = torch.rand(BATCH) * 2
    args = [torch.randn(BATCH) * scale, torch.randn(BATCH) * scale]
    assert_matches_reference(
        losses.bradley_terry_loss, ref.bradley_terry, args, kwargs, losses.BRADLEY_TERRY_METRICS, fresh_seed
    )


# --------------------------------------------------------------------------------------------------------------
# Shared behaviour


def _pair(batch=BATCH, dtype=torch.float32):
    return [t.to(dtype) for t in summed_logps(batch) + summed_logps(batch)]


HEADS = {
    "dpo": lambda t: losses.dpo_loss(*t),
    "orpo": lambda t: losses.orpo_loss(t[0] / 100, t[1] / 100),
    "kto": lambda t: losses.kto_loss(t[0], t[2], torch.arange(t[0].shape[0]) % 2 == 0, kl=0.1),
    "cpo": lambda t: losses.cpo_loss(t[0], t[1]),
    "bradley_terry": lambda t: losses.bradley_terry_loss(t[0], t[1]),
}


@pytest.mark.parametrize("head", list(HEADS))
def test_low_precision_inputs_give_float32_and_gradients(head):
    tensors = [t.requires_grad_() for t in _pair(dtype=torch.bfloat16)]
    loss, metrics = HEADS[head](tensors)
    loss.backward()
    assert loss.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in metrics.values())
    assert tensors[0].grad is not None and tensors[0].grad.dtype == torch.bfloat16


# The positional contract of _dispatch: op name -> number of arguments (tensors first, then plain scalars).
CONTRACT = {
    "dpo_terms": (6, 4, losses.DPO_METRICS),
    "orpo_terms": (3, 1, losses.ORPO_METRICS),
    "kto_terms": (4, 4, losses.KTO_METRICS),
    "cpo_terms": (3, 5, losses.CPO_METRICS),
    "bradley_terry_terms": (3, 1, losses.BRADLEY_TERRY_METRICS),
}


@pytest.mark.parametrize("head", list(HEADS))
def test_heads_route_through_the_dispatch_contract(head, monkeypatch):
    calls = []
    original = _dispatch.call

    def recording_call(name, torch_impl, *args):
        out = original(name, torch_impl, *args)
        calls.append((name, args, out))
        return out

    monkeypatch.setattr(_dispatch, "call", recording_call)
    HEADS[head](_pair())
    assert len(calls) == 1
    name, args, (loss, metrics) = calls[0]
    n_tensors, n_scalars, names = CONTRACT[name]
    assert len(args) == n_tensors + n_scalars
    assert all(isinstance(a, torch.Tensor) for a in args[:n_tensors])
    assert all(isinstance(a, (float, str, bool)) for a in args[n_tensors:])
    assert all(a.dtype in (torch.float32, torch.bool) for a in args[:n_tensors])
    assert loss.dim() == 0 and metrics.shape == (len(names),) and not metrics.requires_grad


def _bad(fn, *args, **kwargs):
    return lambda: fn(*args, **kwargs)


ONE, TWO = torch.zeros(4), torch.zeros(4)
BAD_INPUTS = {
    "dpo_shape_mismatch": (_bad(losses.dpo_loss, ONE, torch.zeros(3), ONE, ONE), ValueError, "shape"),
    "dpo_not_1d": (_bad(losses.dpo_loss, *[torch.zeros(2, 2)] * 4), ValueError, "1-D"),
    "dpo_unknown_type": (_bad(losses.dpo_loss, *[ONE] * 4, loss_type="dpo"), ValueError, "'sigmoid', 'robust'"),
    "dpo_exo_without_smoothing": (_bad(losses.dpo_loss, *[ONE] * 4, loss_type="exo_pair"), ValueError, "exo"),
    "dpo_robust_half": (
        _bad(losses.dpo_loss, *[ONE] * 4, loss_type="robust", label_smoothing=0.5),
        ValueError,
        "< 0.5",
    ),
    "dpo_smoothing_range": (_bad(losses.dpo_loss, *[ONE] * 4, label_smoothing=-0.1), ValueError, ">= 0"),
    "dpo_integer_logps": (_bad(losses.dpo_loss, *[torch.zeros(4, dtype=torch.long)] * 4), TypeError, "float"),
    "dpo_list_logps": (_bad(losses.dpo_loss, [0.0], [0.0], [0.0], [0.0]), TypeError, "torch.Tensor"),
    "dpo_empty_batch": (_bad(losses.dpo_loss, *[torch.zeros(0)] * 4), ValueError, "empty"),
    "dpo_beta_zero": (_bad(losses.dpo_loss, *[ONE] * 4, beta=0.0), ValueError, "beta"),
    "dpo_beta_nan": (_bad(losses.dpo_loss, *[ONE] * 4, beta=float("nan")), ValueError, "beta"),
    "dpo_beta_string": (_bad(losses.dpo_loss, *[ONE] * 4, beta="0.1"), TypeError, "beta"),
    "dpo_tau_above_one": (_bad(losses.dpo_loss, *[ONE] * 4, discopop_tau=2.0), ValueError, "discopop_tau"),
    "dpo_lengths_shape": (
        _bad(losses.dpo_loss, *[ONE] * 4, loss_type="ipo", chosen_lengths=torch.ones(3), rejected_lengths=ONE),
        ValueError,
        "chosen_lengths",
    ),
    "dpo_bool_lengths": (
        _bad(
            losses.dpo_loss,
            *[ONE] * 4,
            loss_type="ipo",
            chosen_lengths=torch.ones(4, dtype=torch.bool),
            rejected_lengths=ONE,
        ),
        TypeError,
        "chosen_lengths",
    ),
    "dpo_device_mismatch": (_bad(losses.dpo_loss, ONE, ONE, ONE, torch.zeros(4, device="meta")), ValueError, "meta"),
    "orpo_shape_mismatch": (_bad(losses.orpo_loss, ONE, torch.zeros(5)), ValueError, "shape"),
    "orpo_nll_not_scalar": (_bad(losses.orpo_loss, ONE, TWO, nll_loss=torch.zeros(2)), ValueError, "nll_loss"),
    "orpo_integer": (_bad(losses.orpo_loss, ONE, torch.zeros(4, dtype=torch.int32)), TypeError, "rejected_logps"),
    "kto_unknown_type": (_bad(losses.kto_loss, ONE, TWO, ONE > 0, kl=0.0, loss_type="kto_pair"), ValueError, "'kto'"),
    "kto_float_desirable": (_bad(losses.kto_loss, ONE, TWO, ONE, kl=0.0), TypeError, "desirable"),
    "kto_desirable_shape": (_bad(losses.kto_loss, ONE, TWO, torch.ones(3) > 0, kl=0.0), ValueError, "desirable"),
    "kto_kl_not_scalar": (_bad(losses.kto_loss, ONE, TWO, ONE > 0, kl=torch.zeros(2)), ValueError, "kl"),
    "kto_negative_weight": (
        _bad(losses.kto_loss, ONE, TWO, ONE > 0, kl=0.0, desirable_weight=-1.0),
        ValueError,
        "desirable_weight",
    ),
    "kto_kl_shape": (_bad(losses.kto_kl, ONE, torch.zeros(2)), ValueError, "shape"),
    "cpo_unknown_type": (_bad(losses.cpo_loss, ONE, TWO, loss_type="orpo"), ValueError, "'simpo'"),
    "cpo_empty": (_bad(losses.cpo_loss, torch.zeros(0), torch.zeros(0)), ValueError, "empty"),
    "bt_shape_mismatch": (_bad(losses.bradley_terry_loss, ONE, torch.zeros(2)), ValueError, "shape"),
    "bt_margin_shape": (_bad(losses.bradley_terry_loss, ONE, TWO, margin=torch.zeros(3)), ValueError, "margin"),
    "bt_negative_coefficient": (
        _bad(losses.bradley_terry_loss, ONE, TWO, center_rewards_coefficient=-1.0),
        ValueError,
        "center_rewards_coefficient",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_clear_errors(case):
    call, error, match = BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        call()
