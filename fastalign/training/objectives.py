"""Training objectives: what the trainer minimizes, given the model and a batch.

An objective is a function ``loss(model, inputs, num_items_in_batch) -> scalar`` registered in ``OBJECTIVES`` under
the name a config's ``objective:`` uses. Each one runs the backbone through :func:`fastalign.lm_head.last_hidden_states`
and a fused loss on the head from :func:`fastalign.lm_head.lm_head_of`: the ``[B, T, V]`` logits never exist.

``cpt`` and ``sft`` share one loss, next-token cross-entropy over the tokens whose label is not -100; they differ in
their data (every token of a corpus vs. completions only, see fastalign.data). The preference objectives (reward,
dpo, orpo, kto, cpo) live in ``fastalign/training/preference.py``; their losses return ``(loss, metrics)``
(``Objective.metrics``) and are registered here with default options (``make_objective`` builds them with a
config's ``alignment`` options and reference policy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fastalign.cross_entropy import linear_cross_entropy
from fastalign.lm_head import last_hidden_states, lm_head_of
from fastalign.training.preference import make_objective


@dataclass(frozen=True)
class Objective:
    """A loss and how the trainer must treat it.

    Attributes:
        loss: ``(model, inputs, num_items_in_batch) -> scalar``.
        normalized_by_num_items: the loss divides by ``num_items_in_batch`` — the number of next-token targets in
            the whole accumulated (and, across devices, gathered) batch — so gradient accumulation and data
            parallelism give exactly the gradient of one large batch. False: the loss is a mean over this
            micro-batch's examples (pairs), and the Trainer divides it by the gradient accumulation steps.
        metrics: the loss returns ``(loss, metrics)``, metrics a dict of detached 0-dim tensors (TRL's names) that
            the trainer averages between logs.
    """

    loss: Callable[[nn.Module, dict, torch.Tensor | int | None], torch.Tensor]
    normalized_by_num_items: bool
    metrics: bool = False


def next_token_loss(model: nn.Module, inputs: dict, num_items_in_batch: torch.Tensor | int | None) -> torch.Tensor:
    """Mean cross-entropy of ``labels[:, 1:]`` given the hidden states at ``[:, :-1]``.

    Args:
        inputs: ``input_ids`` [B, T], ``labels`` [B, T] (aligned with input_ids, -100 = no loss), and optionally
            ``attention_mask`` [B, T] (padded batches) or ``position_ids`` [B, T] (packed batches).
        num_items_in_batch: the denominator of the mean (see ``Objective``); None = this batch's target count.
    """
    hidden = last_hidden_states(
        model, inputs["input_ids"], inputs.get("attention_mask"), inputs.get("position_ids")
    )  # [B, T, D]
    hidden, head = lm_head_of(model).matching(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        return linear_cross_entropy(
            hidden, head.weight, inputs["labels"], shift=True, num_items_in_batch=num_items_in_batch, **head.options
        )


def preference_objective(name: str, alignment=None, reference=None) -> Objective:
    """A preference objective (reward, dpo, orpo, kto, cpo) with ``alignment`` options (a
    ``fastalign.config.AlignmentConfig``; None = defaults) and, for dpo/kto, a ``ReferencePolicy`` (None = the
    policy with its LoRA adapter disabled)."""
    return Objective(make_objective(name, alignment, reference), normalized_by_num_items=False, metrics=True)


OBJECTIVES: dict[str, Objective] = {
    "cpt": Objective(next_token_loss, normalized_by_num_items=True),
    "sft": Objective(next_token_loss, normalized_by_num_items=True),
    **{name: preference_objective(name) for name in ("reward", "dpo", "orpo", "kto", "cpo")},
}
