"""Shared test setup.

Without CUDA the Triton kernels run under Triton's CPU interpreter. TRITON_INTERPRET is read when a kernel is
decorated, so it is set here, before any test module imports fastalign's kernels.
"""

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def fresh_seed():
    """Fresh random inputs on every run; the seed is printed so that a failure can be replayed."""
    seed = int(os.environ.get("FASTALIGN_TEST_SEED", random.randrange(2**31)))
    torch.manual_seed(seed)
    print(f"seed={seed} (replay with FASTALIGN_TEST_SEED={seed})")
    return seed
