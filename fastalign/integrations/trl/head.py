"""DPO, KTO and SFT: the TRL functions that hand the LM head to a fused path, answered by fastalign.

Each replacement returns what TRL's function returns, computed by :func:`fastalign.linear_logprobs` (prompt and
padding rows dropped before any vocabulary work, a frozen head on the 2-matmul path, at most two vocabulary tiles
of logits alive at a time), so every loss TRL computes from it keeps TRL's own math, names and metrics:

    add_fused_lm_head(model, ...)                trl 1.15, 1.16 (DPO, KTO, SFT): installs a forward whose
                                                 ``fused_lm_head=True`` calls return a ``FusedCausalLMOutput``
    _patch_chunked_ce_lm_head(model, ...)        trl 1.14 (SFT, ``loss_type="chunked_nll"``): installs a forward
                                                 whose calls with labels return the loss and its metric sums
    <Trainer>._get_per_token_logps_and_entropies trl 1.14 (DPO, KTO with ``use_liger_kernel=True``): per-token
                                                 log-probs and entropies

What a trl 1.14 trainer scores without any of these (full logits) is not fused: :func:`warn_when_unfused` says so
once and TRL's code runs unchanged. What fastalign does not reproduce (:func:`head_unsupported`) runs TRL's own
fused code, with a warning.
"""

from __future__ import annotations

import dataclasses
import functools
import types

import torch

from fastalign.core.head import LogitTransform
from fastalign.integrations.transformers import forward_replaced
from fastalign.integrations.trl import state
from fastalign.lm_head import last_hidden_states, lm_head_of
from fastalign.logprobs import linear_logprobs

METRIC_FIELDS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
METRIC_CHUNK_BYTES = 64 << 20  # one [rows, V] float32 block of the no-grad metric sweep


@dataclasses.dataclass(frozen=True)
class Scoring:
    """How TRL asked for the next tokens to be scored: its temperature, fp32 head, and metric-only fields."""

    fields: tuple[str, ...] = ()
    temperature: float = 1.0
    cast_to_fp32: bool = False


@dataclasses.dataclass
class Scores:
    """Per position [B, T']: ``log_probs`` of the label (0 where ignored), ``mask`` (label != -100) and the metric
    fields asked for (0 / False where ignored)."""

    log_probs: torch.Tensor
    mask: torch.Tensor
    fields: dict


# --- trl 1.15, 1.16: add_fused_lm_head ----------------------------------------------------------------------------


def fused_lm_head(trl_add_fused_lm_head):
    """The replacement of TRL's ``add_fused_lm_head``, whose ``fused_lm_head=True`` calls fastalign answers.

    TRL's own fused forward is installed first and kept: it serves every call without ``fused_lm_head``, the
    fallbacks, and all calls after ``unpatch_trl()``.
    """

    @functools.wraps(trl_add_fused_lm_head)
    def add_fused_lm_head(model, temperature=1.0, cast_lm_head_to_fp32=False, outputs=("log_probs",)):
        trl_add_fused_lm_head(model, temperature, cast_lm_head_to_fp32, outputs)
        trl_forward = model.forward
        scoring = Scoring(tuple(f for f in METRIC_FIELDS if f in outputs), temperature, cast_lm_head_to_fp32)

        @functools.wraps(type(model).forward)
        def forward(self, *args, fused_lm_head=False, **kwargs):
            if fused_lm_head and state.active():
                reason = head_unsupported(self, kwargs)
                if reason is None:
                    from trl.trainer.utils import FusedCausalLMOutput

                    with forward_replaced(self, trl_forward):
                        scores, loss = score_labels(self, args, kwargs, scoring, "add_fused_lm_head")
                    return FusedCausalLMOutput(
                        loss=loss, log_probs=scores.log_probs, label_mask=scores.mask, **scores.fields
                    )
                state.warn_once(reason, f"{reason}: using TRL's own fused LM head for this model")
            return trl_forward(*args, fused_lm_head=fused_lm_head, **kwargs)

        model.forward = types.MethodType(forward, model)

    return add_fused_lm_head


# --- trl 1.14: SFT's chunked cross-entropy, DPO's and KTO's per-token log-probs -----------------------------------


def fused_chunked_ce(trl_patch_chunked_ce_lm_head):
    """The replacement of trl 1.14's ``_patch_chunked_ce_lm_head``: forward calls with labels are answered by
    fastalign, returning what TRL's chunked forward returns (loss, and the sums behind ``entropy`` and
    ``mean_token_accuracy``). TRL's chunked forward is installed first and serves the rest, as above."""

    @functools.wraps(trl_patch_chunked_ce_lm_head)
    def _patch_chunked_ce_lm_head(model, chunk_size, is_vlm=False):
        trl_patch_chunked_ce_lm_head(model, chunk_size, is_vlm)
        trl_forward = model.forward

        @functools.wraps(type(model).forward)
        def forward(self, *args, **kwargs):
            has_labels = kwargs.get("labels") is not None or kwargs.get("shift_labels") is not None
            if has_labels and state.active():
                reason = head_unsupported(self, kwargs)
                if reason is None:
                    from trl.trainer.sft_trainer import _ChunkedCELMHeadOutput

                    with forward_replaced(self, trl_forward):
                        scores, loss = score_labels(
                            self, args, kwargs, Scoring(("entropy", "is_top1")), "_patch_chunked_ce_lm_head"
                        )
                    return _ChunkedCELMHeadOutput(
                        loss=loss,
                        logits=None,
                        num_correct_tokens=scores.fields["is_top1"].sum().float(),
                        entropy_sum=scores.fields["entropy"].sum(),
                        num_valid_tokens=scores.mask.sum(),
                    )
                state.warn_once(reason, f"{reason}: using TRL's own chunked LM head for this model")
            return trl_forward(*args, **kwargs)

        model.forward = types.MethodType(forward, model)

    return _patch_chunked_ce_lm_head


def fused_per_token_logps(trl_method):
    """The replacement of trl 1.14's ``DPOTrainer`` / ``KTOTrainer._get_per_token_logps_and_entropies``.

    TRL calls it (``use_liger_kernel=True`` only) for the policy, the reference and KTO's KL batch, with the model's
    inputs and the completion mask, and reads per-token log-probs and entropies [B, T - 1] (0 outside the
    completion) and the backbone's outputs (``last_hidden_state`` is the only field it can hold).
    """

    @functools.wraps(trl_method)
    def _get_per_token_logps_and_entropies(self, model, model_kwargs, input_ids, completion_mask):
        from transformers.modeling_outputs import BaseModelOutputWithPast

        unwrapped = self.accelerator.unwrap_model(model)
        reason = head_unsupported(unwrapped, model_kwargs)
        if reason is not None or not state.active():
            if reason is not None:
                state.warn_once(reason, f"{reason}: using TRL's own chunked log-probs for this model")
            return trl_method(self, model, model_kwargs, input_ids, completion_mask)
        kwargs = {key: value for key, value in model_kwargs.items() if key != "use_cache"}
        inputs = ("input_ids", "attention_mask", "position_ids")
        ids, attention_mask, position_ids = (kwargs.pop(key, None) for key in inputs)
        # hidden[:, t] predicts token t + 1; only completion tokens are scored
        targets = input_ids[:, 1:].masked_fill(completion_mask[:, 1:] == 0, state.IGNORE_INDEX)
        with self.accelerator.autocast():
            hidden = last_hidden_states(unwrapped, ids, attention_mask, position_ids, **kwargs)
            scores = next_token_scores(unwrapped, hidden[:, :-1], targets, Scoring(("entropy",)), trl_method.__name__)
        return scores.log_probs, scores.fields["entropy"], BaseModelOutputWithPast(last_hidden_state=hidden)

    return _get_per_token_logps_and_entropies


def warn_when_unfused(why):
    """A replacement of a trl 1.14 trainer's ``compute_loss`` that runs TRL's and only warns, once per trainer
    class, when ``why(trainer)`` names a configuration that TRL scores with full logits, through no seam."""

    def replacement(trl_compute_loss):
        @functools.wraps(trl_compute_loss)
        def compute_loss(self, *args, **kwargs):
            reason = why(self) if state.active() else None
            if reason is not None:
                import trl

                name = type(self).__name__
                state.warn_once(
                    f"unfused {name}", f"trl {trl.__version__}: {name} is not fused ({reason}); running TRL's own code"
                )
            return trl_compute_loss(self, *args, **kwargs)

        return compute_loss

    return replacement


def without_liger_path(trainer) -> str | None:
    """DPO / KTO on trl 1.14: only the ``use_liger_kernel=True`` path scores without logits."""
    if trainer.use_liger_kernel:
        return None
    return "it scores with full [B, T, V] logits unless use_liger_kernel=True, which needs liger-kernel"


def without_chunked_nll(trainer) -> str | None:
    """SFT on trl 1.14: only ``loss_type="chunked_nll"`` (its default) has a head seam."""
    if trainer.args.loss_type == "chunked_nll":
        return None
    return f"loss_type={trainer.args.loss_type!r} computes full logits; only loss_type='chunked_nll' has a seam"


# --- shared: what fastalign cannot fuse, and the scoring ----------------------------------------------------------


def head_unsupported(model, kwargs) -> str | None:
    if kwargs.get("output_router_logits") or getattr(model.config.get_text_config(), "output_router_logits", False):
        return "MoE router load-balancing loss (output_router_logits) is not computed by fastalign"
    try:
        head = lm_head_of(model)
    except (TypeError, ValueError) as error:
        return f"the LM head cannot be fused ({error})"
    if type(head.weight).__name__ == "DTensor":
        return "FSDP2-sharded LM head (DTensor) is not supported"
    return None


def score_labels(model, args, kwargs, scoring: Scoring, seam: str) -> tuple[Scores, torch.Tensor]:
    """Scores and loss of a forward call with ``labels`` [B, T] (shifted here) or pre-shifted ``shift_labels``, as
    TRL's fused heads take them. Loss: ``-sum(log p) / num_items_in_batch`` (the count of scored labels if None)."""
    labels = kwargs.pop("labels", None)
    shift_labels = kwargs.pop("shift_labels", None)
    num_items_in_batch = kwargs.pop("num_items_in_batch", None)
    kwargs.pop("use_cache", None)
    input_ids = args[0] if args else kwargs.pop("input_ids", None)
    hidden = last_hidden_states(
        model, input_ids, kwargs.pop("attention_mask", None), kwargs.pop("position_ids", None), **kwargs
    )
    if shift_labels is None:
        hidden, targets = hidden[:, :-1], labels[:, 1:]  # hidden[:, t] predicts token t + 1
    else:
        targets = shift_labels
    scores = next_token_scores(model, hidden, targets, scoring, seam)
    denominator = scores.mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return scores, -scores.log_probs.sum() / denominator


def next_token_scores(model, hidden, targets, scoring: Scoring, seam: str) -> Scores:
    """``log p(targets)`` under ``model``'s head from ``hidden`` [B, T', D], and the metric fields of ``scoring``."""
    head = lm_head_of(model)
    hidden, head = head.matching(hidden)
    weight, bias = head.weight, head.bias
    if scoring.cast_to_fp32:
        hidden, weight = hidden.float(), weight.float()
        bias = None if bias is None else bias.float()
    targets = targets.to(hidden.device)
    transform = LogitTransform(head.softcap, head.logit_scale, scoring.temperature)
    log_probs = linear_logprobs(
        hidden,
        weight,
        targets,
        bias=bias,
        softcap=head.softcap,
        logit_scale=head.logit_scale,
        temperature=scoring.temperature,
        impl=state.OPTIONS["impl"],
    )
    mask = targets != state.IGNORE_INDEX
    state.FUSED_CALLS[seam] += 1
    return Scores(log_probs, mask, metric_fields(hidden, weight, bias, targets, mask, transform, scoring.fields))


def metric_fields(hidden, weight, bias, targets, mask, transform, fields) -> dict:
    """TRL's metric-only per-token fields, zero (False) where the label is ignored; NaN (False) without
    ``exact_metrics``."""
    if not fields:
        return {}
    if not state.OPTIONS["exact_metrics"]:
        return {f: torch.full(mask.shape, float("nan"), device=mask.device) for f in fields if f != "is_top1"} | (
            {"is_top1": torch.zeros_like(mask)} if "is_top1" in fields else {}
        )
    rows = mask.nonzero(as_tuple=True)
    values = head_statistics(hidden.detach()[rows], weight.detach(), bias, transform, fields, targets=targets[rows])
    result = {}
    for field, value in values.items():
        full = torch.zeros(mask.shape, dtype=value.dtype, device=mask.device)
        full[rows] = value
        result[field] = full
    return result


@torch.no_grad()
def head_statistics(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    transform: LogitTransform,
    fields,
    *,
    targets: torch.Tensor | None = None,
    chunk_bytes: int = METRIC_CHUNK_BYTES,
) -> dict[str, torch.Tensor]:
    """Metric-only statistics of ``z = transform(hidden @ weight.T + bias)``, per row, without gradients.

    One sweep in row chunks of ``chunk_bytes`` of float32 logits. Fields (``targets`` needed for is_top1):
        entropy           lse(z) - sum_v p_v z_v
        log_sum_sq_probs  log sum_v p_v^2 = lse(2 z) - 2 lse(z)
        mean_logits       sum_v z_v / V
        logit_sum         sum_v z_v
        is_top1           argmax_v z_v == target (the first maximum, as TRL)

    Args:
        hidden: [M, D]; weight: [V, D]; bias: [V] or None (same dtype).

    Returns:
        field -> [M] float32 (bool for is_top1).
    """
    num_rows, vocab = hidden.shape[0], weight.shape[0]
    out = {
        f: torch.empty(num_rows, dtype=torch.bool if f == "is_top1" else torch.float32, device=hidden.device)
        for f in fields
    }
    step = max(1, chunk_bytes // (4 * vocab))
    for start in range(0, num_rows, step):
        rows = slice(start, min(start + step, num_rows))
        raw = hidden[rows] @ weight.T
        if bias is not None:
            raw += bias
        z = transform.apply_(raw.float())
        if "mean_logits" in out or "logit_sum" in out:
            total = z.sum(-1)
            if "logit_sum" in out:
                out["logit_sum"][rows] = total
            if "mean_logits" in out:
                out["mean_logits"][rows] = total / vocab
        if not ({"is_top1", "entropy", "log_sum_sq_probs"} & out.keys()):
            continue
        top, top_index = z.max(-1)  # one pass: the max for the softmax and the argmax (first maximum)
        if "is_top1" in out:
            out["is_top1"][rows] = top_index == targets[rows]
        if "entropy" in out or "log_sum_sq_probs" in out:
            e = torch.exp(z - top[:, None])  # e_v = exp(z_v - max), sum_exp = sum_v e_v
            sum_exp = e.sum(-1)
            if "entropy" in out:  # lse - sum_v p_v z_v,  lse = max + log(sum_exp)
                out["entropy"][rows] = top + sum_exp.log() - torch.linalg.vecdot(e, z) / sum_exp
            if "log_sum_sq_probs" in out:  # log sum_v e_v^2 - 2 log sum_exp
                out["log_sum_sq_probs"][rows] = torch.linalg.vecdot(e, e).log() - 2 * sum_exp.log()
    return out
