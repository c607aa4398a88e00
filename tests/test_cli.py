"""The command line end to end: ``fastalign demo --quick``, then ``train`` and ``data prepare`` on its configs."""

import json

import pytest
import torch

from fastalign.cli import main


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    threads = torch.get_num_threads()
    assert main(["demo", "--quick", "--threads", "1", "--output-dir", str(out)]) == 0
    torch.set_num_threads(threads)
    return out


def test_demo_trains_both_stages_and_writes_its_report(demo_dir):
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    for stage in ("cpt", "sft"):
        assert metrics[stage]["eval_loss_after"] < metrics[stage]["eval_loss_before"]
        assert metrics[stage]["skipped_steps"] == 0
    assert set(metrics["samples"]) >= {"prompt", "base model", "after cpt", "after sft"}
    assert (demo_dir / "training_curves.png").stat().st_size > 0
    assert (demo_dir / "cpt" / "model.safetensors").exists()  # CPT: the full model
    assert (demo_dir / "sft" / "adapter_model.safetensors").exists()  # SFT: the LoRA adapter only
    assert not (demo_dir / "sft" / "model.safetensors").exists()


def test_train_reruns_a_demo_config_with_overrides(demo_dir, capsys):
    out = demo_dir / "rerun"
    assert main(["train", str(demo_dir / "sft.yaml"), "training.max_steps=2", f"training.output_dir={out}"]) == 0
    assert "eval_loss_after" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["train"]["epoch"] > 0


def test_data_prepare_reports_the_preprocessing(demo_dir, capsys):
    assert main(["data", "prepare", str(demo_dir / "cpt.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "cpt data from" in printed and "held-out rows" in printed


def test_config_errors_exit_with_the_key_path(demo_dir):
    with pytest.raises(SystemExit, match="config error at training.learning_rate: expected float, got 'abc'"):
        main(["train", str(demo_dir / "sft.yaml"), "training.learning_rate=abc"])
