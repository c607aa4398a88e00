"""Batch collators: lists of tokenized rows -> LongTensors [batch, seq] for a causal LM.

`PaddedCollator` is for rows holding one sequence; `PackedCollator` for rows with position_ids (packed SFT
examples, CPT blocks with document boundaries). Transformers (masking_utils.find_packed_sequence_indices, eager
and sdpa) treats every place where position_ids do not increase by one as the start of a new sequence, and builds
a block-diagonal causal mask, but only when no attention_mask and no KV cache is passed: call the model with
`use_cache=False` in training (LlamaConfig defaults to use_cache=True, which silently turns the detection off).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fastalign.data.packing import IGNORE_INDEX


def _padded_length(lengths: list[int], pad_to_multiple_of: int | None) -> int:
    longest = max(lengths)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    return longest


@dataclass
class PaddedCollator:
    """Right-pad rows of input_ids/labels to the longest row (rounded up to `pad_to_multiple_of`).

    Returns:
        input_ids [b, s] (pad_token_id on padding), attention_mask [b, s] (0 on padding), labels [b, s]
        (-100 on padding).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        length = _padded_length([len(row["input_ids"]) for row in rows], self.pad_to_multiple_of)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for index, row in enumerate(rows):
            size = len(row["input_ids"])
            input_ids[index, :size] = torch.as_tensor(row["input_ids"])
            labels[index, :size] = torch.as_tensor(row["labels"])
            attention_mask[index, :size] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass
class PackedCollator:
    """Right-pad packed rows; the padding becomes one more sequence (positions 0, 1, ...) with no labels.

    The padding's positions restart at 0, so transformers separates it from the row's last example like any
    other example; its tokens attend only to each other and carry label -100, so they change neither the real
    tokens' outputs nor the loss.

    Returns:
        input_ids [b, s], labels [b, s] (-100 on padding), position_ids [b, s]; no attention_mask, on purpose.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        length = _padded_length([len(row["input_ids"]) for row in rows], self.pad_to_multiple_of)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.arange(length, dtype=torch.long).repeat(len(rows), 1)
        for index, row in enumerate(rows):
            size = len(row["input_ids"])
            input_ids[index, :size] = torch.as_tensor(row["input_ids"])
            labels[index, :size] = torch.as_tensor(row["labels"])
            position_ids[index, :size] = torch.as_tensor(row["position_ids"])
            position_ids[index, size:] = torch.arange(length - size)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
