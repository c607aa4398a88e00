"""The record formats fastalign trains on, how to recognise them from column names, and their per-record checks.

Formats (columns; extra columns are ignored):
    "text"               text: str                                    (continued pre-training)
    "prompt_completion"  prompt: str, completion: str                 (SFT)
    "messages"           messages: list of {"role": str, "content": str}, at least one "assistant" turn (SFT)
    "instruction"        instruction: str, response: str, context: str | null (optional)  (SFT)
"""

from collections.abc import Iterable, Mapping
from typing import Any

import datasets

from fastalign.data.errors import DataFormatError

DATA_FORMATS = ("text", "prompt_completion", "messages", "instruction")
SFT_FORMATS = ("prompt_completion", "messages", "instruction")

REQUIRED_COLUMNS = {
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "instruction": ("instruction", "response"),
}
OPTIONAL_STRING_COLUMNS = {"instruction": ("context",)}

# Checked in this order so that a file with both `messages` and `text` (common in chat dumps) counts as chat data.
_DETECTION_ORDER = ("messages", "prompt_completion", "instruction", "text")


def detect_format(column_names: Iterable[str]) -> str:
    """Which of `DATA_FORMATS` a set of columns holds.

    Raises:
        ValueError: when no format's required columns are all present.
    """
    columns = set(column_names)
    for format_name in _DETECTION_ORDER:
        if all(column in columns for column in REQUIRED_COLUMNS[format_name]):
            return format_name
    expected = " | ".join("+".join(REQUIRED_COLUMNS[name]) for name in DATA_FORMATS)
    raise ValueError(f"cannot tell the data format: expected columns {expected}; found {sorted(columns) or 'none'}")


def resolve_format(requested: str, column_names: Iterable[str]) -> str:
    """`requested` itself, or the detected format when it is "auto"; rejects unknown names early."""
    if requested == "auto":
        return detect_format(column_names)
    if requested not in DATA_FORMATS:
        raise ValueError(f"unknown data format {requested!r}; expected 'auto' or one of {DATA_FORMATS}")
    return requested


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def record_problem(record: Mapping[str, Any], format_name: str) -> str | None:
    """The first problem that stops `record` from being a valid `format_name` record, or None when it is valid."""
    for column in REQUIRED_COLUMNS[format_name]:
        if column not in record:
            return f"missing column '{column}'"
    if format_name == "messages":
        return _messages_problem(record["messages"])
    for column in REQUIRED_COLUMNS[format_name]:
        if not isinstance(record[column], str):
            return f"expected a string in column '{column}', got {_type_name(record[column])}"
    for column in OPTIONAL_STRING_COLUMNS.get(format_name, ()):
        value = record.get(column)
        if value is not None and not isinstance(value, str):
            return f"expected a string or null in column '{column}', got {_type_name(value)}"
    return None


def _messages_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return f"expected a non-empty list in column 'messages', got {_type_name(messages)}"
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            return f"messages[{index}]: expected an object with 'role' and 'content', got {_type_name(message)}"
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                return f"messages[{index}]: expected a string in '{key}', got {_type_name(message.get(key))}"
    if not any(message["role"] == "assistant" for message in messages):
        return "no 'assistant' message in column 'messages': nothing to train on"
    return None


def validate_dataset(dataset: datasets.Dataset, format_name: str, *, source: str = "dataset") -> None:
    """Check every row of `dataset` against `format_name`.

    Raises:
        DataFormatError: at the first bad row, e.g. ``train.parquet row 12: missing column 'completion'``.
    """
    missing = [column for column in REQUIRED_COLUMNS[format_name] if column not in dataset.column_names]
    if missing:
        raise DataFormatError(source, None, f"missing column '{missing[0]}' (columns: {dataset.column_names})")
    checked_columns = [
        column
        for column in REQUIRED_COLUMNS[format_name] + OPTIONAL_STRING_COLUMNS.get(format_name, ())
        if column in dataset.column_names
    ]
    row_number = 0
    for batch in dataset.select_columns(checked_columns).iter(batch_size=1024):
        for values in zip(*(batch[column] for column in checked_columns)):
            row_number += 1
            problem = record_problem(dict(zip(checked_columns, values)), format_name)
            if problem:
                raise DataFormatError(source, f"row {row_number}", problem)
