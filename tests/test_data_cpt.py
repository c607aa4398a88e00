"""build_cpt_dataset: documents joined with EOS, cut into blocks, with per-document positions and labels."""

import datasets
from data_helpers import demo_tokenizer

from fastalign.data import CPTOptions, build_cpt_dataset

IGNORE = -100
DOCUMENTS = [
    "The hub connects to 2.4 GHz Wi-Fi only.",
    "Hold the reset button for fifteen seconds.",
    "Firmware updates install at night.",
    "Refunds for annual plans are available within 30 days of purchase.",
]


def tokenized_documents(tokenizer):
    return [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in DOCUMENTS]


def test_blocks_are_the_concatenated_documents_cut_at_max_length():
    tokenizer = demo_tokenizer()
    stream = [token for document in tokenized_documents(tokenizer) for token in document]
    blocks, report = build_cpt_dataset(
        datasets.Dataset.from_dict({"text": DOCUMENTS}), tokenizer, CPTOptions(max_length=16, document_boundaries=False)
    )
    assert blocks.column_names == ["input_ids", "labels"]
    assert [token for block in blocks for token in block["input_ids"]] == stream
    assert all(len(block["input_ids"]) == 16 for block in blocks.select(range(len(blocks) - 1)))
    assert all(block["labels"] == block["input_ids"] for block in blocks)
    assert (report.examples, report.rows, report.tokens) == (4, len(blocks), len(stream))


def test_document_boundaries_restart_positions_and_mask_document_starts():
    tokenizer = demo_tokenizer()
    documents = tokenized_documents(tokenizer)
    blocks, report = build_cpt_dataset(
        datasets.Dataset.from_dict({"text": DOCUMENTS}), tokenizer, CPTOptions(max_length=16)
    )
    # Expected per token: its position inside its document piece (a piece restarts at every block edge) and
    # whether a document or piece starts there (label -100).
    expected_positions, expected_starts = [], []
    for document in documents:
        expected_positions += range(len(document))
        expected_starts += [True] + [False] * (len(document) - 1)
    offset = 0
    for block in blocks:
        length = len(block["input_ids"])
        positions, starts = expected_positions[offset : offset + length], expected_starts[offset : offset + length]
        piece_start = positions[0]
        for index, position in enumerate(positions):  # positions of a document cut at the block edge restart
            if starts[index]:
                piece_start = None
            if piece_start is not None:
                positions[index] = position - piece_start
        assert block["position_ids"] == positions
        assert [label == IGNORE for label in block["labels"]] == [True] + starts[1:]
        offset += length
    assert report.trainable_tokens == sum(label != IGNORE for block in blocks for label in block["labels"][1:])
    assert report.packed_rows >= 1


def test_multiple_map_batches_carry_the_remainder():
    tokenizer = demo_tokenizer()
    many = datasets.Dataset.from_dict({"text": DOCUMENTS * 700})  # > one 1000-row map batch
    blocks, report = build_cpt_dataset(many, tokenizer, CPTOptions(max_length=64))
    total = sum(len(document) for document in tokenized_documents(tokenizer)) * 700
    assert report.tokens == total
    assert len(blocks) == -(-total // 64)
