"""benchmarks/run_gpu.sh, checked on CPU: its dry run plans every step within the budget and every command parses.

A GPU session gets one call of a few minutes, so a typo in a flag or a pytest selection that matches nothing must be
found here, not there. ``DRY_RUN=1`` runs nothing: it prints the plan (each step assumed to use its whole limit) and
checks each command line (every benchmark script parses its flags, each pytest selection collects tests, and with
CUDA pretended the GPU selection holds the Triton backend, extension and fused-head tests). ~25 s on 2 cores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "run_gpu.sh"
STEPS = ["env", "ext_build", "pytest", "linear_ce", "preference", "qlora_tests", "sft_step", "roofline", "scaling",
         "replot"]  # fmt: skip


def dry_run(out: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "GPU_BUDGET_S": "480", **env}
    return subprocess.run(
        ["bash", str(SCRIPT), str(out)], env=environment, capture_output=True, text=True, timeout=300, check=False
    )


def summary(out: Path) -> dict[str, str]:
    """Step name -> what summary.txt says about it."""
    lines = (out / "summary.txt").read_text().splitlines()
    return {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines if ":" in line}


@pytest.fixture(scope="module")
def default_plan(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    return dry_run(out), out


def test_dry_run_checks_every_command_and_passes(default_plan):
    result, out = default_plan
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "FAIL" not in result.stdout
    assert "all ok" in result.stdout
    checked = re.findall(r"^  ok   (\w+):", result.stdout, flags=re.M)
    assert set(STEPS) <= set(checked)  # also the steps the worst-case plan skips


def test_gpu_test_selection_collects_the_kernel_tests(default_plan):
    result, _ = default_plan
    cpu = re.search(r"pytest: collects (\d+) tests on this CPU", result.stdout)
    gpu = re.search(r"pytest: collects (\d+) tests with CUDA pretended", result.stdout)
    assert cpu and int(cpu.group(1)) > 0, result.stdout
    assert gpu and int(gpu.group(1)) > int(cpu.group(1)), result.stdout  # the *-cuda parametrizations appear
    for what in ("Triton backend", "extension ops on cuda", "fused heads, triton on cuda"):
        hits = re.search(rf"of which {what}: (\d+)", result.stdout)
        assert hits and int(hits.group(1)) > 0, what


def test_steps_are_planned_in_priority_order_within_the_budget(default_plan):
    result, out = default_plan
    steps = summary(out)
    planned = [name for name in steps if steps[name].startswith("planned")]
    assert planned[:5] == ["env", "ext_build", "pytest", "linear_ce", "preference"]  # priorities 1 and 2 always start
    starts = [int(re.search(r"planned at (\d+) s", steps[name]).group(1)) for name in planned]
    limits = [int(re.search(r"limit (\d+) s", steps[name]).group(1)) for name in planned]
    assert starts == sorted(starts) and starts[-1] + limits[-1] <= 480
    for name in set(STEPS) - set(planned):
        assert steps[name].startswith("skipped: budget"), (name, steps[name])


def test_a_small_budget_cuts_the_last_step_to_what_is_left_and_skips_the_rest(tmp_path):
    # env 20 + ext_build 100 + linear_ce 90 = 210 s; preference gets the 50 s left (>= its 45 s minimum); nothing more.
    result = dry_run(tmp_path, DRY_RUN="plan", GPU_BUDGET_S="260", SKIP="pytest")
    assert result.returncode == 0, result.stdout[-4000:]
    steps = summary(tmp_path)
    assert steps["pytest"] == "skipped: SKIP"
    assert steps["linear_ce"].startswith("planned at 120 s, limit 90 s")
    assert steps["preference"].startswith("planned at 210 s, limit 50 s")
    for name in ("qlora_tests", "sft_step", "roofline", "scaling", "replot"):
        assert steps[name].startswith("skipped: budget"), steps[name]
