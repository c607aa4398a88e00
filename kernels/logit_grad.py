"""Gradients of the LM head from the gradients of its softmax statistics, recomputing the logits tile by tile.

With the saved ``lse`` and ``mean_logit`` and the per-row upstream gradients ``c_lse, c_target, c_sum, c_mean``
(see fastalign/core/stats.py), each program owns BLOCK_M rows and walks the vocabulary in tiles of BLOCK_V:

    p      = exp(z - lse)                                        no second reduction: lse is known
    dL/dz  = p * (k + c_mean * z) + c_sum + c_target * [v == y],   k = c_lse + c_mean * (1 - mean_logit)
    G      = dL/da = dL/dz * z'                                  [BLOCK_M, BLOCK_V] fp32, 0 outside M x V
    dh[rows]  += G @ W_tile          (GRAD_HIDDEN)   owned rows: read-modify-write of the fp32 output, no atomics
    dW[tile]  += G.T @ h[rows]       (GRAD_WEIGHT)   shared across row blocks: fp32 atomic adds
    db[tile]  += sum_rows G          (GRAD_BIAS)     fp32 atomic adds

3 vocabulary-sized matmuls (logits, dh, dW) with a trainable head, 2 for dh alone. Why atomics for dW rather than a
second kernel with a grid over vocabulary blocks that owns dW: that kernel would recompute the logits (a 4th matmul)
and still read-modify-write its dW rows once per row block, the same (M / BLOCK_M) * V * D fp32 traffic as the
atomics. That traffic, with the dh read-modify-write (8 * M * V * D / BLOCK_V bytes), is the honest cost of fusing
with D too large for registers: about 64 FLOP per byte at BLOCK_M = BLOCK_V = 128, bandwidth-bound on an H100 where
L2 does not absorb it; larger blocks are the lever. The atomics make dW and db non-deterministic in the last bits
(the order of the adds varies); dh is deterministic.
G is cast to the input dtype for both gradient matmuls (tensor cores; relative rounding 2**-8 in bfloat16); the chunked
PyTorch backend does so for dh only and forms dW in fp32.
"""

import torch
import triton
import triton.language as tl

from .head_tile import INTERPRET, INTERPRETER_CONFIG, check_inputs, fp32_dot_precision, logit_slope, logits_tile

# Spill-free for sm_90 with every flag on (ptxas -v on the AOT-compiled kernel): BLOCK_D = 32 keeps the dh and dW
# chunks small next to the [BLOCK_M, BLOCK_V] logits and gradient tiles; 4 warps spill from 32 x 128 tiles on.
CUDA_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_V": 128, "BLOCK_D": 32}, num_warps=8, num_stages=3),
    # Twice the rows per program: half the dW atomics.
    triton.Config({"BLOCK_M": 128, "BLOCK_V": 64, "BLOCK_D": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_V": 64, "BLOCK_D": 32}, num_warps=8, num_stages=3),
    # Fewer rows per program: more programs when M is small, at the price of more dW atomics.
    triton.Config({"BLOCK_M": 32, "BLOCK_V": 128, "BLOCK_D": 32}, num_warps=8, num_stages=3),
    # Fits any GPU's shared memory (fp32 inputs on ~100 KB parts), should the others not.
    triton.Config({"BLOCK_M": 32, "BLOCK_V": 64, "BLOCK_D": 32}, num_warps=4, num_stages=2),
]


@triton.autotune(
    configs=[INTERPRETER_CONFIG] if INTERPRET else CUDA_CONFIGS,
    key=["V", "D"],
    reset_to_zero=["dh_ptr", "dw_ptr", "db_ptr"],  # benchmarking runs the kernel repeatedly; outputs accumulate
)
@triton.jit
def _logit_grad_kernel(
    h_ptr, w_ptr, b_ptr, targets_ptr, lse_ptr, mean_logit_ptr,
    c_lse_ptr, c_target_ptr, c_sum_ptr, c_mean_ptr,
    dh_ptr, dw_ptr, db_ptr,
    M, V, D, stride_h, stride_w,
    softcap, logit_scale, temperature,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    C_LSE: tl.constexpr, C_TARGET: tl.constexpr, C_SUM: tl.constexpr, C_MEAN: tl.constexpr,
    GRAD_HIDDEN: tl.constexpr, GRAD_WEIGHT: tl.constexpr, GRAD_BIAS: tl.constexpr,
    LOAD_AS_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    target = tl.load(targets_ptr + rows, mask=row_mask, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    k = tl.zeros([BLOCK_M], dtype=tl.float32)  # the coefficient of p: c_lse + c_mean * (1 - mean_logit)
    if C_LSE:
        k += tl.load(c_lse_ptr + rows, mask=row_mask, other=0.0)
    if C_MEAN:
        c_mean = tl.load(c_mean_ptr + rows, mask=row_mask, other=0.0)
        k += c_mean * (1.0 - tl.load(mean_logit_ptr + rows, mask=row_mask, other=0.0))
    if C_TARGET:
        c_target = tl.load(c_target_ptr + rows, mask=row_mask, other=0.0)
    if C_SUM:
        c_sum = tl.load(c_sum_ptr + rows, mask=row_mask, other=0.0)
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_h
    if GRAD_HIDDEN:
        dh_rows = dh_ptr + rows.to(tl.int64)[:, None] * D

    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < V
        z = logits_tile(
            h_ptr, w_ptr, b_ptr, rows, cols, row_mask, col_mask, D, stride_h, stride_w,
            softcap, logit_scale, temperature,
            HAS_BIAS, HAS_SOFTCAP, LOAD_AS_FP32, INPUT_PRECISION, BLOCK_M, BLOCK_V, BLOCK_D,
        )  # fmt: skip
        p = tl.exp(z - lse[:, None])
        g = p * k[:, None]
        if C_MEAN:
            g += p * c_mean[:, None] * z
        if C_SUM:
            g += c_sum[:, None]
        if C_TARGET:
            g += tl.where(cols[None, :] == target[:, None], c_target[:, None], 0.0)
        g = g * logit_slope(z, softcap, logit_scale, temperature, HAS_SOFTCAP)
        g = tl.where(row_mask[:, None] & col_mask[None, :], g, 0.0)

        if GRAD_HIDDEN or GRAD_WEIGHT:
            w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_w
            if GRAD_WEIGHT:
                dw_rows = dw_ptr + cols.to(tl.int64)[:, None] * D
            for d0 in range(0, D, BLOCK_D):
                d = d0 + tl.arange(0, BLOCK_D)
                d_mask = d < D
                if GRAD_HIDDEN:
                    w = tl.load(w_rows + d[None, :], mask=col_mask[:, None] & d_mask[None, :], other=0.0)
                    if LOAD_AS_FP32:
                        w = w.to(tl.float32)
                    dh_mask = row_mask[:, None] & d_mask[None, :]
                    dh = tl.load(dh_rows + d[None, :], mask=dh_mask, other=0.0)
                    dh = tl.dot(g.to(w.dtype), w, dh, input_precision=INPUT_PRECISION)
                    tl.store(dh_rows + d[None, :], dh, mask=dh_mask)
                if GRAD_WEIGHT:
                    h = tl.load(h_rows + d[None, :], mask=row_mask[:, None] & d_mask[None, :], other=0.0)
                    if LOAD_AS_FP32:
                        h = h.to(tl.float32)
                    dw = tl.dot(tl.trans(g.to(h.dtype)), h, input_precision=INPUT_PRECISION)
                    tl.atomic_add(dw_rows + d[None, :], dw, mask=col_mask[:, None] & d_mask[None, :], sem="relaxed")
            if GRAD_HIDDEN:
                # The next tile reads these dh rows back, maybe through other threads of this program: Triton orders
                # global memory only per thread, so synchronize the block (a bar.sync per vocabulary tile).
                tl.debug_barrier()
        if GRAD_BIAS:
            tl.atomic_add(db_ptr + cols, tl.sum(g, axis=0), mask=col_mask, sem="relaxed")


def logit_grad(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    lse: torch.Tensor,
    mean_logit: torch.Tensor,
    c_lse: torch.Tensor | None,
    c_target: torch.Tensor | None,
    c_sum: torch.Tensor | None,
    c_mean: torch.Tensor | None,
    *,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    temperature: float = 1.0,
    grad_hidden: bool = True,
    grad_weight: bool = False,
    grad_bias: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """dh, dW, db (float32, None where not asked for) of a loss whose statistic gradients are ``c_*``.

    Args:
        hidden: [M, D] float32/bfloat16/float16; weight: [V, D]; bias: [V] or None (same dtype).
        targets: [M] int64 in [0, V).
        lse, mean_logit: float32 [M], saved by :func:`softmax_stats` (``mean_logit`` is read only with ``c_mean``).
        c_lse, c_target, c_sum, c_mean: float32 [M] upstream gradients, None where zero.

    Block sizes: autotuned over CUDA_CONFIGS on CUDA (keyed on V and D), INTERPRETER_CONFIG under the interpreter.
    """
    hidden, weight, bias = check_inputs(hidden, weight, bias)
    (M, D), V = hidden.shape, weight.shape[0]
    if targets.shape != (M,) or targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64 [M]=[{M}], got {targets.dtype} {tuple(targets.shape)}")
    if grad_bias and bias is None:
        raise ValueError("grad_bias needs a bias")
    per_row = [lse, mean_logit if c_mean is not None else None, c_lse, c_target, c_sum, c_mean]
    per_row = [None if t is None else t.to(torch.float32).contiguous() for t in per_row]
    if any(t is not None and t.shape != (M,) for t in per_row):
        raise ValueError(f"lse, mean_logit and the statistic gradients must have shape [M]=[{M}]")
    dh = hidden.new_zeros(M, D, dtype=torch.float32) if grad_hidden else None
    dw = weight.new_zeros(V, D, dtype=torch.float32) if grad_weight else None
    db = weight.new_zeros(V, dtype=torch.float32) if grad_bias else None
    if M == 0 or not (grad_hidden or grad_weight or grad_bias):
        return dh, dw, db

    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]),)
    _logit_grad_kernel[grid](
        hidden, weight, bias, targets.contiguous(), *per_row,
        dh, dw, db,
        M, V, D, hidden.stride(0), weight.stride(0),
        softcap or 1.0, logit_scale, temperature,  # softcap is read only under HAS_SOFTCAP
        HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None,
        C_LSE=c_lse is not None, C_TARGET=c_target is not None, C_SUM=c_sum is not None, C_MEAN=c_mean is not None,
        GRAD_HIDDEN=grad_hidden, GRAD_WEIGHT=grad_weight, GRAD_BIAS=grad_bias,
        LOAD_AS_FP32=INTERPRET, INPUT_PRECISION=fp32_dot_precision(),
    )  # fmt: skip
    return dh, dw, db
