"""fastalign.data: load, clean, tokenize and pack training data for continued pre-training (CPT) and SFT.

Pipeline, one function per stage (every stage returns its output and a `DataReport` of what it did)::

    from fastalign.data import (
        CleaningOptions, CPTOptions, SFTOptions, PackedCollator, PaddedCollator,
        load_records, preprocess_corpus, build_cpt_dataset, build_sft_dataset, train_demo_tokenizer, demo_data_path,
    )

    # CPT: a `text` column -> cleaned, deduplicated, PII-scrubbed -> tokenized blocks of max_length tokens
    raw = load_records("corpus.jsonl")                                   # datasets.Dataset
    clean, report = preprocess_corpus(raw, CleaningOptions())           # report counts every step
    blocks, tok_report = build_cpt_dataset(clean, tokenizer, CPTOptions(max_length=512))
    report = report.merged(tok_report); print(report)                   # what `fastalign data prepare` prints

    # SFT: prompt/completion, messages, or instruction/context/response -> input_ids + labels (-100 = no loss)
    examples, report = build_sft_dataset(load_records("sft.jsonl"), tokenizer, SFTOptions(max_length=1024))

    # Batching: rows with `position_ids` (packed) -> PackedCollator, else PaddedCollator
    collator = PackedCollator(tokenizer.pad_token_id) if "position_ids" in examples.column_names \
        else PaddedCollator(tokenizer.pad_token_id)

Loading
    `load_records(source, *, split=None, format="auto") -> datasets.Dataset`
        source: a .jsonl/.json/.csv/.parquet file, a directory written by `Dataset.save_to_disk` /
        `DatasetDict.save_to_disk`, or a Hugging Face hub dataset name (online only; goes through
        `datasets.load_dataset`). split: for DatasetDicts and hub datasets (default "train"); any `datasets`
        split expression ("train[:1000]") works. format: "auto" (detect from the columns), one of
        `DATA_FORMATS` ("text", "prompt_completion", "messages", "instruction") or None (no validation).
        Malformed input raises `DataFormatError` (a ValueError) naming the file, line/row and problem, e.g.
        ``data.jsonl line 7: expected a string in column 'completion', got int``; a missing file raises
        FileNotFoundError.
    `detect_format(column_names) -> str` which of `DATA_FORMATS` a set of columns is. One format per dataset.

CPT preprocessing (each step optional, all counted in the report)
    `preprocess_corpus(dataset, options=CleaningOptions()) -> (Dataset, DataReport)` (on the `text` column)
    `CleaningOptions` (dataclass): normalize_text (NFC, control chars, runs of spaces/blank lines),
        exact_dedup, near_dedup (MinHash/LSH, `near_dedup_threshold` Jaccard, `minhash_permutations`,
        `shingle_words`), scrub_pii, `pii_kinds` (names from `PII_SCRUBBERS`: "email", "credit_card",
        "ip_address", "phone"; placeholders <EMAIL>, <CREDIT_CARD> (Luhn-checked), <IP_ADDRESS>, <PHONE>),
        `extra_pii_patterns` ({name: regex} -> "<NAME>", YAML-friendly) and `extra_pii_scrubbers` (objects with
        `.name` and `.scrub(text) -> (text, count)`, e.g. `RegexScrubber(name, pattern, placeholder, accept)`),
        min_chars.

Tokenization
    `build_cpt_dataset(dataset, tokenizer, options=CPTOptions()) -> (Dataset, DataReport)`
        `CPTOptions` (dataclass): max_length (block size), document_boundaries (default True).
        Documents are joined with EOS and cut into blocks of `max_length` tokens. Columns: input_ids, labels
        (and position_ids when `options.document_boundaries`: positions restart at 0 per document inside a
        block, so attention never crosses documents; use PackedCollator for those).
    `build_sft_dataset(dataset, tokenizer, options=SFTOptions()) -> (Dataset, DataReport)`
        `SFTOptions` (dataclass): max_length, format ("auto" | "prompt_completion" | "messages" |
        "instruction"), instruction_template (`InstructionTemplate` or a plain dict of its fields, for YAML:
        instruction_header "### Instruction:", context_header "### Context:", response_header "### Response:",
        preamble ""; the context section is left out when empty), train_on_prompt (False: loss on completions /
        assistant turns only), overflow ("truncate": keep the start, cut the completion; "drop": drop over-long
        examples), packing (several examples per row, greedy in order, position_ids restart per example).
        "messages" needs a chat template that renders prefix-stably (any template with or without
        {% generation %}); the assistant spans come from rendering the conversation prefix by prefix.
        Columns: input_ids, labels (and position_ids when packing). EOS ends every completion. Examples with no
        trainable token left are dropped and counted.
    Label convention: `labels` are aligned with `input_ids` (NOT shifted; the model shifts), -100 = no loss.
    In packed rows the first token of every example/document has label -100, so no example is predicted from
    the previous one's last token.

Collators (callables over a list of rows -> dict of LongTensors [batch, seq])
    `PaddedCollator(pad_token_id, pad_to_multiple_of=None)`: right padding; input_ids, attention_mask,
        labels (-100 on padding).
    `PackedCollator(pad_token_id, pad_to_multiple_of=None)`: input_ids, labels, position_ids, NO attention_mask
        (padding is appended as one more sequence with positions 0.. and labels -100, harmless):
        transformers (masking_utils.find_packed_sequence_indices) then builds a block-diagonal causal mask from
        the position_ids (eager and sdpa) -- ONLY when the model gets no attention_mask and no KV cache, so
        call it with `use_cache=False` (Llama configs default to use_cache=True, which creates a DynamicCache
        in forward and silently disables the detection: examples would attend across boundaries).

Preference data (reward, DPO, ORPO, KTO, CPO/SimPO): see `fastalign.data.preference` for the formats
    (prompt/chosen/rejected [+ margin], prompt/completion/label; strings or conversations), the row layouts and
    `PreferenceCollator` / `UnpairedCollator` (padded or packed pair batches, chosen rows then rejected rows).

Report
    `DataReport` (dataclass of counts; a step not run stays None): loaded, normalized, empty_removed,
    exact_duplicates_removed, near_duplicates_removed, pii_replacements ({kind: n}), examples, truncated,
    dropped_too_long, dropped_no_trainable_tokens, rows, packed_rows, tokens, trainable_tokens.
    `report.merged(later)` (e.g. preprocessing then tokenization; `loaded` stays the first step's),
    `report.as_dict()` (steps that ran, in order), `str(report)` (an aligned table for the CLI).
    Tokens exclude padding; trainable_tokens exclude position 0 of each row (never predicted).

Demo assets and tokenizer
    `demo_data_path(name) -> pathlib.Path` for the bundled files in fastalign/assets/: "cpt_train", "cpt_eval",
        "sft_train", "sft_eval", "sft_messages", "sft_instructions" (all JSONL).
    `train_demo_tokenizer(out_dir, vocab_size=2048) -> PreTrainedTokenizerFast`: a byte-level BPE trained on
        the bundled text in ~2 s (vocab ~1.9k: the small corpus saturates), special tokens <s> (prepended by
        `tokenizer(text)`) </s> <pad> <unk>, chat template `DEMO_CHAT_TEMPLATE`; saved to out_dir and loadable
        with `AutoTokenizer.from_pretrained(out_dir)`.
"""

from fastalign.data.collators import PackedCollator, PaddedCollator
from fastalign.data.cpt import CPTOptions, build_cpt_dataset
from fastalign.data.demo_assets import DEMO_DATA_FILES, demo_data_path
from fastalign.data.errors import DataFormatError
from fastalign.data.formats import DATA_FORMATS, detect_format
from fastalign.data.instruction_template import InstructionTemplate
from fastalign.data.loading import load_records
from fastalign.data.pii import PII_SCRUBBERS, PIIScrubber, RegexScrubber
from fastalign.data.preference import (
    PREFERENCE_FORMATS,
    PreferenceCollator,
    PreferenceOptions,
    UnpairedCollator,
    build_preference_dataset,
    build_unpaired_dataset,
    kto_balance,
    load_preference_records,
    unpair_preferences,
)
from fastalign.data.preprocess import CleaningOptions, preprocess_corpus
from fastalign.data.report import DataReport
from fastalign.data.sft import SFTOptions, build_sft_dataset
from fastalign.data.tokenizer import DEMO_CHAT_TEMPLATE, train_demo_tokenizer

__all__ = [
    "DATA_FORMATS",
    "DEMO_CHAT_TEMPLATE",
    "DEMO_DATA_FILES",
    "PII_SCRUBBERS",
    "PREFERENCE_FORMATS",
    "CPTOptions",
    "CleaningOptions",
    "DataFormatError",
    "DataReport",
    "InstructionTemplate",
    "PIIScrubber",
    "PackedCollator",
    "PaddedCollator",
    "PreferenceCollator",
    "PreferenceOptions",
    "RegexScrubber",
    "SFTOptions",
    "UnpairedCollator",
    "build_cpt_dataset",
    "build_preference_dataset",
    "build_sft_dataset",
    "build_unpaired_dataset",
    "demo_data_path",
    "detect_format",
    "kto_balance",
    "load_preference_records",
    "load_records",
    "preprocess_corpus",
    "train_demo_tokenizer",
    "unpair_preferences",
]
