"""TRL 1.16's trainers with fastalign's fused log-probs: ``patch_trl()`` before building the trainer, ``unpatch_trl()``.

Pinned to trl==1.16.0 (``TRL_VERSION``): the seams below are private TRL code, so another version raises unless
``patch_trl(strict_version=False)`` (then: a warning, and a check that each seam still exists).

Which TRL code is replaced, and why there:

    DPOTrainer, KTOTrainer, SFTTrainer    ``add_fused_lm_head`` as each trainer module imports it
        TRL 1.16 already scores these trainers through one seam: ``add_fused_lm_head(model)`` installs a forward
        that, called with ``fused_lm_head=True``, returns per-token ``log_probs`` (and the metric fields
        ``entropy``, ``mean_logits``, ``is_top1``, ``log_sum_sq_probs``) instead of logits. fastalign's version
        returns the same ``FusedCausalLMOutput`` from :func:`fastalign.linear_logprobs`, so every loss TRL computes
        from it (all DPO loss types and their weighted combinations, f-divergences, ``ld_alpha``, WPO weighting,
        precomputed reference log-probs, KTO's KL term, SFT's nll / dft) keeps TRL's own math, names and metrics.
        What changes is the head: prompt and padding rows are dropped before any vocabulary work on every device
        (TRL only compacts under Triton), a frozen head (LoRA/QLoRA) takes the 2-matmul path, and the logits alive
        at a time are two bounded vocabulary tiles (chunked PyTorch backend; Triton tiles on GPU).
    experimental ORPOTrainer, CPOTrainer  ``concatenated_forward``
        These run the model with full logits ([2B, T, V], plus float32 copies in the log-softmax and the
        cross-entropy). The replacement runs it with ``logits_to_keep`` set to no position, scores the preference
        targets and the SFT targets in one ``linear_logprobs`` sweep, and returns what the original returns;
        ``get_batch_loss_metrics`` (TRL's loss and metrics) is untouched. In place of the chosen / rejected logits
        it returns their means as 0-dim tensors, which is all TRL reads from them (``logits/*`` metrics).

    RewardTrainer is not patched: a reward model's head has one output, there are no vocabulary logits to avoid.
    GRPO / RLOO are not patched (they keep TRL's own fused head).

Metric fields. fastalign's sweep computes log-probs (the only field with a gradient in these trainers); the
metric-only fields (``entropy``, ``mean_logits``, ``is_top1``, ``log_sum_sq_probs``, and ORPO/CPO's mean logits)
come from one extra no-grad sweep over the same rows, so the logged metrics equal TRL's. ``exact_metrics=False``
skips that sweep (one vocabulary matmul fewer per step) and reports them as NaN (``is_top1``: False).

Fallbacks. What the fused path does not reproduce runs TRL's own code, with a warning the first time:
MoE router aux loss (``output_router_logits``), FSDP2-sharded heads (DTensor), heads ``lm_head_of`` cannot read
(LoRA on the head, 8-bit), encoder-decoder models (ORPO/CPO), ORPO/CPO with ``aux_loss_enabled``. What TRL handles
around the seam keeps working, since the trainers' own code still runs: ``loss_type`` lists with ``loss_weights``,
WPO, precomputed reference log-probs (tested); padding-free batches (``shift_labels`` / ``position_ids`` are passed
through) and Liger's layer kernels (untested).

Trainers built while patched keep fastalign's forward only while patched: after ``unpatch_trl()`` their fused
calls go back to TRL's head.
"""

from __future__ import annotations

import functools
import importlib
import types
import warnings

import torch

from fastalign.core.head import LogitTransform
from fastalign.integrations.transformers import forward_replaced
from fastalign.lm_head import last_hidden_states, lm_head_of
from fastalign.logprobs import linear_logprobs
from fastalign.sequence_logprobs import sequence_logprobs

__all__ = ["TRL_VERSION", "is_patched", "patch_trl", "unpatch_trl"]

TRL_VERSION = "1.16.0"
IGNORE_INDEX = -100
METRIC_FIELDS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
METRIC_CHUNK_BYTES = 64 << 20  # one [rows, V] float32 block of the no-grad metric sweep

# (module, attribute path) of every seam; the originals are saved here while patched.
_HEAD_SEAMS = (
    ("trl.trainer.dpo_trainer", "add_fused_lm_head"),
    ("trl.trainer.kto_trainer", "add_fused_lm_head"),
    ("trl.trainer.sft_trainer", "add_fused_lm_head"),
)
_PREFERENCE_SEAMS = (
    ("trl.experimental.orpo.orpo_trainer", "ORPOTrainer.concatenated_forward", "orpo"),
    ("trl.experimental.cpo.cpo_trainer", "CPOTrainer.concatenated_forward", "cpo"),
)
_ORIGINALS: dict[tuple[str, str], object] = {}
_STATE = {"patched": False, "exact_metrics": True, "impl": "auto"}
_WARNED: set[str] = set()


def patch_trl(*, exact_metrics: bool = True, impl: str = "auto", strict_version: bool = True) -> None:
    """Route TRL's DPO, KTO, SFT, ORPO and CPO trainers through fastalign (see the module docstring).

    Call before constructing the trainer. Idempotent (a second call updates the options).

    Args:
        exact_metrics: compute the metric-only fields (entropy, mean logits, token accuracy, WPO's
            ``log_sum_sq_probs``) with one extra no-grad sweep, so the logged metrics equal TRL's; False logs NaN.
        impl: implementation of ``fastalign.linear_logprobs``.
        strict_version: raise on a TRL other than ``TRL_VERSION``; False only warns.

    Raises:
        ImportError: TRL is not installed.
        RuntimeError: another TRL version (with ``strict_version``), or a seam is missing.
    """
    import trl

    if trl.__version__ != TRL_VERSION:
        message = (
            f"fastalign.integrations.trl is written against trl=={TRL_VERSION} (private seams: add_fused_lm_head, "
            f"ORPOTrainer/CPOTrainer.concatenated_forward); found trl=={trl.__version__}"
        )
        if strict_version:
            raise RuntimeError(message + ". Install trl==1.16.0, or pass strict_version=False at your own risk.")
        warnings.warn(message, UserWarning, stacklevel=2)
    _STATE.update(exact_metrics=exact_metrics, impl=impl)
    if _STATE["patched"]:
        return
    replacements = {}
    for module_name, attribute in _HEAD_SEAMS:
        replacements[(module_name, attribute)] = _fused_add_fused_lm_head
    for module_name, attribute, kind in _PREFERENCE_SEAMS:
        replacements[(module_name, attribute)] = _preference_forward(kind)
    targets = {key: _resolve(*key) for key in replacements}  # check every seam before changing anything
    for key, (owner, name) in targets.items():
        _ORIGINALS[key] = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        setattr(owner, name, replacements[key])
    _STATE["patched"] = True


def unpatch_trl() -> None:
    """Restore every TRL attribute :func:`patch_trl` replaced (the very same objects). No-op when not patched."""
    for key, original in _ORIGINALS.items():
        owner, name = _resolve(*key)
        setattr(owner, name, original)
    _ORIGINALS.clear()
    _STATE["patched"] = False


def is_patched() -> bool:
    return _STATE["patched"]


def _resolve(module_name: str, attribute: str):
    """(owner object, attribute name) of a dotted seam, e.g. ("ORPOTrainer" class, "concatenated_forward")."""
    try:
        owner = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        getattr(owner, name)
    except (ImportError, AttributeError) as error:
        message = f"TRL seam {module_name}.{attribute} not found ({error}); is this trl=={TRL_VERSION}?"
        raise RuntimeError(message) from error
    return owner, name


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"fastalign.integrations.trl: {message}", UserWarning, stacklevel=4)


# --- DPO, KTO, SFT: the fused LM head -----------------------------------------------------------------------------


def _fused_add_fused_lm_head(
    model, temperature: float = 1.0, cast_lm_head_to_fp32: bool = False, outputs=("log_probs",)
):
    """TRL's ``add_fused_lm_head``, whose ``fused_lm_head=True`` calls are answered by fastalign.

    TRL's own fused forward is installed first and kept: it serves every call without ``fused_lm_head``, the
    fallbacks, and all calls after ``unpatch_trl()``.
    """
    trl_utils = importlib.import_module("trl.trainer.utils")
    trl_utils.add_fused_lm_head(model, temperature, cast_lm_head_to_fp32, outputs)
    trl_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, fused_lm_head=False, **kwargs):
        if fused_lm_head and _STATE["patched"]:
            reason = _head_unsupported(self, kwargs)
            if reason is None:
                with forward_replaced(self, trl_forward):
                    return _fused_head_forward(self, args, kwargs, temperature, cast_lm_head_to_fp32, outputs)
            _warn_once(reason, f"{reason}: using TRL's own fused LM head for this model")
        return trl_forward(*args, fused_lm_head=fused_lm_head, **kwargs)

    model.forward = types.MethodType(forward, model)


def _head_unsupported(model, kwargs) -> str | None:
    if kwargs.get("output_router_logits") or getattr(model.config.get_text_config(), "output_router_logits", False):
        return "MoE router load-balancing loss (output_router_logits) is not computed by fastalign"
    try:
        head = lm_head_of(model)
    except (TypeError, ValueError) as error:
        return f"the LM head cannot be fused ({error})"
    if type(head.weight).__name__ == "DTensor":
        return "FSDP2-sharded LM head (DTensor) is not supported"
    return None


def _fused_head_forward(model, args, kwargs, temperature, cast_lm_head_to_fp32, outputs):
    """``FusedCausalLMOutput`` as TRL's fused forward returns it, from fastalign's log-probs."""
    from trl.trainer.utils import FusedCausalLMOutput

    labels = kwargs.pop("labels", None)
    shift_labels = kwargs.pop("shift_labels", None)
    num_items_in_batch = kwargs.pop("num_items_in_batch", None)
    kwargs.pop("use_cache", None)
    input_ids = args[0] if args else kwargs.pop("input_ids", None)
    hidden = last_hidden_states(
        model, input_ids, kwargs.pop("attention_mask", None), kwargs.pop("position_ids", None), **kwargs
    )
    if shift_labels is None:
        hidden, targets = hidden[:, :-1], labels[:, 1:]
    else:
        targets = shift_labels
    head = lm_head_of(model)
    hidden, head = head.matching(hidden)
    weight, bias = head.weight, head.bias
    if cast_lm_head_to_fp32:
        hidden, weight = hidden.float(), weight.float()
        bias = None if bias is None else bias.float()
    targets = targets.to(hidden.device)
    transform = LogitTransform(head.softcap, head.logit_scale, temperature)
    log_probs = linear_logprobs(
        hidden,
        weight,
        targets,
        bias=bias,
        softcap=head.softcap,
        logit_scale=head.logit_scale,
        temperature=temperature,
        impl=_STATE["impl"],
    )
    mask = targets != IGNORE_INDEX
    fields = _metric_fields(hidden, weight, bias, targets, mask, transform, [f for f in METRIC_FIELDS if f in outputs])
    denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return FusedCausalLMOutput(loss=-log_probs.sum() / denominator, log_probs=log_probs, label_mask=mask, **fields)


def _metric_fields(hidden, weight, bias, targets, mask, transform, fields) -> dict:
    """TRL's metric-only per-token fields, zero (False) where the label is ignored."""
    if not fields:
        return {}
    if not _STATE["exact_metrics"]:
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


# --- ORPO, CPO: concatenated_forward ------------------------------------------------------------------------------


def _preference_forward(kind: str):
    """The replacement of ``ORPOTrainer.concatenated_forward`` (kind "orpo") or ``CPOTrainer``'s ("cpo")."""
    key = next((module, attribute) for module, attribute, k in _PREFERENCE_SEAMS if k == kind)

    def concatenated_forward(self, model, batch):
        reason = _preference_unsupported(self, model)
        if reason is not None or not _STATE["patched"]:
            if reason is not None:
                _warn_once(
                    reason, f"{reason}: using TRL's own {type(self).__name__}.concatenated_forward (full logits)"
                )
            original = _ORIGINALS.get(key) or _original_method(key)
            return original(self, model, batch)
        return _fused_concatenated_forward(self, model, batch, kind)

    concatenated_forward.__doc__ = (
        f"fastalign: {kind.upper()} log-probs and SFT loss without logits (trl {TRL_VERSION})"
    )
    return concatenated_forward


def _original_method(key):
    owner, name = _resolve(*key)
    return getattr(owner, name)


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
        nll_targets = torch.where(attention_mask == 1, input_ids, IGNORE_INDEX)[:, 1:].clone()
    else:
        nll_targets = targets.clone()
    nll_targets[num_chosen:] = IGNORE_INDEX
    with_nll = kind == "orpo" or trainer.cpo_alpha != 0

    def score(token_targets):
        return linear_logprobs(
            hidden[:, :-1], weight, token_targets, bias=bias, **_head_transform(head), impl=_STATE["impl"]
        )

    scored, nll_scored = targets != IGNORE_INDEX, nll_targets != IGNORE_INDEX
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


def _head_transform(head) -> dict:
    return {"softcap": head.softcap, "logit_scale": head.logit_scale}


def _mean_logits(hidden, weight, bias, head) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of the model's logits over the chosen half and the rejected half of ``hidden`` [2B, T', D]."""
    if not _STATE["exact_metrics"]:
        nan = torch.tensor(float("nan"), device=hidden.device)
        return nan, nan
    num_chosen, length = hidden.shape[0] // 2, hidden.shape[1]
    transform = LogitTransform(head.softcap, head.logit_scale)
    rows = hidden.detach().reshape(-1, hidden.shape[-1])
    sums = head_statistics(rows, weight.detach(), bias, transform, ["logit_sum"])["logit_sum"]
    sums = sums.view(-1, length).sum(-1)
    count = num_chosen * length * weight.shape[0]
    return sums[:num_chosen].sum() / count, sums[num_chosen:].sum() / count
