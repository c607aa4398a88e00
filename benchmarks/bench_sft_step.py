"""Peak memory of one LoRA SFT step through fastalign vs. through the model's own logits, on CPU.

A Llama-style model with a large vocabulary (default V=128k, D=256, T=1024, 2 layers, LoRA r=16 on all linear
layers, head frozen) takes one optimizer step on a 1024-token sequence whose first quarter is prompt (no loss):

- ``hf``: ``model(input_ids, labels=labels).loss`` — transformers forms the [T, V] logits, upcasts them to float32
  and keeps them (and their gradient) for backward;
- ``fastalign``: ``fastalign.training.next_token_loss`` — backbone hidden states and the fused loss, no logits.

Each method runs in a fresh process; its peak resident set size (VmHWM, reset just before the step) is reported
above the resident memory before the step (model, optimizer and inputs are the same for both).

    python benchmarks/bench_sft_step.py                  # the default setting, ~1 min on 2 cores
    python benchmarks/bench_sft_step.py --vocab 32000 --tokens 512 --out results.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time

from step_bench import status_kib, step_model_config


def _one_step(method: str, settings: dict, results) -> None:
    import peft
    import torch
    import transformers

    from fastalign.training import next_token_loss

    torch.manual_seed(0)
    config = step_model_config(settings, settings["tokens"])
    model = transformers.LlamaForCausalLM(config)
    model = peft.get_peft_model(model, peft.LoraConfig(r=16, target_modules="all-linear", lora_dropout=0.0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    input_ids = torch.randint(0, settings["vocab"], (1, settings["tokens"]))
    labels = input_ids.clone()
    labels[:, : settings["tokens"] // 4] = -100
    inputs = {"input_ids": input_ids, "labels": labels}

    before = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the peak resident set size (VmHWM) to the current one
    start = time.perf_counter()
    loss = model(**inputs).loss if method == "hf" else next_token_loss(model, inputs, num_items_in_batch=None)
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    peak = status_kib("VmHWM")
    results.put({"method": method, "loss": loss.item(), "seconds": seconds, "peak_mib": peak / 1024,
                 "step_peak_mib": (peak - before) / 1024, "before_mib": before / 1024})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    settings = {k: getattr(args, k) for k in ("vocab", "dim", "tokens", "layers")}

    context = multiprocessing.get_context("spawn")
    rows = []
    for method in ("hf", "fastalign"):
        results = context.Queue()
        process = context.Process(target=_one_step, args=(method, settings, results))
        process.start()
        rows.append(results.get())
        process.join()
    print(f"one LoRA SFT step, CPU float32, {settings}")
    print(f"{'method':<10}{'loss':>10}{'seconds':>10}{'step peak MiB':>16}{'process peak MiB':>18}")
    for row in rows:
        print(f"{row['method']:<10}{row['loss']:>10.4f}{row['seconds']:>10.2f}{row['step_peak_mib']:>16.1f}"
              f"{row['peak_mib']:>18.1f}")  # fmt: skip
    hf, fused = rows
    ratio = fused["step_peak_mib"] / hf["step_peak_mib"]
    print(f"fastalign / hf, memory above the model and inputs: {ratio:.3f}x; whole process: "
          f"{fused['peak_mib'] / hf['peak_mib']:.3f}x")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"settings": settings, "results": rows, "step_peak_ratio": ratio}, f, indent=2)


if __name__ == "__main__":
    main()
