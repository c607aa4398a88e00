"""Messages other libraries print on every run that say nothing about the user's run; the CLI drops them.

Each one is explained here once (and in docs/training.md, "Warnings you may see"); a library user who wants the
same quiet calls :func:`silence_known_warnings`. Anything not listed still reaches the user.

- bitsandbytes, on a CPU with AVX512-BF16: "Failed to load CPU gemm_4bit_forward from kernels-community ...".
  Importing bitsandbytes tries to fetch an optional 4-bit CPU kernel from the Hugging Face Hub; offline (or when
  the Hub repository is not trusted) it falls back to its own built-in kernel, with the same results.
- transformers >= 5.25: "`is_gradient_checkpointing` is deprecated ...", raised from peft's own
  ``getattr(model, "is_gradient_checkpointing", ...)`` when an adapter is attached; fastalign calls the new names
  (``activation_checkpointing_enable``) itself, see ``fastalign.modeling``.
"""

from __future__ import annotations

import logging
import warnings

BITSANDBYTES_HUB_KERNEL = "Failed to load CPU gemm_4bit_forward from kernels-community"
PEFT_CHECKPOINTING_ALIAS = "`is_gradient_checkpointing` is deprecated"


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def silence_known_warnings() -> None:
    """Drop the messages listed in this module's docstring (idempotent). Call before bitsandbytes is imported."""
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage(BITSANDBYTES_HUB_KERNEL))
    warnings.filterwarnings("ignore", message=PEFT_CHECKPOINTING_ALIAS, category=FutureWarning)
