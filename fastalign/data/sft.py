"""`build_sft_dataset`: SFT records -> input_ids and labels with the loss on the completion (assistant) tokens.

Every format is first rendered to one text plus the character spans to train on (the completion, or each
assistant turn). The text is tokenized once, with offsets, and a token is trained when it starts inside a span.
Tokenizing the full text (rather than prompt and completion apart) gives the exact tokens the model sees at
inference, whatever the tokenizer does at the prompt/completion boundary.
"""

from dataclasses import dataclass, field

import datasets
from transformers import PreTrainedTokenizerBase

from fastalign.data.chat_spans import render_chat_with_assistant_spans
from fastalign.data.formats import SFT_FORMATS, resolve_format, validate_dataset
from fastalign.data.instruction_template import InstructionTemplate
from fastalign.data.packing import IGNORE_INDEX, pack_examples
from fastalign.data.report import DataReport, count_tokens

OVERFLOW_POLICIES = ("truncate", "drop")


@dataclass
class SFTOptions:
    """How SFT records become training rows (maps one to one onto the YAML `data.sft` section).

    Attributes:
        max_length: the longest example (and packed row), in tokens.
        format: "auto" (from the columns), "prompt_completion", "messages" or "instruction".
        instruction_template: section headers of the "instruction" format (a dict of its fields is converted).
        train_on_prompt: also put the loss on prompt / system / user tokens (default: completions only).
        overflow: an example longer than max_length is either cut to its first max_length tokens
            ("truncate": the prompt start is kept, the completion cut; an example whose prompt alone fills
            max_length has nothing left to train and is dropped) or dropped whole ("drop").
        packing: pack several examples per row (position_ids restart per example); use `PackedCollator`.
    """

    max_length: int = 1024
    format: str = "auto"
    instruction_template: InstructionTemplate = field(default_factory=InstructionTemplate)
    train_on_prompt: bool = False
    overflow: str = "truncate"
    packing: bool = False

    def __post_init__(self):
        if isinstance(self.instruction_template, dict):  # from a YAML config section
            self.instruction_template = InstructionTemplate(**self.instruction_template)
        if self.overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {self.overflow!r}")
        if self.max_length < 2:
            raise ValueError(
                f"max_length must be at least 2 (one input and one predicted token), got {self.max_length}"
            )


def _render(
    record: dict, format_name: str, tokenizer, template: InstructionTemplate
) -> tuple[str, list[tuple[int, int]]]:
    """The text of one record and the character spans of its completion / assistant turns."""
    if format_name == "messages":
        return render_chat_with_assistant_spans(tokenizer, record["messages"])
    if format_name == "instruction":
        prompt, completion = template.render_prompt(record["instruction"], record.get("context")), record["response"]
    else:
        prompt, completion = record["prompt"], record["completion"]
    return prompt + completion, [(len(prompt), len(prompt) + len(completion))]


def build_sft_dataset(
    dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, options: SFTOptions | None = None
) -> tuple[datasets.Dataset, DataReport]:
    """Tokenize SFT records into training rows.

    Args:
        dataset: records in one of the SFT formats (see `fastalign.data.formats`).
        tokenizer: a fast tokenizer (offsets are needed) with an EOS token, and a chat template for "messages".
        options: see `SFTOptions`; default `SFTOptions()`.

    Returns:
        Rows with input_ids and labels [n] (labels = input_ids on trained tokens, -100 elsewhere; not shifted),
        plus position_ids [n] when packing; and the report (examples, truncated, dropped, rows, tokens).
        Completions (prompt_completion, instruction) end with EOS, which is trained; chat turns end however the
        chat template ends them. Order is kept.
    """
    options = options or SFTOptions()
    if not tokenizer.is_fast:
        raise ValueError("build_sft_dataset needs a fast tokenizer: label masks come from its offset mapping")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token, which must end every completion")
    format_name = resolve_format(options.format, dataset.column_names)
    if format_name not in SFT_FORMATS:
        raise ValueError(f"build_sft_dataset takes the formats {SFT_FORMATS}; got {format_name!r} data")
    validate_dataset(dataset, format_name)
    report = DataReport(loaded=len(dataset), truncated=0, dropped_too_long=0, dropped_no_trainable_tokens=0)
    # Chat templates write their own BOS (and turn ends); plain prompt/completion text gets the tokenizer's BOS
    # convention and an explicit EOS.
    is_chat = format_name == "messages"
    eos = tokenizer.eos_token_id

    def tokenize_batch(batch: dict[str, list]) -> dict[str, list]:
        records = [dict(zip(batch, values)) for values in zip(*batch.values())]
        texts, spans = zip(
            *(_render(record, format_name, tokenizer, options.instruction_template) for record in records)
        )
        encoded = tokenizer(
            list(texts), add_special_tokens=not is_chat, return_offsets_mapping=True, return_special_tokens_mask=True
        )
        rows = {"input_ids": [], "labels": []}
        for input_ids, offsets, special, trained_spans in zip(
            encoded["input_ids"], encoded["offset_mapping"], encoded["special_tokens_mask"], spans
        ):
            labels = [
                token
                if options.train_on_prompt or (not added and any(s <= start < e for s, e in trained_spans))
                else IGNORE_INDEX
                for token, (start, _), added in zip(input_ids, offsets, special)
            ]
            if not is_chat:
                if input_ids and input_ids[-1] == eos and special[-1]:  # the tokenizer appended EOS itself
                    labels[-1] = eos
                else:
                    input_ids, labels = input_ids + [eos], labels + [eos]
            truncated = len(input_ids) > options.max_length
            if truncated:
                if options.overflow == "drop":
                    report.dropped_too_long += 1
                    continue
                input_ids, labels = input_ids[: options.max_length], labels[: options.max_length]
            if all(label == IGNORE_INDEX for label in labels[1:]):  # position 0 is never predicted
                report.dropped_no_trainable_tokens += 1
                continue
            report.truncated += truncated
            rows["input_ids"].append(input_ids)
            rows["labels"].append(labels)
        return rows

    # load_from_cache_file=False: the report's counts are only right when the function really runs.
    examples = dataset.map(
        tokenize_batch, batched=True, remove_columns=dataset.column_names, load_from_cache_file=False, desc="tokenizing"
    )
    report.examples = len(examples)
    if options.packing:
        examples, report.packed_rows = pack_examples(examples, options.max_length)
    report.rows = len(examples)
    report.tokens, report.trainable_tokens = count_tokens(examples)
    return examples, report
