"""Nothing in the repository shadows an installed package, whichever folder Python runs from.

``python -m pytest`` and ``python -m fastalign`` put the current folder first on ``sys.path``. A regular package
there named like an installed distribution (the Triton folder ``kernels/`` against Hugging Face's ``kernels``,
which transformers imports) would win every import of that name. So no top-level folder of the repository is a
regular package (``fastalign/`` aside), and the modules the test and benchmark folders put on ``sys.path`` carry
names no installed distribution owns.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Folders whose modules are importable by bare name: tests/ (pytest's pythonpath) and benchmarks/ (the scripts'
# own folder when run as `python benchmarks/x.py`).
SCRIPT_FOLDERS = ("tests", "benchmarks")


def importable_names(folder: Path) -> set[str]:
    """Top-level names ``import`` resolves in ``folder``: packages, modules and namespace portions."""
    names = {p.stem for p in folder.glob("*.py")}
    names |= {p.name for p in folder.iterdir() if p.is_dir() and p.name.isidentifier()}
    return names


def run_from_root(code: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout.strip()


def test_no_top_level_folder_is_a_regular_package_but_fastalign():
    regular = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "fastalign")
    assert not regular, f"regular packages at the repository root would shadow installed ones: {regular}"


def test_no_installed_distribution_owns_a_name_the_repository_puts_on_sys_path():
    owners = importlib.metadata.packages_distributions()
    clashes = {}
    for folder in (ROOT, *(ROOT / name for name in SCRIPT_FOLDERS)):
        for name in importable_names(folder) - {"fastalign", "conftest"}:
            others = set(owners.get(name, ())) - {"fastalign"}
            # A root folder without __init__.py is only a namespace portion: an installed package outranks it.
            if others and not (folder == ROOT and (ROOT / name).is_dir()):
                clashes[f"{folder.relative_to(ROOT.parent)}/{name}"] = sorted(others)
    assert not clashes, f"repository names owned by installed distributions: {clashes}"


@pytest.mark.skipif(importlib.util.find_spec("kernels") is None, reason="Hugging Face's kernels is not installed")
def test_kernels_from_the_repository_root_is_hugging_faces():
    origin = run_from_root("import kernels; print(kernels.__file__)")
    assert not Path(origin).resolve().is_relative_to(ROOT), origin
    # transformers' hub-kernel integration imports names from it (it failed to import when kernels/ shadowed it).
    run_from_root("import transformers.integrations.hub_kernels")


def test_fastalign_runs_as_a_module_from_the_repository_root():
    completed = subprocess.run(
        [sys.executable, "-m", "fastalign", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "train" in completed.stdout


def test_triton_kernels_ship_as_fastalign_kernels():
    origin = Path(run_from_root("import fastalign.kernels.softmax_stats as m; print(m.__file__)"))
    assert origin.resolve() == (ROOT / "kernels" / "softmax_stats.py").resolve()
