"""FastAlignTrainer on a tiny Llama on CPU: resume equality, non-finite policy, atomic checkpoints, GA equivalence.

Every run starts from the same saved model and sees the same seeded data order, so runs that should be identical
are compared with exact float32 equality where the arithmetic is the same (resume) and at 1e-5 where only the
summation order differs (gradient accumulation).
"""

from __future__ import annotations

import os

import datasets
import peft
import pytest
import torch
import transformers
from tiny_models import TINY_SHAPE
from transformers import TrainingArguments, default_data_collator
from transformers.trainer_utils import get_last_checkpoint

from fastalign.training import OBJECTIVES, FastAlignTrainer, NonFiniteLossError, Objective, next_token_loss

VOCAB, LENGTH = 64, 16


def tiny_model_dir(path) -> str:
    """A 2-layer Llama (hidden 32) saved to ``path``, the common starting point of the runs compared."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=LENGTH, **TINY_SHAPE)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def tiny_dataset(rows: int = 32, seed: int = 0) -> datasets.Dataset:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (rows, LENGTH), generator=generator)
    labels = input_ids.clone()
    labels[:, : LENGTH // 4] = -100  # prompts: no loss
    return datasets.Dataset.from_dict({"input_ids": input_ids.tolist(), "labels": labels.tolist()})


def make_trainer(model_dir, output_dir, *, lora=True, objective="sft", nan_policy="stop", **overrides):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if lora:
        torch.manual_seed(0)  # the same adapter initialization in every run
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    settings = dict(
        output_dir=str(output_dir),
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=3,
        seed=0,
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        include_num_input_tokens_seen="all",
        disable_tqdm=True,
    )
    settings.update(overrides)
    return FastAlignTrainer(
        model=model,
        args=TrainingArguments(**settings),
        objective=objective,
        nan_policy=nan_policy,
        train_dataset=tiny_dataset(),
        data_collator=default_data_collator,
    )


def trainable_state(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


class StopAt(transformers.TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_resumed_run_ends_with_the_same_parameters_and_loss(tmp_path, lora):
    model_dir = tiny_model_dir(tmp_path / "model")
    straight = make_trainer(model_dir, tmp_path / "straight", lora=lora)
    straight.train()

    interrupted = make_trainer(model_dir, tmp_path / "resumed", lora=lora)
    interrupted.add_callback(StopAt(3))
    interrupted.train()
    assert interrupted.state.global_step == 3
    resumed = make_trainer(model_dir, tmp_path / "resumed", lora=lora)
    resumed.train(resume_from_checkpoint=True)

    assert resumed.state.global_step == 6
    assert losses(resumed)[-1] == losses(straight)[-1]
    expected = trainable_state(straight)
    for name, value in trainable_state(resumed).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


def test_loss_logs_tokens_per_second_and_peak_memory(tmp_path):
    trainer = make_trainer(tiny_model_dir(tmp_path / "model"), tmp_path / "out", max_steps=2, save_steps=10)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all(entry["peak_memory_gb"] > 0 for entry in logged)
    assert all(entry["tokens_per_second"] > 0 for entry in logged)


def test_gradient_accumulation_matches_one_large_batch(tmp_path):
    """num_items_in_batch: 2 micro-batches of 2 give the gradient of 1 batch of 4, whatever the targets per row."""
    model_dir = tiny_model_dir(tmp_path / "model")
    one = make_trainer(model_dir, tmp_path / "one", max_steps=2, save_steps=10)
    accumulated = make_trainer(
        model_dir, tmp_path / "ga", max_steps=2, save_steps=10, per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
    )  # fmt: skip
    dataset = tiny_dataset()
    labels = torch.tensor(dataset["labels"])
    labels[::3, : LENGTH // 2] = -100  # rows with different numbers of targets
    dataset = dataset.remove_columns("labels").add_column("labels", labels.tolist())
    one.train_dataset = accumulated.train_dataset = dataset
    one.train()
    accumulated.train()
    expected = trainable_state(one)
    for name, value in trainable_state(accumulated).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)


@pytest.fixture
def nan_at_third_step(monkeypatch):
    """An objective whose 3rd call (the 3rd optimizer step, batch 4, no accumulation) returns NaN."""
    calls = []

    def loss(model, inputs, num_items_in_batch):
        calls.append(1)
        value = next_token_loss(model, inputs, num_items_in_batch)
        return value * float("nan") if len(calls) == 3 else value

    monkeypatch.setitem(OBJECTIVES, "nan_at_3", Objective(loss, normalized_by_num_items=True))


class Snapshots(transformers.TrainerCallback):
    def __init__(self, trainer):
        self.trainer, self.states = trainer, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.states[state.global_step] = trainable_state(self.trainer)


def test_nan_policy_stop_raises_naming_the_step_and_leaves_parameters_intact(tmp_path, nan_at_third_step):
    trainer = make_trainer(tiny_model_dir(tmp_path / "model"), tmp_path / "out", objective="nan_at_3", save_steps=2)
    snapshots = Snapshots(trainer)
    trainer.add_callback(snapshots)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 3"):
        trainer.train()
    for name, value in trainable_state(trainer).items():
        assert torch.isfinite(value).all()
        torch.testing.assert_close(value, snapshots.states[2][name], rtol=0, atol=0)
    saved = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model"), tmp_path / "out" / "checkpoint-2"
    )
    assert all(torch.isfinite(p).all() for p in saved.parameters())


def test_nan_policy_skip_drops_the_step_and_continues(tmp_path, nan_at_third_step):
    trainer = make_trainer(
        tiny_model_dir(tmp_path / "model"), tmp_path / "out", objective="nan_at_3", nan_policy="skip", save_steps=10
    )
    snapshots = Snapshots(trainer)
    trainer.add_callback(snapshots)
    trainer.train()
    assert trainer.state.global_step == 6
    assert trainer.nonfinite_guard.skipped_steps == 1
    for name, value in snapshots.states[3].items():
        torch.testing.assert_close(value, snapshots.states[2][name], rtol=0, atol=0)  # step 3 changed nothing
        assert not torch.equal(snapshots.states[6][name], value)  # later steps trained
        assert torch.isfinite(snapshots.states[6][name]).all()
    assert [entry["skipped_steps"] for entry in trainer.state.log_history if "skipped_steps" in entry][-1] == 1


def test_crash_mid_save_leaves_the_previous_checkpoint_as_the_last_one(tmp_path, monkeypatch):
    model_dir = tiny_model_dir(tmp_path / "model")
    output_dir = tmp_path / "out"
    trainer = make_trainer(model_dir, output_dir, save_steps=2)
    save_rng_state = transformers.Trainer._save_rng_state

    def crash_at_step_4(self, path):
        if self.state.global_step == 4:
            raise KeyboardInterrupt("simulated crash mid-save")
        save_rng_state(self, path)

    monkeypatch.setattr(transformers.Trainer, "_save_rng_state", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    monkeypatch.undo()

    assert sorted(p for p in os.listdir(output_dir) if p.startswith("checkpoint")) == ["checkpoint-2"]
    assert get_last_checkpoint(output_dir) == str(output_dir / "checkpoint-2")
    assert os.path.exists(output_dir / ".staging" / "checkpoint-4" / "adapter_model.safetensors")  # the partial one
    resumed = make_trainer(model_dir, output_dir, save_steps=2)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6
    assert sorted(p for p in os.listdir(output_dir) if p.startswith("checkpoint")) == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-6",
    ]
    assert not os.listdir(output_dir / ".staging")  # the partial checkpoint-4 was replaced, not kept


def test_atomic_checkpoints_still_rotate_to_save_total_limit(tmp_path):
    output_dir = tmp_path / "out"
    trainer = make_trainer(tiny_model_dir(tmp_path / "model"), output_dir, save_steps=2, save_total_limit=2)
    trainer.train()
    assert sorted(p for p in os.listdir(output_dir) if p.startswith("checkpoint")) == ["checkpoint-4", "checkpoint-6"]
    assert not os.listdir(output_dir / ".staging")
