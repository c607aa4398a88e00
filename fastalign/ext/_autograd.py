"""Autograd and fake (shape-only) kernels of the ``torch.ops.fastalign`` ops, registered once the library loads.

Every op ``<name>`` defined in csrc/library.cpp has a ``<name>_backward`` op (CPU and CUDA kernels in C++).
Here ``torch.library.register_autograd`` connects the two:

    loss heads:   <name>_backward(grad_loss, *inputs) -> gradients of the first ``differentiable`` inputs
                  (the metrics output is marked non-differentiable: it is detached, as in the PyTorch path)
    segment_sum:  segment_sum_backward(grad, mask, cu_seqlens, mean) -> gradient of ``values``

The fake kernels give output shapes without running anything, so the ops can be traced by torch.compile.
"""

from __future__ import annotations

import torch

# Loss-head ops and their number of leading differentiable tensor arguments (the "(grad)" inputs of the contract
# in fastalign/losses/_dispatch.py).
DIFFERENTIABLE_INPUTS = {
    "dpo_terms": 4,
    "orpo_terms": 3,
    "kto_terms": 2,
    "cpo_terms": 3,
    "bradley_terry_terms": 2,
}


def _register_loss_head(name: str, differentiable: int, metrics: int) -> None:
    qualname = f"fastalign::{name}"
    backward_op = getattr(torch.ops.fastalign, f"{name}_backward").default

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*(a for a in inputs if isinstance(a, torch.Tensor)))
        ctx.scalars = [a for a in inputs if not isinstance(a, torch.Tensor)]
        ctx.is_tensor = [isinstance(a, torch.Tensor) for a in inputs]
        ctx.mark_non_differentiable(output[1])

    def backward(ctx, grad_loss, _grad_metrics):
        tensors, scalars = iter(ctx.saved_tensors), iter(ctx.scalars)
        inputs = [next(tensors) if is_tensor else next(scalars) for is_tensor in ctx.is_tensor]
        grads = backward_op(grad_loss.contiguous(), *inputs)
        return (*grads, *[None] * (len(inputs) - differentiable))

    def fake(first, *args):
        return first.new_empty(()), first.new_empty((metrics,))

    def fake_backward(grad_loss, *inputs):
        return tuple(torch.empty_like(t) for t in inputs[:differentiable])

    torch.library.register_autograd(qualname, backward, setup_context=setup_context)
    torch.library.register_fake(qualname, fake)
    torch.library.register_fake(f"{qualname}_backward", fake_backward)


def _register_segment_sum() -> None:
    def setup_context(ctx, inputs, output):
        _values, mask, cu_seqlens, mean = inputs
        ctx.save_for_backward(mask, cu_seqlens)
        ctx.mean = mean

    def backward(ctx, grad):
        mask, cu_seqlens = ctx.saved_tensors
        return torch.ops.fastalign.segment_sum_backward(grad.contiguous(), mask, cu_seqlens, ctx.mean), None, None, None

    torch.library.register_autograd("fastalign::segment_sum", backward, setup_context=setup_context)
    torch.library.register_fake(
        "fastalign::segment_sum", lambda values, mask, cu_seqlens, mean: values.new_empty(cu_seqlens.shape[0] - 1)
    )
    torch.library.register_fake(
        "fastalign::segment_sum_backward", lambda grad, mask, cu_seqlens, mean: grad.new_empty(mask.shape[0])
    )


def register() -> None:
    """Register autograd and fake kernels of every op; call once, right after the library is loaded."""
    from fastalign import losses  # the metric tuples; imported here because fastalign.losses dispatches to ext

    metrics = {
        "dpo_terms": losses.DPO_METRICS,
        "orpo_terms": losses.ORPO_METRICS,
        "kto_terms": losses.KTO_METRICS,
        "cpo_terms": losses.CPO_METRICS,
        "bradley_terry_terms": losses.BRADLEY_TERRY_METRICS,
    }
    _register_segment_sum()
    for name, differentiable in DIFFERENTIABLE_INPUTS.items():
        _register_loss_head(name, differentiable, len(metrics[name]))
