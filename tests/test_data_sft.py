"""build_sft_dataset: which tokens carry labels in each format, templates, truncation, drops, packing."""

import datasets
import pytest
from data_helpers import demo_tokenizer

from fastalign.data import InstructionTemplate, SFTOptions, build_sft_dataset, demo_data_path, load_records

IGNORE = -100


def records(**columns):
    return datasets.Dataset.from_dict({name: list(values) for name, values in columns.items()})


def trained_ids(row):
    return [label for label in row["labels"] if label != IGNORE]


def test_prompt_completion_trains_exactly_the_completion_and_eos():
    tokenizer = demo_tokenizer()
    prompt, completion = "Customer: How do I reset my hub?\nAgent:", " Hold the reset button for fifteen seconds."
    (row,), report = build_sft_dataset(records(prompt=[prompt], completion=[completion]), tokenizer)
    prompt_ids = tokenizer(prompt)["input_ids"]  # <s> + prompt tokens
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == prompt_ids + completion_ids + [tokenizer.eos_token_id]
    assert row["labels"] == [IGNORE] * len(prompt_ids) + completion_ids + [tokenizer.eos_token_id]
    assert report.trainable_tokens == len(completion_ids) + 1


def test_train_on_prompt_labels_every_token():
    (row,), _ = build_sft_dataset(
        records(prompt=["Q: hi\nA:"], completion=[" hello"]), demo_tokenizer(), SFTOptions(train_on_prompt=True)
    )
    assert row["labels"] == row["input_ids"]


def test_instruction_template_renders_sections_and_skips_an_empty_context():
    tokenizer = demo_tokenizer()
    data = records(
        instruction=["Summarize.", "Translate."], context=["The hub is offline.", ""], response=["Offline.", "Done."]
    )
    rows, _ = build_sft_dataset(data, tokenizer)
    texts = [tokenizer.decode(row["input_ids"]) for row in rows]
    assert texts == [
        "<s>### Instruction:\nSummarize.\n\n### Context:\nThe hub is offline.\n\n### Response:\nOffline.</s>",
        "<s>### Instruction:\nTranslate.\n\n### Response:\nDone.</s>",
    ]
    assert [tokenizer.decode(trained_ids(row)) for row in rows] == ["Offline.</s>", "Done.</s>"]


def test_instruction_template_is_configurable():
    template = InstructionTemplate(
        instruction_header="Q:", context_header="Given:", response_header="A:", preamble="Be kind."
    )
    assert template.render_prompt("Why?", None) == "Be kind.\n\nQ:\nWhy?\n\nA:\n"
    assert template.render_prompt("Why?", "Because.") == "Be kind.\n\nQ:\nWhy?\n\nGiven:\nBecause.\n\nA:\n"
    from_yaml = SFTOptions(instruction_template={"instruction_header": "Q:", "response_header": "A:"})
    assert from_yaml.instruction_template.render_prompt("Why?") == "Q:\nWhy?\n\nA:\n"


def test_messages_train_every_assistant_turn_and_match_the_template_generation_mask():
    tokenizer = demo_tokenizer()
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My hub blinks amber."},
        {"role": "assistant", "content": "It lost the internet; it will retry."},
        {"role": "user", "content": "And solid red?"},
        {"role": "assistant", "content": "A failed update: restart the hub."},
    ]
    (row,), _ = build_sft_dataset(records(messages=[conversation]), tokenizer)
    reference = tokenizer.apply_chat_template(conversation, return_dict=True, return_assistant_tokens_mask=True)
    assert row["input_ids"] == reference["input_ids"]
    assert [label != IGNORE for label in row["labels"]] == [bool(flag) for flag in reference["assistant_masks"]]
    assert (
        tokenizer.decode(trained_ids(row))
        == "It lost the internet; it will retry.</s>A failed update: restart the hub.</s>"
    )


def test_messages_without_generation_markers_use_prefix_rendering():
    tokenizer = demo_tokenizer()
    plain_template = tokenizer.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    plain = type(tokenizer).from_pretrained(tokenizer.name_or_path, chat_template=plain_template)
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    (row,), _ = build_sft_dataset(records(messages=[conversation]), plain)
    assert plain.decode(trained_ids(row)) == "Hello!</s>"


def test_a_prefix_unstable_chat_template_is_an_error():
    tokenizer = demo_tokenizer()
    # Renders only the last message: a conversation's text no longer starts with the text of its prefixes.
    unstable = type(tokenizer).from_pretrained(
        tokenizer.name_or_path, chat_template="{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}"
    )
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    with pytest.raises(ValueError, match="prefix-stably"):
        build_sft_dataset(records(messages=[conversation]), unstable)


def test_truncation_keeps_the_prompt_start_and_drops_what_cannot_train():
    tokenizer = demo_tokenizer()
    long_completion = " Restart the hub, then the router, then wait two minutes and try the setup again." * 3
    data = records(
        prompt=["Q: short?\nA:", "Q: long?\nA:", "Q: " + "very long prompt " * 20 + "\nA:"],
        completion=[" Yes.", long_completion, " Yes."],
    )
    rows, report = build_sft_dataset(data, tokenizer, SFTOptions(max_length=24))
    assert (report.loaded, report.truncated, report.dropped_no_trainable_tokens, report.examples) == (3, 1, 1, 2)
    assert [len(row["input_ids"]) for row in rows][1] == 24
    assert rows[1]["input_ids"] == (tokenizer(data[1]["prompt"] + long_completion)["input_ids"])[:24]

    rows, report = build_sft_dataset(data, tokenizer, SFTOptions(max_length=24, overflow="drop"))
    assert (report.dropped_too_long, report.truncated, report.examples) == (2, 0, 1)


def test_packing_restarts_positions_and_masks_each_example_start():
    tokenizer = demo_tokenizer()
    unpacked, _ = build_sft_dataset(
        load_records(demo_data_path("sft_eval")), tokenizer, SFTOptions(max_length=160, train_on_prompt=True)
    )
    packed, report = build_sft_dataset(
        load_records(demo_data_path("sft_eval")),
        tokenizer,
        SFTOptions(max_length=160, train_on_prompt=True, packing=True),
    )
    assert report.rows == len(packed) < len(unpacked) and report.packed_rows > 0
    examples = []
    for row in packed:
        assert len(row["input_ids"]) <= 160
        starts = [index for index, position in enumerate(row["position_ids"]) if position == 0]
        assert all(row["labels"][start] == IGNORE for start in starts)  # never predicted across examples
        for start, end in zip(starts, starts[1:] + [len(row["input_ids"])]):
            assert row["position_ids"][start:end] == list(range(end - start))
            examples.append((row["input_ids"][start:end], row["labels"][start + 1 : end]))
    assert examples == [(row["input_ids"], row["labels"][1:]) for row in unpacked]  # same examples, same order


def test_wrong_format_for_sft_is_rejected():
    with pytest.raises(ValueError, match="build_sft_dataset takes the formats"):
        build_sft_dataset(records(text=["just text"]), demo_tokenizer())
    with pytest.raises(ValueError, match="overflow must be one of"):
        SFTOptions(overflow="wrap")
