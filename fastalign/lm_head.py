"""The two halves of a Hugging Face causal LM that the fused losses need: backbone hidden states and the head.

A causal LM computes ``logits = head(decoder(input_ids))``. fastalign never forms those ``[B, T, V]`` logits in
training; it runs the model with ``logits_to_keep`` set to *no position* (so the head projects zero rows), captures
the decoder's output ``[B, T, D]`` with a forward hook, and hands it to :func:`fastalign.linear_cross_entropy` (or
:func:`fastalign.linear_logprobs`) together with the head described by :class:`LMHead`.

Running the *top-level* model (instead of calling the decoder directly) keeps every wrapper in the loop: PEFT's
forward, DistributedDataParallel's gradient synchronisation, accelerate's autocast hooks.

Works for Llama, Qwen2, Mistral, Gemma-2 (``final_logit_softcapping``), Phi-3, Cohere (``logit_scale``), Granite
(``logits_scaling``) and any causal LM whose forward accepts ``logits_to_keep``; PEFT-wrapped (LoRA, QLoRA,
``modules_to_save``), DistributedDataParallel-wrapped, tied embeddings, bitsandbytes 4-bit heads.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LMHead:
    """A causal LM's output projection: ``logits = softcap * tanh(logit_scale * (h @ weight.T + bias) / softcap)``.

    Attributes:
        weight: [V, D]; a frozen head (LoRA/QLoRA) has ``requires_grad=False`` and takes fastalign's cheaper path.
        bias: [V] or None.
        softcap: Gemma-2's ``final_logit_softcapping``, or None.
        logit_scale: multiplies the logits before the softcap (Cohere ``logit_scale``, Granite ``1/logits_scaling``).

    ``LMHead.options`` are the keyword arguments of :func:`fastalign.linear_cross_entropy` and
    :func:`fastalign.linear_logprobs` that describe this head.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    softcap: float | None = None
    logit_scale: float = 1.0

    @property
    def options(self) -> dict:
        return {"bias": self.bias, "softcap": self.softcap, "logit_scale": self.logit_scale}

    def matching(self, hidden: torch.Tensor) -> tuple[torch.Tensor, LMHead]:
        """``hidden`` and this head in one dtype, the one the model's own head would compute in: the autocast dtype
        when autocast is on (mixed precision), else the head weight's (e.g. float32 heads of QLoRA models).

        Call the fused loss on the result with autocast *disabled*: it accumulates in float32 itself.
        """
        device_type = hidden.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else self.weight.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return hidden.to(dtype), dataclasses.replace(self, weight=self.weight.to(dtype), bias=bias)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The Hugging Face ``PreTrainedModel`` inside DistributedDataParallel and PEFT wrappers (LoRA stays injected)."""
    while isinstance(model, nn.parallel.DistributedDataParallel) or hasattr(model, "get_base_model"):
        model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model.get_base_model()
    return model


def lm_head_of(model: nn.Module) -> LMHead:
    """Describe the output projection of ``model`` (any causal LM, optionally PEFT/DDP-wrapped).

    Raises:
        ValueError: the head carries a LoRA adapter (its logits are not ``h @ W.T``); train it through
            ``modules_to_save`` instead, or leave it out of ``target_modules`` (``all-linear`` already does).
        TypeError: the head is not a linear layer fastalign can read a weight from (e.g. 8-bit).
    """
    base = unwrap_model(model)
    head = base.get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(base).__name__} has no output embeddings (get_output_embeddings() is None)")
    head = _active_head_module(head)
    config = base.config.get_text_config()
    scale = getattr(config, "logit_scale", None) or 1.0
    if getattr(config, "logits_scaling", None):
        scale = scale / config.logits_scaling
    return LMHead(
        weight=_head_weight(head),
        bias=head.bias,
        softcap=getattr(config, "final_logit_softcapping", None),
        logit_scale=float(scale),
    )


def last_hidden_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """Run ``model`` without its head and return the decoder's final (normed) hidden states.

    Args:
        model: a causal LM, bare or wrapped by PEFT and/or DistributedDataParallel; it is called as a whole, so
            wrappers' hooks (gradient sync, adapters) run.
        input_ids: [B, T] token ids.
        attention_mask: [B, T] 1 for real tokens, or None.
        position_ids: [B, T] (packed sequences restart positions at 0 for each document), or None.
        **kwargs: passed to the model's forward (never ``labels``: no loss is computed here).

    Returns:
        [B, T, D] hidden states, in the model's compute dtype, attached to the autograd graph.
    """
    base = unwrap_model(model)
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        raise TypeError(
            f"{type(base).__name__}.forward has no `logits_to_keep` argument, which fastalign uses to skip the "
            "LM head; upgrade transformers or use a model class that supports it"
        )
    captured = []
    hook = base.get_decoder().register_forward_hook(lambda module, args, output: captured.append(output[0]))
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            # Project no position through the head: the logits come back as [B, 0, V], at no cost.
            logits_to_keep=torch.empty(0, dtype=torch.long, device=input_ids.device),
            **kwargs,
        )
    finally:
        hook.remove()
    return captured[-1]


def _active_head_module(head: nn.Module) -> nn.Module:
    """Resolve PEFT wrappers around the head: ``modules_to_save`` copies are fine, LoRA on the head is not."""
    try:
        from peft.tuners.lora import LoraLayer
        from peft.utils import ModulesToSaveWrapper
    except ImportError:
        return head
    if isinstance(head, ModulesToSaveWrapper):
        adapters = head.active_adapters
        return head.modules_to_save[adapters[0]] if adapters and not head.disable_adapters else head.original_module
    if isinstance(head, LoraLayer):
        if head.active_adapters and not head.disable_adapters and not head.merged:
            raise ValueError(
                "the LM head carries a LoRA adapter, so its logits are not hidden @ weight.T and the fused loss "
                "cannot use it: remove `lm_head` from lora.target_modules (`all-linear` already leaves it out), "
                "or train the head fully with PEFT `modules_to_save=['lm_head']`"
            )
        return head.get_base_layer()
    return head


def _head_weight(head: nn.Module) -> torch.Tensor:
    """The [V, D] weight of a linear head; bitsandbytes 4-bit weights are dequantized (frozen, no gradient)."""
    weight = getattr(head, "weight", None)
    if getattr(weight, "quant_state", None) is not None:  # bitsandbytes Params4bit
        import bitsandbytes.functional as bnb_functional

        return bnb_functional.dequantize_4bit(weight.data, weight.quant_state)
    if weight.dtype in (torch.int8, torch.uint8):
        raise TypeError(
            f"the LM head {type(head).__name__} is 8-bit quantized; keep it in 16/32 bits "
            "(transformers leaves lm_head unquantized by default)"
        )
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise TypeError(f"cannot read a [V, D] weight from the LM head {type(head).__name__}")
    return weight
