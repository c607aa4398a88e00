"""`preprocess_corpus`: the CPT corpus preprocessing of the domain-adaptation playbook, every step counted.

Steps, in order, each switchable in `CleaningOptions`: cleanup (`normalize_text`) -> drop too-short documents ->
exact dedup -> near dedup (MinHash/LSH) -> PII scrubbing. Deduplication runs before scrubbing so that no time is
spent scrubbing documents that are then dropped.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets

from fastalign.data.deduplication import find_exact_duplicates, find_near_duplicates
from fastalign.data.formats import validate_dataset
from fastalign.data.pii import PII_SCRUBBERS, PIIScrubber, RegexScrubber
from fastalign.data.report import DataReport
from fastalign.data.text_cleanup import normalize_text


@dataclass
class CleaningOptions:
    """Which preprocessing steps run, and their settings (maps one to one onto the YAML `data.cleaning` section).

    Attributes:
        normalize_text: NFC, control characters removed, runs of spaces and blank lines collapsed.
        min_chars: documents shorter than this after cleanup are removed (1 removes empty documents).
        exact_dedup: drop documents whose casefolded, whitespace-collapsed text was already seen.
        near_dedup: drop documents whose estimated word-shingle Jaccard similarity to a kept one is
            >= `near_dedup_threshold`.
        minhash_permutations: MinHash signature size (more: a finer estimate, more time and memory).
        shingle_words: words per shingle for near dedup.
        scrub_pii: replace personal data with placeholders.
        pii_kinds: built-in scrubbers to use, names from `PII_SCRUBBERS` ("email", "credit_card", "ip_address",
            "phone"); they run in that registry order.
        extra_pii_patterns: more kinds as {name: regex}; replaced by "<NAME>" (YAML-friendly).
        extra_pii_scrubbers: more scrubbers as objects with `.name` and `.scrub(text) -> (text, count)`.
    """

    normalize_text: bool = True
    min_chars: int = 1
    exact_dedup: bool = True
    near_dedup: bool = True
    near_dedup_threshold: float = 0.8
    minhash_permutations: int = 128
    shingle_words: int = 3
    scrub_pii: bool = True
    pii_kinds: Sequence[str] = tuple(PII_SCRUBBERS)
    extra_pii_patterns: dict[str, str] = field(default_factory=dict)
    extra_pii_scrubbers: Sequence[PIIScrubber] = ()

    def scrubbers(self) -> list[PIIScrubber]:
        """The scrubbers these options select, in the order they run."""
        unknown = [kind for kind in self.pii_kinds if kind not in PII_SCRUBBERS]
        if unknown:
            raise ValueError(f"unknown PII kinds {unknown}; built-in kinds are {list(PII_SCRUBBERS)}")
        built_in = [scrubber for name, scrubber in PII_SCRUBBERS.items() if name in self.pii_kinds]
        from_patterns = [RegexScrubber(name, pattern) for name, pattern in self.extra_pii_patterns.items()]
        return built_in + from_patterns + list(self.extra_pii_scrubbers)


def preprocess_corpus(
    dataset: datasets.Dataset, options: CleaningOptions | None = None
) -> tuple[datasets.Dataset, DataReport]:
    """Clean, deduplicate and PII-scrub the `text` column of a CPT corpus.

    Args:
        dataset: records with a string column `text` (other columns are carried along).
        options: the steps to run; default `CleaningOptions()` (all of them).

    Returns:
        The kept records (same columns, original order) and a report with a count for every step that ran.
    """
    options = options or CleaningOptions()
    validate_dataset(dataset, "text")
    report = DataReport(loaded=len(dataset))

    if options.normalize_text:
        changed = 0

        def normalize_batch(batch):
            nonlocal changed
            cleaned = [normalize_text(text) for text in batch["text"]]
            changed += sum(old != new for old, new in zip(batch["text"], cleaned))
            return {"text": cleaned}

        # load_from_cache_file=False: the counts above are only right when the function really runs.
        dataset = dataset.map(normalize_batch, batched=True, load_from_cache_file=False, desc="cleanup")
        report.normalized = changed

    if options.min_chars > 0:
        kept = len(dataset)
        dataset = dataset.filter(
            lambda batch: [len(text) >= options.min_chars for text in batch["text"]], batched=True, desc="length"
        )
        report.empty_removed = kept - len(dataset)

    if options.exact_dedup:
        duplicates = find_exact_duplicates(_texts(dataset))
        dataset = _without(dataset, duplicates)
        report.exact_duplicates_removed = len(duplicates)

    if options.near_dedup:
        duplicates = find_near_duplicates(
            _texts(dataset),
            threshold=options.near_dedup_threshold,
            num_permutations=options.minhash_permutations,
            shingle_words=options.shingle_words,
        )
        dataset = _without(dataset, duplicates)
        report.near_duplicates_removed = len(duplicates)

    if options.scrub_pii:
        scrubbers = options.scrubbers()
        replacements = Counter({scrubber.name: 0 for scrubber in scrubbers})

        def scrub_batch(batch):
            texts = []
            for text in batch["text"]:
                for scrubber in scrubbers:
                    text, count = scrubber.scrub(text)
                    replacements[scrubber.name] += count
                texts.append(text)
            return {"text": texts}

        dataset = dataset.map(scrub_batch, batched=True, load_from_cache_file=False, desc="PII scrubbing")
        report.pii_replacements = dict(replacements)

    report.examples = len(dataset)
    return dataset, report


def _texts(dataset: datasets.Dataset):
    for batch in dataset.select_columns(["text"]).iter(batch_size=1024):
        yield from batch["text"]


def _without(dataset: datasets.Dataset, dropped: list[int]) -> datasets.Dataset:
    if not dropped:
        return dataset
    dropped_set = set(dropped)
    return dataset.select([index for index in range(len(dataset)) if index not in dropped_set])
