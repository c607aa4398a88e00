"""Peak memory and step time of TRL 1.16's trainers with and without ``fastalign.integrations.trl.patch_trl()``.

A Llama-style model with a large vocabulary (default V=128256, D=256, 2 layers, full fine-tuning, float32, CPU)
trains 3 SGD steps of each trainer on sequences of ~256 tokens (a quarter prompt), 4 per step (DPO, ORPO, CPO: 2
pairs; KTO: 4 unpaired examples, plus their KL batch; SFT: 4 texts). Each (trainer, mode) runs in a fresh process:

- ``trl``: the trainer as TRL ships it (DPO/KTO/SFT: TRL's own chunked fused LM head; ORPO/CPO: full logits);
- ``fastalign``: the same after ``patch_trl()`` (exact metrics, i.e. with the metric-only no-grad sweep);
- ``fastalign-no-metrics`` (only with ``--modes``): ``patch_trl(exact_metrics=False)``, no metric sweep.

Reported per mode: peak resident set size (VmHWM, reset after the first step) above the resident memory before the
second step, and the fastest of steps 2-3 (step 1 warms up allocators) in wall-clock and in process CPU time (both
noisy on a shared machine: compare several runs). Same model, data and optimizer in both.

    python benchmarks/bench_integrations.py --modes trl fastalign fastalign-no-metrics \
        --out benchmarks/results/cpu/integrations.json                     # ~17 min on 2 cores
    python benchmarks/bench_integrations.py --trainers sft --modes trl fastalign fastalign-no-metrics
    python benchmarks/bench_integrations.py --trainers dpo orpo --vocab 32000 --tokens 64     # a quick look
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import string
import sys
import time
import warnings

from step_bench import status_kib, step_model_config

TRAINERS = ("dpo", "kto", "sft", "orpo", "cpo")
MODES = ("trl", "fastalign", "fastalign-no-metrics")


def _tokenizer():
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({c: i + 4 for i, c in enumerate(string.ascii_lowercase + " .,?!")})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _text(length: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_lowercase + "    .") for _ in range(length))


def _trainer(name: str, model, tokenizer, settings: dict, step_callback):
    import datasets
    import trl

    n = 16
    prompt, completion = settings["tokens"] // 4, settings["tokens"] * 3 // 4 - 2
    prompts = [_text(prompt, i) for i in range(n)]
    chosen = [_text(completion, 100 + i) for i in range(n)]
    rejected = [_text(completion, 200 + i) for i in range(n)]
    common = dict(
        output_dir="/tmp/fastalign-bench-integrations",
        max_steps=3,
        per_device_train_batch_size=2 if name in ("dpo", "orpo", "cpo") else 4,
        learning_rate=1e-3,
        optim="sgd",
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        logging_steps=100,
        seed=0,
    )
    pairs = datasets.Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})
    kwargs = dict(model=model, processing_class=tokenizer, callbacks=[step_callback])
    if name == "dpo":
        return trl.DPOTrainer(
            args=trl.DPOConfig(**common), ref_model=copy.deepcopy(model), train_dataset=pairs, **kwargs
        )
    if name == "kto":
        unpaired = datasets.Dataset.from_dict(
            {"prompt": prompts * 2, "completion": chosen + rejected, "label": [True] * n + [False] * n}
        )
        return trl.KTOTrainer(
            args=trl.KTOConfig(**common), ref_model=copy.deepcopy(model), train_dataset=unpaired, **kwargs
        )
    if name == "sft":
        texts = datasets.Dataset.from_dict({"text": [p + c for p, c in zip(prompts, chosen)]})
        return trl.SFTTrainer(args=trl.SFTConfig(**common), train_dataset=texts, **kwargs)
    max_length = {"max_length": settings["tokens"] + 8}
    if name == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer(args=ORPOConfig(**common, **max_length), train_dataset=pairs, **kwargs)
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    return CPOTrainer(args=CPOConfig(**common, **max_length), train_dataset=pairs, **kwargs)


def _run(name: str, mode: str, settings: dict, results) -> None:
    warnings.filterwarnings("ignore")
    import torch
    import transformers

    from fastalign.integrations.trl import patch_trl

    torch.set_num_threads(settings["threads"])
    if mode != "trl":
        patch_trl(exact_metrics=mode == "fastalign")
    torch.manual_seed(0)
    config = step_model_config(settings, 2 * settings["tokens"], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(config)

    class StepProbe(transformers.TrainerCallback):
        def __init__(self):
            self.times, self.cpu_times, self.before, self.start, self.cpu_start = [], [], None, None, None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:  # after the warm-up step: reset the peak to the current RSS
                self.before = status_kib("VmRSS")
                with open("/proc/self/clear_refs", "w") as clear_refs:
                    clear_refs.write("5")
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)
            self.cpu_times.append(time.process_time() - self.cpu_start)

    probe = StepProbe()
    trainer = _trainer(name, model, _tokenizer(), settings, probe)
    trainer.train()
    results.put(
        {
            "trainer": name,
            "mode": mode,
            "peak_mib": (status_kib("VmHWM") - probe.before) / 1024,
            "step_s": min(probe.times[1:]),
            "step_cpu_s": min(probe.cpu_times[1:]),
        }
    )


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainers", nargs="+", choices=TRAINERS, default=list(TRAINERS))
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per sequence (prompt: a quarter)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["trl", "fastalign"], help="trl always runs")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    settings = {k: getattr(args, k) for k in ("vocab", "dim", "layers", "tokens", "threads")}

    context = multiprocessing.get_context("spawn")
    rows = []
    for name in args.trainers:
        row = {"trainer": name}
        for mode in ["trl"] + [m for m in args.modes if m != "trl"]:
            results = context.Queue()
            process = context.Process(target=_run, args=(name, mode, settings, results))
            process.start()
            result = results.get()
            process.join()
            for key in ("peak_mib", "step_s", "step_cpu_s"):
                row[f"{mode}_{key}"] = result[key]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    modes = [m for m in args.modes if m != "trl"]
    import trl

    print(f"\nTRL {trl.__version__} vs patch_trl(), CPU ({os.cpu_count()} cores, {args.threads} threads): {settings}\n")
    header = ["trainer", "TRL peak (MiB)", "TRL step (s)", "TRL step CPU (s)"]
    for mode in modes:
        header += [f"{mode} peak (MiB)", "memory ratio", f"{mode} step (s)", "speedup", "CPU (s)", "CPU speedup"]
    print("| " + " | ".join(header) + " |")
    print("| --- |" + " ---: |" * (len(header) - 1))
    for r in rows:
        cells = [r["trainer"], f"{r['trl_peak_mib']:.0f}", f"{r['trl_step_s']:.2f}", f"{r['trl_step_cpu_s']:.2f}"]
        for mode in modes:
            peak, step = r[f"{mode}_peak_mib"], r[f"{mode}_step_s"]
            cells += [
                f"{peak:.0f}",
                f"{peak / r['trl_peak_mib']:.2f}x",
                f"{step:.2f}",
                f"{r['trl_step_s'] / step:.2f}x",
                f"{r[f'{mode}_step_cpu_s']:.2f}",
                f"{r['trl_step_cpu_s'] / r[f'{mode}_step_cpu_s']:.2f}x",
            ]
        print("| " + " | ".join(cells) + " |")
    if args.out:
        with open(args.out, "w") as out:
            json.dump({"settings": settings, "rows": rows}, out, indent=2)
    return rows


if __name__ == "__main__":
    main()
