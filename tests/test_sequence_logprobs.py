"""``fastalign.sequence_logprobs`` and ``count_empty`` against the float64 loop of ``reference_losses``.

Fresh random inputs each run; conftest.py's ``fresh_seed`` prints the seed, replayable with
``FASTALIGN_TEST_SEED=<seed>``.
Tolerances: an fp32 sum of up to ~40 values of magnitude <= 20 carries ~40 * 20 * 6e-8 ~ 5e-5 absolute rounding;
atol 1e-4 and rtol 1e-5 cover it. Gradients are 1 or 1 / n per token: exact up to one rounding, rtol 1e-6.
"""

import pytest
import reference_losses as ref
import torch

from fastalign.sequence_logprobs import count_empty, sequence_logprobs, sequence_token_counts

VALUE_TOL = {"rtol": 1e-5, "atol": 1e-4}
GRAD_TOL = {"rtol": 1e-6, "atol": 1e-7}


def random_packing(num_sequences=6, max_length=40):
    """(token_logps [total], cu_seqlens int64 [S+1]) with some empty sequences."""
    lengths = torch.randint(0, max_length, (num_sequences,))
    lengths[torch.randint(0, num_sequences, (1,))] = 0
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    token_logps = -torch.rand(int(cu_seqlens[-1])) * 20
    return token_logps, cu_seqlens


def assert_matches_reference(token_logps, seed, **kwargs):
    """Value and gradient of sequence_logprobs (fp32) match the float64 reference."""
    x32 = token_logps.detach().float().requires_grad_()
    x64 = token_logps.detach().double().requires_grad_()
    out = sequence_logprobs(x32, **kwargs)
    expected = ref.sequence_logprobs(x64, **kwargs)
    msg = f"seed={seed} reduction={kwargs.get('reduction', 'sum')}"
    assert out.dtype == torch.float32, msg
    torch.testing.assert_close(out.double(), expected.detach(), **VALUE_TOL, msg=msg)
    weights = torch.randn(out.shape, dtype=torch.float64)
    (out * weights.float()).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x32.grad.double(), x64.grad, **GRAD_TOL, msg=f"gradient: {msg}")


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "int", "float"])
def test_padded_matches_reference(reduction, mask_kind, fresh_seed):
    token_logps = -torch.rand(5, 37) * 20
    mask = None
    if mask_kind != "none":
        mask = torch.rand(5, 37) < 0.6
        mask[2] = False  # one row with no scored token
        mask = {"bool": mask, "int": mask.long(), "float": mask.float()}[mask_kind]
    assert_matches_reference(token_logps, fresh_seed, mask=mask, reduction=reduction)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("layout", ["flat", "row"])
@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("masked", [False, True])
def test_packed_matches_reference(reduction, layout, cu_dtype, masked, fresh_seed):
    token_logps, cu_seqlens = random_packing()
    mask = torch.rand(token_logps.shape) < 0.7 if masked else None
    if layout == "row":
        token_logps = token_logps.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    assert_matches_reference(
        token_logps, fresh_seed, mask=mask, cu_seqlens=cu_seqlens.to(cu_dtype), reduction=reduction
    )


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_packed_equals_padded(reduction, fresh_seed):
    # The same sequences, once padded to [B, T] with a mask and once packed back to back.
    lengths = torch.randint(1, 30, (4,))
    padded = -torch.rand(4, 30) * 10
    mask = torch.arange(30) < lengths[:, None]
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    torch.testing.assert_close(
        sequence_logprobs(padded, mask=mask, reduction=reduction),
        sequence_logprobs(padded[mask], cu_seqlens=cu_seqlens, reduction=reduction),
        msg=f"seed={fresh_seed}",
    )


def test_token_counts(fresh_seed):
    token_logps, cu_seqlens = random_packing()
    mask = torch.rand(token_logps.shape) < 0.5
    expected = [int(mask[start:end].sum()) for start, end in zip(cu_seqlens[:-1], cu_seqlens[1:])]
    counts = sequence_token_counts(token_logps, mask=mask, cu_seqlens=cu_seqlens)
    assert counts.dtype == torch.int64 and counts.tolist() == expected, f"seed={fresh_seed}"
    assert sequence_token_counts(torch.zeros(2, 5), mask=torch.ones(2, 5)).tolist() == [5, 5]


def test_empty_sequences_give_zero_without_nan_and_are_counted():
    token_logps = torch.tensor([-1.0, -2.0, -3.0, -4.0], requires_grad=True)
    cu_seqlens = torch.tensor([0, 2, 2, 4, 4])  # sequences 1 and 3 are empty
    mask = torch.tensor([True, True, False, False])  # sequence 2 has no scored token
    out = sequence_logprobs(token_logps, mask=mask, cu_seqlens=cu_seqlens, reduction="mean")
    assert out.tolist() == [-1.5, 0.0, 0.0, 0.0]
    out.sum().backward()
    assert token_logps.grad.tolist() == [0.5, 0.5, 0.0, 0.0]
    assert count_empty(token_logps, mask=mask, cu_seqlens=cu_seqlens).item() == 3
    assert count_empty(token_logps, cu_seqlens=cu_seqlens).item() == 2
    padded_mask = torch.tensor([[True, False], [False, False]])
    assert count_empty(torch.zeros(2, 2), mask=padded_mask).item() == 1
    assert count_empty(torch.zeros(2, 2)).item() == 0


def test_masked_positions_cannot_leak_inf_or_nan():
    token_logps = torch.tensor([[-1.0, float("-inf"), float("nan")], [-2.0, -3.0, float("-inf")]], requires_grad=True)
    mask = torch.tensor([[1, 0, 0], [1, 1, 0]])
    for reduction, expected in (("sum", [-1.0, -5.0]), ("mean", [-1.0, -2.5])):
        out = sequence_logprobs(token_logps, mask=mask, reduction=reduction)
        assert out.tolist() == expected
        token_logps.grad = None
        out.sum().backward()
        assert torch.isfinite(token_logps.grad).all()


def test_extreme_values_and_low_precision_input(fresh_seed):
    token_logps = torch.full((2, 8), -8192.0, dtype=torch.bfloat16, requires_grad=True)
    out = sequence_logprobs(token_logps, reduction="mean")
    assert out.dtype == torch.float32 and out.tolist() == [-8192.0, -8192.0]  # exact in bf16
    out.sum().backward()
    assert token_logps.grad.dtype == torch.bfloat16
    assert_matches_reference(-torch.rand(3, 16) * 1e-6, fresh_seed, reduction="mean")


def test_zero_length_padded_rows():
    assert sequence_logprobs(torch.zeros(3, 0), reduction="mean").tolist() == [0.0, 0.0, 0.0]
    assert count_empty(torch.zeros(3, 0)).item() == 3


BAD_INPUTS = {
    "unknown_reduction": ({"token_logps": torch.zeros(2, 3), "reduction": "max"}, ValueError, "'sum', 'mean'"),
    "integer_logps": ({"token_logps": torch.zeros(2, 3, dtype=torch.long)}, TypeError, "floating"),
    "padded_1d": ({"token_logps": torch.zeros(3)}, ValueError, "2-D"),
    "padded_3d": ({"token_logps": torch.zeros(2, 3, 4)}, ValueError, "2-D"),
    "empty_batch": ({"token_logps": torch.zeros(0, 3)}, ValueError, "empty"),
    "mask_shape": ({"token_logps": torch.zeros(2, 3), "mask": torch.ones(2, 4)}, ValueError, "mask"),
    "mask_device": ({"token_logps": torch.zeros(2, 3), "mask": torch.ones(2, 3, device="meta")}, ValueError, "meta"),
    "mask_not_tensor": ({"token_logps": torch.zeros(2, 3), "mask": [[1, 1, 1]] * 2}, TypeError, "mask"),
    "packed_two_rows": (
        {"token_logps": torch.zeros(2, 3), "cu_seqlens": torch.tensor([0, 3, 6])},
        ValueError,
        r"\[1, total\]",
    ),
    "cu_seqlens_float": ({"token_logps": torch.zeros(4), "cu_seqlens": torch.tensor([0.0, 4.0])}, TypeError, "int"),
    "cu_seqlens_2d": ({"token_logps": torch.zeros(4), "cu_seqlens": torch.tensor([[0, 4]])}, ValueError, "1-D"),
    "cu_seqlens_short": ({"token_logps": torch.zeros(4), "cu_seqlens": torch.tensor([0])}, ValueError, "S >= 1"),
    "cu_seqlens_start": ({"token_logps": torch.zeros(4), "cu_seqlens": torch.tensor([1, 4])}, ValueError, "start"),
    "cu_seqlens_end": ({"token_logps": torch.zeros(4), "cu_seqlens": torch.tensor([0, 3])}, ValueError, "total"),
    "cu_seqlens_decreasing": (
        {"token_logps": torch.zeros(4), "cu_seqlens": torch.tensor([0, 3, 2, 4])},
        ValueError,
        "non-decreasing",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_clear_errors(case):
    kwargs, error, match = BAD_INPUTS[case]
    kwargs = dict(kwargs)
    token_logps = kwargs.pop("token_logps")
    with pytest.raises(error, match=match):
        sequence_logprobs(token_logps, **kwargs)
    kwargs.pop("reduction", None)
    if case != "unknown_reduction":
        with pytest.raises(error, match=match):
            count_empty(token_logps, **kwargs)
