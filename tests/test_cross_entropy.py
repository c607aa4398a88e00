"""linear_cross_entropy and FusedLinearCrossEntropyLoss against the float64 reference and torch's cross_entropy."""

import pytest
import torch
import torch.nn.functional as F
from head_cases import IMPLEMENTATIONS, TOLERANCE, assert_close, grads_of, make_inputs

import fastalign
from fastalign.core import chunked


def run_ce(inputs, impl, **options):
    return fastalign.linear_cross_entropy(
        inputs.hidden, inputs.weight, inputs.targets, bias=inputs.bias, impl=impl, **options
    )


OPTIONS = [
    pytest.param({}, id="plain"),
    pytest.param({"label_smoothing": 0.1}, id="smoothing"),
    pytest.param({"z_loss": 1e-2}, id="z-loss"),
    pytest.param({"softcap": 4.0, "label_smoothing": 0.2}, id="softcap-smoothing"),
    pytest.param({"logit_scale": 0.5, "temperature": 1.7, "z_loss": 1e-3}, id="scale-temperature-z-loss"),
    pytest.param({"shift": True}, id="shift"),
    pytest.param({"num_items_in_batch": 50}, id="num-items"),
]


@pytest.mark.parametrize("impl,device", IMPLEMENTATIONS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
def test_cross_entropy_and_gradients_match_reference(impl, device, reduction, options, frozen):
    inputs = make_inputs((3, 13), 20, 131, device=device, bias=True, frozen=frozen)
    reference = inputs.as_float64()
    loss = run_ce(inputs, impl, reduction=reduction, **options)
    expected = run_ce(reference, "reference", reduction=reduction, **options)
    assert loss.dtype == torch.float32 and loss.shape == expected.shape
    assert_close(loss, expected, TOLERANCE[torch.float32], "loss")
    upstream = torch.randn(expected.shape, device=device) if reduction == "none" else None
    for name, got, want in zip(
        ("hidden", "weight", "bias"),
        grads_of(loss, inputs, upstream),
        grads_of(expected, reference, upstream),
    ):
        assert_close(got, want, TOLERANCE[torch.float32], f"d loss / d {name}")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_reference_equals_torch_cross_entropy(reduction, label_smoothing):
    """Independent check of the loss formula: torch's own cross_entropy on materialized float64 logits."""
    inputs = make_inputs((5, 11), 12, 57, bias=True).as_float64()
    ours = run_ce(inputs, "reference", reduction=reduction, label_smoothing=label_smoothing, shift=True)
    logits = (inputs.hidden @ inputs.weight.T + inputs.bias)[:, :-1]
    theirs = F.cross_entropy(
        logits.reshape(-1, 57),
        inputs.targets[:, 1:].reshape(-1),
        reduction=reduction,
        label_smoothing=label_smoothing,
        ignore_index=-100,
    )
    assert_close(ours, theirs.reshape(ours.shape), 1e-12, "loss vs torch.nn.functional.cross_entropy")


def test_z_loss_and_num_items_in_batch_formulas():
    inputs = make_inputs((40,), 12, 33).as_float64()
    plain = run_ce(inputs, "reference", reduction="none")
    _, lse, _ = fastalign.linear_logprobs(
        inputs.hidden, inputs.weight, inputs.targets, impl="reference", return_lse=True
    )
    with_z = run_ce(inputs, "reference", reduction="none", z_loss=0.1)
    assert_close(with_z, plain + 0.1 * lse**2, 1e-12, "z_loss adds z_loss * lse^2")
    summed = run_ce(inputs, "torch", reduction="sum")
    assert_close(run_ce(inputs, "torch", num_items_in_batch=123), summed / 123, 1e-12, "sum / num_items_in_batch")
    assert_close(run_ce(inputs, "torch", num_items_in_batch=torch.tensor(7)), summed / 7, 1e-12, "tensor count")


@pytest.mark.parametrize("impl,device", IMPLEMENTATIONS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_targets_ignored_gives_zero_loss_and_gradients(impl, device, reduction):
    inputs = make_inputs((2, 8), 16, 30, device=device, bias=True, ignored_fraction=1.0)
    loss = run_ce(inputs, impl, reduction=reduction, label_smoothing=0.1, z_loss=1e-3)
    assert torch.isfinite(loss).all() and (loss == 0).all()
    for grad in grads_of(loss, inputs):
        assert grad is not None and (grad == 0).all()


@pytest.mark.parametrize("impl,device", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_cross_entropy(impl, device, dtype):
    inputs = make_inputs((2, 24), 32, 140, dtype=dtype, device=device, bias=True)
    reference = inputs.as_float64()
    loss = run_ce(inputs, impl, label_smoothing=0.1, shift=True)
    expected = run_ce(reference, "reference", label_smoothing=0.1, shift=True)
    assert_close(loss, expected, TOLERANCE[dtype], f"{dtype} loss")
    for got, want in zip(grads_of(loss, inputs), grads_of(expected, reference)):
        assert_close(got, want, TOLERANCE[dtype], f"{dtype} gradient")


def test_mean_and_sum_form_gradients_in_forward(monkeypatch):
    """Known upstream gradient: no second sweep in backward, for trainable and frozen heads."""
    calls = []
    original = chunked.ChunkedTorchBackend.gradients
    monkeypatch.setattr(chunked.ChunkedTorchBackend, "gradients", lambda *a, **k: calls.append(1) or original(*a, **k))
    for frozen in (False, True):
        inputs = make_inputs((30,), 16, 64, bias=True, frozen=frozen)
        grads_of(run_ce(inputs, "torch", label_smoothing=0.1, softcap=3.0) * 2.5, inputs)
    assert calls == []


def test_module_matches_function():
    inputs = make_inputs((4, 9), 16, 50, bias=True)
    module = fastalign.FusedLinearCrossEntropyLoss(label_smoothing=0.1, shift=True, impl="torch")
    expected = run_ce(inputs, "torch", label_smoothing=0.1, shift=True)
    got = module(inputs.hidden, inputs.weight, inputs.targets, bias=inputs.bias)
    assert torch.equal(got, expected)
    assert "label_smoothing=0.1" in repr(module)
