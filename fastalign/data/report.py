"""`DataReport`: what every data step did, in counts, so that nothing is dropped or changed silently."""

from dataclasses import dataclass, fields


@dataclass
class DataReport:
    """Counts from loading, preprocessing, tokenization and packing. A step that did not run stays None.

    Attributes:
        loaded: records that entered the pipeline.
        normalized: documents whose text the whitespace/unicode cleanup changed.
        empty_removed: documents shorter than `CleaningOptions.min_chars` after cleanup.
        exact_duplicates_removed: documents whose normalized text hash was already seen.
        near_duplicates_removed: documents whose MinHash Jaccard estimate to a kept one reached the threshold.
        pii_replacements: placeholders written, per scrubber name ("email", "phone", ...).
        examples: documents/examples left after tokenization and filtering.
        truncated: SFT examples cut to max_length and kept.
        dropped_too_long: SFT examples over max_length dropped by `overflow="drop"`.
        dropped_no_trainable_tokens: SFT examples with no label left to learn (e.g. the prompt fills max_length).
        rows: training rows produced (CPT blocks, SFT examples or packed SFT rows).
        packed_rows: rows holding more than one example/document.
        tokens: tokens in all rows (no padding).
        trainable_tokens: tokens with a label the model predicts (labels != -100, the first position excluded).
    """

    loaded: int | None = None
    normalized: int | None = None
    empty_removed: int | None = None
    exact_duplicates_removed: int | None = None
    near_duplicates_removed: int | None = None
    pii_replacements: dict[str, int] | None = None
    examples: int | None = None
    truncated: int | None = None
    dropped_too_long: int | None = None
    dropped_no_trainable_tokens: int | None = None
    rows: int | None = None
    packed_rows: int | None = None
    tokens: int | None = None
    trainable_tokens: int | None = None

    def merged(self, later: "DataReport") -> "DataReport":
        """A report of this step followed by `later`: each count comes from `later` where it ran, else from self;
        `loaded` stays the count that entered the first step."""
        values = {}
        for item in fields(self):
            later_value = getattr(later, item.name)
            values[item.name] = later_value if later_value is not None else getattr(self, item.name)
        if self.loaded is not None:
            values["loaded"] = self.loaded
        return DataReport(**values)

    def as_dict(self) -> dict[str, int | dict[str, int]]:
        """The counts of the steps that ran, in pipeline order (for logs and JSON output)."""
        return {item.name: getattr(self, item.name) for item in fields(self) if getattr(self, item.name) is not None}

    def __str__(self) -> str:
        lines = []
        for name, value in self.as_dict().items():
            label = name.replace("_", " ")
            if isinstance(value, dict):
                total = sum(value.values())
                detail = ", ".join(f"{kind} {count}" for kind, count in value.items())
                lines.append(f"{label:<30} {total:>10}" + (f"  ({detail})" if detail else ""))
            else:
                lines.append(f"{label:<30} {value:>10}")
        return "\n".join(lines)


def count_tokens(dataset) -> tuple[int, int]:
    """(tokens, trainable tokens) over the `input_ids`/`labels` rows of a tokenized `datasets.Dataset`.

    A label counts as trainable when it is not -100 and not at position 0, which the shifted loss never uses.
    """
    tokens = trainable = 0
    for batch in dataset.select_columns(["input_ids", "labels"]).iter(batch_size=1024):
        for input_ids, labels in zip(batch["input_ids"], batch["labels"]):
            tokens += len(input_ids)
            trainable += sum(label != -100 for label in labels[1:])
    return tokens, trainable
