"""Version guards: a library outside fastalign's range, or a transformers without a private seam the trainer uses,
fails by name when the feature is imported, not deep inside a training step."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys

import pytest
import torch
import transformers
from packaging.requirements import Requirement

import fastalign.compat as compat
import fastalign.training.trainer as trainer_module


@pytest.fixture(autouse=True)
def fresh_checks():
    compat.check_trainer_seams.cache_clear()
    yield
    compat.check_trainer_seams.cache_clear()


def test_installed_versions_are_in_range():
    for name in ("transformers", "peft", "torch", "datasets"):
        assert compat.require(name, "test") == importlib.metadata.version(name)


def test_version_outside_the_declared_range_names_found_and_supported(monkeypatch):
    monkeypatch.setattr(compat, "declared_requirement", lambda name: Requirement(f"{name}>=5.13,<6"))
    monkeypatch.setattr(compat.importlib.metadata, "version", lambda name: "5.10.4")
    with pytest.raises(compat.IncompatibleVersionError) as error:
        compat.require("transformers", "fastalign's trainer")
    message = str(error.value)
    assert "fastalign's trainer" in message and "5.10.4" in message and "<6,>=5.13" in message


def test_missing_distribution_is_named():
    with pytest.raises(compat.IncompatibleVersionError, match="no-such-distribution.*not installed"):
        compat.require("no-such-distribution", "a feature")


def test_the_installed_transformers_has_every_seam():
    compat.check_trainer_seams()


def test_a_missing_method_is_named(monkeypatch):
    monkeypatch.delattr(transformers.Trainer, "_save_checkpoint")
    with pytest.raises(compat.IncompatibleVersionError, match=r"Trainer\._save_checkpoint .*does not exist"):
        compat.check_trainer_seams()


def test_a_renamed_parameter_is_named(monkeypatch):
    monkeypatch.setattr(transformers.trainer_utils, "rotate_checkpoints", lambda output_dir, limit, best: None)
    with pytest.raises(compat.IncompatibleVersionError, match="takes no parameter save_total_limit"):
        compat.check_trainer_seams()


def test_an_attribute_the_trainer_stopped_reading_is_named(monkeypatch):
    source = inspect.getsource(transformers.Trainer).replace("self._loss_shifts_labels", "self._renamed")
    monkeypatch.setattr(compat.inspect, "getsource", lambda obj: source)
    with pytest.raises(compat.IncompatibleVersionError, match="_loss_shifts_labels .*no longer read"):
        compat.check_trainer_seams()


def test_importing_the_trainer_with_a_broken_seam_fails_there():
    """In a fresh interpreter (reloading the module here would swap the classes other tests hold)."""
    code = "import transformers; del transformers.Trainer._get_output_dir; import fastalign.training"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode != 0
    assert "IncompatibleVersionError" in completed.stderr
    assert "transformers' private Trainer._get_output_dir" in completed.stderr


def test_the_seam_list_is_exactly_what_the_trainer_uses(tmp_path):
    """Every private Trainer name FastAlignTrainer overrides, calls through super() or sets is listed, and
    every listed name is used: the list cannot go stale in either direction."""
    source = inspect.getsource(trainer_module)
    trainer = transformers.Trainer(model=torch.nn.Linear(1, 1), args=transformers.TrainingArguments(str(tmp_path)))
    used = set(re.findall(r"super\(\)\.(_\w+)", source))
    used |= {name for name in re.findall(r"    def (_\w+)\(", source) if hasattr(trainer, name)}
    used |= {name for name in re.findall(r"self\.(_\w+) = ", source) if hasattr(trainer, name)}
    used |= {name for name in re.findall(r"from transformers\.trainer_utils import (.*)", source)[0].split(", ")}
    listed = {seam.name for seam in compat.TRAINER_SEAMS}
    assert used - {"__init__"} <= listed, f"used but not listed: {used - listed}"
    assert all(name in source for name in listed), f"listed but unused: {[n for n in listed if n not in source]}"
