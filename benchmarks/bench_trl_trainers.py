"""One training step of fastalign vs. TRL 1.16's preference trainers, side by side, on CPU.

The same tiny Llama with a large vocabulary (default V=128,256, hidden 256, 2 layers, LoRA r=16 on every linear
layer, LM head frozen), the same rows (B=2 pairs, or B=4 KTO examples with their KL batch, T=512 tokens per
sequence: a 128-token prompt and a 384-token completion) and the same optimizer (AdamW) run through:

    trl        DPOTrainer, ORPOTrainer (trl.experimental.orpo), KTOTrainer, CPOTrainer (trl.experimental.cpo): the
               model's logits [sequences, T, V] are formed, upcast and kept for backward;
    fastalign  FastAlignTrainer with objective dpo / orpo / kto / cpo (``--fastalign trainer``, the default), or
               the fused loss modules of fastalign.losses.fused driven by a minimal loop (``--fastalign fused``):
               hidden states and the frozen head go into one fused log-prob sweep, no logits.

DPO and KTO score the reference by disabling the LoRA adapter in both (no second model). Each (objective, method)
runs in a fresh process: 3 optimizer steps on the same batch; "step peak" is the peak resident set size (VmHWM,
reset just before the first step) above the resident size before it (model, optimizer, batch already loaded), and
"seconds" the median of steps 2 and 3.

    python benchmarks/bench_trl_trainers.py                       # ~5 min on 2 cores; writes the JSON below
    python benchmarks/bench_trl_trainers.py --objectives dpo orpo --vocab 32000
    python benchmarks/bench_trl_trainers.py --out benchmarks/results/cpu/trl_trainers.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time

from step_bench import status_kib, step_model_config

OBJECTIVES = ("dpo", "orpo", "kto", "cpo")
# Targets of issue 5: fastalign's step peak as a fraction of TRL's.
TARGETS = {"dpo": 0.8, "orpo": 0.3, "kto": 0.8, "cpo": 0.3}
BETA = 0.1


def word_tokenizer(vocab: int):
    """A word-level tokenizer whose token i is the word ``w{i}``: any id sequence has an exact text form."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    core = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def records(settings: dict, objective: str) -> list[dict]:
    """B pairs (prompt/chosen/rejected) or 2B unpaired examples (prompt/completion/label) of random words.

    Completions are one token short of ``completion`` tokens: the trainers append EOS.
    """
    import random

    rng = random.Random(0)
    text = lambda n: " " + " ".join(f"w{rng.randrange(3, settings['vocab'])}" for _ in range(n))  # noqa: E731
    prompt, completion = settings["prompt"], settings["tokens"] - settings["prompt"] - 1
    pairs = [
        {"prompt": text(prompt).strip(), "chosen": text(completion), "rejected": text(completion)}
        for _ in range(settings["pairs"])
    ]
    if objective != "kto":
        return pairs
    return [
        {"prompt": p["prompt"], "completion": p[kind], "label": kind == "chosen"}
        for p in pairs
        for kind in ("chosen", "rejected")
    ]


def build_model(settings: dict):
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    config = step_model_config(settings, settings["tokens"], bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = transformers.LlamaForCausalLM(config)
    model.config.use_cache = False
    return peft.get_peft_model(model, peft.LoraConfig(r=16, target_modules="all-linear", lora_dropout=0.0))


def trl_trainer(objective: str, model, tokenizer, rows, settings: dict):
    import datasets
    import trl
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    common = dict(
        output_dir="/tmp/bench_trl_trainers",
        per_device_train_batch_size=len(rows),
        max_steps=3,
        learning_rate=1e-4,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        max_length=settings["tokens"],
        beta=BETA,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer_cls, config_cls, extra = {
        "dpo": (trl.DPOTrainer, trl.DPOConfig, {}),
        "orpo": (ORPOTrainer, ORPOConfig, {"max_completion_length": settings["tokens"] - settings["prompt"]}),
        "kto": (trl.KTOTrainer, trl.KTOConfig, {}),
        "cpo": (CPOTrainer, CPOConfig, {"max_completion_length": settings["tokens"] - settings["prompt"]}),
    }[objective]
    if objective == "cpo":
        extra["loss_type"] = "simpo"
        extra["cpo_alpha"] = 1.0
    args = config_cls(**common, **extra)
    return trainer_cls(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer
    )


def fastalign_trainer(objective: str, model, tokenizer, rows, settings: dict):
    import datasets
    from transformers import TrainingArguments

    from fastalign.data import PreferenceCollator, PreferenceOptions, UnpairedCollator
    from fastalign.data.preference import build_preference_dataset, build_unpaired_dataset
    from fastalign.training import FastAlignTrainer

    options = PreferenceOptions(max_length=settings["tokens"])
    records_ = datasets.Dataset.from_list(rows)
    if objective == "kto":
        data, _ = build_unpaired_dataset(records_, tokenizer, options, kl_batch_size=len(rows))
        collator = UnpairedCollator(tokenizer.pad_token_id)
    else:
        data, _ = build_preference_dataset(records_, tokenizer, options)
        collator = PreferenceCollator(tokenizer.pad_token_id)
    args = TrainingArguments(
        output_dir="/tmp/bench_trl_trainers",
        per_device_train_batch_size=len(rows),
        max_steps=3,
        learning_rate=1e-4,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        remove_unused_columns=False,
    )
    return FastAlignTrainer(
        model=model,
        args=args,
        objective=_objective(objective),
        train_dataset=data,
        data_collator=collator,
        processing_class=tokenizer,
    )


def _objective(objective: str):
    """The FastAlignTrainer objective with TRL's settings: beta, and SimPO with cpo_alpha 1 for cpo (the defaults)."""
    from fastalign.config import AlignmentConfig, CPOOptions, DPOOptions, KTOOptions, ORPOOptions
    from fastalign.training.objectives import preference_objective

    options = {"dpo": DPOOptions, "orpo": ORPOOptions, "kto": KTOOptions, "cpo": CPOOptions}[objective](beta=BETA)
    return preference_objective(objective, AlignmentConfig(**{objective: options}))


def fused_step_fn(objective: str, model, tokenizer, rows, settings: dict):
    """The fused loss modules under a minimal loop: (batch, step function) with the same batch as the trainer."""
    import datasets
    import torch

    from fastalign.data import PreferenceCollator, PreferenceOptions, UnpairedCollator
    from fastalign.data.preference import build_preference_dataset, build_unpaired_dataset
    from fastalign.lm_head import last_hidden_states, lm_head_of
    from fastalign.losses.fused import FusedLinearCPOLoss, FusedLinearDPOLoss, FusedLinearKTOLoss, FusedLinearORPOLoss

    options = PreferenceOptions(max_length=settings["tokens"])
    records_ = datasets.Dataset.from_list(rows)
    if objective == "kto":
        data, _ = build_unpaired_dataset(records_, tokenizer, options, kl_batch_size=len(rows))
        batch = UnpairedCollator(tokenizer.pad_token_id)(list(data))
    else:
        data, _ = build_preference_dataset(records_, tokenizer, options)
        batch = PreferenceCollator(tokenizer.pad_token_id)(list(data))
    loss_fn = {
        "dpo": FusedLinearDPOLoss(beta=BETA),
        "orpo": FusedLinearORPOLoss(beta=BETA),
        "kto": FusedLinearKTOLoss(beta=BETA),
        "cpo": FusedLinearCPOLoss(beta=BETA, loss_type="simpo", cpo_alpha=1.0),
    }[objective]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def hidden_of(prefix: str = ""):
        return last_hidden_states(model, batch[f"{prefix}input_ids"], batch.get(f"{prefix}attention_mask"))

    def step():
        head = lm_head_of(model)
        hidden, head_ = head.matching(hidden_of())
        kwargs = {}
        if objective in ("dpo", "kto"):
            with torch.no_grad(), model.disable_adapter():
                kwargs["ref_hidden"] = hidden_of()
                if objective == "kto":
                    kwargs["ref_kl_hidden"] = hidden_of("kl_")
        if objective == "kto":
            with torch.no_grad():
                kwargs["kl_hidden"] = hidden_of("kl_")
            kwargs["kl_labels"] = batch["kl_labels"]
            kwargs["desirable"] = batch["desirable"]
        loss, _ = loss_fn(hidden, head_.weight, batch["labels"], **kwargs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def _one_case(objective: str, method: str, settings: dict, results) -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import datasets
    import torch

    datasets.disable_progress_bars()
    torch.set_num_threads(settings["threads"])
    tokenizer = word_tokenizer(settings["vocab"])
    rows = records(settings, objective)
    model = build_model(settings)
    if method == "fastalign" and settings["fastalign"] == "fused":
        step = fused_step_fn(objective, model, tokenizer, rows, settings)
    else:
        trainer = (trl_trainer if method == "trl" else fastalign_trainer)(objective, model, tokenizer, rows, settings)
        trainer.create_optimizer_and_scheduler(num_training_steps=3)
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which is not run here
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))

        def step():
            loss = trainer.training_step(trainer.model, batch)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            return loss

    before = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the peak resident set size (VmHWM) to the current one
    seconds, losses = [], []
    for _ in range(3):
        start = time.perf_counter()
        losses.append(float(step()))
        seconds.append(time.perf_counter() - start)
    peak = status_kib("VmHWM")
    results.put(
        {
            "objective": objective,
            "method": method if method == "trl" else f"fastalign ({settings['fastalign']})",
            "loss_first_step": losses[0],
            "seconds": statistics.median(seconds[1:]),
            "step_peak_mib": (peak - before) / 1024,
            "before_mib": before / 1024,
            "peak_mib": peak / 1024,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=512, help="tokens per sequence (prompt + completion)")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per sequence")
    parser.add_argument("--pairs", type=int, default=2, help="pairs per step (KTO: twice as many examples)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fastalign", choices=("trainer", "fused"), default="trainer",
                        help="FastAlignTrainer objectives, or the fused loss modules under a minimal loop")  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results/cpu/trl_trainers.json")
    args = parser.parse_args()
    settings = {k: getattr(args, k) for k in ("vocab", "dim", "layers", "tokens", "prompt", "pairs", "threads")}
    settings["fastalign"] = args.fastalign

    context = multiprocessing.get_context("spawn")
    rows = []
    for objective in args.objectives:
        for method in ("trl", "fastalign"):
            results = context.Queue()
            process = context.Process(target=_one_case, args=(objective, method, settings, results))
            process.start()
            process.join()
            if process.exitcode != 0:
                raise SystemExit(f"{objective} / {method} failed (exit code {process.exitcode})")
            rows.append(results.get())
            print(json.dumps(rows[-1]), flush=True)

    print(f"\none optimizer step, CPU float32, LoRA r=16, {settings}")
    header = f"{'objective':<10}{'method':<22}{'step peak MiB':>14}{'seconds':>9}{'memory vs trl':>15}{'target':>8}"
    print(header + f"{'time vs trl':>13}")
    summary = {}
    for objective in args.objectives:
        trl_row, ours = [r for r in rows if r["objective"] == objective]
        memory, speed = ours["step_peak_mib"] / trl_row["step_peak_mib"], ours["seconds"] / trl_row["seconds"]
        summary[objective] = {"memory_ratio": memory, "time_ratio": speed, "target": TARGETS[objective],
                              "meets_target": memory <= TARGETS[objective] and speed <= 1.0}  # fmt: skip
        for row in (trl_row, ours):
            extra = f"{memory:>15.3f}{TARGETS[objective]:>8}{speed:>13.3f}" if row is ours else ""
            print(f"{objective:<10}{row['method']:<22}{row['step_peak_mib']:>14.1f}{row['seconds']:>9.2f}{extra}")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(
                {
                    "settings": settings,
                    "machine": platform.processor() or platform.machine(),
                    "results": rows,
                    "summary": summary,
                },  # fmt: skip
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
