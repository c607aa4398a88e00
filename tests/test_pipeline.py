"""``fastalign pipeline``: stage hand-off (merge and stack), resume (completed stages skipped, an interrupted stage
continued from its checkpoint), and config errors that name the stage and key — on a tiny Llama on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
import yaml

from fastalign.cli import main
from fastalign.config import ConfigError
from fastalign.data import demo_data_path, train_demo_tokenizer
from fastalign.pipeline import MARKER, MERGED_DIR, load_pipeline, run_pipeline


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> str:
    """A 2-layer Llama (hidden 32) with a 300-token BPE tokenizer trained on the bundled text."""
    path = tmp_path_factory.mktemp("base")
    tokenizer = train_demo_tokenizer(path / "tokenizer", vocab_size=300)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=96,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path / "model")
    tokenizer.save_pretrained(path / "model")
    return str(path / "model")


def stage(objective: str, data: str, steps: int = 2, **model) -> dict:
    """A small stage config; the model section is LoRA unless ``model`` says otherwise."""
    section = "preference" if objective in ("dpo", "orpo", "cpo", "kto") else "sft"
    return {
        "objective": objective,
        "model": {"dtype": "float32", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, **model},
        "data": {
            "train": {"path": str(demo_data_path(f"{data}_train"))},
            "eval": {"path": str(demo_data_path(f"{data}_eval"))},
            section: {"max_length": 96},
        },
        "training": {"max_steps": steps, "batch_size": 2, "learning_rate": 1e-2, "save_steps": 1, "logging_steps": 1},
    }


def write_pipeline(tmp_path, base_model: str, handoff: str) -> str:
    spec = {
        "output_dir": str(tmp_path / "run"),
        "handoff": handoff,
        "stages": [
            {"name": "sft", "config": stage("sft", "sft", name_or_path=base_model)},
            {"name": "orpo", "config": stage("orpo", "preference")},
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def test_merge_handoff_starts_each_stage_from_the_merged_previous_result(tmp_path, base_model):
    results = run_pipeline(load_pipeline(write_pipeline(tmp_path, base_model, "merge")))
    sft, orpo = results
    merged = tmp_path / "run" / "sft" / MERGED_DIR
    assert sft.next_model == str(merged) and sft.next_adapters == []
    assert (merged / "model.safetensors").exists() and (merged / "tokenizer.json").exists()
    # The merged model is the base plus the SFT adapter: the same output as the adapter on the base.
    import peft

    ids = torch.tensor([[5, 17, 42, 7]])
    with torch.no_grad():
        on_base = peft.PeftModel.from_pretrained(
            transformers.AutoModelForCausalLM.from_pretrained(base_model), sft.output_dir
        )(ids).logits
        from_merged = transformers.AutoModelForCausalLM.from_pretrained(merged)(ids).logits
    torch.testing.assert_close(from_merged, on_base, rtol=0, atol=1e-5)  # float32 merge rounding only
    assert orpo.objective == "orpo" and orpo.steps == 2 and orpo.train_loss is not None
    assert (tmp_path / "run" / "orpo" / "adapter_model.safetensors").exists()
    summary = json.loads((tmp_path / "run" / "pipeline_summary.json").read_text())
    assert [row["stage"] for row in summary] == ["sft", "orpo"]
    assert summary[0]["held_out"]["eval_loss"][1] < summary[0]["held_out"]["eval_loss"][0]


def test_stack_handoff_hands_on_adapters_and_writes_no_full_model(tmp_path, base_model):
    sft, orpo = run_pipeline(load_pipeline(write_pipeline(tmp_path, base_model, "stack")))
    assert sft.next_model == base_model and sft.next_adapters == [sft.output_dir]
    assert orpo.next_adapters == [sft.output_dir, orpo.output_dir]
    assert not list((tmp_path / "run").rglob("model.safetensors"))  # adapters only


def test_rerun_skips_completed_stages_and_resumes_an_interrupted_one(tmp_path, base_model, capsys):
    path = write_pipeline(tmp_path, base_model, "merge")

    class Interrupt(transformers.TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if args.output_dir.endswith("orpo") and state.global_step == 1:
                raise KeyboardInterrupt  # after checkpoint-1 of the second stage is in place

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(load_pipeline(path), callbacks=[Interrupt()])
    run = tmp_path / "run"
    assert (run / "sft" / MARKER).exists() and not (run / "orpo" / MARKER).exists()
    assert (run / "orpo" / "checkpoint-1").is_dir()
    capsys.readouterr()

    sft, orpo = run_pipeline(load_pipeline(path))
    printed = capsys.readouterr().out
    assert sft.skipped and "sft (sft): complete" in printed
    assert "resuming" in printed and not orpo.skipped and orpo.steps == 2
    history = json.loads((run / "orpo" / "metrics.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "loss" in entry] == [1, 2]  # step 1 from before the interruption

    third = run_pipeline(load_pipeline(path))
    assert all(result.skipped for result in third)


def test_pipeline_errors_name_the_stage_and_key_before_loading_anything(tmp_path, base_model):
    good = stage("sft", "sft", name_or_path=base_model)
    cases = [
        ({"stages": [{"name": "a", "config": {**good, "training": {"max_steps": "x"}}}], "output_dir": "o"},
         "stages[0].config.training.max_steps: expected int, got 'x'"),
        ({"stages": [{"name": "a", "config": good}, {"name": "b", "config": {**good, "objective": "ppo"}}],
          "output_dir": "o"}, "stages[1].config.objective: expected one of"),
        ({"stages": [{"name": "a", "config": "missing.yaml"}]}, "stages[0].config: file not found: missing.yaml"),
        ({"stages": [{"name": "a", "config": good}], "handoff": "fuse"}, "handoff: expected one of merge, stack"),
        ({"stages": [{"name": "a", "config": good}, {"name": "a", "config": good}], "output_dir": "o"},
         "stages[1].name: stage names must be unique"),
        ({"stages": [{"name": "a", "config": good, "overides": []}]}, "stages[0].overides: unknown key"),
        ({"stages": [{"name": "a", "config": good}]}, "stages[0].config.training.output_dir: missing required key"),
    ]  # fmt: skip
    for index, (spec, message) in enumerate(cases):
        path = tmp_path / f"bad{index}.yaml"
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_pipeline(path)

    # A stage config in its own file: errors name the file; overrides go to the stage named first.
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump({**good, "training": {"output_dir": "o", "lr": 1}}))
    path = tmp_path / "file.yaml"
    path.write_text(yaml.safe_dump({"stages": [{"name": "sft", "config": "sft.yaml"}]}))
    with pytest.raises(ConfigError, match=r"stages\[0\]\.config\(sft\.yaml\)\.training\.lr: unknown key"):
        load_pipeline(path)
    with pytest.raises(SystemExit, match="must start with a stage name"):
        main(["pipeline", str(path), "training.max_steps=3"])


def test_example_pipeline_validates(capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).parent.parent)  # its data paths are relative to the repository root
    assert main(["pipeline", "examples/pipeline_7b_qlora.yaml", "--check"]) == 0
    assert "pipeline OK" in capsys.readouterr().out
