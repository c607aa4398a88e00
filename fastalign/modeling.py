"""Load a causal LM and its tokenizer for training: dtype, bitsandbytes quantization, LoRA, checkpointing.

``load_model`` returns the model the trainer optimizes:

- full fine-tuning (``lora: null``): every parameter trains, the LM head included;
- LoRA: adapters on ``target_modules``, everything else frozen — the LM head too, so the fused loss takes its
  frozen-head path (2 vocabulary matmuls instead of 3, no ``[V, D]`` gradient);
- QLoRA (``quantization: nf4``): the base weights are 4-bit NormalFloat with double quantization and
  ``compute_dtype = dtype`` (bitsandbytes), prepared with ``peft.prepare_model_for_kbit_training``, then LoRA;
- ``adapters`` (earlier stages' LoRA adapters) are merged into the base right after loading, before LoRA.

``task="reward"`` loads ``AutoModelForSequenceClassification`` with one output (``num_labels=1``) instead, for the
reward objective; with LoRA (peft task type SEQ_CLS) the new ``score`` head trains fully via ``modules_to_save``.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
)

from fastalign.config import ModelConfig
from fastalign.lm_head import lm_head_of


def load_tokenizer(config: ModelConfig):
    """The tokenizer of ``config.tokenizer`` (default: the model's), with a pad token (EOS if it has none)."""
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or config.name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(config: ModelConfig, *, task: str = "causal_lm", pad_token_id: int | None = None) -> PreTrainedModel:
    """The model to train, as described in the module docstring; PEFT-wrapped when ``config.lora`` is set.

    Args:
        task: "causal_lm", or "reward" (a sequence-classification model with one output).
        pad_token_id: written to the model config when it has none (reward models need one to batch).
    """
    if task not in ("causal_lm", "reward"):
        raise ValueError(f"task must be 'causal_lm' or 'reward', got {task!r}")
    if config.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise RuntimeError("model.attn_implementation is flash_attention_2 but flash-attn is not installed")
    dtype = getattr(torch, config.dtype)
    quantization = {
        "nf4": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        ),
        "int8": BitsAndBytesConfig(load_in_8bit=True),
        "none": None,
    }[config.quantization]
    extra = {"num_labels": 1} if task == "reward" else {}
    model = (AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification).from_pretrained(
        config.name_or_path,
        **extra,
        dtype=dtype,
        quantization_config=quantization,
        attn_implementation=config.attn_implementation,
        # bitsandbytes quantizes while loading onto this process's device; unquantized models are moved by Trainer.
        device_map=None if quantization is None else {"": _local_device()},
    )
    model.config.use_cache = False
    if pad_token_id is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    if config.adapters:
        import peft

        # Earlier stages' adapters become part of the base, so this run's adapters (and a reference model taken
        # by disabling them) start from the previous stage's model. On a 4-bit base the merge is rounded to it.
        for adapter in config.adapters:
            model = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if quantization is not None:
        import peft

        # Checkpointing is enabled below rather than by peft, which calls the name transformers 5.25 deprecated
        # (with use_reentrant=False that is all peft would do for it).
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if config.lora is not None:
        import peft

        lora = peft.LoraConfig(
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=config.lora.target_modules,
            task_type="CAUSAL_LM" if task == "causal_lm" else "SEQ_CLS",
        )
        model = peft.get_peft_model(model, lora)
    if task == "causal_lm":
        lm_head_of(model)  # fails now, not at the first step, if the head cannot take the fused loss (e.g. LoRA on it)
    return model


def _local_device() -> str:
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in backward (non-reentrant, so frozen inputs need no grad).

    transformers 5.25 renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable`` (the old name
    warns); older releases within fastalign's range have only the old one.
    """
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
