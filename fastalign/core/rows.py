"""Input validation, and the rows that have a target.

Ignored positions (prompt, padding: ``targets == ignore_index``) are dropped before any vocabulary work, so they
cost nothing: backends gather the scored rows a bounded block at a time (no compacted copy of the hidden states),
and results are scattered back with exact zeros in their place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@dataclass
class ScoredRows:
    """The rows of a batch that have a target, addressed without copying them.

    ``hidden`` [N, D] holds every row of the flattened batch; ``targets`` [M] (in ``[0, V)``) and ``index`` [M]
    (int64 positions in ``hidden``; None when all N rows are scored) describe the M scored ones. Backends read
    bounded blocks of them through :meth:`hidden_block`, so ignored rows are never copied, and return gradients for
    the M scored rows, which :meth:`expand` puts back in place.
    """

    hidden: torch.Tensor
    targets: torch.Tensor
    index: torch.Tensor | None = None
    shape: torch.Size | None = None  # the batch shape (targets' shape before flattening); None: the flat [N]

    @property
    def num_rows(self) -> int:
        return self.targets.shape[0]

    def hidden_block(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """hidden [stop - start, D] of scored rows start..stop: a view when every row is scored, else a gather."""
        stop = self.num_rows if stop is None else stop
        if self.index is None:
            return self.hidden[start:stop]
        return self.hidden.index_select(0, self.index[start:stop])

    def expand(self, values: torch.Tensor) -> torch.Tensor:
        """[M, ...] per-row values -> [N, ...] with zeros at the ignored rows (differentiable)."""
        return expand_rows(values, self.index, self.hidden.shape[0])

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """[M] per-row values -> the batch shape, 0.0 at ignored positions (differentiable)."""
        expanded = self.expand(values)
        return expanded if self.shape is None else expanded.reshape(self.shape)


def expand_rows(values: torch.Tensor, index: torch.Tensor | None, num_rows: int) -> torch.Tensor:
    """values [M, ...] of the rows at ``index`` [M] -> [num_rows, ...], zeros elsewhere (index None: as is)."""
    if index is None:
        return values
    # In place into fresh zeros (autograd records it all the same): out-of-place index_copy would copy the zeros.
    return values.new_zeros(num_rows, *values.shape[1:]).index_copy_(0, index, values)


def check_head(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if not isinstance(hidden, torch.Tensor) or hidden.dtype not in FLOAT_DTYPES:
        raise TypeError(f"hidden must be a float32/bfloat16/float16/float64 tensor, got {_describe(hidden)}")
    if hidden.dim() < 1:
        raise ValueError("hidden must have shape [..., D], got a scalar")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must have shape [V, D], got {_describe(weight)}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"hidden size mismatch: hidden has D={hidden.shape[-1]} (shape {tuple(hidden.shape)}) but weight has "
            f"D={weight.shape[1]} (shape {tuple(weight.shape)})"
        )
    if weight.dtype != hidden.dtype:
        raise TypeError(f"hidden and weight dtypes differ: {hidden.dtype} vs {weight.dtype}; cast one of them")
    if weight.device != hidden.device:
        raise ValueError(f"hidden is on {hidden.device} but weight is on {weight.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape [V]=[{weight.shape[0]}], got {_describe(bias)}")
        if bias.device != weight.device or bias.dtype != weight.dtype:
            raise TypeError(
                f"bias must match weight's dtype and device ({weight.dtype}, {weight.device}), "
                f"got ({bias.dtype}, {bias.device})"
            )


def prepare_rows(hidden, weight, targets, bias, ignore_index: int) -> ScoredRows:
    """Validate the inputs and keep the rows whose target is not ``ignore_index``.

    hidden [..., D], weight [V, D], targets [...] integer, bias [V] or None.
    """
    check_head(hidden, weight, bias)
    if not isinstance(targets, torch.Tensor) or targets.dtype.is_floating_point or targets.is_complex():
        raise TypeError(f"targets must be an integer tensor of token ids, got {_describe(targets)}")
    if targets.dtype == torch.bool:
        raise TypeError("targets must be an integer tensor of token ids, got a bool tensor")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(
            f"shape mismatch: targets has shape {tuple(targets.shape)} but hidden [..., D] has leading shape "
            f"{tuple(hidden.shape[:-1])}"
        )
    if targets.device != hidden.device:
        raise ValueError(f"hidden is on {hidden.device} but targets is on {targets.device}")

    vocab_size = weight.shape[0]
    flat_targets = targets.reshape(-1).long()
    scored = flat_targets != ignore_index
    out_of_range = scored & ((flat_targets < 0) | (flat_targets >= vocab_size))
    if out_of_range.any():
        position = int(out_of_range.nonzero()[0, 0])
        raise ValueError(
            f"target {int(flat_targets[position])} at flattened position {position} is outside the vocabulary "
            f"[0, {vocab_size}) and is not ignore_index={ignore_index}"
        )

    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    if bool(scored.all()):
        return ScoredRows(flat_hidden, flat_targets, None, targets.shape)
    index = scored.nonzero().squeeze(1)
    return ScoredRows(flat_hidden, flat_targets.index_select(0, index), index, targets.shape)


def group_rows(rows: ScoredRows, groups: torch.Tensor) -> tuple[ScoredRows, list[int]]:
    """The same scored rows reordered so that each group's rows are consecutive (groups in increasing id, rows in
    their order within a group), and the number of rows of each group that has any.

    groups: integer group ids >= 0 of the batch shape (one per position, ignored positions included).
    """
    if not isinstance(groups, torch.Tensor) or groups.is_floating_point() or groups.dtype == torch.bool:
        raise TypeError(f"groups must be an integer tensor of group ids, got {_describe(groups)}")
    batch_shape = rows.shape if rows.shape is not None else torch.Size([rows.hidden.shape[0]])
    if groups.shape != batch_shape:
        raise ValueError(f"groups must have the targets' shape {tuple(batch_shape)}, got {tuple(groups.shape)}")
    flat = groups.reshape(-1).to(device=rows.targets.device, dtype=torch.long)
    ids = flat if rows.index is None else flat.index_select(0, rows.index)
    if ids.numel() and int(ids.min()) < 0:
        raise ValueError("group ids must be >= 0")
    if bool((ids[1:] >= ids[:-1]).all()):  # already grouped: keep the rows (and a missing index) as they are
        return rows, torch.unique_consecutive(ids, return_counts=True)[1].tolist()
    sorted_ids, order = torch.sort(ids, stable=True)
    index = order if rows.index is None else rows.index.index_select(0, order)
    grouped = ScoredRows(rows.hidden, rows.targets.index_select(0, order), index, rows.shape)
    return grouped, torch.unique_consecutive(sorted_ids, return_counts=True)[1].tolist()


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
