"""``fastalign train``: a validated config in, a trained model or adapter out.

Read top to bottom: ``prepare_data`` (load, clean, tokenize, pack), ``load_model``, ``training_arguments``,
``FastAlignTrainer.train``, then the model, tokenizer, ``metrics.json`` and ``training_curves.png`` are written to
``training.output_dir``. When ``data.eval`` is set the held-out loss is measured before and after training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from transformers import TrainingArguments, set_seed

from fastalign.config import Config
from fastalign.data import (
    DataReport,
    PackedCollator,
    PaddedCollator,
    build_cpt_dataset,
    build_sft_dataset,
    load_records,
    preprocess_corpus,
)
from fastalign.modeling import load_model, load_tokenizer
from fastalign.training.report import plot_training_curves, write_metrics
from fastalign.training.trainer import FastAlignTrainer


@dataclass
class PreparedData:
    train: datasets.Dataset
    eval: datasets.Dataset | None
    collator: PackedCollator | PaddedCollator
    report: DataReport  # of the training split


def prepare_data(config: Config, tokenizer) -> PreparedData:
    """Tokenized training (and held-out) rows for ``config.objective``, with the collator that batches them."""

    def build(source):
        records = load_records(source.path, split=source.split, format="text" if config.objective == "cpt" else "auto")
        if config.objective == "cpt":
            cleaned, report = preprocess_corpus(records, config.data.cleaning)
            rows, tokenized = build_cpt_dataset(cleaned, tokenizer, config.data.cpt)
            return rows, report.merged(tokenized)
        return build_sft_dataset(records, tokenizer, config.data.sft)

    train, report = build(config.data.train)
    held_out = build(config.data.eval)[0] if config.data.eval is not None else None
    packed = "position_ids" in train.column_names
    collator = (PackedCollator if packed else PaddedCollator)(tokenizer.pad_token_id)
    return PreparedData(train, held_out, collator, report)


def training_arguments(config: Config, has_eval: bool) -> TrainingArguments:
    t = config.training
    return TrainingArguments(
        output_dir=t.output_dir,
        max_steps=t.max_steps,
        num_train_epochs=t.epochs,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        bf16=t.mixed_precision == "bf16",
        fp16=t.mixed_precision == "fp16",
        eval_strategy="steps" if has_eval and t.eval_steps else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        seed=t.seed,
        report_to=t.report_to,
        include_num_input_tokens_seen="non_padding",
        prediction_loss_only=True,
        remove_unused_columns=False,  # the rows hold exactly what the objective reads
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
    )


def train(config: Config, *, callbacks=()) -> tuple[FastAlignTrainer, dict]:
    """Run one training job; returns the trainer (its ``model`` is trained) and the metrics also written to
    ``<output_dir>/metrics.json``."""
    set_seed(config.training.seed)
    tokenizer = load_tokenizer(config.model)
    data = prepare_data(config, tokenizer)
    model = load_model(config.model)
    trainer = FastAlignTrainer(
        model=model,
        args=training_arguments(config, has_eval=data.eval is not None),
        objective=config.objective,
        nan_policy=config.training.nan_policy,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=data.collator,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    resume = config.training.resume_from_checkpoint or None
    metrics = {"objective": config.objective, "data": data.report.as_dict()}
    if data.eval is not None and not resume:
        metrics["eval_loss_before"] = trainer.evaluate()["eval_loss"]
    metrics["train"] = trainer.train(resume_from_checkpoint=resume).metrics
    if "eval_loss_before" in metrics:  # train() started a fresh log; put the step-0 evaluation back
        trainer.state.log_history.insert(0, {"eval_loss": metrics["eval_loss_before"], "step": 0})
    if data.eval is not None:
        metrics["eval_loss_after"] = trainer.evaluate()["eval_loss"]
    metrics["skipped_steps"] = trainer.nonfinite_guard.skipped_steps
    trainer.save_model()  # the adapter (LoRA) or the full model, and the tokenizer
    if trainer.is_world_process_zero():
        output_dir = Path(config.training.output_dir)
        metrics["log_history"] = trainer.state.log_history
        write_metrics(metrics, output_dir / "metrics.json")
        plot_training_curves({config.objective: trainer.state.log_history}, output_dir / "training_curves.png")
    return trainer, metrics
