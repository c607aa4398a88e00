"""``fastalign train``: a validated config in, a trained model or adapter out.

Read top to bottom: ``prepare_data`` (load, clean, tokenize, pack), ``load_model``, ``training_arguments``,
``FastAlignTrainer.train``, then the model, tokenizer, ``metrics.json`` and ``training_curves.png`` are written to
``training.output_dir``. When ``data.eval`` is set the held-out loss is measured before and after training.

Preference objectives (reward, dpo, orpo, kto, cpo) read preference records (``fastalign.data.preference``), load
a sequence-classification model for ``reward``, and for dpo/kto set up the reference policy
(``fastalign.training.reference``): the adapter-disabled policy with LoRA, else a frozen copy of the model (or
``alignment.reference.model``); with ``alignment.reference.precompute`` its log-probs are computed once (cached).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from transformers import TrainingArguments, set_seed

from fastalign.config import PREFERENCE_OBJECTIVES, Config
from fastalign.data import (
    DataReport,
    PackedCollator,
    PaddedCollator,
    PreferenceCollator,
    UnpairedCollator,
    build_cpt_dataset,
    build_preference_dataset,
    build_sft_dataset,
    build_unpaired_dataset,
    kto_balance,
    load_preference_records,
    load_records,
    preprocess_corpus,
)
from fastalign.modeling import load_model, load_tokenizer
from fastalign.training.objectives import preference_objective
from fastalign.training.reference import ReferencePolicy, precompute_reference_logps
from fastalign.training.report import plot_training_curves, write_metrics
from fastalign.training.trainer import FastAlignTrainer


@dataclass
class PreparedData:
    train: datasets.Dataset
    eval: datasets.Dataset | None
    collator: PackedCollator | PaddedCollator | PreferenceCollator | UnpairedCollator
    report: DataReport  # of the training split


def prepare_data(config: Config, tokenizer) -> PreparedData:
    """Tokenized training (and held-out) rows for ``config.objective``, with the collator that batches them."""
    if config.objective in PREFERENCE_OBJECTIVES:
        return _prepare_preference_data(config, tokenizer)

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


def _prepare_preference_data(config: Config, tokenizer) -> PreparedData:
    """Pair rows (reward, dpo, orpo, cpo) or KTO rows (kto; pairs are unpaired), padded batches."""
    kto = config.objective == "kto"

    def build(source):
        records, format_name = load_preference_records(
            source.path, split=source.split, format=config.data.preference.format
        )
        if format_name == "unpaired" and not kto:
            raise ValueError(
                f"objective {config.objective} trains on pairs (prompt/chosen/rejected), but {source.path} holds "
                "unpaired prompt/completion/label records: use objective kto"
            )
        options = dataclasses.replace(config.data.preference, format="auto")
        if kto:
            return build_unpaired_dataset(records, tokenizer, options, kl_batch_size=config.training.batch_size)
        return build_preference_dataset(records, tokenizer, options)

    train, report = build(config.data.train)
    held_out = build(config.data.eval)[0] if config.data.eval is not None else None
    if kto:
        check_kto_balance(train, config.alignment.kto.desirable_weight, config.alignment.kto.undesirable_weight)
    collator = (UnpairedCollator if kto else PreferenceCollator)(tokenizer.pad_token_id)
    return PreparedData(train, held_out, collator, report)


def check_kto_balance(rows, desirable_weight: float, undesirable_weight: float) -> float | None:
    """Warn unless desirable_weight * n_desirable / (undesirable_weight * n_undesirable) is in [1, 4/3] (the KTO
    paper's recommendation); returns that ratio (None when it is undefined)."""
    n_desirable, n_undesirable = kto_balance(rows)
    if undesirable_weight * n_undesirable == 0:
        warnings.warn(f"KTO data has {n_desirable} desirable and {n_undesirable} undesirable examples", stacklevel=2)
        return None
    ratio = desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
    if not 1.0 <= ratio <= 4 / 3:
        warnings.warn(
            f"KTO balance: desirable_weight * n_desirable / (undesirable_weight * n_undesirable) = "
            f"{desirable_weight} * {n_desirable} / ({undesirable_weight} * {n_undesirable}) = {ratio:.3f}, outside "
            "the [1, 4/3] the KTO paper recommends; adjust alignment.kto.desirable_weight / undesirable_weight",
            stacklevel=2,
        )
    return ratio


def reference_policy(config: Config) -> ReferencePolicy:
    """dpo/kto: a separate frozen model (``alignment.reference.model``, or the model itself without LoRA), else
    the LoRA policy with its adapter disabled."""
    name = config.alignment.reference.model
    if name is None and config.model.lora is not None:
        return ReferencePolicy()
    model_config = dataclasses.replace(config.model, name_or_path=name or config.model.name_or_path, lora=None)
    model_config = dataclasses.replace(model_config, quantization="none", gradient_checkpointing=False)
    return ReferencePolicy(load_model(model_config))


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
    if config.objective == "reward":
        model = load_model(config.model, task="reward", pad_token_id=tokenizer.pad_token_id)
    else:
        model = load_model(config.model)
    objective = config.objective
    if config.objective in PREFERENCE_OBJECTIVES:
        reference = reference_policy(config) if config.objective in ("dpo", "kto") else None
        if reference is not None and config.alignment.reference.precompute:
            cache_dir = config.alignment.reference.cache_dir or str(
                Path(config.training.output_dir) / "reference_cache"
            )
            device = "cuda" if torch.cuda.is_available() else "cpu"
            if config.model.quantization == "none":  # quantized models were loaded onto their device
                model.to(device)
            precompute = dict(cache_dir=cache_dir, batch_size=config.training.batch_size, device=device)
            data.train = precompute_reference_logps(reference, model, data.train, data.collator, **precompute)[0]
            if data.eval is not None:
                data.eval = precompute_reference_logps(reference, model, data.eval, data.collator, **precompute)[0]
            if reference.model is not None:
                reference.model.to("cpu")  # no longer needed: training runs the policy only
        objective = preference_objective(config.objective, config.alignment, reference)
    trainer = FastAlignTrainer(
        model=model,
        args=training_arguments(config, has_eval=data.eval is not None),
        objective=objective,
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
