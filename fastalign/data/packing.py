"""Greedy packing of tokenized examples into rows of at most `max_length` tokens, without cross-contamination.

Each example keeps its own positions (position_ids restart at 0), which is what makes transformers attend only
within an example (see `PackedCollator`). The first label of every example is set to -100: the model predicts
the token at position t from the logits at t - 1 (`labels` are shifted inside the model), and at an example's
first token position t - 1 belongs to the previous example.
"""

import datasets

IGNORE_INDEX = -100


class _GreedyPacker:
    """Appends examples in order to the current row and starts a new row when the next one does not fit.

    Called by `datasets.Dataset.map` batch after batch; the unfinished row is carried over to the next batch and
    written out with the last batch.
    """

    def __init__(self, max_length: int, total_examples: int):
        self.max_length = max_length
        self.last_index = total_examples - 1
        self.input_ids: list[int] = []
        self.labels: list[int] = []
        self.position_ids: list[int] = []
        self.examples_in_row = 0
        self.packed_rows = 0

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        rows = {"input_ids": [], "labels": [], "position_ids": []}
        for input_ids, labels in zip(batch["input_ids"], batch["labels"]):
            if self.input_ids and len(self.input_ids) + len(input_ids) > self.max_length:
                self._finish_row(rows)
            self.input_ids += input_ids
            self.labels += [IGNORE_INDEX] + labels[1:]
            self.position_ids += range(len(input_ids))
            self.examples_in_row += 1
        if indices and indices[-1] == self.last_index and self.input_ids:
            self._finish_row(rows)
        return rows

    def _finish_row(self, rows: dict[str, list]) -> None:
        rows["input_ids"].append(self.input_ids)
        rows["labels"].append(self.labels)
        rows["position_ids"].append(self.position_ids)
        self.packed_rows += self.examples_in_row > 1
        self.input_ids, self.labels, self.position_ids, self.examples_in_row = [], [], [], 0


def pack_examples(dataset: datasets.Dataset, max_length: int) -> tuple[datasets.Dataset, int]:
    """Pack rows of `input_ids`/`labels` (each at most `max_length` long) greedily, in order.

    Args:
        dataset: rows with `input_ids` and `labels` (same length, labels aligned with input_ids).
        max_length: the longest packed row.

    Returns:
        Rows with input_ids, labels, position_ids [row length], and how many rows hold more than one example.
    """
    packer = _GreedyPacker(max_length, len(dataset))
    # load_from_cache_file=False: the packer's state and counts are only right when it really runs, in order.
    packed = dataset.map(
        packer,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        load_from_cache_file=False,
        desc="packing",
    )
    return packed, packer.packed_rows
