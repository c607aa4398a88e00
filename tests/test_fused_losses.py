"""The fused linear preference losses against a naive float64 pipeline that materializes the logits.

Naive pipeline: logits = hidden @ W.T + b in float64, log_softmax, gather the shifted targets (built with a Python
loop per sequence), sum / mean per sequence with ``reference_losses.sequence_logprobs``, then the float64 head of
``reference_losses``. The fused modules run on the same fp32 tensors with ``impl="torch"``; loss, every metric
and the gradients w.r.t. hidden, weight and bias must match. Tiny shapes (V = 100, D = 32) keep this fast.

Tolerances: fp32 logits over D = 32 and a fp32 log-softmax over V = 100 are accurate to ~1e-6 relative; summed over
~10 tokens the log-probs (~-50) carry ~1e-5 absolute error, which the heads damp (beta = 0.1). Values: rtol 1e-4,
atol 1e-5; gradients: rtol 1e-3, atol 1e-5.
"""

import pytest
import reference_losses as ref
import torch

from fastalign.losses.fused import FusedLinearCPOLoss, FusedLinearDPOLoss, FusedLinearKTOLoss, FusedLinearORPOLoss

VALUE_TOL = {"rtol": 1e-4, "atol": 1e-5}
GRAD_TOL = {"rtol": 1e-3, "atol": 1e-5}
V, D, T = 100, 32, 12
IGNORE = -100


# --------------------------------------------------------------------------------------------------------------
# Batches and the naive pipeline


def make_batch(num_sequences, *, packed, empty=()):
    """hidden, labels, cu_seqlens (None when padded) and the sequence bounds in the flattened batch.

    Prompts are -100 and sometimes empty, so a sequence's first label is scored and a shift that crossed
    packed sequences would be caught. Sequences listed in ``empty`` have no scored label at all.
    """
    lengths = torch.randint(T // 2, T + 1, (num_sequences,)).tolist()
    hidden = torch.randn(num_sequences, T, D)
    labels = torch.full((num_sequences, T), IGNORE)
    for s, length in enumerate(lengths):
        prompt = int(torch.randint(0, length // 2, ()))
        if s not in empty:
            labels[s, prompt:length] = torch.randint(0, V, (length - prompt,))
    if not packed:
        return hidden, labels, None, [s * T for s in range(num_sequences + 1)]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    hidden = torch.cat([hidden[s, :length] for s, length in enumerate(lengths)])[None]
    labels = torch.cat([labels[s, :length] for s, length in enumerate(lengths)])[None]
    return hidden, labels, cu_seqlens, cu_seqlens.tolist()


def make_head(*, with_bias=True, trainable=True):
    weight = (torch.randn(V, D) * 0.2).requires_grad_(trainable)
    bias = (torch.randn(V) * 0.5).requires_grad_(trainable) if with_bias else None
    return weight, bias


def naive_targets(labels, bounds):
    """targets[t] = labels[t + 1] inside each sequence [start, end), ignore at its last position (flat [total])."""
    flat = labels.reshape(-1)
    targets = torch.full_like(flat, IGNORE)
    for start, end in zip(bounds[:-1], bounds[1:]):
        for t in range(start, end - 1):
            targets[t] = flat[t + 1]
    return targets


def naive_sequence_logps(hidden, weight, bias, targets, bounds, reduction):
    """float64 per-sequence log-probs from materialized logits; hidden [..., D], targets flat [total]."""
    logits = hidden.reshape(-1, D).double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    logp = torch.log_softmax(logits, dim=-1)
    scored = targets != IGNORE
    token_logps = torch.where(scored, logp.gather(1, targets.clamp(min=0)[:, None]).squeeze(1), 0.0)
    cu = torch.tensor(bounds)
    return ref.sequence_logprobs(token_logps, mask=scored, cu_seqlens=cu, reduction=reduction), token_logps


def naive_counts(targets, bounds):
    return torch.tensor([int((targets[a:b] != IGNORE).sum()) for a, b in zip(bounds[:-1], bounds[1:])])


def as_float64_leaves(*tensors):
    """float64 copies that require grad where the original does (None stays None)."""
    return [None if t is None else t.detach().double().requires_grad_(t.requires_grad) for t in tensors]


def assert_close_results(fused, naive, fused_leaves, naive_leaves, seed):
    (loss, metrics), (ref_loss, ref_metrics) = fused, naive
    msg = f"seed={seed}"
    torch.testing.assert_close(loss.double(), ref_loss.detach(), **VALUE_TOL, msg=f"loss: {msg}")
    assert set(metrics) == set(ref_metrics) | {"empty_sequences"}, msg
    for name, value in ref_metrics.items():
        assert not metrics[name].requires_grad
        torch.testing.assert_close(metrics[name].double(), value, **VALUE_TOL, msg=f"metric {name}: {msg}")
    loss.backward()
    ref_loss.backward()
    for i, (leaf, ref_leaf) in enumerate(zip(fused_leaves, naive_leaves, strict=True)):
        if leaf is None or not leaf.requires_grad:
            continue
        assert leaf.grad is not None, f"no gradient for input {i}: {msg}"
        torch.testing.assert_close(leaf.grad.double(), ref_leaf.grad, **GRAD_TOL, msg=f"gradient {i}: {msg}")


# --------------------------------------------------------------------------------------------------------------
# DPO


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("trainable", [True, False], ids=["trainable", "frozen"])
@pytest.mark.parametrize("reference", ["precomputed", "ref_hidden", "ref_hidden_own_head"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_matches_naive(packed, trainable, reference, loss_type, fresh_seed):
    pairs = 2
    hidden, labels, cu_seqlens, bounds = make_batch(2 * pairs, packed=packed, empty=(1,))
    hidden.requires_grad_()
    weight, bias = make_head(trainable=trainable)
    targets = naive_targets(labels, bounds)
    ref_weight = ref_bias = None
    kwargs = {}
    if reference == "precomputed":
        ref_logps = -50 * torch.rand(2 * pairs)
        kwargs = {"ref_chosen_logps": ref_logps[:pairs], "ref_rejected_logps": ref_logps[pairs:]}
        naive_ref = ref_logps.double()
    else:
        ref_hidden = torch.randn(hidden.shape).requires_grad_()  # must receive no gradient
        kwargs["ref_hidden"] = ref_hidden
        if reference == "ref_hidden_own_head":
            ref_weight, ref_bias = make_head(trainable=False)
            kwargs.update(ref_weight=ref_weight, ref_bias=ref_bias)
        head = (weight, bias) if ref_weight is None else (ref_weight, ref_bias)
        naive_ref = naive_sequence_logps(ref_hidden, *as_float64_leaves(*head), targets, bounds, "sum")[0].detach()

    module = FusedLinearDPOLoss(beta=0.1, loss_type=loss_type, impl="torch")
    fused = module(hidden, weight, labels, bias=bias, cu_seqlens=cu_seqlens, **kwargs)

    leaves = as_float64_leaves(hidden, weight, bias)
    logps, _ = naive_sequence_logps(*leaves, targets, bounds, "sum")
    counts = naive_counts(targets, bounds)
    naive = ref.dpo(
        logps[:pairs],
        logps[pairs:],
        naive_ref[:pairs],
        naive_ref[pairs:],
        beta=0.1,
        loss_type=loss_type,
        chosen_lengths=counts[:pairs].clamp(min=1),
        rejected_lengths=counts[pairs:].clamp(min=1),
    )
    assert fused[1]["empty_sequences"].item() == 1.0
    assert_close_results(fused, naive, [hidden, weight, bias], leaves, fresh_seed)
    if reference != "precomputed":
        assert kwargs["ref_hidden"].grad is None


def test_dpo_packed_equals_padded(fresh_seed):
    # The same data in both layouts gives the same loss: the packed shift stops at sequence boundaries.
    hidden, labels, _, _ = make_batch(4, packed=False)
    cu_seqlens = torch.arange(5) * T  # each padded row, padding included, as one packed sequence
    weight, bias = make_head()
    ref_kwargs = {"ref_chosen_logps": torch.zeros(2), "ref_rejected_logps": torch.zeros(2)}
    module = FusedLinearDPOLoss(impl="torch")
    padded = module(hidden, weight, labels, bias=bias, **ref_kwargs)
    packed = module(
        hidden.reshape(1, -1, D), weight, labels.reshape(1, -1), bias=bias, cu_seqlens=cu_seqlens, **ref_kwargs
    )
    torch.testing.assert_close(padded[0], packed[0], msg=f"seed={fresh_seed}")


# --------------------------------------------------------------------------------------------------------------
# ORPO and CPO


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("trainable", [True, False], ids=["trainable", "frozen"])
@pytest.mark.parametrize("nll_on_prompt", [False, True])
def test_orpo_matches_naive(packed, trainable, nll_on_prompt, fresh_seed):
    pairs = 2
    hidden, labels, cu_seqlens, bounds = make_batch(2 * pairs, packed=packed)
    hidden.requires_grad_()
    weight, bias = make_head(trainable=trainable)
    targets = naive_targets(labels, bounds)
    chosen_end = bounds[pairs]
    kwargs = {}
    if nll_on_prompt:
        # SFT on the whole chosen sequence, prompt included: labels with the prompt filled in.
        full = labels.clone()
        full[full == IGNORE] = torch.randint(0, V, (int((full == IGNORE).sum()),))
        kwargs["nll_labels"] = full if packed else full[:pairs]  # padded: the chosen rows only
        nll_targets = naive_targets(full, bounds)
        scored = torch.where(targets != IGNORE, targets, nll_targets)
    else:
        nll_targets = targets
        scored = targets
    nll_targets = torch.where(torch.arange(nll_targets.numel()) < chosen_end, nll_targets, IGNORE)

    module = FusedLinearORPOLoss(beta=0.25, impl="torch")
    fused = module(hidden, weight, labels, bias=bias, cu_seqlens=cu_seqlens, **kwargs)

    leaves = as_float64_leaves(hidden, weight, bias)
    logps, _ = naive_sequence_logps(*leaves, targets, bounds, "mean")
    _, token_logps = naive_sequence_logps(*leaves, scored, bounds, "sum")
    nll_mask = nll_targets != IGNORE
    nll = -token_logps[nll_mask].sum() / nll_mask.sum()
    naive = ref.orpo(logps[:pairs], logps[pairs:], beta=0.25, nll_loss=nll)
    assert_close_results(fused, naive, [hidden, weight, bias], leaves, fresh_seed)


def test_orpo_nll_labels_equal_to_labels_match_the_default(fresh_seed):
    hidden, labels, _, _ = make_batch(4, packed=False)
    weight, bias = make_head()
    module = FusedLinearORPOLoss(impl="torch")
    with_default = module(hidden, weight, labels, bias=bias)
    explicit = module(hidden, weight, labels, bias=bias, nll_labels=labels[:2])
    torch.testing.assert_close(with_default[0], explicit[0], msg=f"seed={fresh_seed}")


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("loss_type", ["simpo", "sigmoid"])
@pytest.mark.parametrize("trainable", [True, False], ids=["trainable", "frozen"])
def test_cpo_matches_naive(packed, loss_type, trainable, fresh_seed):
    pairs = 2
    hidden, labels, cu_seqlens, bounds = make_batch(2 * pairs, packed=packed)
    hidden.requires_grad_()
    weight, bias = make_head(trainable=trainable, with_bias=False)
    targets = naive_targets(labels, bounds)
    reduction = "mean" if loss_type == "simpo" else "sum"

    module = FusedLinearCPOLoss(beta=2.0, gamma=0.5, loss_type=loss_type, cpo_alpha=0.5, impl="torch")
    fused = module(hidden, weight, labels, cu_seqlens=cu_seqlens)

    leaves = as_float64_leaves(hidden, weight, None)
    logps, token_logps = naive_sequence_logps(*leaves, targets, bounds, reduction)
    chosen = (targets != IGNORE) & (torch.arange(targets.numel()) < bounds[pairs])
    nll = -token_logps[chosen].sum() / chosen.sum()
    naive = ref.cpo(logps[:pairs], logps[pairs:], beta=2.0, gamma=0.5, loss_type=loss_type, nll_loss=nll, cpo_alpha=0.5)
    assert_close_results(fused, naive, [hidden, weight], leaves[:2], fresh_seed)


# --------------------------------------------------------------------------------------------------------------
# KTO


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("trainable", [True, False], ids=["trainable", "frozen"])
@pytest.mark.parametrize("kl_source", ["given", "kl_batch_ref_hidden", "kl_batch_ref_logps"])
def test_kto_matches_naive(packed, trainable, kl_source, fresh_seed):
    batch = 4
    hidden, labels, cu_seqlens, bounds = make_batch(batch, packed=packed)
    hidden.requires_grad_()
    weight, bias = make_head(trainable=trainable)
    targets = naive_targets(labels, bounds)
    desirable = torch.tensor([True, False, True, True])
    ref_hidden = torch.randn(hidden.shape)
    kwargs = {"desirable": desirable, "ref_hidden": ref_hidden}
    head64 = as_float64_leaves(weight, bias)
    if kl_source == "given":
        kwargs["kl"] = kl = 0.7
    else:
        kl_hidden, kl_labels, kl_cu_seqlens, kl_bounds = make_batch(batch, packed=packed)
        kl_targets = naive_targets(kl_labels, kl_bounds)
        kwargs.update(kl_hidden=kl_hidden, kl_labels=kl_labels, kl_cu_seqlens=kl_cu_seqlens)
        policy_kl = naive_sequence_logps(kl_hidden, *head64, kl_targets, kl_bounds, "sum")[0]
        if kl_source == "kl_batch_ref_hidden":
            ref_kl_hidden = torch.randn(kl_hidden.shape)
            kwargs["ref_kl_hidden"] = ref_kl_hidden
            ref_kl = naive_sequence_logps(ref_kl_hidden, *head64, kl_targets, kl_bounds, "sum")[0]
        else:
            ref_kl = policy_kl.detach().float() - 3 * torch.rand(batch)  # a positive KL estimate
            kwargs["ref_kl_logps"] = ref_kl
        kl = float(ref.kto_kl(policy_kl.detach(), ref_kl.detach().double()))

    module = FusedLinearKTOLoss(beta=0.1, desirable_weight=1.3, undesirable_weight=0.8, impl="torch")
    fused = module(hidden, weight, labels, bias=bias, cu_seqlens=cu_seqlens, **kwargs)

    leaves = as_float64_leaves(hidden, weight, bias)
    logps, _ = naive_sequence_logps(*leaves, targets, bounds, "sum")
    naive_ref = naive_sequence_logps(ref_hidden, *head64, targets, bounds, "sum")[0].detach()
    naive = ref.kto(logps, naive_ref, desirable, kl=kl, beta=0.1, desirable_weight=1.3, undesirable_weight=0.8)
    assert_close_results(fused, naive, [hidden, weight, bias], leaves, fresh_seed)


def test_apo_zero_unpaired_needs_no_kl():
    hidden, labels, _, _ = make_batch(2, packed=False)
    weight, _ = make_head(with_bias=False)
    module = FusedLinearKTOLoss(loss_type="apo_zero_unpaired", impl="torch")
    loss, metrics = module(hidden, weight, labels, desirable=torch.tensor([True, False]), ref_logps=torch.zeros(2))
    assert torch.isfinite(loss) and metrics["kl"].item() == 0.0


# --------------------------------------------------------------------------------------------------------------
# Bad input


def _dpo(hidden, labels, **kwargs):
    weight, _ = make_head(with_bias=False)
    kwargs.setdefault("ref_chosen_logps", torch.zeros(hidden.shape[0] // 2))
    kwargs.setdefault("ref_rejected_logps", torch.zeros(hidden.shape[0] // 2))
    return FusedLinearDPOLoss(impl="torch")(hidden, weight, labels, **kwargs)


H4, L4 = torch.randn(4, T, D), torch.randint(0, V, (4, T))
BAD_INPUTS = {
    "odd_rows": (lambda: _dpo(torch.randn(3, T, D), torch.randint(0, V, (3, T))), ValueError, "2B sequences"),
    "odd_packed_sequences": (
        lambda: _dpo(torch.randn(1, 9, D), torch.randint(0, V, (1, 9)), cu_seqlens=torch.tensor([0, 3, 6, 9])),
        ValueError,
        "2B sequences",
    ),
    "labels_shape": (lambda: _dpo(H4, L4[:, :-1]), ValueError, "labels"),
    "float_labels": (lambda: _dpo(H4, L4.float()), TypeError, "labels"),
    "padded_not_3d": (lambda: _dpo(H4.reshape(-1, D), L4.reshape(-1)), ValueError, r"\[N, T, D\]"),
    "packed_two_rows": (
        lambda: _dpo(H4[:2], L4[:2], cu_seqlens=torch.tensor([0, 4, 8, 12])),
        ValueError,
        r"\[1, total, D\]",
    ),
    "two_reference_sources": (lambda: _dpo(H4, L4, ref_hidden=H4), ValueError, "exactly one"),
    "no_reference": (
        lambda: _dpo(H4, L4, ref_chosen_logps=None, ref_rejected_logps=None),
        ValueError,
        "exactly one",
    ),
    "half_precomputed_reference": (lambda: _dpo(H4, L4, ref_rejected_logps=None), ValueError, "both"),
    "ref_hidden_shape": (
        lambda: _dpo(H4, L4, ref_chosen_logps=None, ref_rejected_logps=None, ref_hidden=H4[:2]),
        ValueError,
        "ref_hidden",
    ),
    "ref_weight_without_ref_hidden": (lambda: _dpo(H4, L4, ref_weight=torch.randn(V, D)), ValueError, "ref_weight"),
    "precomputed_reference_shape": (lambda: _dpo(H4, L4, ref_chosen_logps=torch.zeros(3)), ValueError, "shape"),
    "unknown_loss_type": (lambda: FusedLinearDPOLoss(loss_type="kto"), ValueError, "'sigmoid'"),
    "orpo_nll_labels_shape": (
        lambda: FusedLinearORPOLoss(impl="torch")(H4, make_head()[0], L4, nll_labels=L4),
        ValueError,
        "nll_labels",
    ),
    "orpo_nll_labels_conflict": (
        lambda: FusedLinearORPOLoss(impl="torch")(H4, make_head()[0], L4, nll_labels=(L4[:2] + 1) % V),
        ValueError,
        "different tokens",
    ),
    "kto_desirable_shape": (
        lambda: FusedLinearKTOLoss(impl="torch")(
            H4, make_head()[0], L4, desirable=torch.ones(3, dtype=torch.bool), ref_logps=torch.zeros(4), kl=0.0
        ),
        ValueError,
        "desirable",
    ),
    "kto_kl_and_kl_batch": (
        lambda: FusedLinearKTOLoss(impl="torch")(
            H4, make_head()[0], L4, desirable=L4[:, 0] > 0, ref_logps=torch.zeros(4), kl=0.0, kl_hidden=H4
        ),
        ValueError,
        "not both",
    ),
    "kto_kl_batch_without_reference": (
        lambda: FusedLinearKTOLoss(impl="torch")(
            H4, make_head()[0], L4, desirable=L4[:, 0] > 0, ref_logps=torch.zeros(4), kl_hidden=H4, kl_labels=L4
        ),
        ValueError,
        "ref_kl_logps or ref_kl_hidden",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_clear_errors(case):
    call, error, match = BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        call()
