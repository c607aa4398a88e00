"""`build_cpt_dataset`: documents -> fixed-length blocks of tokens for continued pre-training.

Documents are tokenized without special tokens, each followed by EOS, concatenated in order and cut into blocks
of exactly `max_length` tokens (the last block may be shorter). With `document_boundaries`, every block also gets
position_ids that restart at 0 at each document start (and at the block start), and the first token of each
document gets label -100, so that no document attends to, or is predicted from, the one before it.
"""

from dataclasses import dataclass

import datasets
from transformers import PreTrainedTokenizerBase

from fastalign.data.formats import validate_dataset
from fastalign.data.packing import IGNORE_INDEX
from fastalign.data.report import DataReport, count_tokens


@dataclass
class CPTOptions:
    """How a CPT corpus becomes blocks (maps one to one onto the YAML `data.cpt` section).

    Attributes:
        max_length: tokens per block (the model's context window during training).
        document_boundaries: restart position_ids per document inside a block (use `PackedCollator`); when
            False, blocks are plain causal-LM windows across document boundaries (use `PaddedCollator`).
    """

    max_length: int = 1024
    document_boundaries: bool = True

    def __post_init__(self):
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")


class _BlockCutter:
    """Concatenates tokenized documents and emits full blocks; the remainder is carried to the next batch of
    documents and written out, possibly shorter, with the last batch (`datasets.Dataset.map` calls it in order)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, options: CPTOptions, total_documents: int):
        self.tokenizer = tokenizer
        self.options = options
        self.last_index = total_documents - 1
        self.input_ids: list[int] = []
        self.document_starts: list[bool] = []  # one flag per carried token: does a document start here?
        self.packed_rows = 0

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        eos = self.tokenizer.eos_token_id
        for input_ids in self.tokenizer(batch["text"], add_special_tokens=False)["input_ids"]:
            self.input_ids += input_ids + [eos]
            self.document_starts += [True] + [False] * len(input_ids)
        blocks = {"input_ids": [], "labels": []} | ({"position_ids": []} if self.options.document_boundaries else {})
        block_length = self.options.max_length
        full_blocks_end = len(self.input_ids) - len(self.input_ids) % block_length
        for start in range(0, full_blocks_end, block_length):
            self._emit_block(blocks, start, start + block_length)
        # Keep only the remainder, cut once per batch (cutting per block would copy the buffer per block).
        self.input_ids, self.document_starts = self.input_ids[full_blocks_end:], self.document_starts[full_blocks_end:]
        if indices and indices[-1] == self.last_index and self.input_ids:
            self._emit_block(blocks, 0, len(self.input_ids))
        return blocks

    def _emit_block(self, blocks: dict[str, list], start: int, end: int) -> None:
        input_ids, starts = self.input_ids[start:end], self.document_starts[start:end]
        self.packed_rows += any(starts[1:])  # a second document starts inside the block
        blocks["input_ids"].append(input_ids)
        if not self.options.document_boundaries:
            blocks["labels"].append(list(input_ids))
            return
        starts[0] = True  # a document cut at a block edge continues as a fresh sequence
        positions, labels, position = [], [], 0
        for token, starts_document in zip(input_ids, starts):
            position = 0 if starts_document else position + 1
            positions.append(position)
            labels.append(IGNORE_INDEX if starts_document else token)
        blocks["position_ids"].append(positions)
        blocks["labels"].append(labels)


def build_cpt_dataset(
    dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, options: CPTOptions | None = None
) -> tuple[datasets.Dataset, DataReport]:
    """Tokenize a `text` corpus and cut it into training blocks.

    Args:
        dataset: records with a string column `text` (usually the output of `preprocess_corpus`).
        tokenizer: any tokenizer with an EOS token.
        options: see `CPTOptions`; default `CPTOptions()`.

    Returns:
        Rows with input_ids and labels [max_length] (the last row may be shorter), plus position_ids when
        `options.document_boundaries`; and the report (examples, rows, packed_rows, tokens, trainable_tokens).
    """
    options = options or CPTOptions()
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token, which separates the documents")
    validate_dataset(dataset, "text")
    cutter = _BlockCutter(tokenizer, options, len(dataset))
    # load_from_cache_file=False: the cutter's carried tokens and counts are only right when it runs, in order.
    blocks = dataset.map(
        cutter,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        load_from_cache_file=False,
        desc="tokenizing and cutting blocks",
    )
    report = DataReport(loaded=len(dataset), examples=len(dataset), rows=len(blocks), packed_rows=cutter.packed_rows)
    report.tokens, report.trainable_tokens = count_tokens(blocks)
    return blocks, report
