"""Shared by the tests/test_data_*.py modules: the demo tokenizer, trained once per test session (~2 s)."""

import functools
import tempfile

from fastalign.data import train_demo_tokenizer


@functools.cache
def demo_tokenizer():
    return train_demo_tokenizer(tempfile.mkdtemp(prefix="fastalign-demo-tokenizer-"))
