"""`load_records`: one entry point for local files, `save_to_disk` directories and hub datasets.

JSON input is checked line by line before `datasets` reads it, because the `datasets` JSON loader reports a
bad line as an Arrow error without its line number; every other source is checked row by row after loading.
"""

import json
from pathlib import Path

import datasets

from fastalign.data.errors import DataFormatError
from fastalign.data.formats import detect_format, record_problem, resolve_format, validate_dataset

# File suffix -> `datasets` packaged builder that reads it.
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_records(source: str | Path, *, split: str | None = None, format: str | None = "auto") -> datasets.Dataset:
    """Load training records as a `datasets.Dataset`, checked against their format.

    Args:
        source: a .jsonl/.json/.csv/.parquet file, a directory written by `save_to_disk`, or a hub dataset name
            (any string that is not an existing path and does not look like one: no data-file suffix and not
            starting with "/", "." or "~"). Hub datasets need network access.
        split: which split to return; default "train". Files and hub datasets accept `datasets` split
            expressions ("train[:1000]"); a saved `DatasetDict` takes a split name; a saved single `Dataset`
            only None or "train".
        format: "auto" (detect from the columns), one of `DATA_FORMATS`, or None to skip the record checks.

    Returns:
        The records; their columns are the source's columns.

    Raises:
        FileNotFoundError: `source` looks like a path but does not exist.
        DataFormatError: a malformed record, named by file and line (JSON Lines), record (JSON arrays) or row.
    """
    path = Path(source).expanduser()
    source_name = str(source)
    if path.is_dir():
        dataset = _load_saved_dataset(path, split)
    elif path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"{source_name}: unsupported file type {path.suffix!r}; expected one of {list(FILE_BUILDERS)}"
            )
        if builder == "json":
            _check_json_file(path, source_name, format)
        try:
            dataset = datasets.load_dataset(builder, data_files=str(path), split=split or "train")
        except Exception as error:  # datasets/pyarrow raise many types; the user needs the file name and the cause
            raise DataFormatError(source_name, None, f"could not be read by datasets: {error}") from error
        if builder == "json":
            return dataset  # already checked line by line, with better locations than rows
    elif _looks_like_local_path(source_name):
        raise FileNotFoundError(f"data file not found: {source_name}")
    else:
        dataset = datasets.load_dataset(source_name, split=split or "train")
    if format is not None:
        try:
            format_name = resolve_format(format, dataset.column_names)
        except ValueError as error:
            raise DataFormatError(source_name, None, str(error)) from error
        validate_dataset(dataset, format_name, source=source_name)
    return dataset


def _looks_like_local_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).suffix.lower() in FILE_BUILDERS


def _load_saved_dataset(path: Path, split: str | None) -> datasets.Dataset:
    try:
        saved = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path}: not a directory written by Dataset.save_to_disk ({error})") from error
    if isinstance(saved, datasets.DatasetDict):
        split = split or "train"
        if split not in saved:
            raise ValueError(f"{path}: no split {split!r}; the saved DatasetDict has {list(saved)}")
        return saved[split]
    if split not in (None, "train"):
        raise ValueError(f"{path}: holds a single Dataset, so split must be None or 'train', got {split!r}")
    return saved


def _check_json_file(path: Path, source_name: str, format: str | None) -> None:
    """Parse a .json/.jsonl file with the standard library to report bad JSON and bad records with line numbers."""
    if path.suffix.lower() == ".json":
        text = path.read_text(encoding="utf-8")
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            if error.msg != "Extra data":  # "Extra data" after the first value: the file is JSON Lines
                raise DataFormatError(source_name, f"line {error.lineno}", f"invalid JSON: {error.msg}") from error
        else:
            if isinstance(document, list):
                _check_records(
                    ((f"record {index}", record) for index, record in enumerate(document, 1)), source_name, format
                )
                return
    _check_records(_json_lines(path, source_name), source_name, format)


def _json_lines(path: Path, source_name: str):
    """Yield ("line N", parsed value) for every non-blank line."""
    with path.open(encoding="utf-8") as lines:
        line_number = 0
        try:
            for line_number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    yield f"line {line_number}", json.loads(line)
                except json.JSONDecodeError as error:
                    problem = f"invalid JSON: {error.msg} (column {error.colno})"
                    raise DataFormatError(source_name, f"line {line_number}", problem) from error
        except UnicodeDecodeError as error:
            raise DataFormatError(source_name, f"line {line_number + 1}", f"not UTF-8 text ({error.reason})") from error


def _check_records(located_records, source_name: str, format: str | None) -> None:
    format_name = None if format in (None, "auto") else resolve_format(format, ())
    for location, record in located_records:
        if not isinstance(record, dict):
            raise DataFormatError(source_name, location, f"expected a JSON object, got {type(record).__name__}")
        if format is None:
            continue
        if format_name is None:  # "auto": the first record decides, every later record must match it
            try:
                format_name = detect_format(record)
            except ValueError as error:
                raise DataFormatError(source_name, location, str(error)) from error
        problem = record_problem(record, format_name)
        if problem:
            raise DataFormatError(source_name, location, problem)
