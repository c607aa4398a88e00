"""``python -m fastalign.ext [-v]``: build the C++/CUDA extension now and print where it went."""

from __future__ import annotations

import sys

import torch

from fastalign.ext import build, has_kernel


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the extension, print the library's path and which devices it has kernels for."""
    args = sys.argv[1:] if argv is None else argv
    path = build(verbose="-v" in args or "--verbose" in args)
    devices = [d for d in ("cpu", "cuda") if has_kernel("dpo_terms", torch.device(d))]
    print(f"{path}\nkernels: {', '.join(devices)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
