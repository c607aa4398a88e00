"""Chunked PyTorch implementation of the softmax statistics: runs on any device.

Two tilings, both with O(M * D) extra memory plus two bounded buffers, whatever M and V:

- Vocabulary tiles ``[M, tile]`` for the statistics sweep, with an online softmax: running max ``m``, running sum
  ``l``, and the frozen-head accumulator ``acc = sum_v exp(z_v - m) z'_v W_v`` rescaled by ``exp(m_old - m_new)``
  when the max moves (flash attention's trick). The recomputing gradient pass uses the same tiles: with the saved
  ``lse`` each tile's ``p`` is exact, so ``dW`` and ``db`` of a tile are complete after it and ``dh`` accumulates.
  Each W tile is read once and stays in cache while all rows stream past it.
- Row chunks ``[chunk, V]`` for a loss with a known upstream gradient on a trainable head: a chunk's full softmax
  is known, so its ``dL/da`` is formed in the forward sweep and feeds ``dh = G @ W`` and ``dW += G.T @ h``.

Matmuls run in the input dtype (tensor cores for bf16/fp16 on GPU); everything after them is float32.
Matmul count per call, V-sized (the cost that matters):
    frozen head, any loss      forward: logits + accumulator          backward: none (elementwise)   = 2
    trainable head, row loss   forward: logits + dh + dW               backward: none (scaling)       = 3
    trainable head, log-probs  forward: logits                         backward: logits + dh + dW     = 4
"""

from __future__ import annotations

import torch

from fastalign.core.head import LogitTransform
from fastalign.core.stats import (
    Gradients,
    GradNeeds,
    RowLoss,
    SoftmaxStats,
    StatsGrad,
    StatsRequest,
    accumulator_pays_off,
    gradients_via_recompute,
    row_loss_and_grad,
)

DEFAULT_CHUNK_BYTES = 32 << 20
"""One ``[chunk, V]`` float32 buffer of the row-chunked forward-gradient pass (two exist at a time). At V=32000,
D=1024 on a 2-core x86 CPU, 256-row chunks keep the matmuls efficient and the trainable-head peak below torch's own
chunked linear_cross_entropy (benchmarks/bench_linear_ce.py)."""

DEFAULT_TILE_BYTES = 8 << 20
"""One ``[M, tile]`` float32 buffer of the vocabulary sweep (two exist at a time)."""

LAZY_RESCALE = 8.0
"""How far (in nats) a tile's max may exceed the running reference max before the sweep rescales to it."""

MIN_TILE = 256
"""Narrowest vocabulary tile: below it the per-tile rescaling of the accumulator outweighs the matmul."""


class ChunkedTorchBackend:
    def __init__(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES, tile_bytes: int = DEFAULT_TILE_BYTES):
        self.chunk_bytes = chunk_bytes
        self.tile_bytes = tile_bytes

    def vocab_tile(self, num_rows: int, vocab_size: int) -> int:
        return min(vocab_size, max(MIN_TILE, self.tile_bytes // (4 * max(num_rows, 1))))

    def rows_per_chunk(self, vocab_size: int) -> int:
        return max(1, self.chunk_bytes // (4 * vocab_size))

    def _chunks(self, hidden: torch.Tensor, vocab_size: int):
        """Yield (rows, logits buffer, probs buffer) for row chunks of at most rows_per_chunk rows."""
        num_rows = hidden.shape[0]
        step = min(self.rows_per_chunk(vocab_size), max(num_rows, 1))
        workspace = _Workspace(step * vocab_size, hidden.device, _stats_dtype(hidden))
        for start in range(0, num_rows, step):
            rows = slice(start, min(start + step, num_rows))
            n = rows.stop - rows.start
            yield rows, workspace.logits(n, vocab_size), workspace.probs(n, vocab_size)

    def _tiles(self, hidden: torch.Tensor, vocab_size: int):
        """Yield (cols, logits buffer, probs buffer) for vocabulary tiles of all rows."""
        num_rows = hidden.shape[0]
        tile = self.vocab_tile(num_rows, vocab_size)
        workspace = _Workspace(num_rows * tile, hidden.device, _stats_dtype(hidden))
        for start in range(0, vocab_size, tile):
            cols = slice(start, min(start + tile, vocab_size))
            width = cols.stop - cols.start
            yield cols, workspace.logits(num_rows, width), workspace.probs(num_rows, width)

    def sweep(self, hidden, weight, bias, targets, transform, request, accumulate):
        """One online-softmax pass over vocabulary tiles (see the module docstring)."""
        (num_rows, dim), vocab_size = hidden.shape, weight.shape[0]
        dtype = _stats_dtype(hidden)
        row_max = hidden.new_full((num_rows,), float("-inf"), dtype=dtype)
        partition = hidden.new_zeros(num_rows, dtype=dtype)  # l = sum_v exp(z_v - m)
        stats = _empty_stats(num_rows, hidden.device, dtype)
        weighted_sum = hidden.new_zeros(num_rows, dtype=dtype)  # sum_v exp(z_v - m) z_v (mean_logit numerator)
        acc = hidden.new_zeros(num_rows, dim, dtype=dtype) if accumulate else None
        if num_rows == 0:
            return stats, acc
        for cols, logits_buffer, exp_buffer in self._tiles(hidden, vocab_size):
            tile_bias = None if bias is None else bias[cols]
            logits = _logits(hidden, weight[cols], tile_bias, transform, logits_buffer)
            _pick_targets_(stats.target_logit, logits, targets, cols)
            if request.logit_sum:
                stats.logit_sum.add_(logits.sum(1))
            # Lazy rescaling: the reference max moves only when a tile's max exceeds it by LAZY_RESCALE, so after
            # the first tile the [M, D] accumulator is almost never rescaled (exp(z - m) <= e^8 stays safe).
            tile_max = logits.amax(1)
            new_max = torch.where(tile_max > row_max + LAZY_RESCALE, tile_max, row_max)
            rescale = torch.exp(row_max - new_max)  # 0 on the first tile, where row_max = -inf
            exps = torch.sub(logits, new_max.unsqueeze(1), out=exp_buffer).exp_()
            partition.mul_(rescale).add_(exps.sum(1))
            if request.mean_logit:
                weighted_sum.mul_(rescale).add_(torch.linalg.vecdot(exps, logits))
            if accumulate:
                _apply_derivative_(exps, logits, transform)
                if cols.start > 0 and bool((rescale != 1.0).any()):
                    acc.mul_(rescale.unsqueeze(1))
                _add_matmul_(acc, exps, weight[cols])
            row_max = new_max
        stats.lse.copy_(row_max + partition.log())
        if request.mean_logit:
            stats.mean_logit.copy_(weighted_sum / partition)
        if accumulate:
            acc.div_(partition.unsqueeze(1))
        return stats, acc

    def gradients(self, hidden, weight, bias, targets, transform, stats, grad, needs):
        """Recompute the logits tile by tile over the vocabulary: each W tile is read once, ``dW`` and ``db`` of a
        tile are complete after it, and ``dh`` accumulates in float32."""
        grads = _zero_gradients(hidden, weight, bias, needs)
        if hidden.shape[0] == 0:
            return grads
        hidden_for_dw = hidden.to(grads.weight.dtype) if grads.weight is not None else None
        for cols, logits_buffer, probs_buffer in self._tiles(hidden, weight.shape[0]):
            tile_bias = None if bias is None else bias[cols]
            logits = _logits(hidden, weight[cols], tile_bias, transform, logits_buffer)
            # p = exp(z - lse): the saved log-partition normalizes each tile on its own.
            probs = torch.sub(logits, stats.lse.unsqueeze(1), out=probs_buffer).exp_()
            logit_grad = _logit_grad_(probs, logits, targets, transform, stats, grad, cols)
            if grads.hidden is not None:
                _add_matmul_(grads.hidden, logit_grad, weight[cols])
            if grads.weight is not None:
                torch.mm(logit_grad.t(), hidden_for_dw, out=grads.weight[cols])
            if grads.bias is not None:
                grads.bias[cols] = logit_grad.sum(0)
        return grads

    def row_loss_sum(self, hidden, weight, bias, targets, transform, request, row_loss: RowLoss, needs: GradNeeds):
        if not needs.any or accumulator_pays_off(needs, request, transform):
            # Frozen head: the vocabulary sweep with its accumulator is 2 matmuls and needs no [chunk, V] buffers.
            return gradients_via_recompute(self, hidden, weight, bias, targets, transform, request, row_loss, needs)
        grads = _zero_gradients(hidden, weight, bias, needs)
        total = hidden.new_zeros((), dtype=_stats_dtype(hidden))
        vocab = slice(0, weight.shape[0])
        for rows, logits_buffer, probs_buffer in self._chunks(hidden, weight.shape[0]):
            logits = _logits(hidden[rows], weight, bias, transform, logits_buffer)
            chunk_stats, probs = _softmax_stats(logits, targets[rows], request, probs_buffer)
            chunk_total, chunk_grad = row_loss_and_grad(row_loss, chunk_stats)
            total += chunk_total
            logit_grad = _logit_grad_(probs, logits, targets[rows], transform, chunk_stats, chunk_grad, vocab)
            _accumulate(grads, rows, logit_grad, hidden[rows], weight)
        return total, grads


class _Workspace:
    """Two flat float buffers (logits; probabilities, then dL/da) viewed as contiguous [rows, width] blocks:
    allocated once per call, since a fresh 16-64 MiB buffer per block costs a page fault per 4 KiB on CPU."""

    def __init__(self, numel: int, device, dtype):
        self._logits = torch.empty(numel, device=device, dtype=dtype)
        self._probs = torch.empty(numel, device=device, dtype=dtype)

    def logits(self, rows: int, width: int) -> torch.Tensor:
        return self._logits[: rows * width].view(rows, width)

    def probs(self, rows: int, width: int) -> torch.Tensor:
        return self._probs[: rows * width].view(rows, width)


def _stats_dtype(hidden: torch.Tensor) -> torch.dtype:
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def _empty_stats(num_rows: int, device, dtype) -> SoftmaxStats:
    return SoftmaxStats(*(torch.zeros(num_rows, device=device, dtype=dtype) for _ in SoftmaxStats._fields))


def _logits(hidden, weight, bias, transform: LogitTransform, out: torch.Tensor) -> torch.Tensor:
    """z [n, V] float32 (float64 for float64 inputs) of a chunk of rows, written into ``out``."""
    if hidden.dtype == out.dtype:
        if bias is None:
            torch.mm(hidden, weight.t(), out=out)
        else:
            torch.addmm(bias, hidden, weight.t(), out=out)
    else:  # half-precision matmul (tensor cores on GPU), upcast after
        out.copy_(hidden @ weight.t() if bias is None else torch.addmm(bias, hidden, weight.t()))
    return transform.apply_(out)


def _softmax_stats(logits: torch.Tensor, targets, request: StatsRequest, out: torch.Tensor):
    """Statistics of one chunk, and its probabilities ``p`` [n, V] written into ``out`` (``logits`` is kept).

    log_softmax is one fused row-wise kernel (a 32k-vocabulary row stays in cache through max, sum and subtract).
    ``lse = max_v z_v - max_v log p_v`` follows from it exactly: max_v log p_v = -log sum_v exp(z_v - max) is
    small, so it carries no rounding error of the logits' magnitude (``z_y - log p_y`` would, for large logits).
    """
    row_max = logits.amax(dim=1)
    log_probs = torch.log_softmax(logits, dim=1, out=out)
    lse = row_max - log_probs.amax(dim=1)
    target_logit = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    logit_sum = logits.sum(1) if request.logit_sum else None
    probs = log_probs.exp_()
    mean_logit = torch.linalg.vecdot(probs, logits) if request.mean_logit else None
    return SoftmaxStats(lse, target_logit, logit_sum, mean_logit), probs


def _rows_with_target_in(targets: torch.Tensor, cols: slice) -> torch.Tensor:
    return ((targets >= cols.start) & (targets < cols.stop)).nonzero().squeeze(1)


def _pick_targets_(target_logit: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, cols: slice) -> None:
    """target_logit[i] = z[i, y_i] for the rows whose target falls in the vocabulary columns ``cols``."""
    rows = _rows_with_target_in(targets, cols)
    target_logit[rows] = logits[rows, targets[rows] - cols.start]


def _logit_grad_(probs, logits, targets, transform: LogitTransform, stats: SoftmaxStats, grad: StatsGrad, cols: slice):
    """dL/da [n, width] of the vocabulary columns ``cols``, written over ``probs`` (``logits`` is destroyed under a
    softcap).

    dL/dz_v = p_v * (c_lse + c_mean * (1 + z_v - mean_logit)) + c_sum + c_target * [v == y];  dL/da = dL/dz * z'.
    """
    if grad.mean_logit is not None:
        c_mean = grad.mean_logit.unsqueeze(1)
        per_row = c_mean * (1.0 - stats.mean_logit.unsqueeze(1))
        if grad.lse is not None:
            per_row = per_row + grad.lse.unsqueeze(1)
        probs.mul_(torch.addcmul(per_row, logits, c_mean))
    elif grad.lse is not None:
        probs.mul_(grad.lse.unsqueeze(1))
    else:
        probs.zero_()
    if grad.logit_sum is not None:
        probs.add_(grad.logit_sum.unsqueeze(1))
    if grad.target_logit is not None:
        # probs[i, y_i] += c_target[i], through the flat view (much faster on CPU than a dim-1 scatter_add_)
        rows = _rows_with_target_in(targets, cols)
        flat_target = rows * probs.shape[1] + (targets[rows] - cols.start)
        probs.view(-1).index_add_(0, flat_target, grad.target_logit[rows].to(probs.dtype))
    _apply_derivative_(probs, logits, transform)
    return probs


def _apply_derivative_(values: torch.Tensor, logits: torch.Tensor, transform: LogitTransform) -> None:
    """values *= dz/da, in place (``logits`` is consumed under a softcap)."""
    if transform.softcap is not None:
        values.mul_(transform.derivative_(logits))
    elif transform.slope != 1.0:
        values.mul_(transform.slope)


def _matmul(logit_grad: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """logit_grad [n, V] (float32) @ matrix [V, D] in the matrix dtype, returned in float32."""
    return (logit_grad.to(matrix.dtype) @ matrix).to(logit_grad.dtype)


def _add_matmul_(out: torch.Tensor, logit_grad: torch.Tensor, matrix: torch.Tensor) -> None:
    """out += logit_grad @ matrix, in place (no temporary when the dtypes agree)."""
    if logit_grad.dtype == matrix.dtype:
        out.addmm_(logit_grad, matrix)
    else:
        out.add_(_matmul(logit_grad, matrix))


def _zero_gradients(hidden, weight, bias, needs: GradNeeds) -> Gradients:
    dtype = _stats_dtype(hidden)
    return Gradients(
        hidden.new_zeros(hidden.shape, dtype=dtype) if needs.hidden else None,
        weight.new_zeros(weight.shape, dtype=dtype) if needs.weight else None,
        bias.new_zeros(bias.shape, dtype=dtype) if needs.bias else None,
    )


def _accumulate(grads: Gradients, rows: slice, logit_grad, hidden, weight) -> None:
    """dh[rows] = G @ W;  dW += G.T @ h;  db += sum_rows G   (G = dL/da of this chunk, float32)."""
    if grads.hidden is not None:
        grads.hidden[rows] = _matmul(logit_grad, weight)
    if grads.weight is not None:
        grads.weight.addmm_(logit_grad.t(), hidden.to(logit_grad.dtype))
    if grads.bias is not None:
        grads.bias.add_(logit_grad.sum(0))
