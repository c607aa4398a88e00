"""What the replacements share while TRL is patched: the options, the saved originals, the warnings given."""

from __future__ import annotations

import collections
import warnings

IGNORE_INDEX = -100

OPTIONS = {"patched": False, "exact_metrics": True, "impl": "auto"}
ORIGINALS: dict[tuple[str, str], object] = {}  # (module, attribute path) -> the TRL object replaced
WARNED: set[str] = set()
# seam -> calls fastalign answered (the self-check tells from it whether TRL still calls the seam)
FUSED_CALLS: collections.Counter = collections.Counter()


def active() -> bool:
    """Whether a replacement should answer: it stays installed in trainers built while patched, but yields to TRL's
    own code after ``unpatch_trl()``."""
    return OPTIONS["patched"]


def warn_once(key: str, message: str) -> None:
    if key not in WARNED:
        WARNED.add(key)
        warnings.warn(f"fastalign.integrations.trl: {message}", UserWarning, stacklevel=4)
