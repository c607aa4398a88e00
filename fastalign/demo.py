"""``fastalign demo``: continued pre-training, then SFT, of a small Llama-style model on CPU — nothing downloaded.

The demo is the whole pipeline in miniature, on the bundled customer-support data (``fastalign/assets``):

1. trains a byte-level BPE tokenizer on the bundled text and reloads it with ``AutoTokenizer``;
2. builds a randomly initialized Llama-style model from a config (``DemoSize``) and saves it;
3. **CPT**, full fine-tuning, on the support-site corpus: a random model has nothing for low-rank adapters to
   adjust, so every weight trains — the LM head included, which runs fastalign's trainable-head fused path;
4. **SFT** with LoRA on the customer/agent pairs, starting from the CPT model: the LM head is frozen, which runs
   the frozen-head fused path (2 vocabulary matmuls, no ``[V, D]`` gradient);
5. reports the held-out loss before and after each stage, a sample answer before and after, and writes
   ``metrics.json``, ``training_curves.png``, the two stages' configs (``cpt.yaml``, ``sft.yaml``: rerun either
   with ``fastalign train``), the CPT model and the SFT adapter to ``--output-dir``.

Both stages go through the same code as ``fastalign train`` (``fastalign.training.train``) with configs written to
YAML and loaded back through validation.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
import transformers
import yaml

from fastalign.config import load_config
from fastalign.data import demo_data_path, train_demo_tokenizer
from fastalign.training import train
from fastalign.training.report import plot_training_curves, write_metrics


@dataclass(frozen=True)
class DemoSize:
    hidden_size: int
    layers: int
    heads: int
    vocab_size: int  # of the BPE tokenizer trained on the bundled text
    max_length: int  # tokens per CPT block / SFT row
    cpt_steps: int
    sft_steps: int
    batch_size: int


FULL = DemoSize(hidden_size=192, layers=4, heads=6, vocab_size=2048, max_length=128, cpt_steps=160, sft_steps=100,
                batch_size=8)  # fmt: skip
QUICK = DemoSize(hidden_size=64, layers=2, heads=2, vocab_size=512, max_length=64, cpt_steps=6, sft_steps=4,
                 batch_size=4)  # fmt: skip


def stage_configs(size: DemoSize, out: Path) -> tuple[dict, dict]:
    """The two stages as the YAML a user would write (see examples/ for the 7B versions)."""
    training = {
        "batch_size": size.batch_size,
        "lr_scheduler": "cosine",
        "warmup_steps": 0.05,
        "logging_steps": max(size.cpt_steps // 15, 1),
        "save_steps": 10_000,  # only the final model; see examples/ for periodic checkpoints
        "report_to": "none",
        "seed": 0,
    }
    cpt = {
        "objective": "cpt",
        "model": {"name_or_path": str(out / "base_model"), "dtype": "float32"},
        "data": {
            "train": {"path": str(demo_data_path("cpt_train"))},
            "eval": {"path": str(demo_data_path("cpt_eval"))},
            "cpt": {"max_length": size.max_length},
        },
        "training": {
            **training,
            "output_dir": str(out / "cpt"),
            "max_steps": size.cpt_steps,
            "learning_rate": 2e-3,
            "eval_steps": max(size.cpt_steps // 5, 1),
        },
    }
    sft = {
        "objective": "sft",
        "model": {
            "name_or_path": str(out / "cpt"),
            "dtype": "float32",
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        },
        "data": {
            "train": {"path": str(demo_data_path("sft_train"))},
            "eval": {"path": str(demo_data_path("sft_eval"))},
            "sft": {"max_length": size.max_length, "packing": True},
        },
        "training": {
            **training,
            "output_dir": str(out / "sft"),
            "max_steps": size.sft_steps,
            "learning_rate": 3e-3,
            "eval_steps": max(size.sft_steps // 4, 1),
        },
    }
    return cpt, sft


def build_base_model(size: DemoSize, tokenizer, path: Path) -> None:
    """A randomly initialized Llama-style model sized by ``size``, saved with its tokenizer."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=int(size.hidden_size * 8 / 3),
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        max_position_embeddings=size.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def sample_answer(model, tokenizer, prompt: str, max_new_tokens: int = 40) -> str:
    """Greedy continuation of ``prompt`` (generation computes logits as usual: only training avoids them)."""
    inputs = tokenizer(prompt, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def run_demo(output_dir: str | Path = "fastalign_demo_output", quick: bool = False) -> dict:
    start = time.perf_counter()
    size = QUICK if quick else FULL
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    datasets.disable_progress_bars()  # keep the Trainer's progress bar and metrics readable
    transformers.utils.logging.disable_progress_bar()

    print(f"[1/5] training a {size.vocab_size}-token BPE tokenizer on the bundled text")
    tokenizer = train_demo_tokenizer(out / "tokenizer", vocab_size=size.vocab_size)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "tokenizer")

    print(f"[2/5] building a random Llama-style model: {size.layers} layers, hidden {size.hidden_size}")
    build_base_model(size, tokenizer, out / "base_model")
    with open(demo_data_path("sft_eval")) as f:
        example = json.loads(f.readline())
    prompt = example["prompt"]
    base = transformers.AutoModelForCausalLM.from_pretrained(out / "base_model")
    answers = {"reference": example["completion"].strip(), "base model": sample_answer(base, tokenizer, prompt)}

    stages, metrics = {}, {"size": dataclasses.asdict(size)}
    for step, (name, raw) in enumerate(zip(("cpt", "sft"), stage_configs(size, out)), start=3):
        what = "continued pre-training (full fine-tuning)" if name == "cpt" else "SFT (LoRA, frozen LM head)"
        print(f"[{step}/5] {what}: {raw['training']['max_steps']} steps")
        config_path = out / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        trainer, stage_metrics = train(load_config(config_path))
        stages[name] = trainer.state.log_history
        metrics[name] = {k: v for k, v in stage_metrics.items() if k != "log_history"}
        answers[f"after {name}"] = sample_answer(trainer.model, tokenizer, prompt)

    metrics["samples"] = {"prompt": prompt, **answers}
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    write_metrics(metrics, out / "metrics.json")
    plot_training_curves(stages, out / "training_curves.png")

    print("\nheld-out loss (nats/token)      before    after")
    for name in ("cpt", "sft"):
        before, after = metrics[name]["eval_loss_before"], metrics[name]["eval_loss_after"]
        print(f"  {name:<28}{before:>9.3f}{after:>9.3f}   {'went down' if after < before else 'DID NOT go down'}")
    print(f"\nprompt: {prompt!r}")
    for name, answer in answers.items():
        print(f"  {name:<12} {answer!r}")
    print(f"\n{metrics['seconds']:.0f} s; wrote {out}/: metrics.json, training_curves.png, cpt.yaml, sft.yaml, "
          "cpt/ (model), sft/ (LoRA adapter)")  # fmt: skip
    return metrics
