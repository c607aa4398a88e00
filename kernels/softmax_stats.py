"""Softmax statistics of an LM head in one sweep over the vocabulary, without materializing the [M, V] logits.

Each program owns BLOCK_M rows and walks the vocabulary in tiles of BLOCK_V (``z`` from head_tile.logits_tile),
keeping an online softmax (running max ``m``, running sum ``sum_exp = sum_v exp(z_v - m)``, rescaled by
``alpha = exp(m_old - m_new)`` whenever the max moves):

    lse          = m + log(sum_exp)
    target_logit = z_y                                    picked from the tile that holds y
    logit_sum    = sum_v z_v                              (LOGIT_SUM)
    mean_logit   = sum_v exp(z_v - m) z_v / sum_exp       (MEAN_LOGIT; the numerator is rescaled like sum_exp)
    acc          = sum_v exp(z_v - m) z'_v W_v / sum_exp  (ACCUMULATE: the frozen-head sum_v p_v z'_v W_v)

ACCUMULATE works as flash attention does: per vocabulary tile ``acc = alpha * acc + (exp(z - m_new) * z') @ W_tile``,
so the frozen head costs 2 vocabulary-sized matmuls in all (logits + accumulator) and backward is elementwise.
``acc`` is [BLOCK_M, D] and D reaches 4096+, too big for registers, so it lives in the fp32 output buffer and is
read-modified-written in BLOCK_D chunks; each program owns its rows, so there are no races between programs.
The honest cost: that read-modify-write moves 8 * BLOCK_M * D bytes per vocabulary tile, 4 * BLOCK_M / BLOCK_V times
the bytes of the bf16 W tile it multiplies, i.e. 8 * M * V * D / BLOCK_V bytes over the sweep (64 FLOP per
byte at BLOCK_V=128: below an H100's ridge unless L2 serves the rows, which were written one tile earlier).
The alternative, acc in registers with the grid split over D, would recompute the logits D / BLOCK_D times.
A larger BLOCK_V halves the traffic; the second read of the W tile usually hits L2, since it was just loaded.
"""

import torch
import triton
import triton.language as tl

from .head_tile import INTERPRET, INTERPRETER_CONFIG, check_inputs, fp32_dot_precision, logit_slope, logits_tile

# Spill-free for sm_90 with every flag on (ptxas -v on the AOT-compiled kernel): BLOCK_D = 32 keeps the W tile and the
# accumulator chunk small next to the [BLOCK_M, BLOCK_V] logits; 4 warps spill from BLOCK_M * BLOCK_V = 8192 on.
CUDA_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_V": 128, "BLOCK_D": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_V": 64, "BLOCK_D": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_V": 64, "BLOCK_D": 32}, num_warps=4, num_stages=3),
    # Fewer rows per program: more programs when M is small (one program per row block).
    triton.Config({"BLOCK_M": 32, "BLOCK_V": 128, "BLOCK_D": 64}, num_warps=8, num_stages=3),
    # Fits any GPU's shared memory (fp32 inputs on ~100 KB parts), should the others not.
    triton.Config({"BLOCK_M": 32, "BLOCK_V": 64, "BLOCK_D": 32}, num_warps=4, num_stages=2),
]


@triton.autotune(
    configs=[INTERPRETER_CONFIG] if INTERPRET else CUDA_CONFIGS,
    key=["V", "D"],
    reset_to_zero=["acc_ptr"],  # benchmarking runs the kernel repeatedly; the accumulator must start at 0 each time
)
@triton.jit
def _softmax_stats_kernel(
    h_ptr, w_ptr, b_ptr, targets_ptr,
    lse_ptr, target_logit_ptr, logit_sum_ptr, mean_logit_ptr, acc_ptr,
    M, V, D, stride_h, stride_w,
    softcap, logit_scale, temperature,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, LOGIT_SUM: tl.constexpr, MEAN_LOGIT: tl.constexpr,
    ACCUMULATE: tl.constexpr, LOAD_AS_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    target = tl.load(targets_ptr + rows, mask=row_mask, other=-1)
    if ACCUMULATE:
        acc_rows = acc_ptr + rows.to(tl.int64)[:, None] * D  # acc: contiguous [M, D]

    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    sum_exp = tl.zeros([BLOCK_M], dtype=tl.float32)
    target_logit = tl.zeros([BLOCK_M], dtype=tl.float32)
    logit_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    weighted_sum = tl.zeros([BLOCK_M], dtype=tl.float32)  # sum_v exp(z_v - m) z_v
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < V
        z = logits_tile(
            h_ptr, w_ptr, b_ptr, rows, cols, row_mask, col_mask, D, stride_h, stride_w,
            softcap, logit_scale, temperature,
            HAS_BIAS, HAS_SOFTCAP, LOAD_AS_FP32, INPUT_PRECISION, BLOCK_M, BLOCK_V, BLOCK_D,
        )  # fmt: skip
        z_in_vocab = tl.where(col_mask[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z_in_vocab, axis=1))
        alpha = tl.exp(m - m_new)  # 0 on the first tile (m = -inf)
        e = tl.exp(z_in_vocab - m_new[:, None])  # 0 past V
        sum_exp = sum_exp * alpha + tl.sum(e, axis=1)
        target_logit += tl.sum(tl.where(cols[None, :] == target[:, None], z, 0.0), axis=1)
        if LOGIT_SUM:
            logit_sum += tl.sum(z, axis=1)  # z = 0 past V
        if MEAN_LOGIT:
            weighted_sum = weighted_sum * alpha + tl.sum(e * z, axis=1)
        if ACCUMULATE:
            w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_w
            # The rows of W_tile enter with weights exp(z - m_new) * z' (normalized by sum_exp at the end).
            weights = e * logit_slope(z, softcap, logit_scale, temperature, HAS_SOFTCAP)
            for d0 in range(0, D, BLOCK_D):
                d = d0 + tl.arange(0, BLOCK_D)
                d_mask = d < D
                w = tl.load(w_rows + d[None, :], mask=col_mask[:, None] & d_mask[None, :], other=0.0)
                if LOAD_AS_FP32:
                    w = w.to(tl.float32)
                acc_mask = row_mask[:, None] & d_mask[None, :]
                acc = tl.load(acc_rows + d[None, :], mask=acc_mask, other=0.0) * alpha[:, None]
                acc = tl.dot(weights.to(w.dtype), w, acc, input_precision=INPUT_PRECISION)
                tl.store(acc_rows + d[None, :], acc, mask=acc_mask)
            # The next tile reads these rows back, maybe through other threads of this program: Triton orders global
            # memory only per thread, so synchronize the block (a bar.sync per vocabulary tile).
            tl.debug_barrier()
        m = m_new

    tl.store(lse_ptr + rows, m + tl.log(sum_exp), mask=row_mask)
    tl.store(target_logit_ptr + rows, target_logit, mask=row_mask)
    if LOGIT_SUM:
        tl.store(logit_sum_ptr + rows, logit_sum, mask=row_mask)
    if MEAN_LOGIT:
        tl.store(mean_logit_ptr + rows, weighted_sum / sum_exp, mask=row_mask)
    if ACCUMULATE:
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            acc_mask = row_mask[:, None] & (d < D)[None, :]
            acc = tl.load(acc_rows + d[None, :], mask=acc_mask, other=0.0)
            tl.store(acc_rows + d[None, :], acc / sum_exp[:, None], mask=acc_mask)


def softmax_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    temperature: float = 1.0,
    logit_sum: bool = False,
    mean_logit: bool = False,
    accumulate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Statistics of ``z = transform(hidden @ weight.T + bias)``.

    Args:
        hidden: [M, D] float32/bfloat16/float16.
        weight: [V, D], same dtype.
        bias: [V] or None, same dtype.
        targets: [M] int64 in [0, V).

    Returns:
        lse, target_logit, logit_sum, mean_logit: float32 [M] (zeros where not requested), and with ``accumulate``
        the frozen-head accumulator ``sum_v p_v z'_v W_v`` float32 [M, D] (else None).

    Block sizes: autotuned over CUDA_CONFIGS on CUDA (keyed on V and D), INTERPRETER_CONFIG under the interpreter.
    """
    hidden, weight, bias = check_inputs(hidden, weight, bias)
    (M, D), V = hidden.shape, weight.shape[0]
    if targets.shape != (M,) or targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64 [M]=[{M}], got {targets.dtype} {tuple(targets.shape)}")
    targets = targets.contiguous()
    lse, target_logit, logit_sums, mean_logits = (hidden.new_zeros(M, dtype=torch.float32) for _ in range(4))
    acc = hidden.new_zeros(M, D, dtype=torch.float32) if accumulate else None
    if M == 0:
        return lse, target_logit, logit_sums, mean_logits, acc

    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]),)
    _softmax_stats_kernel[grid](
        hidden, weight, bias, targets,
        lse, target_logit, logit_sums, mean_logits, acc,
        M, V, D, hidden.stride(0), weight.stride(0),
        softcap or 1.0, logit_scale, temperature,  # softcap is read only under HAS_SOFTCAP
        HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None, LOGIT_SUM=logit_sum, MEAN_LOGIT=mean_logit,
        ACCUMULATE=accumulate, LOAD_AS_FP32=INTERPRET, INPUT_PRECISION=fp32_dot_precision(),
    )  # fmt: skip
    return lse, target_logit, logit_sums, mean_logits, acc
