"""LM-head shapes of the models the benchmarks are sized after: hidden size D, vocabulary V, final-logit softcap.

    python benchmarks/heads.py                 # the table
    from heads import HEADS; HEADS["llama3-8b"].dim

A head is all a fused linear cross-entropy sees of a model: logits = hidden [N, D] @ weight[V, D].T. The logits a
naive loss materialises are N * V * 4 bytes in float32, so V decides who runs out of memory first (Gemma-2's 256k
vocabulary: 1 GiB per 1k tokens). Sizes from each model's config.json on the Hugging Face Hub.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Head:
    name: str
    dim: int  # D: hidden_size
    vocab: int  # V: vocab_size
    softcap: float | None = None  # final_logit_softcapping: logits -> softcap * tanh(logits / softcap)

    def logits_bytes(self, tokens: int, bytes_per_value: int = 4) -> int:
        """Bytes of the [tokens, V] logits a naive loss materialises (float32 by default)."""
        return tokens * self.vocab * bytes_per_value


HEADS = {
    h.name: h
    for h in (
        Head("llama2-7b", dim=4096, vocab=32000),
        Head("llama3-8b", dim=4096, vocab=128256),
        Head("qwen2.5-7b", dim=3584, vocab=152064),
        Head("gemma2-2b", dim=2304, vocab=256000, softcap=30.0),
    )
}


def get_head(name: str) -> Head:
    try:
        return HEADS[name]
    except KeyError:
        raise SystemExit(f"unknown head {name!r}; choose from {', '.join(HEADS)}") from None


def head_args(name: str) -> list[str]:
    """The size flags the bench_*.py scripts take for this head (the softcap is not forwarded: see README)."""
    head = get_head(name)
    return ["--dim", str(head.dim), "--vocab", str(head.vocab)]


if __name__ == "__main__":
    print(f"{'head':<12} {'D':>6} {'V':>7} {'softcap':>7} {'fp32 logits / 16k tokens':>25}")
    for h in HEADS.values():
        print(f"{h.name:<12} {h.dim:>6} {h.vocab:>7} {h.softcap or '-':>7} {h.logits_bytes(16384) / 2**30:>22.1f} GiB")
