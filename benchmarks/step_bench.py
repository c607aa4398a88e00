"""What the end-to-end step benchmarks (bench_sft_step, bench_trl_trainers, bench_integrations) share: the model
they train, built from a config (nothing is downloaded), and the process memory they read.

    from step_bench import status_kib, step_model_config
"""

from __future__ import annotations


def step_model_config(settings: dict, max_position_embeddings: int, **special_tokens):
    """A LlamaConfig sized by ``settings`` (``vocab``, ``dim``, ``layers``): an MLP 4x wide, heads of 64 dims."""
    import transformers  # in the worker process only: the parent never loads it

    return transformers.LlamaConfig(
        vocab_size=settings["vocab"],
        hidden_size=settings["dim"],
        intermediate_size=4 * settings["dim"],
        num_hidden_layers=settings["layers"],
        num_attention_heads=max(settings["dim"] // 64, 1),
        max_position_embeddings=max_position_embeddings,
        **special_tokens,
    )


def status_kib(field: str) -> int:
    """A field of /proc/self/status (VmHWM, VmRSS, ...) in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)
