"""load_records: every source kind, and malformed input reported with file, line/row and problem."""

import json

import datasets
import pytest

from fastalign.data import DataFormatError, demo_data_path, detect_format, load_records


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def good_pairs(count):
    return [json.dumps({"prompt": f"Q{index}", "completion": f"A{index}"}) for index in range(count)]


def test_jsonl_loads_every_record(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", good_pairs(3) + [""])  # a trailing blank line is fine
    dataset = load_records(path)
    assert dataset.column_names == ["prompt", "completion"]
    assert dataset["completion"] == ["A0", "A1", "A2"]


def test_bad_json_is_reported_with_its_line_number(tmp_path):
    lines = good_pairs(6)
    lines.insert(4, '{"prompt": "Q", "completion": "A"')  # line 5: unterminated object
    path = write_lines(tmp_path / "data.jsonl", lines)
    with pytest.raises(DataFormatError, match=r"data\.jsonl line 5: invalid JSON"):
        load_records(path)


def test_wrong_type_names_line_column_and_types(tmp_path):
    lines = good_pairs(6)
    lines.insert(6, json.dumps({"prompt": "Q", "completion": 7}))
    path = write_lines(tmp_path / "data.jsonl", lines)
    with pytest.raises(DataFormatError) as error:
        load_records(path)
    assert str(error.value) == f"{path} line 7: expected a string in column 'completion', got int"


def test_missing_column_is_reported_with_its_line(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", good_pairs(2) + [json.dumps({"prompt": "Q"})])
    with pytest.raises(DataFormatError, match=r"line 3: missing column 'completion'"):
        load_records(path)


def test_a_line_that_is_not_an_object_is_rejected(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", good_pairs(1) + ["[1, 2]"])
    with pytest.raises(DataFormatError, match=r"line 2: expected a JSON object, got list"):
        load_records(path)


def test_unrecognised_columns_name_the_expected_formats(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [json.dumps({"question": "Q", "answer": "A"})])
    with pytest.raises(DataFormatError, match=r"line 1: cannot tell the data format: expected columns text \|"):
        load_records(path)


def test_messages_are_checked_turn_by_turn(tmp_path):
    no_assistant = {"messages": [{"role": "user", "content": "hi"}]}
    bad_content = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]}
    path = write_lines(tmp_path / "chat.jsonl", [json.dumps(no_assistant)])
    with pytest.raises(DataFormatError, match=r"line 1: no 'assistant' message"):
        load_records(path)
    path = write_lines(tmp_path / "chat.jsonl", [json.dumps(bad_content)])
    with pytest.raises(DataFormatError, match=r"line 1: messages\[1\]: expected a string in 'content', got null"):
        load_records(path)


def test_explicit_format_is_enforced(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", good_pairs(2))
    with pytest.raises(DataFormatError, match=r"line 1: missing column 'text'"):
        load_records(path, format="text")
    assert len(load_records(path, format=None)) == 2  # no record checks, only JSON syntax


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_records(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError):
        load_records("./nowhere/data")


def test_json_array_file_reports_the_record_number(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"text": "one"}, {"text": 2}]), encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"data\.json record 2: expected a string in column 'text', got int"):
        load_records(path)
    path.write_text(json.dumps([{"text": "one"}, {"text": "two"}]), encoding="utf-8")
    assert load_records(path)["text"] == ["one", "two"]


def test_csv_and_parquet_are_checked_row_by_row(tmp_path):
    csv_path = tmp_path / "data.csv"
    csv_path.write_text("prompt,completion\nQ1,A1\nQ2,A2\n", encoding="utf-8")
    assert load_records(csv_path)["completion"] == ["A1", "A2"]

    parquet_path = tmp_path / "data.parquet"
    datasets.Dataset.from_dict({"prompt": ["Q1", "Q2"], "completion": ["A1", None]}).to_parquet(str(parquet_path))
    with pytest.raises(
        DataFormatError, match=r"data\.parquet row 2: expected a string in column 'completion', got null"
    ):
        load_records(parquet_path)


def test_save_to_disk_directories_and_splits(tmp_path):
    train = datasets.Dataset.from_dict({"text": ["a", "b"]})
    held_out = datasets.Dataset.from_dict({"text": ["c"]})
    train.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": train, "validation": held_out}).save_to_disk(str(tmp_path / "dict"))
    assert load_records(tmp_path / "single")["text"] == ["a", "b"]
    assert load_records(tmp_path / "dict", split="validation")["text"] == ["c"]
    with pytest.raises(ValueError, match="no split 'test'"):
        load_records(tmp_path / "dict", split="test")


def test_a_name_that_is_not_a_path_goes_to_the_hub(monkeypatch):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_dict({"text": ["from the hub"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_records("someone/support-corpus", split="train[:10]")["text"] == ["from the hub"]
    assert calls == [("someone/support-corpus", "train[:10]")]


def test_bundled_demo_files_load_and_have_their_formats():
    expected = {
        "cpt_train": "text",
        "cpt_eval": "text",
        "sft_train": "prompt_completion",
        "sft_eval": "prompt_completion",
        "sft_messages": "messages",
        "sft_instructions": "instruction",
    }
    for name, format_name in expected.items():
        dataset = load_records(demo_data_path(name))
        assert detect_format(dataset.column_names) == format_name
        assert len(dataset) >= 16
