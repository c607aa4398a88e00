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
    python benchmarks/bench_sft_step.py --device cuda --quantization nf4 --dtype bfloat16 --warmup 1 --out DIR/f.json

``--device cuda --quantization nf4`` is the QLoRA step: the model is saved and reloaded through
``fastalign.modeling.load_model`` (bitsandbytes 4-bit NormalFloat base, LoRA r=16 on all linear layers, head frozen
and unquantized), and the memory is the CUDA allocator's: ``max_memory_allocated()`` over the step above
``memory_allocated()`` before it. ``--warmup N`` runs N untimed steps first (on a GPU the first step compiles the
Triton kernels). With ``--out`` the JSON is rewritten after each method, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time

from step_bench import status_kib, step_model_config


def _one_step(method: str, settings: dict, results) -> None:
    import peft
    import torch
    import transformers

    from fastalign.config import LoraConfig, ModelConfig
    from fastalign.modeling import load_model
    from fastalign.training import next_token_loss

    device, cuda = settings["device"], settings["device"] == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    torch.manual_seed(0)
    config = step_model_config(settings, settings["tokens"])
    model = transformers.LlamaForCausalLM(config)
    if settings["quantization"] == "none":
        model = model.to(device=device, dtype=getattr(torch, settings["dtype"]))
        model = peft.get_peft_model(model, peft.LoraConfig(r=16, target_modules="all-linear", lora_dropout=0.0))
    else:  # quantized while loading onto the device, as fastalign's trainer loads a model
        with tempfile.TemporaryDirectory(prefix="bench_sft_step_") as folder:
            model.save_pretrained(folder)
            lora = LoraConfig(r=16, dropout=0.0, target_modules="all-linear")
            model = load_model(ModelConfig(name_or_path=folder, dtype=settings["dtype"],
                                           quantization=settings["quantization"], lora=lora))  # fmt: skip
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    input_ids = torch.randint(0, settings["vocab"], (1, settings["tokens"]))
    labels = input_ids.clone()
    labels[:, : settings["tokens"] // 4] = -100
    inputs = {"input_ids": input_ids.to(device), "labels": labels.to(device)}

    def step():
        loss = model(**inputs).loss if method == "hf" else next_token_loss(model, inputs, num_items_in_batch=None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(settings["warmup"]):
        step()
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated() // 1024
        torch.cuda.reset_peak_memory_stats()
    else:
        before = status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset the peak resident set size (VmHWM) to the current one
    start = time.perf_counter()
    loss = step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() // 1024 if cuda else status_kib("VmHWM")
    results.put({"method": method, "loss": loss.item(), "seconds": seconds, "peak_mib": peak / 1024,
                 "step_peak_mib": (peak - before) / 1024, "before_mib": before / 1024})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--quantization",
        choices=("none", "nf4", "int8"),
        default="none",
        help="nf4: QLoRA (bitsandbytes 4-bit base through fastalign.modeling.load_model)",
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps before the measured one")
    parser.add_argument("--out", help="write the results as JSON here (rewritten after each method)")
    args = parser.parse_args()
    keys = ("vocab", "dim", "tokens", "layers", "device", "quantization", "dtype", "warmup")
    settings = {k: getattr(args, k) for k in keys}

    context = multiprocessing.get_context("spawn")
    rows = []
    for method in ("hf", "fastalign"):
        results = context.Queue()
        process = context.Process(target=_one_step, args=(method, settings, results))
        process.start()
        process.join()  # the row is a few numbers: it fits the queue's pipe, so joining first cannot block
        if process.exitcode != 0:
            raise SystemExit(f"the {method} step failed (exit {process.exitcode}); its traceback is above")
        rows.append(results.get())
        if args.out:  # after each method, so a run stopped by a time limit keeps what it measured
            with open(args.out, "w") as f:
                json.dump({"settings": settings, "results": rows, "complete": False}, f, indent=2)
    print(f"one LoRA SFT step, {settings}")
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
            json.dump({"settings": settings, "results": rows, "step_peak_ratio": ratio, "complete": True}, f, indent=2)


if __name__ == "__main__":
    main()
