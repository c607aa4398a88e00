"""Preference data: formats (strings, conversations, implicit prompts, KTO), truncation and drop counts, KL
pairing, collator layouts, and errors that name the file, line/row and column."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from data_helpers import demo_tokenizer

from fastalign.data import (
    DataFormatError,
    PreferenceCollator,
    PreferenceOptions,
    UnpairedCollator,
    build_preference_dataset,
    build_unpaired_dataset,
    kto_balance,
    load_preference_records,
    unpair_preferences,
)
from fastalign.training.recipe import check_kto_balance

PAIRS = [
    {
        "prompt": "How do I reset the hub?",
        "chosen": " Hold the button for ten seconds.",
        "rejected": " No idea.",
        "margin": None,
    },
    {"prompt": "Is the app free?", "chosen": " Yes, the app is free.", "rejected": " Buy a new hub.", "margin": 1.5},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_string_pairs_share_the_prompt_tokens_and_train_on_completions_only():
    tokenizer = demo_tokenizer()
    rows, report = build_preference_dataset(datasets.Dataset.from_list(PAIRS), tokenizer)
    assert report.loaded == 2 and report.examples == 2 and report.truncated == 0 and report.dropped_too_long == 0
    prompt = tokenizer(PAIRS[0]["prompt"])["input_ids"]  # with BOS
    assert prompt[0] == tokenizer.bos_token_id
    for kind in ("chosen", "rejected"):
        ids, labels = rows[0][f"{kind}_input_ids"], rows[0][f"{kind}_labels"]
        completion = tokenizer(PAIRS[0][kind], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert ids == prompt + completion
        assert labels == [-100] * len(prompt) + completion
    assert rows["margin"] == [0.0, 1.5]  # a null margin is 0


def test_conversations_with_explicit_and_implicit_prompt_give_the_same_rows():
    tokenizer = demo_tokenizer()
    user = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is the app free?"}]
    good, bad = [{"role": "assistant", "content": "Yes."}], [{"role": "assistant", "content": "Maybe later."}]
    explicit = datasets.Dataset.from_list([{"prompt": user, "chosen": good, "rejected": bad}])
    implicit = datasets.Dataset.from_list([{"chosen": user + good, "rejected": user + bad}])
    rows_explicit, _ = build_preference_dataset(explicit, tokenizer)
    rows_implicit, _ = build_preference_dataset(implicit, tokenizer)
    assert rows_explicit[:] == rows_implicit[:]
    prompt_text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    row = rows_explicit[0]
    assert row["chosen_input_ids"][: len(prompt)] == prompt == row["rejected_input_ids"][: len(prompt)]
    assert row["chosen_input_ids"][-1] == tokenizer.eos_token_id  # the template closes assistant turns with EOS
    assert tokenizer.decode(row["chosen_labels"][len(prompt) :]).startswith("Yes.")


def test_truncation_cuts_completions_and_drops_pairs_whose_prompt_fills_max_length():
    tokenizer = demo_tokenizer()
    long_prompt = {"prompt": "word " * 40, "chosen": " a", "rejected": " b"}
    records = datasets.Dataset.from_list([PAIRS[0], long_prompt])
    prompt_length = len(tokenizer(PAIRS[0]["prompt"])["input_ids"])
    options = PreferenceOptions(max_length=prompt_length + 2)
    rows, report = build_preference_dataset(records, tokenizer, options)
    assert report.loaded == 2 and report.examples == 1 and report.dropped_too_long == 1 and report.truncated == 1
    for kind in ("chosen", "rejected"):
        assert len(rows[0][f"{kind}_input_ids"]) == prompt_length + 2  # prompt kept, completion cut
        assert rows[0][f"{kind}_labels"][:prompt_length] == [-100] * prompt_length


def test_pairs_are_unpaired_for_kto_and_kl_completions_shift_by_one_within_each_batch():
    tokenizer = demo_tokenizer()
    records = datasets.Dataset.from_list(
        [{"prompt": f"Question {i}?", "chosen": f" Good {i}.", "rejected": f" Bad {i}."} for i in range(3)]
    )
    unpaired = unpair_preferences(records)
    assert unpaired["label"] == [True, False] * 3 and unpaired["completion"][:2] == [" Good 0.", " Bad 0."]
    rows, report = build_unpaired_dataset(records, tokenizer, kl_batch_size=4)
    assert report.loaded == 3 and len(rows) == 6 and rows["desirable"] == [True, False] * 3
    assert kto_balance(rows) == (3, 3)

    def split(row):
        prompt_length = row["labels"].index(next(label for label in row["labels"] if label != -100))
        return row["input_ids"][:prompt_length], row["input_ids"][prompt_length:]

    parts = [split(row) for row in rows]
    for group in (range(0, 4), range(4, 6)):  # batches of 4 rows, then the last 2
        for i in group:
            previous = group[(i - group.start - 1) % len(group)]
            assert rows[i]["kl_input_ids"] == parts[i][0] + parts[previous][1]
            assert rows[i]["kl_labels"] == [-100] * len(parts[i][0]) + parts[previous][1]


def test_kto_records_with_labels_and_the_balance_warning():
    tokenizer = demo_tokenizer()
    records = datasets.Dataset.from_list(
        [{"prompt": "Hi?", "completion": f" Answer {i}.", "label": i != 0} for i in range(4)]
    )
    rows, _ = build_unpaired_dataset(records, tokenizer)
    assert kto_balance(rows) == (3, 1)
    with pytest.warns(UserWarning, match=r"outside the \[1, 4/3\]"):
        assert check_kto_balance(rows, 1.0, 1.0) == 3.0
    assert check_kto_balance(rows, 1.0, 3.0) == 1.0  # balanced by the weights: no warning


def test_padded_collator_puts_chosen_rows_first_and_packed_one_restarts_positions():
    tokenizer = demo_tokenizer()
    rows, _ = build_preference_dataset(datasets.Dataset.from_list(PAIRS), tokenizer)
    rows = list(rows)
    padded = PreferenceCollator(tokenizer.pad_token_id)(rows)
    assert padded["input_ids"].shape[0] == 4 and padded["margin"].tolist() == [0.0, 1.5]
    for index, (row, kind) in enumerate([(0, "chosen"), (1, "chosen"), (0, "rejected"), (1, "rejected")]):
        ids = rows[row][f"{kind}_input_ids"]
        assert padded["input_ids"][index, : len(ids)].tolist() == ids
        assert padded["attention_mask"][index].sum() == len(ids)
        assert (padded["labels"][index, len(ids) :] == -100).all()
    packed = PreferenceCollator(tokenizer.pad_token_id, packed=True)(rows)
    lengths = [len(rows[r][f"{k}_input_ids"]) for k in ("chosen", "rejected") for r in (0, 1)]
    assert "attention_mask" not in packed and packed["cu_seqlens"].dtype == torch.int32
    assert packed["cu_seqlens"].tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert packed["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]


def test_unpaired_collator_batches_the_kl_sequences_alongside():
    rows = [
        {
            "input_ids": [1, 5, 6],
            "labels": [-100, 5, 6],
            "kl_input_ids": [1, 7],
            "kl_labels": [-100, 7],
            "desirable": True,
            "ref_logps": -1.0,
            "ref_kl_logps": -2.0,
        },
        {
            "input_ids": [1, 7],
            "labels": [-100, 7],
            "kl_input_ids": [1, 5, 6],
            "kl_labels": [-100, 5, 6],
            "desirable": False,
            "ref_logps": -3.0,
            "ref_kl_logps": -4.0,
        },
    ]
    batch = UnpairedCollator(0)(rows)
    assert batch["desirable"].tolist() == [True, False] and batch["ref_kl_logps"].tolist() == [-2.0, -4.0]
    assert batch["kl_input_ids"].tolist() == [[1, 7, 0], [1, 5, 6]] and batch["kl_attention_mask"][0].tolist() == [
        1,
        1,
        0,
    ]
    packed = UnpairedCollator(0, packed=True)(rows)
    assert packed["kl_cu_seqlens"].tolist() == [0, 2, 5] and packed["cu_seqlens"].tolist() == [0, 3, 5]


@pytest.mark.parametrize(
    "bad, location, message",
    [
        ({"prompt": "q", "chosen": "a"}, "line 2", "missing column 'rejected'"),
        ({"prompt": "q", "chosen": "a", "rejected": 3}, "line 2", "column 'rejected', got int"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}, "line 2", "number in column 'margin'"),
        ({"chosen": "a", "rejected": "b"}, "line 2", "missing column 'prompt'"),
        (
            {"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "b"},
            "line 2",
            "chosen[0]: expected a string in 'content'",
        ),
    ],
)
def test_bad_pair_records_are_reported_with_file_line_and_column(tmp_path, bad, location, message):
    path = write_jsonl(tmp_path / "prefs.jsonl", [PAIRS[0], bad])
    with pytest.raises(DataFormatError) as error:
        load_preference_records(path, format="pairs")
    assert str(error.value).startswith(f"{path} {location}:") and message in str(error.value)


def test_bad_kto_label_and_bad_rows_of_other_sources_are_reported_with_row_numbers(tmp_path):
    good = {"prompt": "q", "completion": "a", "label": True}
    path = write_jsonl(tmp_path / "kto.jsonl", [good, good, {**good, "label": "yes"}])
    with pytest.raises(DataFormatError, match=r"kto\.jsonl line 3: expected a bool in column 'label', got str"):
        load_preference_records(path)
    saved = tmp_path / "saved"
    datasets.Dataset.from_list([PAIRS[0], {"prompt": "q", "chosen": "a", "rejected": None}]).save_to_disk(str(saved))
    with pytest.raises(
        DataFormatError, match=r"saved row 2: expected a string or a list of messages in column 'rejected'"
    ):
        load_preference_records(saved)
    records, format_name = load_preference_records(write_jsonl(tmp_path / "ok.jsonl", PAIRS))
    assert format_name == "pairs" and len(records) == 2
