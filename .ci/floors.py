"""Print each dependency pinned to its lower bound, one per line: what CI's oldest-versions job installs.

    python3 .ci/floors.py            the core dependencies of pyproject.toml
    python3 .ci/floors.py trl        one optional extra

A floor in pyproject.toml is only a promise when something installs and tests exactly that version, so the
floors are read from the file itself and never restated elsewhere.
"""

import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
requirements = project["optional-dependencies"][sys.argv[1]] if len(sys.argv) > 1 else project["dependencies"]
for line in requirements:
    requirement = Requirement(line)
    floors = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    if not floors:
        sys.exit(f"pyproject.toml: {line!r} has no lower bound")
    print(f"{requirement.name}=={floors[0]}")
