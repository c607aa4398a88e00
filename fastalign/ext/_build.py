"""How the C++/CUDA extension is compiled: its sources, flags and cache folder, and the JIT build itself.

The sources live in ``csrc/`` at the top of the repository, seen from the package as ``fastalign/csrc`` (a symbolic
link in a checkout, the copied files in a wheel):

    csrc/*.cpp       torch-side ops, their CPU twins and the op schemas   (always compiled, with -fopenmp)
    csrc/cuda/*.cu   torch-free CUDA kernels behind csrc/cuda/launch.h    (only when torch has CUDA and nvcc exists)

A CUDA build also defines ``FASTALIGN_WITH_CUDA`` so the .cpp files register their CUDA kernels. The library is
built by ``torch.utils.cpp_extension.load`` (ninja) into a folder keyed by the Python, torch and CUDA versions,
so a later process, or a rebuild after an edit, only recompiles what changed. This module imports nothing heavy
at import time: ``setup.py`` reads ``SOURCE_GLOBS`` and the flags from it without importing torch.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

NAME = "fastalign_ext"
CPP_GLOB = "*.cpp"
CUDA_GLOB = "cuda/*.cu"
# Everything the build reads, relative to the csrc folder (what a wheel must ship).
SOURCE_GLOBS = ("*.h", "*.cpp", "cuda/*.h", "cuda/*.cu")
# at::parallel_for is inlined OpenMP code: without -fopenmp the CPU twins would run on one core.
CXX_FLAGS = ["-O3", "-fopenmp"]
LD_FLAGS = ["-fopenmp"]
CUDA_FLAGS = ["-O3"]
CUDA_DEFINE = "-DFASTALIGN_WITH_CUDA"


def csrc_dir() -> Path:
    """The folder holding the C++/CUDA sources, ``fastalign/csrc``."""
    folder = Path(__file__).resolve().parent.parent / "csrc"
    if not (folder / "library.cpp").is_file():
        raise FileNotFoundError(f"fastalign's C++ sources are missing: no {folder / 'library.cpp'}")
    return folder


def cuda_toolkit_usable() -> bool:
    """True when this torch has CUDA and the CUDA toolkit (nvcc) is found, i.e. the .cu files can be built."""
    import torch
    from torch.utils import cpp_extension

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def sources(with_cuda: bool) -> list[Path]:
    """The translation units of a CPU (``with_cuda=False``) or CPU + CUDA build."""
    root = csrc_dir()
    files = sorted(root.glob(CPP_GLOB))
    if with_cuda:
        files += sorted(root.glob(CUDA_GLOB))
    return files


def cache_dir(with_cuda: bool) -> Path:
    """``~/.cache/fastalign/ext/<python>-<torch>-<cpu|cuXY>``: one folder per ABI the library is built against."""
    import torch

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    device = f"cu{torch.version.cuda.replace('.', '')}" if with_cuda else "cpu"
    torch_version = torch.__version__.split("+")[0]
    return base / "fastalign" / "ext" / f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch_version}-{device}"


def check_toolchain() -> None:
    """Raise RuntimeError naming what is missing when no C++ compiler or no ninja is available."""
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler: {compiler!r} is not on PATH (set CXX to use another)")
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed (pip install ninja)")


def jit_build(verbose: bool = False) -> Path:
    """Compile (or reuse) the extension and load it into this process with ``torch.ops.load_library``.

    Returns:
        The path of the shared library.

    Raises:
        RuntimeError: no compiler or ninja, or the compilation failed (the compiler output is in the message).
    """
    from torch.utils import cpp_extension

    check_toolchain()
    with_cuda = cuda_toolkit_usable()
    build_dir = cache_dir(with_cuda)
    build_dir.mkdir(parents=True, exist_ok=True)
    define = [CUDA_DEFINE] if with_cuda else []
    path = cpp_extension.load(
        name=NAME,
        sources=[str(p) for p in sources(with_cuda)],
        extra_cflags=CXX_FLAGS + define,
        extra_cuda_cflags=CUDA_FLAGS + define,
        extra_ldflags=LD_FLAGS,
        build_directory=str(build_dir),
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=verbose,
    )
    return Path(path)
