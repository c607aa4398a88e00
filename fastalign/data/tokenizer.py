"""`train_demo_tokenizer`: a small byte-level BPE tokenizer trained offline on the bundled demo text.

It lets the demo and the tests run without downloading a tokenizer. Byte-level BPE never needs <unk> (every byte
is in the alphabet); the token exists so that the tokenizer has the usual four special tokens.
"""

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from fastalign.data.demo_assets import demo_data_path

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}

# A role-tagged chat format. Assistant turns end with EOS and are wrapped in {% generation %} so that
# `apply_chat_template(..., return_assistant_tokens_mask=True)` works too; rendering is prefix-stable (a
# conversation's text starts with the text of each of its prefixes), which `build_sft_dataset` relies on.
DEMO_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def _demo_texts():
    """Every text in the bundled training files, the chat role markers included."""
    for name, columns in (("cpt_train", ("text",)), ("sft_train", ("prompt", "completion"))):
        with demo_data_path(name).open(encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                yield from (record[column] for column in columns)
    with demo_data_path("sft_messages").open(encoding="utf-8") as lines:
        for line in lines:
            for message in json.loads(line)["messages"]:
                yield f"<|{message['role']}|>\n{message['content']}"


def train_demo_tokenizer(out_dir: str | Path, vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the bundled demo data, save it to `out_dir` and load it back.

    Args:
        out_dir: directory to write (created if missing); `AutoTokenizer.from_pretrained(out_dir)` loads it.
        vocab_size: target vocabulary size, special tokens included; the demo corpus saturates near 1.9k.

    Returns:
        The tokenizer as loaded from `out_dir`: special tokens <s> (BOS, prepended by `tokenizer(text)`), </s>
        (EOS), <pad>, <unk>, and the chat template `DEMO_CHAT_TEMPLATE`.
    """
    bpe = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_demo_texts(), trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    bpe.post_processor = processors.Sequence(
        [
            # Untrimmed offsets: each token's character span includes its leading space, so that spans tile the
            # text and token-to-character alignment (used for SFT label masks) has no gaps.
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bpe.token_to_id(bos))]
            ),
        ]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, model_max_length=2048, **SPECIAL_TOKENS)
    tokenizer.chat_template = DEMO_CHAT_TEMPLATE
    tokenizer.save_pretrained(str(out_dir))
    return AutoTokenizer.from_pretrained(str(out_dir))
