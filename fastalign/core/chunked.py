"""Chunked PyTorch implementation of the softmax statistics: runs on any device.

Two tilings, both with O(M * D) extra memory plus bounded buffers, whatever M and V. The scored rows are read a
block or chunk at a time (gathered past the ignored ones, see ScoredRows), never copied whole.

- Blocks of rows x vocabulary tiles ``[block, tile]`` for the statistics sweep, with an online softmax: running max
  ``m``, running sum ``l``, and the frozen-head accumulator ``acc = sum_v exp(z_v - m) z'_v W_v`` rescaled by
  ``exp(m_old - m_new)`` when the max moves (flash attention's trick). The recomputing gradient pass uses the same
  tiles: with the saved ``lse`` each tile's ``p`` is exact, so a block's ``dh`` is complete after its sweep and
  ``dW``, ``db`` of a tile accumulate over the blocks. A block's hidden states and accumulator stay in cache while
  the vocabulary streams past.
- Row chunks ``[chunk, V]`` for a loss with a known upstream gradient on a trainable head: a chunk's full softmax
  is known, so its ``dL/da`` is formed in the forward sweep and feeds ``dh = G @ W`` and ``dW += G.T @ h``. A
  separable loss of the log-probs keeps such a chunk (the store) until its group's gradient is known.

Matmuls run in the input dtype (tensor cores for bf16/fp16 on GPU); everything after them is float32.
Matmul count per call, V-sized (the cost that matters):
    frozen head, any loss      forward: logits + accumulator          backward: none (elementwise)   = 2
    trainable head, row loss   forward: logits + dh + dW               backward: none (scaling)       = 3
    trainable head, log-probs  forward: logits                         backward: logits + dh + dW     = 4
                               (3 for the first D rows: their logits are kept in the memory that becomes dW)
    trainable head, separable  forward, phase by phase: logits, then dh + dW (+ logits if not kept)  = 3 or 4
      loss of the log-probs    (3 for the rows a phase keeps: D in the dW buffer in the first phase, and
                               DEFAULT_STORE_BYTES worth in every phase; see separable_loss)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fastalign.core.head import LogitTransform
from fastalign.core.rows import ScoredRows
from fastalign.core.stats import (
    Gradients,
    GradNeeds,
    RowLoss,
    SoftmaxStats,
    StatsGrad,
    StatsRequest,
    accumulator_pays_off,
    gradients_via_recompute,
    logprob_grad,
    row_loss_and_grad,
    separable_loss_via_stats,
)

DEFAULT_CHUNK_BYTES = 128 << 20
"""The ``[chunk, V]`` float32 buffers of the row-chunked forward-gradient pass, together: one buffer when the
probabilities may overwrite the logits in place (no softcap, no mean_logit), else two. At V=32000 that is 1024 rows
per chunk: each chunk reads and writes dW [V, D] once (dW += G.T @ h), so the chunk must be tall enough for that
traffic to be small beside its three matmuls. Measured on a 2-core x86 CPU (N=4096, D=1024, V=32000, fp32, in one
process, interleaved): 32/64/128 MiB took 0.92/0.87/0.83x naive's time, with a peak still below torch's chunked
linear_cross_entropy (benchmarks/bench_linear_ce.py)."""

DEFAULT_STORE_BYTES = 48 << 20
"""The ``[rows, V]`` float32 logits a separable loss keeps per phase beside the dW buffer (separable_loss): 393
rows at V=32000. Each kept row saves a recomputation of its logits. The store is also the vocabulary sweeps' tile
workspace while it holds no logits, so the peak is dW + this + dh + the D kept rows' hidden states and their
gradient tile: 194.7 MiB for the trainable DPO/ORPO head of benchmarks/bench_preference.py (B=4 pairs, T=512,
D=1024), 0.49x Liger-Kernel's 395 MiB."""

DEFAULT_BLOCK_BYTES = 4 << 20
"""The float32 hidden-state block ``[rows, D]`` the vocabulary sweeps stream their tiles past: 1024 rows at D=1024.
It bounds the gathered copy of the scored rows and the accumulator slice that stay in cache through the sweep."""

DEFAULT_TILE_BYTES = 4 << 20
"""One ``[block rows, tile]`` float32 buffer of a vocabulary sweep (two exist at a time)."""

LAZY_RESCALE = 8.0
"""How far (in nats) a tile's max may exceed the running reference max before the sweep rescales to it."""

MIN_TILE = 256
"""Narrowest vocabulary tile: below it the per-tile rescaling of the accumulator outweighs the matmul."""

CHUNK_COLUMNS = 4096
"""A [chunk, V] block of logits is written by one matmul per this many vocabulary columns: measured on a 2-core x86
CPU (V=32000, D=1024, steps alternating), 393 and 1024 rows took 0.96x the time of one [rows, V] matmul."""


class ChunkedTorchBackend:
    def __init__(
        self,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        tile_bytes: int = DEFAULT_TILE_BYTES,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        store_bytes: int = DEFAULT_STORE_BYTES,
    ):
        self.chunk_bytes = chunk_bytes
        self.tile_bytes = tile_bytes
        self.block_bytes = block_bytes
        self.store_bytes = store_bytes

    def rows_per_block(self, dim: int) -> int:
        return max(1, self.block_bytes // (4 * dim))

    def vocab_tile(self, num_rows: int, vocab_size: int) -> int:
        return min(vocab_size, max(MIN_TILE, self.tile_bytes // (4 * max(num_rows, 1))))

    def _blocks(self, rows: ScoredRows, dim: int, span: slice):
        """Yield (slice of the scored rows, their hidden states [n, D]) for blocks of at most rows_per_block that
        cover the scored rows ``span``."""
        step = self.rows_per_block(dim)
        for start in range(span.start, span.stop, step):
            block = slice(start, min(start + step, span.stop))
            yield block, rows.hidden_block(block.start, block.stop)

    def _tiles(self, num_rows: int, vocab_size: int, workspace: _Workspace, column_major: bool = False):
        """Yield (cols, logits buffer, probs buffer) for vocabulary tiles of ``num_rows`` rows."""
        tile = self.vocab_tile(num_rows, vocab_size)
        for start in range(0, vocab_size, tile):
            cols = slice(start, min(start + tile, vocab_size))
            width = cols.stop - cols.start
            yield cols, workspace.logits(num_rows, width), workspace.probs(num_rows, width, column_major)

    def _tile_workspace(self, num_rows: int, weight, memory=None) -> _Workspace:
        block = min(self.rows_per_block(weight.shape[1]), num_rows)
        numel = block * self.vocab_tile(block, weight.shape[0])
        return _Workspace(numel, weight.device, _stats_dtype(weight), memory=memory)

    def sweep(self, rows, weight, bias, transform, request, accumulate, keep_logits=False):
        """One online-softmax pass over vocabulary tiles per block of rows (see the module docstring). With
        ``keep_logits`` the logits of the first kept_rows() rows are written, transposed, into the float32 buffer
        that backward turns into dW (see gradients), which is returned."""
        dtype = _stats_dtype(weight)
        stats = _empty_stats(rows.num_rows, weight.device, dtype)
        acc = weight.new_zeros(rows.num_rows, weight.shape[1], dtype=dtype) if accumulate else None
        kept = weight.new_empty(weight.numel(), dtype=dtype) if keep_logits else None
        num_kept = kept_rows(rows.num_rows, weight) if keep_logits else 0
        self._sweep(rows, slice(0, rows.num_rows), weight, bias, transform, request, stats, acc, kept, num_kept)
        return stats, acc if accumulate else kept

    def _sweep(self, rows, span, weight, bias, transform, request, stats, acc=None, kept=None, num_kept=0,
               memory=None):  # fmt: skip
        """Fill ``stats`` (and ``acc``) at the scored rows ``span``; the logits of the scored rows [0, num_kept),
        where the span covers them, go transposed into the flat buffer ``kept`` (see _kept_logits). The tiles are
        views of ``memory`` when given and large enough (see _Workspace)."""
        if span.stop == span.start:
            return
        kept_logits = _kept_logits(kept, weight, num_kept) if num_kept else None
        workspace = self._tile_workspace(span.stop - span.start, weight, memory)
        for block, hidden in self._blocks(rows, weight.shape[1], span):
            block_stats = _rows_of(stats, block)
            block_acc = None if acc is None else acc[block]
            block_kept = None if kept_logits is None else kept_logits[:, block]  # [V, kept rows of the block]
            self._sweep_block(hidden, weight, bias, rows.targets[block], transform, request, block_stats, block_acc,
                              block_kept, workspace)  # fmt: skip

    def _sweep_block(self, hidden, weight, bias, targets, transform, request, stats, acc, kept, workspace):
        """Fill ``stats`` (and ``acc`` [n, D], ``kept`` [V, <= n] when given) of one block of rows, hidden [n, D]."""
        num_rows = hidden.shape[0]
        row_max = stats.lse.new_full((num_rows,), float("-inf"))
        partition = stats.lse.new_zeros(num_rows)  # l = sum_v exp(z_v - m)
        weighted_sum = stats.lse.new_zeros(num_rows)  # sum_v exp(z_v - m) z_v (mean_logit numerator)
        # A block whose rows are all kept writes its logits straight into the kept buffer ([n, tile] views of
        # transposed memory) and its exponentials in the same layout: no transposing copy.
        all_kept = kept is not None and kept.shape[1] == num_rows
        for cols, logits_buffer, exp_buffer in self._tiles(num_rows, weight.shape[0], workspace, all_kept):
            tile_bias = None if bias is None else bias[cols]
            logits = _logits(hidden, weight[cols], tile_bias, transform, kept[cols].t() if all_kept else logits_buffer)
            if kept is not None and 0 < kept.shape[1] < num_rows:
                kept[cols].copy_(logits[: kept.shape[1]].t())
            _pick_targets_(stats.target_logit, logits, targets, cols)
            if request.logit_sum:
                stats.logit_sum.add_(logits.sum(1))
            # Lazy rescaling: the reference max moves only when a tile's max exceeds it by LAZY_RESCALE, so after
            # the first tile the [n, D] accumulator is almost never rescaled (exp(z - m) <= e^8 stays safe).
            tile_max = logits.amax(1)
            new_max = torch.where(tile_max > row_max + LAZY_RESCALE, tile_max, row_max)
            rescale = torch.exp(row_max - new_max)  # 0 on the first tile, where row_max = -inf
            exps = torch.sub(logits, new_max.unsqueeze(1), out=exp_buffer).exp_()
            partition.mul_(rescale).add_(exps.sum(1))
            if request.mean_logit:
                weighted_sum.mul_(rescale).add_(torch.linalg.vecdot(exps, logits))
            if acc is not None:
                _apply_derivative_(exps, logits, transform)
                if cols.start > 0 and bool((rescale != 1.0).any()):
                    acc.mul_(rescale.unsqueeze(1))
                _add_matmul_(acc, exps, weight[cols])
            row_max = new_max
        stats.lse.copy_(row_max + partition.log())
        if request.mean_logit:
            stats.mean_logit.copy_(weighted_sum / partition)
        if acc is not None:
            acc.div_(partition.unsqueeze(1))

    def gradients(self, rows, weight, bias, transform, stats, grad, needs, kept=None):
        """Recompute the logits tile by tile over the vocabulary, block by block of rows: ``dh`` of a block is
        complete after its sweep, ``dW`` and ``db`` of a tile accumulate over the blocks, in float32. The rows whose
        logits the sweep kept (``kept``) are not recomputed: see _gradients_of_kept_rows."""
        grads = _zero_gradients(rows, weight, bias, needs, weight_buffer=kept)
        num_kept = 0 if kept is None else kept_rows(rows.num_rows, weight)
        if kept is not None:
            self._gradients_of_kept_rows(rows, weight, transform, stats, grad, grads, kept, num_kept)
        self._recompute_gradients(rows, slice(num_kept, rows.num_rows), weight, bias, transform, stats, grad, grads)
        return grads

    def _recompute_gradients(self, rows, span, weight, bias, transform, stats, grad, grads, memory=None) -> None:
        """Add the gradients of the scored rows ``span`` to ``grads``, recomputing their logits (tiles in ``memory``
        as for _sweep)."""
        if span.stop == span.start:
            return
        workspace = self._tile_workspace(span.stop - span.start, weight, memory)
        for block, hidden in self._blocks(rows, weight.shape[1], span):
            targets, block_stats, block_grad = rows.targets[block], _rows_of(stats, block), _rows_of(grad, block)
            hidden_for_dw = hidden.to(grads.weight.dtype) if grads.weight is not None else None
            for cols, logits_buffer, probs_buffer in self._tiles(hidden.shape[0], weight.shape[0], workspace):
                tile_bias = None if bias is None else bias[cols]
                logits = _logits(hidden, weight[cols], tile_bias, transform, logits_buffer)
                self._tile_gradients(logits, probs_buffer, hidden_for_dw, weight, targets, transform, block_stats,
                                     block_grad, grads, block, cols)  # fmt: skip

    def _gradients_of_kept_rows(self, rows, weight, transform, stats, grad, grads, kept, num_kept) -> None:
        """Gradients of the scored rows [0, num_kept) from their kept logits, turning ``kept`` into dW on the way
        (dW and db are written, not added to: call this first).

        The kept logits are z.T [V, R] at the start of the buffer, dW [V, D] is the whole buffer, R <= D. Going
        through the vocabulary tiles backwards, a tile's logits are used up (dL/da formed from them) before dW's rows
        of that tile are written: those rows start at flat offset cols.start * D, at or past the end
        (cols.start * R) of the logits of the tiles still to come. So dW of these rows costs one matmul per tile and
        no recomputation.
        """
        if num_kept == 0:
            grads.weight.zero_()
            return
        kept_logits = _kept_logits(kept, weight, num_kept)
        block = slice(0, num_kept)
        hidden = rows.hidden_block(0, num_kept)
        hidden_for_dw = hidden.to(grads.weight.dtype)
        targets, block_stats, block_grad = rows.targets[block], _rows_of(stats, block), _rows_of(grad, block)
        tile = self.vocab_tile(num_kept, weight.shape[0])
        workspace = _Workspace(num_kept * tile, kept.device, kept.dtype, shared=True)
        for start in reversed(range(0, weight.shape[0], tile)):
            cols = slice(start, min(start + tile, weight.shape[0]))
            # [R, tile] laid out like the kept logits (column-major): elementwise work runs on contiguous memory
            probs = workspace.probs(num_kept, cols.stop - cols.start, column_major=True)
            self._tile_gradients(kept_logits[cols].t(), probs, hidden_for_dw, weight, targets, transform, block_stats,
                                 block_grad, grads, block, cols, first=True)  # fmt: skip

    @staticmethod
    def _tile_gradients(logits, probs_buffer, hidden_for_dw, weight, targets, transform, stats, grad, grads, block,
                        cols, first=False):  # fmt: skip
        """Add one [rows, tile] block's share to dh[block], dW[cols] and db[cols] from its logits ``z`` (used up);
        with ``first`` dW[cols] and db[cols] are written rather than added to (they hold no gradient yet)."""
        # p = exp(z - lse): the saved log-partition normalizes each tile on its own.
        probs = torch.sub(logits, stats.lse.unsqueeze(1), out=probs_buffer).exp_()
        logit_grad = _logit_grad_(probs, logits, targets, transform, stats, grad, cols)
        if grads.hidden is not None:
            _add_matmul_(grads.hidden[block], logit_grad, weight[cols])
        if grads.weight is not None:
            if first:
                torch.mm(logit_grad.t(), hidden_for_dw, out=grads.weight[cols])
            else:
                grads.weight[cols].addmm_(logit_grad.t(), hidden_for_dw)
        if grads.bias is not None:
            if first:
                grads.bias[cols] = logit_grad.sum(0)
            else:
                grads.bias[cols] += logit_grad.sum(0)

    def row_loss_sum(self, rows, weight, bias, transform, request, row_loss: RowLoss, needs: GradNeeds):
        if not needs.any or accumulator_pays_off(needs, request, transform):
            # Frozen head: the vocabulary sweep with its accumulator is 2 matmuls and needs no [chunk, V] buffers.
            return gradients_via_recompute(self, rows, weight, bias, transform, request, row_loss, needs)
        grads = _zero_gradients(rows, weight, bias, needs)
        total = weight.new_zeros((), dtype=_stats_dtype(weight))
        workspace, step = self._chunk_workspace(self.chunk_bytes, rows.num_rows, weight, transform, request)
        for start in range(0, rows.num_rows, step):
            chunk = slice(start, min(start + step, rows.num_rows))
            scored = _score_chunk(rows, chunk, weight, bias, transform, request, workspace)
            chunk_total, chunk_grad = row_loss_and_grad(row_loss, scored.stats)
            total += chunk_total
            scored.accumulate_gradients(chunk_grad, transform, weight, grads)
        return total, grads

    @staticmethod
    def _chunk_workspace(budget: int, num_rows: int, weight, transform, request) -> tuple[_Workspace, int]:
        """Buffers for ``[rows, V]`` chunks within ``budget`` bytes, and their rows (at most num_rows, at least 1).
        The probabilities overwrite the logits unless the gradient needs the logits too (see _logit_grad_)."""
        in_place = transform.softcap is None and not request.mean_logit
        vocab_size = weight.shape[0]
        step = min(rows_per_chunk(budget, vocab_size, buffers=1 if in_place else 2), max(num_rows, 1))
        return _Workspace(step * vocab_size, weight.device, _stats_dtype(weight), shared=in_place), step

    def separable_loss(self, rows, weight, bias, transform, group_sizes, row_grad, needs):
        """Log-probs and gradients of a separable loss (see LinearSeparableLoss), one phase of whole groups at a
        time on a trainable head: a phase's rows are scored, its gradient with respect to their log-probs is
        taken, and their gradients are formed, before the next phase is scored.

        Each phase keeps as many of its rows' logits as memory allows, so that those rows cost 3 matmuls and not
        4 (a recomputation): the first phase keeps D rows in the buffer that becomes dW (as ``gradients`` does)
        and every phase keeps ``store_bytes`` worth more in a [rows, V] chunk reused from phase to phase (a
        composed loss could keep only the D: every row is scored before any gradient is known). The other rows
        are swept (online softmax) and recomputed, with their vocabulary tiles in the store while it holds no
        chunk: before the chunk is scored and after its gradients are formed. A frozen head has no recomputation to
        save: every group at once.
        """
        if not needs.weight or rows.num_rows == 0:
            return separable_loss_via_stats(self, rows, weight, bias, transform, group_sizes, row_grad, needs)
        request = StatsRequest()
        stats = _empty_stats(rows.num_rows, weight.device, _stats_dtype(weight))
        grad = logprob_grad(torch.zeros_like(stats.lse))
        dw_buffer = weight.new_empty(weight.numel(), dtype=_stats_dtype(weight))
        grads = _zero_gradients(rows, weight, bias, needs, weight_buffer=dw_buffer)
        store, store_rows = self._chunk_workspace(self.store_bytes, rows.num_rows, weight, transform, request)
        memory = store.memory
        dim = weight.shape[1]
        phases = plan_phases(group_sizes, dim + store_rows, store_rows)
        for number, phase in enumerate(phases):
            num_kept = min(dim, phase.stop) if number == 0 else 0  # the first phase starts at row 0
            stored = slice(phase.start + num_kept, min(phase.start + num_kept + store_rows, phase.stop))
            swept = slice(stored.stop, phase.stop)
            self._sweep(rows, slice(0, num_kept), weight, bias, transform, request, stats, kept=dw_buffer,
                        num_kept=num_kept, memory=memory)  # fmt: skip
            self._sweep(rows, swept, weight, bias, transform, request, stats, memory=memory)
            scored = _score_chunk(rows, stored, weight, bias, transform, request, store)
            if scored is not None:
                stats.lse[stored], stats.target_logit[stored] = scored.stats.lse, scored.stats.target_logit
            logps = stats.target_logit - stats.lse
            grad.target_logit[phase] = row_grad(logps, phase)
            torch.neg(grad.target_logit[phase], out=grad.lse[phase])
            if number == 0:
                self._gradients_of_kept_rows(rows, weight, transform, stats, grad, grads, dw_buffer, num_kept)
            if scored is not None:
                scored.accumulate_gradients(_rows_of(grad, stored), transform, weight, grads)
            self._recompute_gradients(rows, swept, weight, bias, transform, stats, grad, grads, memory=memory)
        if len(phases) > 1:
            _check_separable(row_grad(logps, slice(0, rows.num_rows)), grad.target_logit)
        return logps, grads


class _ScoredChunk(NamedTuple):
    """Scored rows ``rows`` with their whole softmax in memory (see _score_chunk)."""

    rows: slice
    hidden: torch.Tensor  # [n, D]
    targets: torch.Tensor  # [n]
    logits: torch.Tensor  # [n, V] (the same memory as probs when the workspace is shared: then gone)
    probs: torch.Tensor  # [n, V]
    stats: SoftmaxStats  # [n] each

    def accumulate_gradients(self, grad: StatsGrad, transform: LogitTransform, weight, grads: Gradients) -> None:
        """Add the chunk's share of the gradients for its statistic gradients ``grad`` ([n] each); uses up probs."""
        vocab = slice(0, weight.shape[0])
        logit_grad = _logit_grad_(self.probs, self.logits, self.targets, transform, self.stats, grad, vocab)
        _accumulate(grads, self.rows, logit_grad, self.hidden, weight)


def _score_chunk(rows: ScoredRows, chunk: slice, weight, bias, transform, request, workspace) -> _ScoredChunk | None:
    """The logits [n, V] of the scored rows ``chunk`` (CHUNK_COLUMNS at a time), and their softmax statistics (None
    if empty)."""
    n = chunk.stop - chunk.start
    if n == 0:
        return None
    vocab_size, targets = weight.shape[0], rows.targets[chunk]
    hidden = rows.hidden_block(chunk.start, chunk.stop)
    logits = workspace.logits(n, vocab_size)
    for start in range(0, vocab_size, CHUNK_COLUMNS):
        cols = slice(start, min(start + CHUNK_COLUMNS, vocab_size))
        _logits(hidden, weight[cols], None if bias is None else bias[cols], transform, logits[:, cols])
    stats, probs = _softmax_stats(logits, targets, request, workspace.probs(n, vocab_size))
    return _ScoredChunk(chunk, hidden, targets, logits, probs, stats)


class _Workspace:
    """Two flat float buffers (logits; probabilities, then dL/da) viewed as contiguous [rows, width] blocks:
    allocated once per call, since a fresh 16-64 MiB buffer per block costs a page fault per 4 KiB on CPU. With
    ``shared`` both are one buffer (for a caller that overwrites the logits with the probabilities). With ``memory``
    (a flat buffer of the same dtype, idle while the workspace is in use) they are the start of it when it is large
    enough: separable_loss runs its sweeps in its store."""

    def __init__(self, numel: int, device, dtype, shared: bool = False, memory: torch.Tensor | None = None):
        needed = numel if shared else 2 * numel
        if memory is None or memory.numel() < needed:
            memory = torch.empty(needed, device=device, dtype=dtype)
        self.memory = memory  # flat
        self._logits = memory[:numel]
        self._probs = self._logits if shared else memory[numel:needed]

    def logits(self, rows: int, width: int) -> torch.Tensor:
        return self._logits[: rows * width].view(rows, width)

    def probs(self, rows: int, width: int, column_major: bool = False) -> torch.Tensor:
        flat = self._probs[: rows * width]
        return flat.view(width, rows).t() if column_major else flat.view(rows, width)


def _check_separable(final: torch.Tensor, by_phase: torch.Tensor) -> None:
    """A separable objective's gradient with respect to the log-probs [M] is the same at the final log-probs as taken
    phase by phase (with the later groups' log-probs 0); an objective that mixes groups is caught here."""
    scale = max(1.0, float(final.abs().max()))
    if not torch.allclose(by_phase, final, rtol=1e-4, atol=1e-6 * scale, equal_nan=True):
        raise ValueError(
            "the objective is not a sum of independent terms over the given groups: its gradient with respect to one "
            "group's log-probs changed with other groups' log-probs (see fastalign.linear_logprobs_loss)"
        )


def rows_per_chunk(budget: int, vocab_size: int, buffers: int) -> int:
    """Rows of ``buffers`` float32 [rows, V] buffers that fit in ``budget`` bytes (at least 1)."""
    return max(1, budget // (4 * vocab_size * buffers))


def plan_phases(group_sizes: list[int], first_capacity: int, capacity: int) -> list[slice]:
    """Split consecutive groups of rows into phases of whole groups (slices of the rows) for separable_loss: the
    first phase can keep ``first_capacity`` rows' logits, each later one ``capacity``; rows beyond are recomputed.

    Greedy: a group joins the current phase when it fits in the room left, or when its overflow there is smaller
    than it would be at the start of a fresh phase (only possible in the larger first phase); otherwise it starts
    a new phase. Each phase is at least one group.
    """
    phases, start, end, room = [], 0, 0, first_capacity
    for size in group_sizes:
        if end > start and size > room and size - room >= max(0, size - capacity):
            phases.append(slice(start, end))
            start, room = end, capacity
        end += size
        room = max(0, room - size)
    if end > start:
        phases.append(slice(start, end))
    return phases


def _stats_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def _rows_of(per_row: tuple, block: slice) -> tuple:
    """The block's slice of each [M] vector of a SoftmaxStats / StatsGrad (None stays None)."""
    return type(per_row)(*(None if v is None else v[block] for v in per_row))


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
    """Statistics of one chunk, and its probabilities ``p`` [n, V] written into ``out``, which may be ``logits``
    itself (then the logits are gone; only possible when mean_logit is not requested).

    log_softmax is one fused row-wise kernel (a 32k-vocabulary row stays in cache through max, sum and subtract).
    ``lse = max_v z_v - max_v log p_v`` follows from it exactly: max_v log p_v = -log sum_v exp(z_v - max) is
    small, so it carries no rounding error of the logits' magnitude (``z_y - log p_y`` would, for large logits).
    """
    row_max = logits.amax(dim=1)
    target_logit = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    logit_sum = logits.sum(1) if request.logit_sum else None
    log_probs = torch.log_softmax(logits, dim=1, out=out)
    lse = row_max - log_probs.amax(dim=1)
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
        # probs[i, y_i] += c_target[i], through the flat memory (much faster on CPU than a dim-1 scatter_add_);
        # probs is dense, row-major or (kept rows, see _gradients_of_kept_rows) column-major.
        rows = _rows_with_target_in(targets, cols)
        flat_target = rows * probs.stride(0) + (targets[rows] - cols.start) * probs.stride(1)
        flat = probs.as_strided((probs.numel(),), (1,))
        flat.index_add_(0, flat_target, grad.target_logit[rows].to(probs.dtype))
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


def _zero_gradients(rows: ScoredRows, weight, bias, needs: GradNeeds, weight_buffer=None) -> Gradients:
    """Zero float32 gradients; dW is ``weight_buffer`` [V * D] as it is (not zeroed) when given."""
    dtype = _stats_dtype(weight)
    if needs.weight:
        grad_weight = weight.new_zeros(weight.shape, dtype=dtype) if weight_buffer is None else weight_buffer
    return Gradients(
        weight.new_zeros(rows.num_rows, weight.shape[1], dtype=dtype) if needs.hidden else None,
        grad_weight.view(weight.shape) if needs.weight else None,
        bias.new_zeros(bias.shape, dtype=dtype) if needs.bias else None,
    )


def kept_rows(num_rows: int, weight: torch.Tensor) -> int:
    """How many rows' logits sweep(keep_logits=True) keeps: as many as fit in a [V, D] buffer, R = min(M, D)."""
    return min(num_rows, weight.shape[1])


def _kept_logits(kept: torch.Tensor, weight: torch.Tensor, num_kept: int) -> torch.Tensor:
    """The kept logits z.T [V, R] of R = num_kept <= D rows, at the start of the flat dW buffer ``kept``."""
    return kept[: weight.shape[0] * num_kept].view(weight.shape[0], num_kept)


def _accumulate(grads: Gradients, rows: slice, logit_grad, hidden, weight) -> None:
    """dh[rows] = G @ W;  dW += G.T @ h;  db += sum_rows G   (G = dL/da of this chunk, float32)."""
    if grads.hidden is not None:
        grads.hidden[rows] = _matmul(logit_grad, weight)
    if grads.weight is not None:
        grads.weight.addmm_(logit_grad.t(), hidden.to(logit_grad.dtype))
    if grads.bias is not None:
        grads.bias.add_(logit_grad.sum(0))
