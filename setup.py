"""Packaging glue that pyproject.toml cannot express.

The Triton kernels live in the top-level ``kernels/`` folder of the repository (the layout shows the architecture),
but they ship as ``fastalign.kernels``: a top-level module named ``kernels`` would shadow the Hugging Face package of
that name, which transformers imports.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["fastalign", "fastalign.*"]) + ["fastalign.kernels"],
    package_dir={"fastalign": "fastalign", "fastalign.kernels": "kernels"},
)
