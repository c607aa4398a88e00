"""Hugging Face causal LMs that compute their training loss through fastalign: no ``[B, T, V]`` logits in training.

    apply_to_model(model)                  model(..., labels=labels).loss is fastalign's fused cross-entropy
    remove_from_model(model)               undo
    apply_to_model(model, hidden_for_loss=True) + Trainer(compute_loss_func=CausalLMLoss(...))
                                           the same, for Trainer's custom-loss hook (label smoothing, z-loss)

When the fused path runs (and when the model's own forward runs instead) is decided per call:

    fused     ``model.training`` and autograd enabled (a training step) and ``labels`` or ``shift_labels`` given:
              the model runs with ``logits_to_keep`` set to no position, the decoder's hidden states go to
              :func:`fastalign.linear_cross_entropy`; the output has ``loss`` and ``logits=None``.
    deferred  a training step without labels on a model applied with ``hidden_for_loss=True`` (what
              ``Trainer`` does when ``compute_loss_func`` is set: it pops the labels): no loss, ``logits=None``,
              and the output carries ``last_hidden_state`` and ``lm_head`` for :class:`CausalLMLoss`.
    original  everything else: ``model.eval()`` (Trainer's evaluation and prediction), ``torch.no_grad()``
              (``generate``), a training step without labels (unless deferred), the ``fused_lm_head=True`` calls of
              TRL's own fused head, and MoE models asked for router logits (fastalign does not add the
              load-balancing loss; the model's forward runs, with a one-time warning). Logits as the model returns
              them, and its own loss.

The loss is Hugging Face's ``ForCausalLMLoss``: ``labels`` are shifted inside (position t predicts
``labels[t + 1]``; pre-shifted ``shift_labels`` are used as they are), -100 is ignored, and the sum is divided by
``num_items_in_batch`` when given (Trainer passes it in the forward kwargs under gradient accumulation) or by the
number of scored tokens. One difference: a batch with no scored token gives 0.0 (Hugging Face: NaN).

Works for every model :func:`fastalign.lm_head.lm_head_of` reads (Llama, Mistral, Qwen2/3, Gemma-2/3 with
``final_logit_softcapping``, Phi-3, Cohere, Granite), bare or PEFT-wrapped (LoRA, QLoRA 4-bit, ``modules_to_save``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from fastalign.cross_entropy import linear_cross_entropy
from fastalign.lm_head import LMHead, last_hidden_states, lm_head_of, unwrap_model

__all__ = ["CausalLMLoss", "FusedCausalLMOutput", "apply_to_model", "is_applied", "remove_from_model"]

_ORIGINAL = "_fastalign_original_forward"  # the instance's forward before apply_to_model (None: the class's)
_OPTIONS = "_fastalign_options"
_WARNED: set[str] = set()


@dataclass
class FusedCausalLMOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` of a fused training step: ``logits`` is None.

    Attributes:
        last_hidden_state: [B, T, D] decoder output, only in the deferred mode (for :class:`CausalLMLoss`).
        lm_head: the :class:`fastalign.lm_head.LMHead` that turns it into logits, only in the deferred mode.
    """

    last_hidden_state: torch.Tensor | None = None
    lm_head: LMHead | None = None


def apply_to_model(model: nn.Module, *, hidden_for_loss: bool = False, impl: str = "auto") -> nn.Module:
    """Make ``model(..., labels=...)`` compute its training loss with fastalign (see the module docstring).

    The Hugging Face model inside PEFT / DistributedDataParallel wrappers gets an instance-level ``forward`` with
    the class's signature (so ``Trainer`` still sees that it accepts ``num_items_in_batch``); applying twice is a
    no-op that updates the options.

    Args:
        model: a causal LM, bare or wrapped (PEFT, DDP). Its LM head must be readable by ``lm_head_of``.
        hidden_for_loss: also skip the head in training steps without labels and return the hidden states, for
            ``Trainer(compute_loss_func=CausalLMLoss(...))``.
        impl: implementation of the fused loss (see :func:`fastalign.linear_cross_entropy`).

    Returns:
        ``model`` itself (changed in place).

    Raises:
        TypeError / ValueError: the model's head cannot be fused (from ``lm_head_of``), or its forward has no
            ``logits_to_keep``.
    """
    base = unwrap_model(model)
    lm_head_of(model)  # fail now, not in the first training step
    if "logits_to_keep" not in inspect.signature(type(base).forward).parameters:
        raise TypeError(
            f"{type(base).__name__}.forward has no `logits_to_keep` argument; fastalign cannot skip its head"
        )
    setattr(base, _OPTIONS, {"hidden_for_loss": hidden_for_loss, "impl": impl})
    if is_applied(model):
        return model
    base.__dict__[_ORIGINAL] = base.__dict__.get("forward")  # None when the class's forward is in use
    original = base.forward

    @functools.wraps(type(base).forward)
    def forward(self, *args, **kwargs):
        return _forward(self, original, args, kwargs)

    base.forward = types.MethodType(forward, base)
    return model


def remove_from_model(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_to_model`: the model's forward is the one it had before. No-op if not applied."""
    base = unwrap_model(model)
    if not is_applied(model):
        return model
    previous = base.__dict__.pop(_ORIGINAL)
    del base.forward
    if previous is not None:
        base.forward = previous
    base.__dict__.pop(_OPTIONS, None)
    return model


def is_applied(model: nn.Module) -> bool:
    return _ORIGINAL in unwrap_model(model).__dict__


def _forward(self, original, args, kwargs):
    if kwargs.get("fused_lm_head"):
        return original(*args, **kwargs)
    arguments = _named_arguments(original, args, kwargs)
    has_labels = arguments.get("labels") is not None or arguments.get("shift_labels") is not None
    options = getattr(self, _OPTIONS)
    if not (self.training and torch.is_grad_enabled() and (has_labels or options["hidden_for_loss"])):
        return original(*args, **kwargs)
    if arguments.get("output_router_logits") or getattr(self.config, "output_router_logits", False):
        _warn_once(
            "moe",
            "fastalign.integrations.transformers: this model returns a router load-balancing loss, which the fused "
            "loss does not add; running the model's own forward (full logits) instead",
        )
        return original(*args, **kwargs)

    labels = arguments.pop("labels", None)
    shift_labels = arguments.pop("shift_labels", None)
    num_items_in_batch = arguments.pop("num_items_in_batch", None)
    for name in ("logits_to_keep", "use_cache", "return_dict"):
        arguments.pop(name, None)
    with forward_replaced(self, original):
        hidden = last_hidden_states(
            self,
            arguments.pop("input_ids", None),
            arguments.pop("attention_mask", None),
            arguments.pop("position_ids", None),
            **arguments,
        )
    head = lm_head_of(self)
    if not has_labels:
        return FusedCausalLMOutput(last_hidden_state=hidden, lm_head=head)
    loss = fused_causal_lm_loss(
        hidden, head, labels, shift_labels=shift_labels, num_items_in_batch=num_items_in_batch, impl=options["impl"]
    )
    return FusedCausalLMOutput(loss=loss)


def fused_causal_lm_loss(
    hidden: torch.Tensor,
    head: LMHead,
    labels: torch.Tensor | None,
    *,
    shift_labels: torch.Tensor | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    impl: str = "auto",
) -> torch.Tensor:
    """Hugging Face's ``ForCausalLMLoss`` from hidden states [B, T, D] and the head, without logits.

    ``labels`` [B, T] are shifted (``hidden[:, t]`` predicts ``labels[:, t + 1]``); ``shift_labels`` [B, T] are
    used as given. Sum over scored tokens divided by ``num_items_in_batch`` (or their count).
    """
    hidden, head = head.matching(hidden)
    targets, shift = (labels, True) if shift_labels is None else (shift_labels, False)
    return linear_cross_entropy(
        hidden,
        head.weight,
        targets.to(hidden.device),
        shift=shift,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        num_items_in_batch=num_items_in_batch,
        impl=impl,
        **head.options,
    )


class CausalLMLoss:
    """A ``compute_loss_func`` for ``transformers.Trainer``: causal-LM cross-entropy, logits-free when it can be.

    ``Trainer`` calls ``compute_loss_func(outputs, labels, num_items_in_batch=...)`` after running the model
    *without* labels. To keep the logits out of memory, apply the model with ``hidden_for_loss=True`` first, so that
    ``outputs`` carries the hidden states and the head instead of logits::

        apply_to_model(model, hidden_for_loss=True)
        trainer = Trainer(model, args, compute_loss_func=CausalLMLoss(label_smoothing=0.1), ...)

    Without it, ``outputs.logits`` exist already (the memory is spent): the loss is computed from them, with a
    one-time warning (``z_loss`` then needs the fused path).

    Args:
        label_smoothing: eps in [0, 1), as ``F.cross_entropy``.
        z_loss: coefficient of ``lse^2`` per token (fused path only).
        ignore_index: label of tokens without loss.
        impl: implementation of the fused loss.
    """

    def __init__(self, *, label_smoothing: float = 0.0, z_loss: float = 0.0, ignore_index: int = -100, impl="auto"):
        self.label_smoothing, self.z_loss, self.ignore_index, self.impl = label_smoothing, z_loss, ignore_index, impl

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        hidden = getattr(outputs, "last_hidden_state", None)
        head = getattr(outputs, "lm_head", None)
        if hidden is not None and head is not None:
            return fused_causal_lm_loss(
                hidden,
                head,
                labels,
                num_items_in_batch=num_items_in_batch,
                ignore_index=self.ignore_index,
                label_smoothing=self.label_smoothing,
                z_loss=self.z_loss,
                impl=self.impl,
            )
        if self.z_loss:
            raise ValueError(
                "CausalLMLoss(z_loss>0) needs the fused path: call "
                "fastalign.integrations.transformers.apply_to_model(model, hidden_for_loss=True) first"
            )
        _warn_once(
            "logits",
            "fastalign CausalLMLoss received logits (the model was not applied with apply_to_model(model, "
            "hidden_for_loss=True), or it ran outside a training step): the loss is computed from them, so they "
            "were materialized",
        )
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        targets = F.pad(labels, (0, 1), value=self.ignore_index)[..., 1:].to(logits.device)
        loss = F.cross_entropy(
            logits.float().flatten(0, -2),
            targets.flatten(),
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction="sum",
        )
        if num_items_in_batch is None:
            return loss / (targets != self.ignore_index).sum().clamp(min=1)
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        return loss / num_items_in_batch


@contextlib.contextmanager
def forward_replaced(module: nn.Module, forward):
    """While inside, ``module(...)`` runs ``forward``: how a patched forward calls the model again (through
    ``last_hidden_states``, so that module hooks still run) without re-entering the wrappers on the instance.

    Re-entering them is not harmless: accelerate's mixed-precision wrapper is one ``torch.autocast`` object, and
    entering it twice overwrites its saved state, leaving autocast enabled after the step.
    """
    saved = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        del module.forward
        if saved is not None:
            module.forward = saved


def _named_arguments(forward, args: tuple, kwargs: dict) -> dict:
    """The call's arguments by name (positional ones bound to the forward's signature, ``**kwargs`` flattened)."""
    if not args:
        return dict(kwargs)
    signature = inspect.signature(forward)
    bound = signature.bind_partial(*args, **kwargs).arguments
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD and name in bound:
            bound.update(bound.pop(name))
    return dict(bound)


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)
