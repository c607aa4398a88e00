"""Packed rows train exactly like the same examples unpadded: the trainer relies on it.

A tiny random Llama (hidden 32, 2 layers) sees a batch of packed rows (PackedCollator: position_ids, no
attention_mask) and the same examples one per row (PaddedCollator). Every example's logits must match, and the
summed loss must match: which holds only if attention stays inside each example AND no example's first token is
predicted from the previous example's last one (its label is -100 in the packed row; unpacked, position 0 is
never predicted). The examples here put labels on every token, so a missing boundary mask would show.
Tolerance 1e-5: float32, the only difference is the order of the attention reductions.
"""

import random

import datasets
import pytest
import torch
import torch.nn.functional as F
from data_helpers import demo_tokenizer
from tiny_models import TINY_SHAPE
from transformers import LlamaConfig, LlamaForCausalLM

from fastalign.data import CPTOptions, PackedCollator, PaddedCollator, build_cpt_dataset
from fastalign.data.packing import pack_examples

IGNORE = -100
PAD = 0


def tiny_llama(attn_implementation: str, vocab_size: int = 128) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=256, **TINY_SHAPE)
    config._attn_implementation = attn_implementation
    return LlamaForCausalLM(config).eval()


def random_examples(count: int, seed: int) -> list[dict]:
    """Examples of 2-20 tokens; half train on every token (a prompt-less worst case), half on a suffix only."""
    rng = random.Random(seed)
    examples = []
    for index in range(count):
        input_ids = [rng.randrange(1, 128) for _ in range(rng.randint(2, 20))]
        prompt_length = 0 if index % 2 else rng.randrange(len(input_ids))
        examples.append({"input_ids": input_ids, "labels": [IGNORE] * prompt_length + input_ids[prompt_length:]})
    return examples


def summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of token losses; logits [b, s, v] at t predict labels [b, s] at t + 1 (the causal-LM shift)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction="sum")


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_batch_matches_unpacked_examples(attn_implementation, fresh_seed):
    model = tiny_llama(attn_implementation)
    examples = random_examples(12, fresh_seed)
    packed_rows, packed_count = pack_examples(datasets.Dataset.from_list(examples), max_length=48)
    assert packed_count > 0
    packed = PackedCollator(PAD)(list(packed_rows))
    unpacked = PaddedCollator(PAD)(examples)
    assert "attention_mask" not in packed

    with torch.no_grad():
        # use_cache=False: a KV cache turns off transformers' packed-sequence detection (see PackedCollator).
        packed_out = model(**packed, use_cache=False)
        unpacked_out = model(**unpacked, use_cache=False)

    torch.testing.assert_close(
        summed_loss(packed_out.logits, packed["labels"]),
        summed_loss(unpacked_out.logits, unpacked["labels"]),
        rtol=1e-5,
        atol=1e-5,
    )
    torch.testing.assert_close(packed_out.loss, unpacked_out.loss, rtol=1e-5, atol=1e-5)  # same token count: same mean

    example_index = 0
    for row_index, row in enumerate(packed_rows):
        starts = [index for index, position in enumerate(row["position_ids"]) if position == 0]
        for start, end in zip(starts, [*starts[1:], len(row["input_ids"])]):
            torch.testing.assert_close(
                packed_out.logits[row_index, start:end],
                unpacked_out.logits[example_index, : end - start],
                rtol=1e-5,
                atol=1e-5,
            )
            example_index += 1
    assert example_index == len(examples)


def test_cpt_blocks_with_document_boundaries_match_documents_run_alone():
    tokenizer = demo_tokenizer()
    model = tiny_llama("sdpa", vocab_size=len(tokenizer))
    texts = [
        "Hold the reset button for fifteen seconds.",
        "The hub connects to 2.4 GHz Wi-Fi only.",
        "Updates run at night.",
    ]
    (block,), _ = build_cpt_dataset(datasets.Dataset.from_dict({"text": texts}), tokenizer, CPTOptions(max_length=64))
    batch = PackedCollator(tokenizer.pad_token_id)([block])
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits[0]
        starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
        for start, end in zip(starts, [*starts[1:], len(block["input_ids"])]):
            alone = model(input_ids=batch["input_ids"][:, start:end], use_cache=False).logits[0]
            torch.testing.assert_close(logits[start:end], alone, rtol=1e-5, atol=1e-5)
