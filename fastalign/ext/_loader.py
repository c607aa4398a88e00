"""Whether the compiled extension is used: the ``FASTALIGN_EXT`` switch, the one-time load, and the fallback.

    FASTALIGN_EXT=1      use the extension; building or loading it must succeed (errors are raised)
    FASTALIGN_EXT=0      never use it: every op runs its PyTorch implementation
    unset (or "auto")    use it when it builds; otherwise warn once and run the PyTorch implementations

The library is loaded at most once per process, on first use: an ahead-of-time build next to this file
(``FASTALIGN_BUILD_EXT=1 pip install .``) when it loads, otherwise a JIT build (``_build.jit_build``). The
outcome, success or failure, is remembered, so a failed build costs one attempt and one warning.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import torch

from fastalign.ext import _autograd, _build

ENV_VAR = "FASTALIGN_EXT"

_lock = threading.Lock()
_library: Path | None = None  # the loaded shared library
_failure: BaseException | None = None  # why loading failed, once it has
_warned = False


def mode() -> str:
    """``"on"``, ``"off"`` or ``"auto"`` from ``FASTALIGN_EXT`` (read on every call, so it can change at runtime)."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("1", "on", "true"):
        return "on"
    if value in ("0", "off", "false"):
        return "off"
    raise ValueError(f"{ENV_VAR} must be 1 (use the extension), 0 (PyTorch only) or unset (auto), got {value!r}")


def _prebuilt() -> Path | None:
    """The library built by setup.py (``FASTALIGN_BUILD_EXT=1``), if there is one next to this file."""
    return next(iter(sorted(Path(__file__).parent.glob(f"_{_build.NAME}*.so"))), None)


def _load_library(verbose: bool) -> Path:
    prebuilt = _prebuilt()
    if prebuilt is not None:
        try:
            torch.ops.load_library(str(prebuilt))
            return prebuilt
        except OSError:  # built against another torch: compile a matching one instead
            pass
    return _build.jit_build(verbose)


def build(verbose: bool = False) -> Path:
    """Build the extension if needed, load it into this process, and return the shared library's path.

    Ignores ``FASTALIGN_EXT``; this is what ``python -m fastalign.ext`` (and the ``fastalign build-ext`` CLI)
    runs ahead of training so the first step does not pay for the compile.

    Raises:
        RuntimeError: no C++ compiler or ninja, or the compilation failed.
    """
    global _library, _failure
    with _lock:
        if _library is None:
            if _failure is not None:
                raise RuntimeError(f"fastalign's C++ extension failed to build earlier: {_failure}") from _failure
            try:
                _library = _load_library(verbose)
            except Exception as error:
                _failure = error
                raise
            _autograd.register()
        return _library


def loaded() -> bool:
    """True when the extension is loaded and ``FASTALIGN_EXT`` allows using it; builds it on first use.

    In auto mode a failed build emits one RuntimeWarning for the process and returns False from then on.

    Raises:
        RuntimeError: ``FASTALIGN_EXT=1`` and the extension cannot be built or loaded.
    """
    global _warned
    current = mode()
    if current == "off":
        return False
    if _library is not None:
        return True
    try:
        build()
        return True
    except Exception as error:
        if current == "on":
            raise RuntimeError(f"{ENV_VAR}=1 but fastalign's C++ extension is unavailable: {error}") from error
        if not _warned:
            _warned = True
            warnings.warn(
                f"fastalign's C++ extension is unavailable, using the PyTorch implementations instead "
                f"({_summary(error)}). Set {ENV_VAR}=0 to skip the extension, or {ENV_VAR}=1 to make this an error.",
                RuntimeWarning,
                stacklevel=3,
            )
        return False


def has_kernel(name: str, device: torch.device) -> bool:
    """True when the loaded library has a kernel of ``torch.ops.fastalign.<name>`` for ``device``'s type."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastalign::{name}", device.type.upper())


def _summary(error: BaseException, max_lines: int = 12) -> str:
    """The end of an error message: a compiler's output ends with the lines that matter."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    tail = lines[-max_lines:]
    return ("...\n" if len(lines) > max_lines else "") + "\n".join(tail)


def handles(name: str, args) -> bool:
    """True when ``torch.ops.fastalign.<name>`` should run on ``args`` instead of the PyTorch implementation.

    That is: the extension is allowed and loaded (``loaded``) and has a kernel for the device of the first tensor
    in ``args``. A torch with CUDA but no nvcc builds CPU kernels only; CUDA inputs then take the PyTorch path
    (one RuntimeWarning), or raise under ``FASTALIGN_EXT=1``. Under torch.compile the answer is taken once, at
    trace time, and baked into the compiled graph.
    """
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    return _handles(name, device.type)


@torch.compiler.assume_constant_result
def _handles(name: str, device_type: str) -> bool:
    global _warned
    if not loaded():
        return False
    if has_kernel(name, torch.device(device_type)):
        return True
    message = f"fastalign's C++ extension has no {device_type} kernel for {name} (was it built without nvcc?)"
    if mode() == "on":
        raise RuntimeError(f"{ENV_VAR}=1 but {message}")
    if not _warned:
        _warned = True
        warnings.warn(f"{message}; using the PyTorch implementation.", RuntimeWarning, stacklevel=4)
    return False
