"""PaddedCollator and PackedCollator: shapes, padding values, and what each one leaves out."""

import torch

from fastalign.data import PackedCollator, PaddedCollator

IGNORE = -100
PAD = 2


def test_padded_collator_pads_right_and_masks_padding():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = PaddedCollator(PAD, pad_to_multiple_of=4)(rows)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[5, 6, 7, PAD], [8, PAD, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE], [8, IGNORE, IGNORE, IGNORE]]
    assert all(tensor.dtype == torch.long for tensor in batch.values())


def test_packed_collator_has_no_attention_mask_and_pads_as_a_separate_sequence():
    rows = [
        {"input_ids": [5, 6, 7, 8], "labels": [IGNORE, 6, IGNORE, 8], "position_ids": [0, 1, 0, 1]},
        {"input_ids": [9, 10], "labels": [IGNORE, 10], "position_ids": [0, 1]},
    ]
    batch = PackedCollator(PAD)(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, PAD, PAD]]
    assert batch["labels"].tolist() == [[IGNORE, 6, IGNORE, 8], [IGNORE, 10, IGNORE, IGNORE]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 0, 1]]
