"""A plain PyTorch training loop on fastalign's functional API: SFT, then DPO, on a tiny model, CPU, seconds.

Nothing is downloaded: the model is built from a config and the data is random token ids. The loop reads top to
bottom; the three fastalign calls are

    hidden = last_hidden_states(model, input_ids, attention_mask)         # decoder output, the head is skipped
    loss = fastalign.linear_cross_entropy(hidden, head.weight, labels, shift=True, **head.options)      # SFT
    logps = fastalign.linear_logprobs(hidden[:, :-1], head.weight, labels[:, 1:], **head.options)      # DPO

so no ``[batch, tokens, vocab]`` logits exist at any point.

    python examples/plain_pytorch_loop.py
"""

import copy

import torch
import transformers

import fastalign
from fastalign.lm_head import last_hidden_states, lm_head_of
from fastalign.losses import dpo_loss

VOCAB, PROMPT, COMPLETION, BATCH, STEPS = 4096, 8, 24, 4, 20


def tiny_llama() -> transformers.PreTrainedModel:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config)


def sft_batch(generator: torch.Generator) -> dict:
    """Prompt + completion token ids; labels are -100 on the prompt (no loss there)."""
    input_ids = torch.randint(0, VOCAB, (BATCH, PROMPT + COMPLETION), generator=generator)
    input_ids[:, PROMPT:] = input_ids[:, PROMPT:] % 64  # a learnable pattern: completions use 64 tokens
    labels = input_ids.clone()
    labels[:, :PROMPT] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def sequence_logps(model, batch: dict) -> torch.Tensor:
    """Summed log-probs of each sequence's completion tokens, [N]."""
    hidden = last_hidden_states(model, batch["input_ids"], batch["attention_mask"])  # [N, T, D]
    head = lm_head_of(model)
    targets = batch["labels"][:, 1:]  # hidden[:, t] predicts token t + 1
    logps = fastalign.linear_logprobs(hidden[:, :-1], head.weight, targets, **head.options)  # [N, T-1], 0 if ignored
    return logps.sum(-1)


def main() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = tiny_llama().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    print("SFT: token-mean cross-entropy of the completions")
    for step in range(STEPS):
        batch = sft_batch(generator)
        hidden = last_hidden_states(model, batch["input_ids"], batch["attention_mask"])
        head = lm_head_of(model)
        loss = fastalign.linear_cross_entropy(hidden, head.weight, batch["labels"], shift=True, **head.options)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 5 == 0 or step == STEPS - 1:
            print(f"  step {step:2d}  loss {loss.item():.3f}")

    print("DPO: chosen completions use tokens 0-31, rejected ones 32-63")
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    for step in range(STEPS):
        chosen, rejected = sft_batch(generator), sft_batch(generator)
        chosen["input_ids"][:, PROMPT:] %= 32
        rejected["input_ids"][:, PROMPT:] = rejected["input_ids"][:, PROMPT:] % 32 + 32
        rejected["input_ids"][:, :PROMPT] = chosen["input_ids"][:, :PROMPT]  # same prompts
        for part in (chosen, rejected):
            part["labels"] = part["input_ids"].masked_fill(torch.arange(PROMPT + COMPLETION) < PROMPT, -100)
        both = {k: torch.cat([chosen[k], rejected[k]]) for k in chosen}  # [2B, T]: B chosen, then B rejected
        policy = sequence_logps(model, both)
        with torch.no_grad():
            ref = sequence_logps(reference, both)
        loss, metrics = dpo_loss(policy[:BATCH], policy[BATCH:], ref[:BATCH], ref[BATCH:], beta=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 5 == 0 or step == STEPS - 1:
            print(
                f"  step {step:2d}  loss {loss.item():.3f}  "
                f"reward margin {metrics['rewards/margins'].item():+.3f}  "
                f"accuracy {metrics['rewards/accuracies'].item():.2f}"
            )


if __name__ == "__main__":
    main()
