"""Packaging glue that pyproject.toml cannot express.

The Triton kernels live in the top-level ``kernels/`` folder of the repository (the layout shows the architecture),
and ship as ``fastalign.kernels`` through the symbolic link ``fastalign/kernels -> ../kernels``. The folder has no
``__init__.py`` on purpose: a regular package named ``kernels`` at the repository root would shadow the Hugging Face
package of that name (which transformers imports) whenever Python runs from the root (``python -m pytest``,
``python -m fastalign``); without one it is at most a namespace portion, which any installed package outranks.
``fastalign.kernels`` is then a namespace package inside ``fastalign``, in a checkout and in a wheel alike.

The C++/CUDA sources live in the top-level ``csrc/`` folder and ship as data inside ``fastalign/csrc``, so an
installed wheel can JIT-build the extension (``fastalign.ext``) exactly as a checkout does. With
``FASTALIGN_BUILD_EXT=1`` the extension is also compiled now, ahead of time, into ``fastalign/ext``; that needs
torch at build time, so install with ``--no-build-isolation``. By default nothing here imports torch.
"""

import importlib.util
import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def _build_settings():
    """fastalign/ext/_build.py (sources and flags of the JIT build), loaded by path: fastalign needs torch."""
    spec = importlib.util.spec_from_file_location("_fastalign_build", ROOT / "fastalign" / "ext" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ahead_of_time_extension() -> dict:
    """``setup()`` arguments that compile the extension when FASTALIGN_BUILD_EXT=1, else none."""
    if os.environ.get("FASTALIGN_BUILD_EXT", "0") != "1":
        return {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    build = _build_settings()
    with_cuda = build.cuda_toolkit_usable()
    define = [build.CUDA_DEFINE] if with_cuda else []
    extension = (CUDAExtension if with_cuda else CppExtension)(
        name=f"fastalign.ext._{build.NAME}",
        sources=[os.path.relpath(p, ROOT) for p in build.sources(with_cuda)],
        extra_compile_args={"cxx": build.CXX_FLAGS + define, "nvcc": build.CUDA_FLAGS + define},
        extra_link_args=build.LD_FLAGS,
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension}}


setup(
    packages=find_packages(include=["fastalign", "fastalign.*"])
    + ["fastalign.assets", "fastalign.kernels", "fastalign.csrc", "fastalign.csrc.cuda"],
    package_data={
        "fastalign": ["assets/*.jsonl"],
        "fastalign.csrc": ["*.md", "*.sh", *_build_settings().SOURCE_GLOBS],
    },
    **ahead_of_time_extension(),
)
