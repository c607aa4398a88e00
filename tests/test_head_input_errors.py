"""Bad input to the fused head primitives raises an error that names the problem."""

import pytest
import torch

import fastalign


def inputs(n=6, d=8, v=20):
    return torch.randn(n, d), torch.randn(v, d), torch.randint(0, v, (n,))


@pytest.mark.parametrize("function", [fastalign.linear_logprobs, fastalign.linear_cross_entropy])
def test_errors_name_the_problem(function):
    hidden, weight, targets = inputs()
    cases = [
        ((hidden, torch.randn(20, 7), targets), {}, ValueError, "hidden size mismatch"),
        ((hidden, weight, targets[:5]), {}, ValueError, "shape mismatch"),
        ((hidden, weight, targets.float()), {}, TypeError, "integer tensor"),
        ((hidden, weight, targets > 3), {}, TypeError, "bool"),
        ((hidden, weight.double(), targets), {}, TypeError, "dtypes differ"),
        ((hidden, weight.to("meta"), targets), {}, ValueError, "meta"),
        ((hidden.long(), weight, targets), {}, TypeError, "hidden must be"),
        ((hidden, weight, targets), {"bias": torch.randn(19)}, ValueError, "bias must have shape"),
        ((hidden, weight, targets), {"impl": "cuda"}, ValueError, "impl must be one of"),
        ((hidden, weight, targets), {"temperature": 0.0}, ValueError, "temperature"),
        ((hidden, weight, targets), {"softcap": -1.0}, ValueError, "softcap"),
    ]
    for args, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            function(*args, **kwargs)


@pytest.mark.parametrize("bad_target", [20, -1, 10**6])
def test_out_of_range_target_is_reported_with_its_position(bad_target):
    hidden, weight, targets = inputs()
    targets[4] = bad_target
    with pytest.raises(ValueError, match=rf"target {bad_target} at flattened position 4 .*\[0, 20\)"):
        fastalign.linear_logprobs(hidden, weight, targets)
    targets[4] = -100  # ignore_index is fine
    fastalign.linear_logprobs(hidden, weight, targets)


def test_cross_entropy_option_errors():
    hidden, weight, targets = inputs()
    with pytest.raises(ValueError, match="reduction"):
        fastalign.linear_cross_entropy(hidden, weight, targets, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        fastalign.linear_cross_entropy(hidden, weight, targets, label_smoothing=1.0)
    with pytest.raises(ValueError, match="z_loss"):
        fastalign.linear_cross_entropy(hidden, weight, targets, z_loss=-1.0)
