"""Chunked PyTorch implementation of the softmax statistics: runs on any device.

Rows are processed in chunks of ``rows_per_chunk(V)`` so that at most two ``[chunk, V]`` float32 buffers exist at
a time (the logits and the probabilities/gradient), whatever the number of rows: extra memory is O(M * D) plus a
bounded chunk. Matmuls run in the input dtype (tensor cores for bf16/fp16 on GPU); everything after them is float32.

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
    row_loss_and_grad,
)

DEFAULT_CHUNK_BYTES = 64 << 20
"""One ``[chunk, V]`` float32 buffer: 64 MiB measured fastest on a 2-core x86 CPU at V=32000, D=1024 (chunks of
512 rows keep the matmul efficient while the softmax passes stay cache-friendly); see benchmarks/."""


class ChunkedTorchBackend:
    def __init__(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        self.chunk_bytes = chunk_bytes

    def rows_per_chunk(self, vocab_size: int) -> int:
        return max(1, self.chunk_bytes // (4 * vocab_size))

    def _chunks(self, num_rows: int, vocab_size: int):
        step = self.rows_per_chunk(vocab_size)
        for start in range(0, num_rows, step):
            yield slice(start, min(start + step, num_rows))

    def sweep(self, hidden, weight, bias, targets, transform, request, accumulate):
        num_rows, dim = hidden.shape
        stats = _empty_stats(num_rows, hidden.device, _stats_dtype(hidden))
        acc = hidden.new_empty(num_rows, dim, dtype=stats.lse.dtype) if accumulate else None
        for rows in self._chunks(num_rows, weight.shape[0]):
            logits = _logits(hidden[rows], weight, bias, transform)
            chunk_stats, probs = _softmax_stats(logits, targets[rows], request)
            _store(stats, rows, chunk_stats)
            if accumulate:
                # acc = sum_v p_v z'_v W_v: the frozen-head gradient of every statistic but mean_logit.
                _apply_derivative_(probs, logits, transform)
                acc[rows] = _matmul(probs, weight)
        return stats, acc

    def gradients(self, hidden, weight, bias, targets, transform, stats, grad, needs):
        grads = _zero_gradients(hidden, weight, bias, needs)
        for rows in self._chunks(hidden.shape[0], weight.shape[0]):
            logits = _logits(hidden[rows], weight, bias, transform)
            # p = exp(z - lse): the saved log-partition replaces a second reduction.
            probs = torch.sub(logits, stats.lse[rows].unsqueeze(1)).exp_()
            chunk_stats = SoftmaxStats(*(s[rows] for s in stats))
            chunk_grad = StatsGrad(*(None if g is None else g[rows] for g in grad))
            logit_grad = _logit_grad_(probs, logits, targets[rows], transform, chunk_stats, chunk_grad)
            _accumulate(grads, rows, logit_grad, hidden[rows], weight)
        return grads

    def row_loss_sum(self, hidden, weight, bias, targets, transform, request, row_loss: RowLoss, needs: GradNeeds):
        grads = _zero_gradients(hidden, weight, bias, needs)
        total = hidden.new_zeros((), dtype=_stats_dtype(hidden))
        for rows in self._chunks(hidden.shape[0], weight.shape[0]):
            logits = _logits(hidden[rows], weight, bias, transform)
            chunk_stats, probs = _softmax_stats(logits, targets[rows], request)
            chunk_total, chunk_grad = row_loss_and_grad(row_loss, chunk_stats)
            total += chunk_total
            if needs.any:
                logit_grad = _logit_grad_(probs, logits, targets[rows], transform, chunk_stats, chunk_grad)
                _accumulate(grads, rows, logit_grad, hidden[rows], weight)
        return total, grads


def _stats_dtype(hidden: torch.Tensor) -> torch.dtype:
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def _empty_stats(num_rows: int, device, dtype) -> SoftmaxStats:
    return SoftmaxStats(*(torch.zeros(num_rows, device=device, dtype=dtype) for _ in SoftmaxStats._fields))


def _store(stats: SoftmaxStats, rows: slice, chunk: SoftmaxStats) -> None:
    for full, part in zip(stats, chunk):
        if part is not None:
            full[rows] = part


def _logits(hidden, weight, bias, transform: LogitTransform) -> torch.Tensor:
    """z [n, V] float32 (float64 for float64 inputs) for a chunk of rows."""
    raw = hidden @ weight.t() if bias is None else torch.addmm(bias, hidden, weight.t())
    return transform.apply_(raw.to(_stats_dtype(hidden)))


def _softmax_stats(logits: torch.Tensor, targets, request: StatsRequest) -> tuple[SoftmaxStats, torch.Tensor]:
    """Statistics of one chunk and its probabilities ``p`` [n, V] (a new buffer; ``logits`` is kept)."""
    row_max = logits.amax(1, keepdim=True)
    probs = torch.sub(logits, row_max).exp_()
    partition = probs.sum(1, keepdim=True)
    probs.div_(partition)
    lse = (row_max + partition.log()).squeeze(1)
    target_logit = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    logit_sum = logits.sum(1) if request.logit_sum else None
    mean_logit = torch.linalg.vecdot(probs, logits) if request.mean_logit else None
    return SoftmaxStats(lse, target_logit, logit_sum, mean_logit), probs


def _logit_grad_(probs, logits, targets, transform: LogitTransform, stats: SoftmaxStats, grad: StatsGrad):
    """dL/da [n, V], written over ``probs`` (``logits`` is destroyed under a softcap).

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
        probs.scatter_add_(1, targets.unsqueeze(1), grad.target_logit.unsqueeze(1).to(probs.dtype))
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
