"""The versions a green run resolved, as one line of the README (generated, never typed by hand).

    python scripts/tested_versions.py                 print the line for this environment
    python scripts/tested_versions.py --write         rewrite the README's line (after `bash .ci/run` passed)

The line sits between the markers ``<!-- tested-versions -->`` and ``<!-- /tested-versions -->`` in README.md.
"""

import argparse
import datetime
import importlib.metadata
import platform
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets", "triton", "kernels")
MARKERS = re.compile(r"(<!-- tested-versions -->).*?(<!-- /tested-versions -->)", re.S)


def versions_line() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    today = datetime.date.today().isoformat()
    return f"Python {platform.python_version()}, " + ", ".join(found) + f" (newest resolvable on {today})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite the line in README.md")
    line = versions_line()
    if not parser.parse_args().write:
        print(line)
        return
    text = README.read_text()
    if not MARKERS.search(text):
        sys.exit(f"{README}: no <!-- tested-versions --> ... <!-- /tested-versions --> markers")
    README.write_text(MARKERS.sub(lambda m: m.group(1) + line + m.group(2), text, count=1))
    print(f"{README.name}: {line}")


if __name__ == "__main__":
    main()
