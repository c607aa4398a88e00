"""Per-sequence log-probs: reduce per-token log-probs over each sequence, for padded or packed batches.

    sum:   L_s = sum_{t in s, mask_t} logp_t
    mean:  L_s = L_s(sum) / n_s,   n_s = #{t in s : mask_t},  and L_s = 0.0 when n_s = 0
A sequence with no scored token (an empty completion, or a row that is all padding) has sum 0.0 and, by
definition, mean 0.0: never NaN. ``count_empty`` reports how many such sequences a batch holds, and
``sequence_token_counts`` gives every n_s.

Both layouts become one flat form, ``values [total]``, ``mask [total]``, ``cu_seqlens [S+1]``, reduced by
``segment_sum`` (the ``segment_sum`` op of ``fastalign.losses._dispatch``).
"""

import torch

from fastalign.losses import _dispatch
from fastalign.losses._validation import check_choice, check_float_tensor


def segment_sum(values: torch.Tensor, mask: torch.Tensor, cu_seqlens: torch.Tensor, mean: bool) -> torch.Tensor:
    """Masked sum (or mean) of each contiguous segment of a flat tensor.

    Args:
        values: float32 [total].
        mask: bool [total]; positions where it is False contribute nothing (even if ``values`` is inf or NaN there).
        cu_seqlens: int64 [S+1], cu_seqlens[0] = 0, non-decreasing, cu_seqlens[-1] = total; segment s is
            ``values[cu_seqlens[s]:cu_seqlens[s+1]]``.
        mean: divide each sum by its number of masked-in positions (a segment with none gives 0.0).

    Returns:
        float32 [S], differentiable w.r.t. ``values``.
    """
    num_segments = cu_seqlens.shape[0] - 1
    # segment of position t = #{s >= 1 : cu_seqlens[s] <= t}  (empty segments own no position)
    positions = torch.arange(values.shape[0], device=values.device)
    segment = torch.searchsorted(cu_seqlens[1:], positions, right=True)
    sums = values.new_zeros(num_segments).index_add(0, segment, torch.where(mask, values, 0.0))
    if not mean:
        return sums
    # n_s = #{t in s : mask_t};  sum / max(n_s, 1) is 0 / 1 = 0 for a segment with no scored token
    counts = values.new_zeros(num_segments).index_add(0, segment, mask.float())
    return sums / counts.clamp(min=1)


def _flatten(
    token_logps: torch.Tensor, mask: torch.Tensor | None, cu_seqlens: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate either layout and return ``(values f32 [total], mask bool [total], cu_seqlens int64 [S+1])``.

    Padded [B, T] becomes B segments of length T (``cu_seqlens = [0, T, 2T, ...]``). Packed input's
    ``cu_seqlens`` is checked on the host (one device sync).
    """
    check_float_tensor("token_logps", token_logps)
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.shape != token_logps.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)} but token_logps has shape {tuple(token_logps.shape)}")
        if mask.device != token_logps.device:
            raise ValueError(f"mask is on {mask.device} but token_logps is on {token_logps.device}")
        mask = mask != 0
    else:
        mask = torch.ones_like(token_logps, dtype=torch.bool)
    values = token_logps.float().reshape(-1)
    mask = mask.reshape(-1)

    if cu_seqlens is None:
        if token_logps.dim() != 2:
            raise ValueError(
                "padded token_logps must be 2-D [B, T] (pass cu_seqlens for packed input), "
                f"got shape {tuple(token_logps.shape)}"
            )
        batch, length = token_logps.shape
        if batch == 0:
            raise ValueError("empty batch: token_logps has no sequences")
        cu_seqlens = torch.arange(batch + 1, device=values.device) * length
        return values, mask, cu_seqlens

    if token_logps.dim() not in (1, 2) or (token_logps.dim() == 2 and token_logps.shape[0] != 1):
        raise ValueError(f"packed token_logps must be [total] or [1, total], got shape {tuple(token_logps.shape)}")
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 or int64, got dtype {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens must be 1-D [S+1] with S >= 1 sequences, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != token_logps.device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but token_logps is on {token_logps.device}")
    cu_seqlens = cu_seqlens.long()
    total = values.shape[0]
    invalid = (cu_seqlens[0] != 0) | (cu_seqlens[-1] != total) | (cu_seqlens.diff() < 0).any()
    if invalid:
        raise ValueError(
            f"cu_seqlens must start at 0, be non-decreasing and end at total = {total} tokens; "
            f"got {cu_seqlens.tolist()}"
        )
    return values, mask, cu_seqlens


def sequence_logprobs(
    token_logps: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """Sum or mean of per-token log-probs over each sequence (see the module docstring for the math).

    Args:
        token_logps: per-token log-probs, any float dtype. Padded: [B, T]. Packed: [total] or [1, total] with
            ``cu_seqlens``.
        mask: same shape as ``token_logps``, bool or 0/1; only positions where it is nonzero are scored (e.g. the
            completion tokens). None scores every position.
        cu_seqlens: int32 or int64 [S+1], cumulative boundaries of the S packed sequences (0, ..., total).
        reduction: "sum" or "mean". The mean of a sequence with no scored token is 0.0.

    Returns:
        float32 [S] (S = B when padded), differentiable w.r.t. ``token_logps``.

    Raises:
        TypeError: non-float token_logps, non-integer cu_seqlens.
        ValueError: unknown reduction, mismatched shapes or devices, empty batch, malformed cu_seqlens.
    """
    check_choice("reduction", reduction, ("sum", "mean"))
    values, mask, cu_seqlens = _flatten(token_logps, mask, cu_seqlens)
    return _dispatch.call("segment_sum", segment_sum, values, mask, cu_seqlens, reduction == "mean")


def sequence_token_counts(
    token_logps: torch.Tensor, *, mask: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None
) -> torch.Tensor:
    """Number of scored tokens of each sequence (the divisor of the "mean" reduction, e.g. completion lengths).

    Args:
        token_logps, mask, cu_seqlens: as for ``sequence_logprobs`` (``token_logps`` gives only the layout).

    Returns:
        int64 [S].
    """
    values, mask, cu_seqlens = _flatten(token_logps, mask, cu_seqlens)
    counts = _dispatch.call("segment_sum", segment_sum, torch.ones_like(values), mask, cu_seqlens, False)
    return counts.long()


def count_empty(
    token_logps: torch.Tensor, *, mask: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None
) -> torch.Tensor:
    """Number of sequences with no scored token (their ``sequence_logprobs`` mean is defined as 0.0).

    Args:
        token_logps, mask, cu_seqlens: as for ``sequence_logprobs``.

    Returns:
        int64 0-dim tensor.
    """
    return (sequence_token_counts(token_logps, mask=mask, cu_seqlens=cu_seqlens) == 0).sum()
