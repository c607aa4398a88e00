"""Preference objectives through the config, the recipe and FastAlignTrainer: validation of the `alignment` options,
TRL metric names averaged between logs, the precomputed-reference cache across runs, a usable reward model."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import peft
import pytest
import torch
import transformers
import yaml
from data_helpers import demo_tokenizer
from test_preference_objectives import PAD, pair_rows, tiny_base, with_lora
from tiny_models import TINY_SHAPE

import fastalign.training.reference as reference_module
from fastalign.config import AlignmentConfig, ConfigError, DPOOptions, load_config
from fastalign.data import PreferenceCollator
from fastalign.training import FastAlignTrainer, preference_objective, train
from fastalign.training.recipe import reference_policy

PAIRS = [
    {"prompt": f"Question {i}: is the hub on?", "chosen": f" Yes, hub {i} is on.", "rejected": " Who knows."}
    for i in range(6)
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny Llama with the demo tokenizer's vocabulary, the tokenizer, and preference data."""
    root = tmp_path_factory.mktemp("preference")
    tokenizer = demo_tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        **TINY_SHAPE,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "prefs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return root


def write_config(root, objective, output, **sections):
    raw = {
        "objective": objective,
        "model": {"name_or_path": str(root / "model"), "dtype": "float32", "lora": {"r": 4, "dropout": 0.0}},
        "data": {"train": {"path": str(root / "prefs.jsonl")}, "preference": {"max_length": 48}},
        "training": {
            "output_dir": str(root / output),
            "max_steps": 2,
            "batch_size": 2,
            "logging_steps": 1,
            "save_steps": 100,
            "learning_rate": 1e-3,
        },
    }
    for dotted, value in sections.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = root / f"{output}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_alignment_options_are_parsed_and_bad_ones_named_by_path(run_dir):
    config = load_config(
        write_config(run_dir, "cpo", "c", alignment={"cpo": {"loss_type": "simpo", "gamma": 1.0, "cpo_alpha": 0.0}})
    )
    assert config.alignment.cpo.gamma == 1.0 and config.alignment.dpo.loss_type == "sigmoid"
    assert config.data.preference.max_length == 48
    bad = [
        ({"dpo": {"loss_type": "sigmoidd"}}, "config error at alignment.dpo.loss_type: expected one of sigmoid"),
        ({"dpo": {"beta": 0}}, "config error at alignment.dpo: beta must be in (0.0, inf], got 0.0"),
        (
            {"dpo": {"loss_type": "exo_pair"}},
            "config error at alignment.dpo: loss_type exo_pair needs label_smoothing > 0",
        ),
        (
            {"kto": {"desirable_wieght": 1.0}},
            "config error at alignment.kto.desirable_wieght: unknown key (did you mean desirable_weight?)",
        ),
        ({"orpo": {"nll_on_prompt": "yes"}}, "config error at alignment.orpo.nll_on_prompt: expected bool, got 'yes'"),
        ({"reference": {"model": "./missing-model"}}, "config error at alignment.reference.model: file not found"),
    ]
    for alignment, message in bad:
        with pytest.raises(ConfigError) as error:
            load_config(write_config(run_dir, "dpo", "bad", alignment=alignment))
        assert str(error.value).startswith(message), str(error.value)
    with pytest.raises(ConfigError, match="config error at objective: expected one of cpt, sft, reward, dpo"):
        load_config(write_config(run_dir, "ppo", "bad"))


def test_trainer_logs_trl_metric_names_averaged_over_micro_batches(tmp_path):
    model = with_lora(tiny_base())
    objective = preference_objective("dpo")
    seen = []

    def recording_loss(model, inputs, num_items_in_batch):
        loss, metrics = objective.loss(model, inputs, num_items_in_batch)
        seen.append({k: v.item() for k, v in metrics.items()})
        return loss, metrics

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        logging_steps=1,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
        save_strategy="no",
    )
    trainer = FastAlignTrainer(
        model=model,
        args=args,
        objective=type(objective)(recording_loss, normalized_by_num_items=False, metrics=True),
        train_dataset=datasets.Dataset.from_list(pair_rows(num_pairs=8)),
        data_collator=PreferenceCollator(PAD),
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and len(seen) == 4
    for step, entry in enumerate(logs):
        for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen"):
            expected = sum(micro[name] for micro in seen[2 * step : 2 * step + 2]) / 2
            assert entry[name] == pytest.approx(expected, rel=1e-6, abs=1e-7), name


def _trainer(output_dir, rows, objective, eval_rows=None, random_adapter=True, **overrides):
    settings = dict(
        output_dir=str(output_dir),
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
    )
    settings.update(overrides)
    return FastAlignTrainer(
        model=with_lora(tiny_base(), random_init=random_adapter),
        args=transformers.TrainingArguments(**settings),
        objective=preference_objective(objective) if isinstance(objective, str) else objective,
        train_dataset=datasets.Dataset.from_list(rows),
        eval_dataset=None if eval_rows is None else datasets.Dataset.from_list(eval_rows),
        data_collator=PreferenceCollator(PAD),
    )


@pytest.mark.parametrize("objective", ["dpo"])
def test_gradient_accumulation_of_pair_losses_matches_one_large_batch(tmp_path, objective):
    # a pair loss is a mean over the micro-batch's pairs: the Trainer divides it by the accumulation steps.
    # (ORPO's and CPO's NLL terms are token means per micro-batch, as in TRL, so they are not exactly additive.)
    rows = pair_rows(num_pairs=4)
    one = _trainer(tmp_path / "one", rows, objective, per_device_train_batch_size=4)
    two = _trainer(tmp_path / "two", rows, objective, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    for trainer in (one, two):
        trainer.args.max_grad_norm = 0.0  # compare raw gradients' effect, not clipped ones
        trainer.train()
    for (name, a), (_, b) in zip(one.model.named_parameters(), two.model.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_a_short_dpo_run_raises_held_out_preference_accuracy_above_chance(tmp_path):
    """Synthetic preferences: chosen completions use tokens 3..40, rejected ones 80..127, after random prompts."""
    g = torch.Generator().manual_seed(0)

    def rows(n):
        out = []
        for _ in range(n):
            prompt = torch.randint(3, 128, (4,), generator=g).tolist()
            chosen = torch.randint(3, 40, (4,), generator=g).tolist() + [2]
            rejected = torch.randint(80, 128, (4,), generator=g).tolist() + [2]
            out.append(
                {
                    "chosen_input_ids": prompt + chosen,
                    "chosen_labels": [-100] * 4 + chosen,
                    "rejected_input_ids": prompt + rejected,
                    "rejected_labels": [-100] * 4 + rejected,
                }
            )
        return out

    objective = preference_objective("dpo", AlignmentConfig(dpo=DPOOptions(beta=1.0)))
    trainer = _trainer(
        tmp_path, rows(32), objective, eval_rows=rows(16), random_adapter=False, max_steps=10, learning_rate=3e-2
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert before["eval_rewards/accuracies"] == 0.0  # an untrained adapter: policy == reference, margins 0
    assert after["eval_rewards/accuracies"] >= 0.75 and after["eval_loss"] < before["eval_loss"] - 0.1


def test_dpo_example_config_parses(monkeypatch):
    monkeypatch.chdir(Path(__file__).parent.parent)  # its data paths are relative to the repository root
    config = load_config(Path(__file__).parent.parent / "examples" / "dpo_7b_qlora.yaml")
    assert config.objective == "dpo" and config.model.quantization == "nf4" and config.alignment.dpo.beta == 0.1


def test_dpo_recipe_precomputes_the_reference_once_and_reuses_the_cache(run_dir, monkeypatch):
    cache = run_dir / "ref_cache"
    alignment = {"reference": {"precompute": True, "cache_dir": str(cache)}, "dpo": {"beta": 0.2}}
    trainer, metrics = train(load_config(write_config(run_dir, "dpo", "dpo1", alignment=alignment)))
    assert len(list(cache.glob("reference_logps-*.pt"))) == 1
    assert "ref_chosen_logps" in trainer.train_dataset.column_names
    step_logs = [entry for entry in metrics["log_history"] if "loss" in entry]
    assert step_logs and all("rewards/accuracies" in entry and "logps/rejected" in entry for entry in step_logs)

    def no_forward(*args, **kwargs):
        raise AssertionError("the reference ran although its log-probs are cached")

    monkeypatch.setattr(reference_module, "_batch_reference_logps", no_forward)
    second, _ = train(load_config(write_config(run_dir, "dpo", "dpo2", alignment=alignment)))
    assert second.train_dataset["ref_chosen_logps"] == trainer.train_dataset["ref_chosen_logps"]


def test_kto_recipe_unpairs_pairs_and_logs_the_kl_on_held_out_data(run_dir):
    path = write_config(run_dir, "kto", "kto", data__eval={"path": str(run_dir / "prefs.jsonl")})
    trainer, metrics = train(load_config(path))
    assert len(trainer.train_dataset) == 2 * len(PAIRS)
    assert metrics["data"]["loaded"] == len(PAIRS)
    assert any("eval_kl" in entry for entry in metrics["log_history"])
    assert any("kl" in entry and "rewards/chosen" in entry for entry in metrics["log_history"])


def test_reward_recipe_writes_a_loadable_reward_model(run_dir):
    path = write_config(run_dir, "reward", "reward", alignment={"reward": {"center_rewards_coefficient": 0.01}})
    trainer, metrics = train(load_config(path))
    assert any("accuracy" in entry and "mean_reward" in entry for entry in metrics["log_history"])
    base = transformers.AutoModelForSequenceClassification.from_pretrained(run_dir / "model", num_labels=1)
    reward_model = peft.PeftModel.from_pretrained(base, run_dir / "reward").eval()
    tokenizer = demo_tokenizer()
    encoded = tokenizer(["Question 1: is the hub on? Yes."], return_tensors="pt")
    with torch.no_grad():
        score = reward_model(**encoded).logits
    trained = trainer.model.eval()
    with torch.no_grad():
        expected = trained(**encoded).logits
    assert score.shape == (1, 1) and torch.allclose(score, expected, atol=1e-5)


def test_reference_is_the_adapter_disabled_policy_with_lora_and_a_frozen_copy_without(run_dir):
    with_adapter = load_config(write_config(run_dir, "dpo", "r1"))
    assert reference_policy(with_adapter).kind == "adapter"
    full = load_config(write_config(run_dir, "dpo", "r2", model__lora=None))
    reference = reference_policy(full)
    assert reference.kind == "model" and not any(p.requires_grad for p in reference.model.parameters())
