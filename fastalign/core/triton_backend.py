"""Triton implementation of the :class:`~fastalign.core.stats.Backend` protocol: glue to the kernels in ``kernels/``.

    sweep         kernels/softmax_stats.py   one pass over the vocabulary; the frozen-head accumulator in the same pass
    gradients     kernels/logit_grad.py      recompute the logits tile by tile, form dh (owned rows), dW/db (atomics)
    row_loss_sum  a sweep, then the elementwise accumulator path or one gradient pass (gradients_via_recompute)
    separable_loss  the same for a loss of the log-probs (separable_loss_via_stats: every group at once)

Matmul count per call, V-sized: frozen head 2 (logits + accumulator; backward elementwise) where the accumulator
covers the loss, else 3 (logits; then logits + dh); trainable head 4 (logits; then logits + dh + dW).
Inputs float32/bfloat16/float16 on CUDA, or on any device under TRITON_INTERPRET=1.
"""

from __future__ import annotations

from fastalign.core.head import LogitTransform
from fastalign.core.stats import Gradients, SoftmaxStats, gradients_via_recompute, separable_loss_via_stats
from fastalign.kernels.logit_grad import logit_grad
from fastalign.kernels.softmax_stats import softmax_stats


def _transform_args(transform: LogitTransform) -> dict:
    return dict(softcap=transform.softcap, logit_scale=transform.logit_scale, temperature=transform.temperature)


class TritonBackend:
    """The kernels take the scored rows' hidden states as one contiguous [M, D] block (gathered when some rows are
    ignored). They keep no logits for backward (``keep_logits`` is not implemented): backward recomputes them."""

    def sweep(self, rows, weight, bias, transform, request, accumulate, keep_logits=False):
        *stats, acc = softmax_stats(
            rows.hidden_block(), weight, bias, rows.targets, **_transform_args(transform),
            logit_sum=request.logit_sum, mean_logit=request.mean_logit, accumulate=accumulate,
        )  # fmt: skip
        return SoftmaxStats(*stats), acc

    def gradients(self, rows, weight, bias, transform, stats, grad, needs, kept=None):
        grads = logit_grad(
            rows.hidden_block(), weight, bias, rows.targets, stats.lse, stats.mean_logit, *grad,
            **_transform_args(transform), grad_hidden=needs.hidden, grad_weight=needs.weight, grad_bias=needs.bias,
        )  # fmt: skip
        return Gradients(*grads)

    def row_loss_sum(self, rows, weight, bias, transform, request, row_loss, needs):
        return gradients_via_recompute(self, rows, weight, bias, transform, request, row_loss, needs)

    def separable_loss(self, rows, weight, bias, transform, group_sizes, row_grad, needs):
        return separable_loss_via_stats(self, rows, weight, bias, transform, group_sizes, row_grad, needs)
