"""Experimental ORPO and CPO (trl 1.14 to 1.16): ``concatenated_forward`` without the [2B, T, V] logits.

TRL's ``concatenated_forward`` runs the model with full logits (plus float32 copies in the log-softmax and the
cross-entropy). The replacement runs it with ``logits_to_keep`` set to no position, scores the preference targets
and the SFT targets in one ``linear_logprobs`` sweep, and returns what the original returns;
``get_batch_loss_metrics`` (TRL's loss and metrics) is untouched. In place of the chosen / rejected logits it
returns their means as 0-dim tensors, which is all TRL reads from them (``logits/*`` metrics).
"""

from __future__ import annotations

import functools

import torch

from fastalign.core.head import LogitTransform
from fastalign.integrations.trl import state
from fastalign.integrations.trl.head import head_statistics
from fastalign.lm_head import last_hidden_states, lm_head_of
from fastalign.logprobs import linear_logprobs
from fastalign.sequence_logprobs import sequence_logprobs


def orpo_forward(trl_concatenated_forward):
    """The replacement of ``ORPOTrainer.concatenated_forward``."""
    return _preference_forward(trl_concatenated_forward, "orpo")


def cpo_forward(trl_concatenated_forward):
    """The replacement of ``CPOTrainer.concatenated_forward``."""
    return _preference_forward(trl_concatenated_forward, "cpo")


def _preference_forward(trl_concatenated_forward, kind: str):
    @functools.wraps(trl_concatenated_forward)
    def concatenated_forward(self, model, batch):
        reason = _preference_unsupported(self, model)
        if reason is not None or not state.active():
            if reason is not None:
                state.warn_once(
                    reason, f"{reason}: using TRL's own {type(self).__name__}.concatenated_forward (full logits)"
                )
            return trl_concatenated_forward(self, model, batch)
        return _fused_concatenated_forward(self, model, batch, kind)

    concatenated_forward.__doc__ = f"fastalign: {kind.upper()} log-probs and SFT loss without logits"
    return concatenated_forward


def _preference_unsupported(trainer, model) -> str | None:
    if trainer.is_encoder_decoder:
        return "encoder-decoder models are not supported"
    if trainer.aux_loss_enabled:
        return "the MoE router aux loss (aux_loss_enabled) is not computed by fastalign"
    try:
        lm_head_of(model)
    except (TypeError, ValueError) as error:
        return f"the LM head cannot be fused ({error})"
    return None


def _fused_concatenated_forward(trainer, model, batch, kind: str):
    """What TRL's ``concatenated_forward`` returns, without the [2B, T, V] logits.

    Returns:
        chosen_logps, rejected_logps [B] (ORPO: token means; CPO: means for ipo/simpo, else sums), the means of the
        chosen and rejected logits (0-dim; ORPO over positions [:-1], CPO over all), and the SFT loss: token-mean
        cross-entropy over the chosen rows (ORPO: prompt and completion, ``attention_mask`` tokens; CPO: the
        completion labels; 0 when ``cpo_alpha == 0``).
    """
    state.FUSED_CALLS[f"{type(trainer).__name__}.concatenated_forward"] += 1
    padding_value = trainer.padding_value if kind == "orpo" else trainer.pad_token_id
    batch = trainer.concatenated_inputs(
        batch, is_encoder_decoder=False, padding_value=padding_value, device=trainer.accelerator.device
    )
    num_chosen = batch["concatenated_input_ids"].shape[0] // 2
    input_ids, attention_mask = batch["concatenated_input_ids"], batch["concatenated_attention_mask"]
    hidden = last_hidden_states(model, input_ids, attention_mask)  # [2B, T, D]
    head = lm_head_of(model)
    hidden, head = head.matching(hidden)
    weight, bias = head.weight, head.bias

    # hidden[:, t] predicts token t + 1: preference targets (completion) and SFT targets (chosen rows only)
    targets = batch["concatenated_labels"][:, 1:].to(hidden.device)
    if kind == "orpo":
        nll_targets = torch.where(attention_mask == 1, input_ids, state.IGNORE_INDEX)[:, 1:].clone()
    else:
        nll_targets = targets.clone()
    nll_targets[num_chosen:] = state.IGNORE_INDEX
    with_nll = kind == "orpo" or trainer.cpo_alpha != 0

    def score(token_targets):
        return linear_logprobs(
            hidden[:, :-1],
            weight,
            token_targets,
            bias=bias,
            softcap=head.softcap,
            logit_scale=head.logit_scale,
            impl=state.OPTIONS["impl"],
        )

    scored, nll_scored = targets != state.IGNORE_INDEX, nll_targets != state.IGNORE_INDEX
    if not with_nll:
        token_logps = nll_logps = score(targets)
    elif bool((scored & nll_scored & (targets != nll_targets)).any()):  # the two label sets disagree: two sweeps
        token_logps, nll_logps = score(targets), score(nll_targets)
    else:  # one sweep scores both label sets
        token_logps = nll_logps = score(torch.where(scored, targets, nll_targets))

    average = kind == "orpo" or trainer.loss_type in ("ipo", "simpo")
    logps = sequence_logprobs(token_logps, mask=scored, reduction="mean" if average else "sum")
    if with_nll:
        # nn.CrossEntropyLoss(): mean over the scored tokens
        nll_loss = -torch.where(nll_scored, nll_logps, 0.0).sum() / nll_scored.sum()
    else:
        nll_loss = torch.tensor(0.0).to(trainer.accelerator.device)

    chosen_logits, rejected_logits = _mean_logits(hidden if kind == "cpo" else hidden[:, :-1], weight, bias, head)
    return logps[:num_chosen], logps[num_chosen:], chosen_logits, rejected_logits, nll_loss


def _mean_logits(hidden, weight, bias, head) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of the model's logits over the chosen half and the rejected half of ``hidden`` [2B, T', D]."""
    if not state.OPTIONS["exact_metrics"]:
        nan = torch.tensor(float("nan"), device=hidden.device)
        return nan, nan
    num_chosen, length = hidden.shape[0] // 2, hidden.shape[1]
    transform = LogitTransform(head.softcap, head.logit_scale)
    rows = hidden.detach().reshape(-1, hidden.shape[-1])
    sums = head_statistics(rows, weight.detach(), bias, transform, ["logit_sum"])["logit_sum"]
    sums = sums.view(-1, length).sum(-1)
    count = num_chosen * length * weight.shape[0]
    return sums[:num_chosen].sum() / count, sums[num_chosen:].sum() / count
