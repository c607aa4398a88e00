"""linear_logprobs_loss (a separable objective of the log-probs, gradients formed group by group in the forward
pass) against the composed route on float64 references: linear_logprobs(impl="reference"), then the objective.

The chunked backend's phases are forced with tiny buffers: D = 16 rows kept in the dW buffer, a store of a few
rows, the rest swept and recomputed, in several phases of whole groups.
"""

import pytest
import torch
import torch.nn.functional as F
from head_cases import IMPLEMENTATIONS, TOLERANCE, assert_close, grads_of, make_inputs

import fastalign
from fastalign.core import chunked
from fastalign.core.rows import group_rows, prepare_rows
from fastalign.losses.fused import FusedLinearCPOLoss, FusedLinearDPOLoss, FusedLinearKTOLoss, FusedLinearORPOLoss

PAIRS, T, D, V = 3, 24, 16, 300


def pair_objective(logp: torch.Tensor) -> torch.Tensor:
    """A DPO-like sigmoid term per pair of sequences (i, PAIRS + i) plus a token-level term: separable by pair."""
    sums = logp.sum(-1)
    return -F.logsigmoid(0.3 * (sums[:PAIRS] - sums[PAIRS:])).mean() + 0.01 * (logp[:PAIRS] ** 2).sum()


def pair_ids(shape) -> torch.Tensor:
    return (torch.arange(shape[0])[:, None] % PAIRS).expand(shape)


def small_backend(store_rows: int, buffers: int = 1) -> chunked.ChunkedTorchBackend:
    """Stores of ``store_rows`` [row, V] rows, 5-row blocks, 256-column vocabulary tiles."""
    return chunked.ChunkedTorchBackend(store_bytes=store_rows * 4 * V * buffers, tile_bytes=1, block_bytes=5 * 4 * D)


def separable(inputs, impl, objective=pair_objective, **options):
    return fastalign.linear_logprobs_loss(
        inputs.hidden, inputs.weight, inputs.targets, objective, groups=pair_ids(inputs.targets.shape),
        bias=inputs.bias, impl=impl, **options,
    )  # fmt: skip


def composed_reference(inputs, **options):
    reference = inputs.as_float64()
    logp = fastalign.linear_logprobs(
        reference.hidden, reference.weight, reference.targets, bias=reference.bias, impl="reference", **options
    )
    return reference, pair_objective(logp), logp


def assert_gradients_close(loss, inputs, expected_loss, reference, tol, what):
    """d loss / d (hidden, weight, bias) against the reference's, in the inputs' dtype."""
    expected = grads_of(expected_loss, reference)
    for name, got, want in zip(("hidden", "weight", "bias"), grads_of(loss, inputs), expected):
        assert got.dtype == inputs.hidden.dtype
        assert_close(got, want, tol, f"d loss / d {name} ({what})")


@pytest.mark.parametrize("impl,device", IMPLEMENTATIONS)
@pytest.mark.parametrize("softcap", [None, 4.0], ids=["plain", "softcap"])
@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_matches_the_composed_route(impl, device, softcap, frozen, bias, fresh_seed):
    inputs = make_inputs((2 * PAIRS, T), D, V, device=device, bias=bias, frozen=frozen)
    loss, logp = separable(inputs, impl, softcap=softcap)
    reference, expected_loss, expected_logp = composed_reference(inputs, softcap=softcap)
    assert not logp.requires_grad and logp.shape == (2 * PAIRS, T)
    assert_close(logp, expected_logp, TOLERANCE[torch.float32], f"logp (seed={fresh_seed})")
    assert_close(loss, expected_loss, TOLERANCE[torch.float32], f"loss (seed={fresh_seed})")
    assert_gradients_close(loss, inputs, expected_loss, reference, TOLERANCE[torch.float32], f"seed={fresh_seed}")


@pytest.mark.parametrize(
    "scored,store_rows,softcap,expected_phases,expected_recomputed",
    [
        # Groups (pairs) of 20 scored rows, 16 kept in the dW buffer: phase 1 keeps 16 + 3 of its group's rows and
        # recomputes 1; phases 2 and 3 keep 3 and recompute 17 each.
        pytest.param(10, 3, None, 3, 1 + 17 + 17, id="groups-20-store-3"),
        pytest.param(10, 1, None, 3, 3 + 19 + 19, id="groups-20-store-1"),
        # A store of 9 rows (2700 floats) holds the sweeps' tiles (2 x 5 rows x 256 columns) before its chunk.
        pytest.param(10, 9, None, 3, 0 + 11 + 11, id="groups-20-store-9-tiles-in-store"),
        # Groups of 10: the second group joins phase 1 (an overflow of 1 there beats 7 in a fresh phase).
        pytest.param(5, 3, None, 2, 1 + 7, id="groups-10-store-3"),
        pytest.param(5, 3, 4.0, 2, 1 + 7, id="groups-10-store-3-softcap-two-buffers"),
        pytest.param(5, 12, None, 2, 0, id="groups-10-store-12-all-kept"),
    ],
)
def test_phases_keep_and_recompute_rows(
    scored, store_rows, softcap, expected_phases, expected_recomputed, monkeypatch, fresh_seed
):
    """Trainable head on the chunked backend: each phase's rows are kept (dW buffer in the first phase, then the
    store) or recomputed, and the result is exact whatever the split."""
    inputs = make_inputs((2 * PAIRS, T), D, V, bias=True, ignored_fraction=0.0)
    inputs.targets[:, : T - scored] = -100
    buffers = 1 if softcap is None else 2  # the softcap's gradient needs the logits beside the probabilities
    backend = small_backend(store_rows, buffers)
    monkeypatch.setattr("fastalign.core.dispatch._torch_backend", lambda: backend)
    phases, recomputed = [], []
    plan, recompute = chunked.plan_phases, chunked.ChunkedTorchBackend._recompute_gradients
    monkeypatch.setattr(chunked, "plan_phases", lambda *a: phases.append(plan(*a)) or phases[-1])
    monkeypatch.setattr(
        chunked.ChunkedTorchBackend,
        "_recompute_gradients",
        lambda self, rows, span, *a, **k: (
            recomputed.append(span.stop - span.start) or recompute(self, rows, span, *a, **k)
        ),
    )

    loss, _ = separable(inputs, "torch", softcap=softcap)
    reference, expected_loss, _ = composed_reference(inputs, softcap=softcap)
    assert len(phases[0]) == expected_phases
    assert sum(recomputed) == expected_recomputed
    assert_close(loss, expected_loss, TOLERANCE[torch.float32], "loss")
    assert_gradients_close(loss, inputs, expected_loss, reference, TOLERANCE[torch.float32], f"seed={fresh_seed}")


def test_an_objective_that_mixes_groups_is_caught(monkeypatch):
    """Phase by phase, a group's gradient is taken with the later groups' log-probs at 0: an objective coupling
    groups (here through the square of the total) would get wrong gradients, and raises instead."""
    monkeypatch.setattr("fastalign.core.dispatch._torch_backend", lambda: small_backend(store_rows=2))
    inputs = make_inputs((2 * PAIRS, T), D, V, ignored_fraction=0.0)
    with pytest.raises(ValueError, match="not a sum of independent terms"):
        separable(inputs, "torch", objective=lambda logp: logp.sum() ** 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_in_several_phases(dtype, monkeypatch, fresh_seed):
    monkeypatch.setattr("fastalign.core.dispatch._torch_backend", lambda: small_backend(store_rows=4))
    inputs = make_inputs((2 * PAIRS, T), D, V, dtype=dtype, bias=True)
    loss, _ = separable(inputs, "torch", softcap=6.0)
    reference, expected_loss, _ = composed_reference(inputs, softcap=6.0)
    assert_close(loss, expected_loss, TOLERANCE[dtype], f"{dtype} loss (seed={fresh_seed})")
    assert_gradients_close(loss, inputs, expected_loss, reference, TOLERANCE[dtype], f"seed={fresh_seed}")


@pytest.mark.parametrize(
    "trained", [("weight",), ("weight", "bias"), ("bias",), ("hidden", "bias")], ids=lambda t: "+".join(t)
)
def test_any_subset_of_inputs_gets_gradients_in_several_phases(trained, monkeypatch, fresh_seed):
    """Phases with only some of hidden, weight, bias requiring grad (a head-only fine-tune, a trainable bias)."""
    monkeypatch.setattr("fastalign.core.dispatch._torch_backend", lambda: small_backend(store_rows=3))
    inputs = make_inputs((2 * PAIRS, T), D, V, bias=True)
    for name in ("hidden", "weight", "bias"):
        getattr(inputs, name).requires_grad_(name in trained)
    loss, _ = separable(inputs, "torch")
    reference, expected_loss, _ = composed_reference(inputs)
    assert len(inputs.leaves()) == len(trained)
    assert_gradients_close(loss, inputs, expected_loss, reference, TOLERANCE[torch.float32], f"seed={fresh_seed}")


@pytest.mark.parametrize("softcap", [None, 4.0], ids=["plain", "softcap"])
def test_chunk_logits_in_column_tiles(softcap, monkeypatch, fresh_seed):
    """A stored chunk's logits are written 128 vocabulary columns at a time (3 tiles of V=300, the last partial),
    with the bias and the softcap applied per tile."""
    monkeypatch.setattr(chunked, "CHUNK_COLUMNS", 128)
    monkeypatch.setattr("fastalign.core.dispatch._torch_backend", lambda: small_backend(store_rows=6, buffers=2))
    inputs = make_inputs((2 * PAIRS, T), D, V, bias=True)
    loss, logp = separable(inputs, "torch", softcap=softcap)
    reference, expected_loss, expected_logp = composed_reference(inputs, softcap=softcap)
    assert_close(logp, expected_logp, TOLERANCE[torch.float32], f"logp (seed={fresh_seed})")
    assert_gradients_close(loss, inputs, expected_loss, reference, TOLERANCE[torch.float32], f"seed={fresh_seed}")


def test_buffers_fit_the_rows_not_the_budget(monkeypatch):
    """With the default budgets (a 48 MiB store) a small call allocates its [rows, V] store, and the tiles it lends
    to the sweeps, for the rows it has: no buffer beyond 2 x rows x V floats."""
    sizes, init = [], chunked._Workspace.__init__
    monkeypatch.setattr(
        chunked._Workspace, "__init__", lambda self, *a, **k: init(self, *a, **k) or sizes.append(self.memory.numel())
    )
    inputs = make_inputs((2 * PAIRS, T), D, V, ignored_fraction=0.0)
    loss, _ = separable(inputs, "torch")
    loss.backward()
    assert sizes and max(sizes) <= 2 * inputs.targets.numel() * V


def test_upstream_gradient_scales_the_saved_gradients(fresh_seed):
    inputs = make_inputs((2 * PAIRS, T), D, V, bias=True)
    loss, _ = separable(inputs, "torch")
    reference, expected_loss, _ = composed_reference(inputs)
    for got, want in zip(grads_of(-2.5 * loss, inputs), grads_of(-2.5 * expected_loss, reference)):
        assert_close(got, want, TOLERANCE[torch.float32], f"gradient of -2.5 * loss (seed={fresh_seed})")


def test_all_targets_ignored():
    inputs = make_inputs((2 * PAIRS, T), D, V, bias=True, ignored_fraction=1.0)
    loss, logp = separable(inputs, "torch")
    assert (logp == 0).all() and torch.isfinite(loss)
    for grad in grads_of(loss, inputs):
        assert grad is not None and (grad == 0).all()


def test_plan_phases():
    plan = chunked.plan_phases
    assert plan([766] * 4, 1024 + 384, 384) == [slice(0, 1532), slice(1532, 2298), slice(2298, 3064)]
    assert plan([10] * 5, 100, 5) == [slice(0, 50)]  # everything fits in the first phase
    assert plan([5000, 10], 1024, 384) == [slice(0, 5000), slice(5000, 5010)]  # an oversized group is one phase
    assert plan([3, 3, 3], 4, 4) == [slice(0, 3), slice(3, 6), slice(6, 9)]
    assert plan([], 10, 5) == []


def test_group_rows_orders_scored_rows_by_group():
    inputs = make_inputs((4, 5), D, V, ignored_fraction=0.3)
    rows = prepare_rows(inputs.hidden, inputs.weight, inputs.targets, None, -100)
    groups = torch.tensor([0, 1, 0, 1])[:, None].expand(4, 5)
    grouped, sizes = group_rows(rows, groups)
    flat_groups = groups.reshape(-1)[grouped.index]
    assert (flat_groups[1:] >= flat_groups[:-1]).all() and sizes == torch.bincount(flat_groups).tolist()
    assert torch.equal(grouped.targets, inputs.targets.reshape(-1)[grouped.index])
    for bad, error in [
        (groups.float(), TypeError),
        (groups[:, :3], ValueError),
        (groups - 1, ValueError),
    ]:
        with pytest.raises(error, match="group"):
            group_rows(rows, bad)


FUSED = {
    "dpo": lambda: (FusedLinearDPOLoss(beta=0.5), {"ref_chosen_logps": -torch.rand(PAIRS) * 20,
                                                   "ref_rejected_logps": -torch.rand(PAIRS) * 20}),
    "orpo": lambda: (FusedLinearORPOLoss(beta=0.5), {}),
    "cpo": lambda: (FusedLinearCPOLoss(beta=0.5, loss_type="simpo"), {}),
    "kto": lambda: (FusedLinearKTOLoss(beta=0.5), {"desirable": torch.arange(2 * PAIRS) % 3 == 0,
                                                   "ref_logps": -torch.rand(2 * PAIRS) * 20, "kl": 0.3}),
}  # fmt: skip


@pytest.mark.parametrize("loss", list(FUSED))
def test_fused_losses_in_several_phases_match_the_reference_implementation(loss, monkeypatch, fresh_seed):
    """The fused modules through small phases (trainable head, chunked backend) against impl="reference"."""
    monkeypatch.setattr("fastalign.core.dispatch._torch_backend", lambda: small_backend(store_rows=4))
    inputs = make_inputs((2 * PAIRS, T), D, V, bias=True)
    labels = torch.cat([torch.zeros_like(inputs.targets[:, :1]), inputs.targets[:, :-1]], 1)  # shift=True inverse
    module, kwargs = FUSED[loss]()
    results = []
    for x, impl in ((inputs, "torch"), (inputs.as_float64(), "reference")):
        module.impl = impl
        loss_value, metrics = module(x.hidden, x.weight, labels, bias=x.bias, **kwargs)
        results.append((loss_value, metrics, grads_of(loss_value, x)))
    (got, got_metrics, got_grads), (want, want_metrics, want_grads) = results
    assert_close(got, want, TOLERANCE[torch.float32], f"{loss} loss (seed={fresh_seed})")
    for name, value in want_metrics.items():
        assert_close(got_metrics[name], value, TOLERANCE[torch.float32], f"{loss} metric {name}")
    for name, g, w in zip(("hidden", "weight", "bias"), got_grads, want_grads):
        assert_close(g, w, 1e-4, f"{loss} d{name} (seed={fresh_seed})")


def test_no_grad_mode_does_no_gradient_work(monkeypatch):
    """Under torch.no_grad() (an evaluation pass) inputs that require grad must not make the forward sweep build an
    accumulator, keep logits or form gradients: linear_logprobs, linear_cross_entropy and linear_logprobs_loss."""
    monkeypatch.setattr("fastalign.core.dispatch._torch_backend", lambda: small_backend(store_rows=2))
    work = []
    sweep = chunked.ChunkedTorchBackend.sweep
    monkeypatch.setattr(
        chunked.ChunkedTorchBackend,
        "sweep",
        lambda self, *a, accumulate, keep_logits=False: (
            work.extend(["accumulator"] * accumulate + ["kept logits"] * keep_logits)
            or sweep(self, *a, accumulate=accumulate, keep_logits=keep_logits)
        ),
    )
    for name in ("_recompute_gradients", "_gradients_of_kept_rows"):
        monkeypatch.setattr(chunked.ChunkedTorchBackend, name, lambda *a, name=name: work.append(name))
    monkeypatch.setattr(chunked, "_accumulate", lambda *a: work.append("_accumulate"))
    for frozen in (False, True):
        inputs = make_inputs((2 * PAIRS, T), D, V, bias=not frozen, frozen=frozen)
        with torch.no_grad():
            separable(inputs, "torch")
            run = dict(bias=inputs.bias, impl="torch")
            fastalign.linear_logprobs(inputs.hidden, inputs.weight, inputs.targets, **run)
            fastalign.linear_cross_entropy(inputs.hidden, inputs.weight, inputs.targets, **run)
        assert work == [], f"gradient work under no_grad ({'frozen' if frozen else 'trainable'} head): {work}"
