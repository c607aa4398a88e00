"""Preference data: pairs (reward, DPO, ORPO, CPO/SimPO) and unpaired examples (KTO), tokenized and batched.

Record formats (extra columns are ignored)::

    "pairs"     prompt, chosen, rejected [, margin]
                - strings: prompt "Q: ...", chosen " A good answer", rejected " A bad answer"; or
                - conversations (lists of {"role", "content"}), rendered with the tokenizer's chat template:
                  prompt [user turns], chosen [assistant turn(s)], rejected [assistant turn(s)]; or without a
                  `prompt` column chosen / rejected are whole conversations sharing a prefix, which becomes the
                  prompt (the implicit prompt: their longest common run of leading messages).
                margin (optional, number): required reward gap, used by the `reward` objective only.
    "unpaired"  prompt, completion, label (bool: True = desirable)       (KTO; strings or conversations)
                A "pairs" dataset is unpaired automatically (`unpair_preferences`): each pair gives
                (prompt, chosen, True) and (prompt, rejected, False).

Loading and validation
    `load_preference_records(source, *, split=None, format="auto") -> (datasets.Dataset, format)`
        Same sources as `fastalign.data.load_records` (a .jsonl/.json/.csv/.parquet file, a `save_to_disk`
        directory, a hub name). Every record is checked before tokenization; the first bad one raises
        `DataFormatError` naming file, line (JSON) or row, and column, e.g.
        ``prefs.jsonl line 3: expected a string or a list of messages in column 'rejected', got int``.

Tokenization (`PreferenceOptions`: max_length, format)
    `build_preference_dataset(records, tokenizer, options) -> (Dataset, DataReport)`  ("pairs" records)
        Rows: chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels [, margin].
    `build_unpaired_dataset(records, tokenizer, options, kl_batch_size=8) -> (Dataset, DataReport)`
        ("unpaired" records, or "pairs" records, which are unpaired first)
        Rows: input_ids, labels, desirable (bool), kl_input_ids, kl_labels. The KL sequence of row i is row i's
        prompt followed by the completion of row i-1 within consecutive groups of `kl_batch_size` rows (TRL's
        KTOTrainer shifts completions by one within each batch the same way); a group of one pairs with itself.
    The prompt is tokenized alone (with the tokenizer's BOS for strings; the chat template writes its own) and each
    completion alone (strings get EOS appended; chat turns end as the template ends them), then concatenated, so
    chosen and rejected share exactly the same prompt tokens. Labels are aligned with input_ids (not shifted),
    -100 on the prompt. Truncation keeps the prompt and cuts the completion to fit `max_length`; an example whose
    prompt alone fills `max_length` (no completion token left) is dropped (a pair is dropped whole) and counted in
    `DataReport.dropped_too_long`; `truncated` counts pairs/examples whose completion was cut.

Collators (rows -> batch dict of tensors; pass `packed=True` for padding-free batches)
    `PreferenceCollator(pad_token_id, packed=False, pad_to_multiple_of=None)` for pair rows:
        padded: input_ids [2B, T], attention_mask [2B, T], labels [2B, T] — rows 0..B-1 the chosen sequences,
            B..2B-1 the rejected ones (pair i is rows i and B+i); right padding, labels -100 on padding.
        packed: input_ids [1, N], labels [1, N], position_ids [1, N] (restarting at 0 per sequence),
            cu_seqlens int32 [2B+1] (chosen sequences first), NO attention_mask: transformers then detects the
            packing from position_ids (the model must run with use_cache=False, as `last_hidden_states` does).
        plus margin float32 [B] when the rows have it, and ref_chosen_logps / ref_rejected_logps float32 [B] when
        the rows carry precomputed reference log-probs (`fastalign.training.reference`).
    `UnpairedCollator(pad_token_id, packed=False, pad_to_multiple_of=None)` for unpaired rows:
        input_ids, attention_mask, labels [B, T] (or packed: [1, N] + position_ids + cu_seqlens [B+1]),
        desirable bool [B], and the KL batch kl_input_ids, kl_attention_mask, kl_labels (or kl_position_ids,
        kl_cu_seqlens) in the same layout; plus ref_logps / ref_kl_logps float32 [B] when precomputed.

Balance (KTO)
    `kto_balance(dataset) -> (n_desirable, n_undesirable)` of unpaired rows or records; the KTO paper recommends
    desirable_weight * n_desirable / (undesirable_weight * n_undesirable) in [1, 4/3] (the `kto` objective warns
    otherwise).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from fastalign.data.errors import DataFormatError
from fastalign.data.loading import load_records
from fastalign.data.packing import IGNORE_INDEX
from fastalign.data.report import DataReport

PREFERENCE_FORMATS = ("pairs", "unpaired")
_TEXT_COLUMNS = {"pairs": ("prompt", "chosen", "rejected"), "unpaired": ("prompt", "completion")}


@dataclass
class PreferenceOptions:
    """How preference records become training rows (maps one to one onto the YAML `data.preference` section).

    Attributes:
        max_length: the longest sequence (prompt + completion), in tokens; completions are cut to fit, examples
            whose prompt alone fills it are dropped.
        format: "auto" (from the columns), "pairs" (prompt/chosen/rejected) or "unpaired" (prompt/completion/label).
    """

    max_length: int = 1024
    format: str = "auto"

    def __post_init__(self):
        if self.format not in ("auto", *PREFERENCE_FORMATS):
            raise ValueError(f"format must be 'auto' or one of {PREFERENCE_FORMATS}, got {self.format!r}")
        if self.max_length < 2:
            raise ValueError(
                f"max_length must be at least 2 (a prompt token and a completion token), got {self.max_length}"
            )


# ----------------------------------------------------------------------------------------------------------- formats


def detect_preference_format(column_names) -> str:
    """The preference format of a set of columns: "pairs" (chosen + rejected) or "unpaired" (prompt + completion +
    label)."""
    columns = set(column_names)
    if {"chosen", "rejected"} <= columns:
        return "pairs"
    if {"prompt", "completion", "label"} <= columns:
        return "unpaired"
    raise ValueError(
        "cannot tell the preference format: expected columns prompt+chosen+rejected (or chosen+rejected "
        f"conversations) or prompt+completion+label; found {sorted(columns) or 'none'}"
    )


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _messages_problem(column: str, value: Any) -> str | None:
    if not value:
        return f"expected a non-empty list of messages in column '{column}'"
    for index, message in enumerate(value):
        if not isinstance(message, Mapping):
            return f"{column}[{index}]: expected an object with 'role' and 'content', got {_type_name(message)}"
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                return f"{column}[{index}]: expected a string in '{key}', got {_type_name(message.get(key))}"
    return None


def preference_record_problem(record: Mapping[str, Any], format_name: str) -> str | None:
    """The first problem that stops `record` from being a valid `format_name` record, or None when it is valid."""
    columns = _TEXT_COLUMNS[format_name]
    required = ("prompt", "completion", "label") if format_name == "unpaired" else ("chosen", "rejected")
    for column in required:
        if column not in record or (column in ("label", "prompt") and record[column] is None):
            return f"missing column '{column}'"
    present = [c for c in columns if c in record and not (c == "prompt" and record[c] is None)]
    kinds = set()
    for column in present:
        value = record[column]
        if isinstance(value, str):
            kinds.add("string")
        elif isinstance(value, list):
            problem = _messages_problem(column, value)
            if problem:
                return problem
            kinds.add("conversation")
        else:
            return f"expected a string or a list of messages in column '{column}', got {_type_name(value)}"
    if len(kinds) > 1:
        return f"columns {', '.join(present)} mix strings and conversations; use one or the other"
    if "prompt" not in present and kinds == {"string"}:
        return "missing column 'prompt' (an implicit prompt can only be extracted from conversations)"
    if "prompt" not in present and format_name == "pairs" and not _common_prefix(record["chosen"], record["rejected"]):
        return "no 'prompt' column and chosen / rejected share no leading messages to take the prompt from"
    if format_name == "unpaired" and not isinstance(record["label"], bool):
        return f"expected a bool in column 'label', got {_type_name(record['label'])}"
    if format_name == "pairs" and record.get("margin") is not None:
        margin = record["margin"]
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            return f"expected a number in column 'margin', got {_type_name(margin)}"
    return None


def _common_prefix(chosen: list, rejected: list) -> int:
    """Number of leading messages chosen and rejected share (the implicit prompt), leaving each a completion."""
    count = 0
    for a, b in zip(chosen[:-1], rejected[:-1]):
        if a != b:
            break
        count += 1
    return count


def validate_preference_dataset(dataset: datasets.Dataset, format_name: str, *, source: str = "dataset") -> None:
    """Check every row; raises `DataFormatError` at the first bad one (1-based row number, column)."""
    if format_name not in PREFERENCE_FORMATS:
        raise ValueError(f"unknown preference format {format_name!r}; expected one of {PREFERENCE_FORMATS}")
    required = ("chosen", "rejected") if format_name == "pairs" else ("prompt", "completion", "label")
    missing = [column for column in required if column not in dataset.column_names]
    if missing:
        raise DataFormatError(source, None, f"missing column '{missing[0]}' (columns: {dataset.column_names})")
    for row_number, record in enumerate(dataset, 1):
        problem = preference_record_problem(record, format_name)
        if problem:
            raise DataFormatError(source, f"row {row_number}", problem)


def load_preference_records(
    source: str | Path, *, split: str | None = None, format: str = "auto"
) -> tuple[datasets.Dataset, str]:
    """Load preference records (see the module docstring) and check every one.

    Returns:
        The records and their format, "pairs" or "unpaired".

    Raises:
        FileNotFoundError: a missing file. DataFormatError: a malformed record, by file, line/row and column.
    """
    if format not in ("auto", *PREFERENCE_FORMATS):
        raise ValueError(f"format must be 'auto' or one of {PREFERENCE_FORMATS}, got {format!r}")
    path = Path(source).expanduser()
    source_name = str(source)
    if path.is_file() and path.suffix.lower() in (".json", ".jsonl"):
        # Checked line by line before `datasets` reads them: its JSON loader reports a bad type as an Arrow
        # error without the line.
        format_name = None if format == "auto" else format
        for location, record in _json_records(path, source_name):
            if not isinstance(record, dict):
                raise DataFormatError(source_name, location, f"expected a JSON object, got {type(record).__name__}")
            if format_name is None:
                try:
                    format_name = detect_preference_format(record)
                except ValueError as error:
                    raise DataFormatError(source_name, location, str(error)) from error
            problem = preference_record_problem(record, format_name)
            if problem:
                raise DataFormatError(source_name, location, problem)
        dataset = load_records(source, split=split, format=None)
        return dataset, format_name or detect_preference_format(dataset.column_names)
    dataset = load_records(source, split=split, format=None)
    try:
        format_name = detect_preference_format(dataset.column_names) if format == "auto" else format
    except ValueError as error:
        raise DataFormatError(source_name, None, str(error)) from error
    validate_preference_dataset(dataset, format_name, source=source_name)
    return dataset, format_name


def _json_records(path: Path, source_name: str):
    """Yield ("line N" / "record N", value) for a JSON Lines file or a JSON array."""
    from fastalign.data.loading import _json_lines

    if path.suffix.lower() == ".json":
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            if error.msg != "Extra data":
                raise DataFormatError(source_name, f"line {error.lineno}", f"invalid JSON: {error.msg}") from error
        else:
            if isinstance(document, list):
                yield from ((f"record {index}", record) for index, record in enumerate(document, 1))
                return
    yield from _json_lines(path, source_name)


def unpair_preferences(records: datasets.Dataset) -> datasets.Dataset:
    """Turn "pairs" records into "unpaired" ones: (prompt, chosen, True) then (prompt, rejected, False) for each pair.

    Conversations without a prompt column get their implicit prompt extracted first.
    """

    def unpair(batch):
        out = {"prompt": [], "completion": [], "label": []}
        for record in (dict(zip(batch, values)) for values in zip(*batch.values())):
            prompt, chosen, rejected = _split_pair(record)
            for completion, label in ((chosen, True), (rejected, False)):
                out["prompt"].append(prompt)
                out["completion"].append(completion)
                out["label"].append(label)
        return out

    return records.map(unpair, batched=True, remove_columns=records.column_names, desc="unpairing")


def _split_pair(record: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """(prompt, chosen completion, rejected completion); the implicit prompt of conversations when absent."""
    if record.get("prompt") is not None:
        return record["prompt"], record["chosen"], record["rejected"]
    shared = _common_prefix(record["chosen"], record["rejected"])
    return record["chosen"][:shared], record["chosen"][shared:], record["rejected"][shared:]


# ------------------------------------------------------------------------------------------------------ tokenization


class _Tokenize:
    """Prompt and completion token ids, each tokenized alone (see the module docstring)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token, which must end every completion")
        self.tokenizer = tokenizer

    def prompt(self, prompt) -> list[int]:
        if isinstance(prompt, list):
            text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        encoded = self.tokenizer(prompt, add_special_tokens=True, return_special_tokens_mask=True)
        ids, special = encoded["input_ids"], encoded["special_tokens_mask"]
        if ids and special[-1] and ids[-1] == self.tokenizer.eos_token_id:  # the tokenizer appended EOS itself
            ids = ids[:-1]
        return ids

    def completion(self, prompt, completion) -> list[int]:
        if isinstance(completion, list):
            before = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            full = self.tokenizer.apply_chat_template(prompt + completion, tokenize=False)
            if not full.startswith(before):
                raise ValueError(
                    "the chat template does not render conversations prefix-stably, so the completion cannot be "
                    "separated from the prompt"
                )
            return self.tokenizer(full[len(before) :], add_special_tokens=False)["input_ids"]
        return self.tokenizer(completion, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]


def _fit(prompt_ids: list[int], completion_ids: list[int], max_length: int) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated): prompt + completion, the completion cut to fit max_length (> prompt)."""
    truncated = len(prompt_ids) + len(completion_ids) > max_length
    completion_ids = completion_ids[: max_length - len(prompt_ids)]
    return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids, truncated


def _resolve(options: PreferenceOptions, records: datasets.Dataset) -> str:
    format_name = options.format
    if format_name == "auto":
        format_name = detect_preference_format(records.column_names)
    validate_preference_dataset(records, format_name)
    return format_name


def build_preference_dataset(
    records: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, options: PreferenceOptions | None = None
) -> tuple[datasets.Dataset, DataReport]:
    """Tokenize "pairs" records into rows chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels
    [, margin] (see the module docstring); returns the rows and a report (loaded, examples, truncated,
    dropped_too_long, rows, tokens, trainable_tokens)."""
    options = options or PreferenceOptions()
    if _resolve(options, records) != "pairs":
        raise ValueError("build_preference_dataset takes 'pairs' records (prompt/chosen/rejected)")
    tokenize = _Tokenize(tokenizer)
    report = DataReport(loaded=len(records), truncated=0, dropped_too_long=0)
    has_margin = "margin" in records.column_names

    def tokenize_batch(batch):
        rows = {key: [] for key in ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")}
        if has_margin:
            rows["margin"] = []
        for record in (dict(zip(batch, values)) for values in zip(*batch.values())):
            prompt, chosen, rejected = _split_pair(record)
            prompt_ids = tokenize.prompt(prompt)
            if len(prompt_ids) >= options.max_length:
                report.dropped_too_long += 1
                continue
            cut = False
            for name, completion in (("chosen", chosen), ("rejected", rejected)):
                ids, labels, truncated = _fit(prompt_ids, tokenize.completion(prompt, completion), options.max_length)
                rows[f"{name}_input_ids"].append(ids)
                rows[f"{name}_labels"].append(labels)
                cut |= truncated
            report.truncated += cut
            if has_margin:
                rows["margin"].append(float(record["margin"] or 0.0))
        return rows

    # load_from_cache_file=False: the report's counts are only right when the function really runs.
    rows = records.map(
        tokenize_batch, batched=True, remove_columns=records.column_names, load_from_cache_file=False, desc="tokenizing"
    )
    report.examples = report.rows = len(rows)
    report.tokens, report.trainable_tokens = _count(rows, ("chosen", "rejected"))
    return rows, report


def build_unpaired_dataset(
    records: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    options: PreferenceOptions | None = None,
    *,
    kl_batch_size: int = 8,
) -> tuple[datasets.Dataset, DataReport]:
    """Tokenize "unpaired" records (or "pairs" records, unpaired first) into KTO rows input_ids, labels,
    desirable, kl_input_ids, kl_labels (see the module docstring for the KL pairing)."""
    options = options or PreferenceOptions()
    loaded = len(records)
    if _resolve(options, records) == "pairs":
        records = unpair_preferences(records)
    if kl_batch_size < 1:
        raise ValueError(f"kl_batch_size must be >= 1, got {kl_batch_size}")
    tokenize = _Tokenize(tokenizer)
    report = DataReport(loaded=loaded, truncated=0, dropped_too_long=0)

    def tokenize_batch(batch):
        rows = {"prompt_ids": [], "completion_ids": [], "desirable": []}
        for record in (dict(zip(batch, values)) for values in zip(*batch.values())):
            prompt, completion = record["prompt"], record["completion"]
            prompt_ids = tokenize.prompt(prompt)
            if len(prompt_ids) >= options.max_length:
                report.dropped_too_long += 1
                continue
            rows["prompt_ids"].append(prompt_ids)
            rows["completion_ids"].append(tokenize.completion(prompt, completion))
            rows["desirable"].append(bool(record["label"]))
        return rows

    def kl_pairs(batch):
        # Within each group of kl_batch_size rows, row i's KL completion is row i-1's (the first takes the last).
        prompts, completions = batch["prompt_ids"], batch["completion_ids"]
        rows = {"input_ids": [], "labels": [], "desirable": batch["desirable"], "kl_input_ids": [], "kl_labels": []}
        for index, (prompt_ids, completion_ids) in enumerate(zip(prompts, completions)):
            ids, labels, truncated = _fit(prompt_ids, completion_ids, options.max_length)
            report.truncated += truncated
            kl_ids, kl_labels, _ = _fit(prompt_ids, completions[index - 1], options.max_length)
            rows["input_ids"].append(ids)
            rows["labels"].append(labels)
            rows["kl_input_ids"].append(kl_ids)
            rows["kl_labels"].append(kl_labels)
        return rows

    tokens = records.map(
        tokenize_batch, batched=True, remove_columns=records.column_names, load_from_cache_file=False, desc="tokenizing"
    )
    rows = tokens.map(
        kl_pairs,
        batched=True,
        batch_size=kl_batch_size,
        remove_columns=tokens.column_names,
        load_from_cache_file=False,
        desc="KL pairs",
    )
    report.examples = report.rows = len(rows)
    report.tokens, report.trainable_tokens = _count(rows, ("",))
    return rows, report


def _count(rows: datasets.Dataset, prefixes: Sequence[str]) -> tuple[int, int]:
    tokens = trainable = 0
    for prefix in prefixes:
        ids_key, labels_key = (f"{prefix}_input_ids", f"{prefix}_labels") if prefix else ("input_ids", "labels")
        for batch in rows.select_columns([ids_key, labels_key]).iter(batch_size=1024):
            for ids, labels in zip(batch[ids_key], batch[labels_key]):
                tokens += len(ids)
                trainable += sum(label != IGNORE_INDEX for label in labels[1:])
    return tokens, trainable


def kto_balance(rows) -> tuple[int, int]:
    """(n_desirable, n_undesirable) of KTO rows (`desirable` column) or unpaired records (`label` column)."""
    column = "desirable" if "desirable" in rows.column_names else "label"
    flags = rows[column]
    desirable = sum(bool(flag) for flag in flags)
    return desirable, len(flags) - desirable


# --------------------------------------------------------------------------------------------------------- collators


def _batch_sequences(
    sequences: Sequence[tuple[list[int], list[int]]], pad_token_id: int, packed: bool, pad_to_multiple_of: int | None
) -> dict[str, torch.Tensor]:
    """Padded [S, T] (input_ids, attention_mask, labels) or packed [1, N] (input_ids, labels, position_ids,
    cu_seqlens [S+1]) batch of S (input_ids, labels) sequences, in order."""
    lengths = [len(ids) for ids, _ in sequences]
    if packed:
        input_ids = torch.tensor([token for ids, _ in sequences for token in ids], dtype=torch.long)[None]
        labels = torch.tensor([label for _, row_labels in sequences for label in row_labels], dtype=torch.long)[None]
        position_ids = torch.cat([torch.arange(length) for length in lengths])[None]
        cu_seqlens = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "cu_seqlens": cu_seqlens}
    length = max(lengths)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for index, (ids, row_labels) in enumerate(sequences):
        input_ids[index, : len(ids)] = torch.as_tensor(ids)
        labels[index, : len(ids)] = torch.as_tensor(row_labels)
        attention_mask[index, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _float_column(rows: Sequence[dict], key: str) -> torch.Tensor | None:
    if key not in rows[0]:
        return None
    return torch.tensor([float(row[key]) for row in rows], dtype=torch.float32)


@dataclass
class PreferenceCollator:
    """Pair rows -> one batch of 2B sequences, chosen then rejected (layouts in the module docstring).

    ``packed=True`` concatenates all 2B sequences into one row with ``cu_seqlens`` (padding-free: no padding
    tokens at all); ``pad_to_multiple_of`` applies to padded batches only.
    """

    pad_token_id: int
    packed: bool = False
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        sequences = [
            (row[f"{kind}_input_ids"], row[f"{kind}_labels"]) for kind in ("chosen", "rejected") for row in rows
        ]
        batch = _batch_sequences(sequences, self.pad_token_id, self.packed, self.pad_to_multiple_of)
        for key in ("margin", "ref_chosen_logps", "ref_rejected_logps"):
            value = _float_column(rows, key)
            if value is not None:
                batch[key] = value
        return batch


@dataclass
class UnpairedCollator:
    """KTO rows -> the batch of B sequences and its KL batch (``kl_`` keys), same layout (module docstring)."""

    pad_token_id: int
    packed: bool = False
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch = _batch_sequences(
            [(row["input_ids"], row["labels"]) for row in rows], self.pad_token_id, self.packed, self.pad_to_multiple_of
        )
        kl = _batch_sequences(
            [(row["kl_input_ids"], row["kl_labels"]) for row in rows],
            self.pad_token_id,
            self.packed,
            self.pad_to_multiple_of,
        )
        batch.update({f"kl_{key}": value for key, value in kl.items()})
        batch["desirable"] = torch.tensor([bool(row["desirable"]) for row in rows], dtype=torch.bool)
        for key in ("ref_logps", "ref_kl_logps"):
            value = _float_column(rows, key)
            if value is not None:
                batch[key] = value
        return batch
