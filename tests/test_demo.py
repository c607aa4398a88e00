"""``fastalign demo --quick`` end to end: CPT -> SFT -> DPO through the pipeline, and a held-out preference
improvement that is measured, not assumed (40 bundled pairs whose prompts no training split contains)."""

import json

import pytest
import torch

from fastalign.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    threads = torch.get_num_threads()
    assert main(["demo", "--quick", "--threads", "1", "--output-dir", str(out)]) == 0
    torch.set_num_threads(threads)
    return out, json.loads((out / "metrics.json").read_text())


def test_quick_demo_reports_held_out_preference_before_and_after_dpo(demo):
    out, metrics = demo
    before, after = metrics["preference"]["before"], metrics["preference"]["after"]
    assert before["pairs"] == after["pairs"] == 40
    # Before DPO the policy is its own reference: every implicit reward margin is exactly 0.
    assert before["reward_margin"] == 0.0 and before["reward_accuracy"] == 0.0
    # A few DPO steps: most held-out pairs now rank chosen over rejected, against the SFT model and on their own.
    assert after["reward_accuracy"] >= 0.75 and after["reward_margin"] > 0.0
    assert after["accuracy"] > max(before["accuracy"], 0.5)
    assert metrics["dpo"]["eval_loss_after"] < metrics["dpo"]["eval_loss_before"]
    for name in ("preference.png", "training_curves.png", "pipeline.yaml", "dpo.yaml", "dpo/adapter_model.safetensors"):
        assert (out / name).stat().st_size > 0


def test_rerunning_the_demo_pipeline_skips_every_completed_stage(demo, capsys):
    out, _ = demo
    assert main(["pipeline", str(out / "pipeline.yaml")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped") == 3 and "done earlier" in printed
