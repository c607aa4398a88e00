"""linear_logprobs against the float64 reference: values, lse, entropy and gradients on every implementation."""

import pytest
import torch
from head_cases import IMPLEMENTATIONS, TOLERANCE, assert_close, grads_of, make_inputs

import fastalign
from fastalign.core import chunked
from fastalign.core.stats import LinearSoftmaxStats

TRANSFORMS = [
    pytest.param({}, id="plain"),
    pytest.param({"softcap": 3.0}, id="softcap"),
    pytest.param({"logit_scale": 0.7, "temperature": 1.3}, id="scale-temperature"),
    pytest.param({"softcap": 5.0, "logit_scale": 1.5, "temperature": 0.8}, id="all-transforms"),
]


def run_logprobs(inputs, impl, **options):
    return fastalign.linear_logprobs(
        inputs.hidden, inputs.weight, inputs.targets, bias=inputs.bias, impl=impl, **options
    )


@pytest.mark.parametrize("impl,device", IMPLEMENTATIONS)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_logprobs_and_gradients_match_reference(impl, device, transform, frozen, bias):
    inputs = make_inputs((37,), 31, 203, device=device, bias=bias, frozen=frozen)
    reference = inputs.as_float64()
    upstream = torch.randn(37, device=device)

    logp = run_logprobs(inputs, impl, **transform)
    expected = run_logprobs(reference, "reference", **transform)
    assert logp.dtype == torch.float32
    assert_close(logp, expected, TOLERANCE[torch.float32], "logp")
    assert (logp[inputs.targets == -100] == 0.0).all(), "ignored positions must be exactly 0.0"
    for name, got, want in zip(
        ("hidden", "weight", "bias"),
        grads_of(logp, inputs, upstream),
        grads_of(expected, reference, upstream),
    ):
        assert_close(got, want, TOLERANCE[torch.float32], f"d logp / d {name}")


@pytest.mark.parametrize("impl,device", IMPLEMENTATIONS)
@pytest.mark.parametrize("transform", TRANSFORMS[:2])
@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
def test_lse_and_entropy_with_gradients(impl, device, transform, frozen):
    inputs = make_inputs((2, 19), 24, 150, device=device, bias=True, frozen=frozen)
    reference = inputs.as_float64()
    weights = [torch.randn(2, 19, device=device) for _ in range(3)]

    def combined(x, which):
        logp, lse, entropy = run_logprobs(x, which, return_lse=True, return_entropy=True, **transform)
        return logp, lse, entropy, logp * weights[0] + lse * weights[1] + entropy * weights[2]

    *values, total = combined(inputs, impl)
    *expected_values, expected_total = combined(reference, "reference")
    for name, got, want in zip(("logp", "lse", "entropy"), values, expected_values):
        assert got.shape == (2, 19)
        assert_close(got, want, TOLERANCE[torch.float32], name)
    for got, want in zip(grads_of(total, inputs), grads_of(expected_total, reference)):
        assert_close(got, want, TOLERANCE[torch.float32], "gradient of logp + lse + entropy")


def test_entropy_and_logp_equal_textbook_formulas():
    """The reference itself, checked against log_softmax on materialized logits (independent formulas)."""
    inputs = make_inputs((23,), 16, 97, bias=True, ignored_fraction=0.0).as_float64()
    logp, lse, entropy = run_logprobs(inputs, "reference", return_lse=True, return_entropy=True, softcap=2.0)
    logits = 2.0 * torch.tanh((inputs.hidden @ inputs.weight.T + inputs.bias) / 2.0)
    log_probs = torch.log_softmax(logits, -1)
    assert_close(logp, log_probs.gather(1, inputs.targets[:, None]).squeeze(1), 1e-12, "logp")
    assert_close(lse, torch.logsumexp(logits, -1), 1e-12, "lse")
    assert_close(entropy, -(log_probs.exp() * log_probs).sum(-1), 1e-12, "entropy")


@pytest.mark.parametrize("impl,device", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape,dim,vocab", [((1,), 31, 203), ((3, 5), 16, 17), ((64,), 33, 255)])
def test_odd_shapes(impl, device, shape, dim, vocab):
    inputs = make_inputs(shape, dim, vocab, device=device, ignored_fraction=0.1)
    reference = inputs.as_float64()
    logp, expected = run_logprobs(inputs, impl), run_logprobs(reference, "reference")
    assert logp.shape == shape
    assert_close(logp, expected, TOLERANCE[torch.float32], "logp")
    for got, want in zip(grads_of(logp, inputs), grads_of(expected, reference)):
        assert_close(got, want, TOLERANCE[torch.float32], "gradient")


@pytest.mark.parametrize("impl,device", IMPLEMENTATIONS)
@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
def test_all_targets_ignored_gives_zeros_and_zero_gradients(impl, device, frozen):
    inputs = make_inputs((4, 6), 16, 40, device=device, bias=True, frozen=frozen, ignored_fraction=1.0)
    logp, lse, entropy = run_logprobs(inputs, impl, return_lse=True, return_entropy=True)
    for value in (logp, lse, entropy):
        assert value.shape == (4, 6) and (value == 0).all()
    for grad in grads_of(logp + lse + entropy, inputs):
        assert grad is not None and torch.isfinite(grad).all() and (grad == 0).all()


@pytest.mark.parametrize("impl,device", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
def test_half_precision_inputs(impl, device, dtype, frozen):
    inputs = make_inputs((48,), 32, 160, dtype=dtype, device=device, bias=True, frozen=frozen)
    reference = inputs.as_float64()
    logp, expected = (
        run_logprobs(inputs, impl, softcap=6.0),
        run_logprobs(reference, "reference", softcap=6.0),
    )
    assert logp.dtype == torch.float32
    assert_close(logp, expected, TOLERANCE[dtype], f"{dtype} logp")
    for got, want in zip(grads_of(logp, inputs), grads_of(expected, reference)):
        assert got.dtype == dtype
        assert_close(got, want, TOLERANCE[dtype], f"{dtype} gradient")


@pytest.mark.parametrize("impl,device", IMPLEMENTATIONS)
def test_large_magnitude_logits_stay_finite_and_exact(impl, device):
    """Logits of size ~1e4: the online max keeps exp() in range; log-probs of non-argmax targets are ~ -1e4."""
    inputs = make_inputs((32,), 16, 64, device=device, logit_size=1e4, ignored_fraction=0.0)
    reference = inputs.as_float64()
    logp, expected = run_logprobs(inputs, impl), run_logprobs(reference, "reference")
    assert torch.isfinite(logp).all()
    # An fp32 logit of size 1e4 is itself only exact to ~1e4 * 2^-24 * sqrt(D) = 2.4e-3 (random-walk rounding over
    # D=16 products), which moves log-probs by as much (1e-5 relative to their ~1e4 scale is 0.1 absolute, ample)
    # and the probabilities by ~0.24% relative (a few times that in the worst row): gradients, scaled like
    # |W| ~ 1e4, are held to 1e-3 relative (seen: up to 2e-4 over many seeds and implementations).
    assert_close(logp, expected, 1e-5, "logp at large magnitude")
    for got, want in zip(grads_of(logp, inputs), grads_of(expected, reference)):
        assert_close(got, want, 1e-3, "gradient at large magnitude")


def test_frozen_head_backward_is_elementwise(monkeypatch):
    """Frozen head: backward uses the accumulator from the forward sweep and never recomputes the logits."""
    inputs = make_inputs((40,), 16, 120, bias=True, frozen=True)
    calls = []
    original = chunked.ChunkedTorchBackend.gradients
    monkeypatch.setattr(chunked.ChunkedTorchBackend, "gradients", lambda *a, **k: calls.append(1) or original(*a, **k))
    logp = run_logprobs(inputs, "torch", softcap=4.0)
    reference = inputs.as_float64()
    (got,) = grads_of(logp, inputs)
    (want,) = grads_of(run_logprobs(reference, "reference", softcap=4.0), reference)
    assert_close(got, want, TOLERANCE[torch.float32], "frozen-head gradient")
    assert calls == [], "the frozen-head path recomputed the logits in backward"

    # Entropy's gradient is not covered by the accumulator: that case recomputes, and is still exact.
    logp, _, entropy = run_logprobs(inputs, "torch", return_entropy=True)
    grads_of(logp + entropy, inputs)
    assert calls == [1]


@pytest.mark.parametrize("rows", [12, 40], ids=["all-kept", "some-recomputed"])
@pytest.mark.parametrize("softcap", [None, 4.0], ids=["plain", "softcap"])
def test_trainable_head_backward_recomputes_only_rows_it_did_not_keep(rows, softcap, monkeypatch, fresh_seed):
    """A trainable head's sweep keeps the logits of the first D rows in the buffer that becomes dW: backward
    recomputes the logits of the other rows only, and the gradients are exact either way."""
    inputs = make_inputs((rows,), 16, 700, bias=True, ignored_fraction=0.2)
    scored = int((inputs.targets != -100).sum())
    backend = chunked.ChunkedTorchBackend(tile_bytes=1, block_bytes=5 * 4 * 16)  # 256-column tiles, 5-row blocks
    monkeypatch.setattr("fastalign.core.dispatch._torch_backend", lambda: backend)
    recomputed = []
    original = chunked._logits
    monkeypatch.setattr(chunked, "_logits", lambda h, *a: recomputed.append(h.shape[0]) or original(h, *a))

    logp = run_logprobs(inputs, "torch", softcap=softcap)
    recomputed.clear()
    upstream = torch.randn(rows)
    grads = grads_of(logp, inputs, upstream)
    assert sum(recomputed) == max(scored - 16, 0) * 3, "backward recomputed kept rows (3 tiles per row block)"
    reference = inputs.as_float64()
    expected = grads_of(run_logprobs(reference, "reference", softcap=softcap), reference, upstream)
    for name, got, want in zip(("hidden", "weight", "bias"), grads, expected):
        assert_close(got, want, TOLERANCE[torch.float32], f"d{name} (seed={fresh_seed})")


CHUNK_CASES = [
    # (softcap, mean_logit): the row-chunked pass overwrites the logits with the probabilities (one buffer) unless
    # the gradient needs the logits as well (two buffers).
    pytest.param(None, False, id="one-buffer"),
    pytest.param(5.0, True, id="two-buffers"),
]


@pytest.mark.parametrize("softcap,mean_logit", CHUNK_CASES)
def test_blocks_tiles_and_chunks_match_one_block(softcap, mean_logit):
    """Blocks of 7 rows, vocabulary tiles of 256 columns and row chunks of 8 rows (all with ragged last ones), read
    past ignored rows, give the results of one block."""
    from fastalign.core.head import LogitTransform
    from fastalign.core.stats import LinearRowLossSum, StatsRequest

    inputs = make_inputs((61,), 16, 700, bias=True)
    buffers = 2 if mean_logit else 1
    small = chunked.ChunkedTorchBackend(chunk_bytes=8 * 4 * 700 * buffers, tile_bytes=1, block_bytes=7 * 4 * 16)
    one = chunked.ChunkedTorchBackend(chunk_bytes=1 << 30, tile_bytes=1 << 30, block_bytes=1 << 30)
    assert chunked.rows_per_chunk(small.chunk_bytes, 700, buffers) == 8 and small.vocab_tile(7, 700) == chunked.MIN_TILE
    assert small.rows_per_block(16) == 7
    index = (inputs.targets != -100).nonzero().squeeze(1)
    transform, request = LogitTransform(softcap=softcap), StatsRequest(logit_sum=True, mean_logit=mean_logit)

    def row_loss(stats):
        loss = stats.lse - stats.target_logit + 0.1 * stats.logit_sum / 700
        return loss + 0.01 * stats.mean_logit if mean_logit else loss

    for backend_args in ((), (row_loss,)):
        function = LinearRowLossSum if backend_args else LinearSoftmaxStats
        results = []
        for backend in (small, one):
            args = (inputs.hidden, inputs.weight, inputs.bias, inputs.targets[index], index, transform, request)
            out = function.apply(*args, *backend_args, backend)
            weights = (1.0, -1.0, 0.1, 0.3 if mean_logit else 0.0)
            total = out.sum() if backend_args else sum(s.sum() * w for s, w in zip(out, weights))
            results.append((out, grads_of(total, inputs)))
        (a, grads_a), (b, grads_b) = results
        for x, y in zip(a if isinstance(a, tuple) else [a], b if isinstance(b, tuple) else [b]):
            assert_close(x, y, 1e-6, "tiled statistic")
        for x, y in zip(grads_a, grads_b):
            assert_close(x, y, 1e-6, "tiled gradient")
        ignored = torch.ones(61, dtype=torch.bool)
        ignored[index] = False
        assert not grads_a[0][ignored].any(), "an ignored row got a hidden-state gradient"
