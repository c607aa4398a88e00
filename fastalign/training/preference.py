"""Preference objectives: reward modelling, DPO (all loss types), ORPO, KTO and CPO/SimPO on FastAlignTrainer.

Each objective is a callable ``(model, inputs, num_items_in_batch) -> (loss, metrics)`` (``make_objective(name,
alignment, reference)``), wrapped as an ``Objective`` by ``fastalign.training.preference_objective`` and registered
with default options in ``fastalign.training.objectives.OBJECTIVES``. The math is in ``fastalign.losses`` (one
file per objective); the fused modules of ``fastalign.losses.fused`` score hidden states against the LM head
without forming logits. Here is only the plumbing: one backbone forward, the reference, and the call.

    objective  batch (collator)                      forward                          loss
    reward     pairs (PreferenceCollator)           seq-classification model, one     bradley_terry_loss
                                                    score at each sequence's last
                                                    token (from attention_mask /
                                                    cu_seqlens: pad == eos is safe)
    dpo        pairs                                policy [2B, T] + reference         FusedLinearDPOLoss
    orpo       pairs                                policy [2B, T]                     FusedLinearORPOLoss
    cpo        pairs                                policy [2B, T]                     FusedLinearCPOLoss
    kto        unpaired (UnpairedCollator)          policy [B, T] + KL batch (no_grad) FusedLinearKTOLoss
                                                    + reference for both

Chosen and rejected go through the backbone in ONE forward (``last_hidden_states`` on the [2B, T] batch, or on
the packed [1, N] row with position_ids restarting per sequence and no attention_mask) and one fused loss call
(packed: ``cu_seqlens``). Metrics are TRL's names (``rewards/chosen``, ``rewards/accuracies``, ``logps/chosen``,
``nll_loss``, ``kl``, ``accuracy``, ...); FastAlignTrainer averages them over the steps between two logs like
TRL's ``store_metrics`` (eval metrics get the ``eval_`` prefix).

Config (``alignment:`` section, documented in ``fastalign/config.py``)::

    objective: dpo
    alignment:
      dpo: {beta: 0.1, loss_type: sigmoid, label_smoothing: 0.0, discopop_tau: 0.05}
      reference: {model: null, precompute: false, cache_dir: null}
    # reward: {center_rewards_coefficient: null}     orpo: {beta: 0.1, nll_on_prompt: true}
    # kto: {beta: 0.1, loss_type: kto, desirable_weight: 1.0, undesirable_weight: 1.0}
    # cpo: {beta: 0.1, gamma: 0.5, loss_type: simpo, label_smoothing: 0.0, cpo_alpha: 1.0}   (SimPO: cpo_alpha 0)
    data:
      preference: {max_length: 1024, format: auto}   # pairs: prompt/chosen/rejected[/margin]; unpaired (kto)

From Python::

    from fastalign.config import AlignmentConfig, DPOOptions
    from fastalign.training import FastAlignTrainer, preference_objective
    from fastalign.training.reference import ReferencePolicy
    objective = preference_objective("dpo", AlignmentConfig(dpo=DPOOptions(beta=0.1)), ReferencePolicy())
    loss, metrics = objective.loss(peft_model, batch, None)           # one step by hand, or:
    trainer = FastAlignTrainer(model=peft_model, args=args, objective=objective, train_dataset=rows,
                               data_collator=PreferenceCollator(tokenizer.pad_token_id))
"""

from __future__ import annotations

import torch
from torch import nn

from fastalign.config import (
    AlignmentConfig,
    CPOOptions,
    DPOOptions,
    KTOOptions,
    ORPOOptions,
    RewardOptions,
)
from fastalign.data.packing import IGNORE_INDEX
from fastalign.lm_head import LMHead, last_hidden_states, lm_head_of, unwrap_model
from fastalign.losses import bradley_terry_loss
from fastalign.losses.fused import FusedLinearCPOLoss, FusedLinearDPOLoss, FusedLinearKTOLoss, FusedLinearORPOLoss
from fastalign.training.reference import ReferencePolicy

Metrics = dict[str, torch.Tensor]


def policy_hidden_states(model: nn.Module, inputs: dict, prefix: str = "") -> tuple[torch.Tensor, LMHead]:
    """Hidden states of the batch's sequences (one forward) and the LM head, in the head's compute dtype."""
    hidden = last_hidden_states(
        model,
        inputs[f"{prefix}input_ids"],
        inputs.get(f"{prefix}attention_mask"),
        inputs.get(f"{prefix}position_ids"),
    )
    return lm_head_of(model).matching(hidden)


def _head_options(head: LMHead) -> dict:
    return {"softcap": head.softcap, "logit_scale": head.logit_scale}


def _num_pairs(inputs: dict) -> int:
    cu_seqlens = inputs.get("cu_seqlens")
    sequences = inputs["input_ids"].shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return sequences // 2


class RewardObjective:
    """Bradley-Terry loss of a sequence-classification model (``num_labels=1``) on chosen vs. rejected."""

    def __init__(self, options: RewardOptions | None = None):
        self.options = options or RewardOptions()

    def __call__(self, model: nn.Module, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, Metrics]:
        rewards = sequence_rewards(model, inputs)
        num_pairs = rewards.shape[0] // 2
        return bradley_terry_loss(
            rewards[:num_pairs],
            rewards[num_pairs:],
            margin=inputs.get("margin"),
            center_rewards_coefficient=self.options.center_rewards_coefficient,
        )


def sequence_rewards(model: nn.Module, inputs: dict) -> torch.Tensor:
    """Scalar reward per sequence, float32 [S]: the classification head's output at each sequence's last token.

    The last token is found from ``attention_mask`` (padded; any padding side) or ``cu_seqlens`` (packed), never
    from pad token ids, so a tokenizer whose pad token is its EOS token scores the right position. The model's own
    pooling (by ``pad_token_id``) is not used: the per-position scores are taken from its ``score`` head.
    """
    base = unwrap_model(model)
    heads = [getattr(base, name, None) for name in ("score", "classifier")]
    head = next((module for module in heads if module is not None), None)
    if head is None:
        raise TypeError(f"{type(base).__name__} has no `score` head: load it with AutoModelForSequenceClassification")
    captured = []
    hook = head.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs.get("attention_mask"),
            position_ids=inputs.get("position_ids"),
            use_cache=False,
        )
    finally:
        hook.remove()
    scores = captured[-1]  # [B, T, num_labels]
    if scores.shape[-1] != 1:
        raise ValueError(f"a reward model has one output (num_labels=1), got {scores.shape[-1]}")
    scores = scores[..., 0].float()
    cu_seqlens = inputs.get("cu_seqlens")
    if cu_seqlens is not None:
        return scores.reshape(-1)[cu_seqlens[1:].long() - 1]
    mask = inputs["attention_mask"]
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask.bool(), positions, -1).amax(dim=1)  # the last real token, whatever the padding side
    return scores[torch.arange(scores.shape[0], device=scores.device), last]


class DPOObjective:
    """DPO with any ``loss_type``, the reference from ``reference`` or precomputed in the batch."""

    def __init__(self, options: DPOOptions | None = None, reference: ReferencePolicy | None = None):
        self.options = options or DPOOptions()
        self.reference = reference or ReferencePolicy()

    def __call__(self, model: nn.Module, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, Metrics]:
        hidden, head = policy_hidden_states(model, inputs)
        loss_fn = FusedLinearDPOLoss(
            beta=self.options.beta,
            loss_type=self.options.loss_type,
            label_smoothing=self.options.label_smoothing,
            discopop_tau=self.options.discopop_tau,
            **_head_options(head),
        )
        reference = {}
        if "ref_chosen_logps" in inputs:
            reference = {
                "ref_chosen_logps": inputs["ref_chosen_logps"],
                "ref_rejected_logps": inputs["ref_rejected_logps"],
            }
        else:
            ref_hidden, ref_head = self.reference.hidden_states(
                model, inputs["input_ids"], inputs.get("attention_mask"), inputs.get("position_ids")
            )
            reference = {"ref_hidden": ref_hidden.to(hidden.dtype), "ref_weight": ref_head.weight.to(hidden.dtype)}
            if ref_head.bias is not None:
                reference["ref_bias"] = ref_head.bias.to(hidden.dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            return loss_fn(
                hidden, head.weight, inputs["labels"], bias=head.bias, cu_seqlens=inputs.get("cu_seqlens"), **reference
            )


class ORPOObjective:
    """ORPO: NLL on the chosen sequences (prompt included unless ``nll_on_prompt: false``) + odds-ratio term."""

    def __init__(self, options: ORPOOptions | None = None):
        self.options = options or ORPOOptions()

    def __call__(self, model: nn.Module, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, Metrics]:
        hidden, head = policy_hidden_states(model, inputs)
        loss_fn = FusedLinearORPOLoss(beta=self.options.beta, **_head_options(head))
        nll_labels = None
        if self.options.nll_on_prompt:
            input_ids, cu_seqlens = inputs["input_ids"], inputs.get("cu_seqlens")
            if cu_seqlens is None:  # padded [2B, T]: every real token of the chosen rows
                nll_labels = torch.where(inputs["attention_mask"].bool(), input_ids, IGNORE_INDEX)[: _num_pairs(inputs)]
            else:  # packed: every token; the loss keeps the chosen sequences' positions only
                nll_labels = input_ids
        with torch.autocast(hidden.device.type, enabled=False):
            return loss_fn(
                hidden,
                head.weight,
                inputs["labels"],
                bias=head.bias,
                cu_seqlens=inputs.get("cu_seqlens"),
                nll_labels=nll_labels,
            )


class CPOObjective:
    """CPO / SimPO (``loss_type: simpo``) plus ``cpo_alpha`` * NLL on the chosen completions; no reference."""

    def __init__(self, options: CPOOptions | None = None):
        self.options = options or CPOOptions()

    def __call__(self, model: nn.Module, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, Metrics]:
        hidden, head = policy_hidden_states(model, inputs)
        o = self.options
        loss_fn = FusedLinearCPOLoss(
            beta=o.beta,
            gamma=o.gamma,
            loss_type=o.loss_type,
            label_smoothing=o.label_smoothing,
            cpo_alpha=o.cpo_alpha,
            **_head_options(head),
        )
        with torch.autocast(hidden.device.type, enabled=False):
            return loss_fn(hidden, head.weight, inputs["labels"], bias=head.bias, cu_seqlens=inputs.get("cu_seqlens"))


class KTOObjective:
    """KTO on unpaired examples; the KL reference point from the batch's mismatched pairs (``kl_*`` inputs),
    scored by the policy and the reference without gradients (skipped for ``apo_zero_unpaired``)."""

    def __init__(self, options: KTOOptions | None = None, reference: ReferencePolicy | None = None):
        self.options = options or KTOOptions()
        self.reference = reference or ReferencePolicy()

    def _reference(self, model, inputs, prefix: str, dtype) -> dict:
        ref_hidden, ref_head = self.reference.hidden_states(
            model,
            inputs[f"{prefix}input_ids"],
            inputs.get(f"{prefix}attention_mask"),
            inputs.get(f"{prefix}position_ids"),
        )
        bias = None if ref_head.bias is None else ref_head.bias.to(dtype)
        return {"hidden": ref_hidden.to(dtype), "weight": ref_head.weight.to(dtype), "bias": bias}

    def __call__(self, model: nn.Module, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, Metrics]:
        hidden, head = policy_hidden_states(model, inputs)
        o = self.options
        loss_fn = FusedLinearKTOLoss(
            beta=o.beta,
            desirable_weight=o.desirable_weight,
            undesirable_weight=o.undesirable_weight,
            loss_type=o.loss_type,
            **_head_options(head),
        )
        precomputed = "ref_logps" in inputs
        if precomputed:
            kwargs = {"ref_logps": inputs["ref_logps"]}
        else:
            ref = self._reference(model, inputs, "", hidden.dtype)
            kwargs = {"ref_hidden": ref["hidden"], "ref_weight": ref["weight"], "ref_bias": ref["bias"]}
        if o.loss_type == "kto":
            with torch.no_grad():
                kl_hidden, _ = policy_hidden_states(model, inputs, "kl_")
            kwargs.update(kl_hidden=kl_hidden, kl_labels=inputs["kl_labels"], kl_cu_seqlens=inputs.get("kl_cu_seqlens"))
            if precomputed:
                kwargs["ref_kl_logps"] = inputs["ref_kl_logps"]
            else:
                kwargs["ref_kl_hidden"] = self._reference(model, inputs, "kl_", hidden.dtype)["hidden"]
        with torch.autocast(hidden.device.type, enabled=False):
            return loss_fn(
                hidden,
                head.weight,
                inputs["labels"],
                desirable=inputs["desirable"],
                bias=head.bias,
                cu_seqlens=inputs.get("cu_seqlens"),
                **kwargs,
            )


def make_objective(name: str, alignment: AlignmentConfig | None = None, reference: ReferencePolicy | None = None):
    """The loss callable of preference objective ``name`` with the options of ``alignment`` (defaults if None);
    dpo and kto use ``reference`` (default: adapter disabling)."""
    alignment = alignment or AlignmentConfig()
    if name == "reward":
        return RewardObjective(alignment.reward)
    if name == "dpo":
        return DPOObjective(alignment.dpo, reference)
    if name == "orpo":
        return ORPOObjective(alignment.orpo)
    if name == "kto":
        return KTOObjective(alignment.kto, reference)
    if name == "cpo":
        return CPOObjective(alignment.cpo)
    raise ValueError(f"unknown preference objective {name!r}; known: reward, dpo, orpo, kto, cpo")


__all__ = [
    "CPOObjective",
    "DPOObjective",
    "KTOObjective",
    "ORPOObjective",
    "RewardObjective",
    "make_objective",
    "policy_hidden_states",
    "sequence_rewards",
]
