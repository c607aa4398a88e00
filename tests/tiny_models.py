"""The shape of the tiny Llama-style models the tests build from configs (nothing is downloaded)."""

TINY_SHAPE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
"""Two layers, hidden size 32, grouped-query attention (4 heads, 2 key/value heads): seconds to run on CPU."""
