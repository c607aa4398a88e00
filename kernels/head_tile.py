"""One tile of the LM head's logits, shared by the sweep (softmax_stats.py) and the gradient (logit_grad.py) kernels.

For the rows ``rows`` [BLOCK_M] and the vocabulary entries ``cols`` [BLOCK_V]:

    a  = h[rows] @ W[cols].T + b[cols]                              raw logits, fp32 accumulation over D
    z  = softcap * tanh(logit_scale * a / softcap) / temperature    (HAS_SOFTCAP)
    z  = logit_scale / temperature * a                              (otherwise)
    z' = dz/da = logit_scale / temperature * (1 - (z * temperature / softcap) ** 2)   (constant without softcap)

Out-of-range rows and columns load zeros, so their raw logit is 0 and every ``z`` is finite; the callers mask what
must not count (the softmax uses ``-inf`` for columns past V).

Also here: what the launchers share, namely whether the interpreter runs the kernels, the fp32 dot precision, and the
block sizes used under the interpreter.
"""

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
"""Triton reads TRITON_INTERPRET when a kernel is decorated, so this module-level value matches the kernels'.
Under the interpreter, loads are upcast to fp32 (LOAD_AS_FP32): it computes bfloat16 arithmetic wrongly."""

INTERPRETER_CONFIG = triton.Config({"BLOCK_M": 16, "BLOCK_V": 32, "BLOCK_D": 16})
"""The interpreter cannot benchmark, and runs a program per row block in numpy: one small config (tl.dot needs 16)."""

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fp32_dot_precision() -> str:
    """tl.dot precision for fp32 inputs, following torch's matmul setting (TF32 only where torch would use it)."""
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def check_inputs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """Validate hidden [M, D], weight [V, D], bias [V] or None; return them contiguous."""
    if hidden.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"the Triton kernels support float32/bfloat16/float16 inputs, got {hidden.dtype}; "
            "use impl='torch' or impl='reference' for float64"
        )
    if hidden.dim() != 2 or weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"expected hidden [M, D] and weight [V, D], got {tuple(hidden.shape)}, {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype or (bias is not None and bias.dtype != hidden.dtype):
        raise TypeError("hidden, weight and bias must share one dtype")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape [V]=[{weight.shape[0]}], got {tuple(bias.shape)}")
    return hidden.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous()


@triton.jit
def logits_tile(
    h_ptr, w_ptr, b_ptr, rows, cols, row_mask, col_mask, D, stride_h, stride_w,
    softcap, logit_scale, temperature,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, LOAD_AS_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """z [BLOCK_M, BLOCK_V] fp32 for rows x cols (inputs in their dtype on the tensor cores, fp32 accumulation)."""
    # Row starts in int64: M * D and V * D may exceed 2**31 elements.
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_h
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_w
    raw = tl.zeros([BLOCK_M, BLOCK_V], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_mask = d < D
        h = tl.load(h_rows + d[None, :], mask=row_mask[:, None] & d_mask[None, :], other=0.0)
        w = tl.load(w_rows + d[None, :], mask=col_mask[:, None] & d_mask[None, :], other=0.0)
        if LOAD_AS_FP32:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        raw = tl.dot(h, tl.trans(w), raw, input_precision=INPUT_PRECISION)
    if HAS_BIAS:
        raw += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_SOFTCAP:
        # tanh(x) = sign(x) * (1 - e) / (1 + e) with e = exp(-2|x|) in (0, 1]: cannot overflow.
        x = raw * (logit_scale / softcap)
        e = tl.exp(-2.0 * tl.abs(x))
        tanh = tl.where(x < 0, -1.0, 1.0) * (1.0 - e) / (1.0 + e)
        z = tanh * (softcap / temperature)
    else:
        z = raw * (logit_scale / temperature)
    return z


@triton.jit
def logit_slope(z, softcap, logit_scale, temperature, HAS_SOFTCAP: tl.constexpr):
    """dz/da from the transformed logits ``z`` (a scalar without softcap)."""
    slope = logit_scale / temperature
    if HAS_SOFTCAP:
        t = z * (temperature / softcap)
        slope = slope * (1.0 - t * t)
    return slope
