"""TRL's trainers with fastalign's fused log-probs: ``patch_trl()`` before building the trainer, ``unpatch_trl()``.

Supported: trl 1.14.x, 1.15.x and 1.16.x (tested: 1.14.2, 1.15.0, 1.16.0). The seams are private TRL code, so
each supported minor release maps to the set of TRL objects it is patched at (the table is in
:mod:`~fastalign.integrations.trl.seams`). Another release is handled as ``on_unknown_version`` says: by default it
is patched only after a self-check (:mod:`~fastalign.integrations.trl.self_check`: each trainer, one batch of a tiny
model, patched against TRL's own loss, logged values and gradients) and refused otherwise, naming what differed.
A missing seam always fails in ``patch_trl()``, naming it.

What is fused, per trainer:

    DPOTrainer, KTOTrainer, SFTTrainer   (:mod:`~fastalign.integrations.trl.head`)
        trl 1.15 / 1.16 score these trainers through one seam, ``add_fused_lm_head``, which fastalign answers with the
        same ``FusedCausalLMOutput`` (per-token log-probs and TRL's metric fields): every loss TRL computes from it
        (all DPO loss types and their weighted combinations, f-divergences, ``ld_alpha``, WPO weighting,
        precomputed reference log-probs, KTO's KL term, SFT's nll / dft) keeps TRL's own math, names and metrics.
        trl 1.14 has no such seam for every configuration. Fused there: SFT with ``loss_type="chunked_nll"`` (1.14's
        default; seam ``_patch_chunked_ce_lm_head``), DPO and KTO with ``use_liger_kernel=True`` (seam
        ``_get_per_token_logps_and_entropies``, the path 1.14 takes only then; it needs liger-kernel, and TRL then
        logs no ``logits/*`` or token accuracy and refuses WPO). Not fused there, run by TRL's own code with one
        warning naming the version: DPO / KTO without ``use_liger_kernel`` and SFT with ``loss_type`` "nll" or
        "dft" (full [B, T, V] logits; reaching them would mean copying TRL's loss code).
        What changes where fused is the head: prompt and padding rows are dropped before any vocabulary work on
        every device, a frozen head (LoRA/QLoRA) takes the 2-matmul path, and the logits alive at a time are two
        bounded vocabulary tiles (chunked PyTorch backend; Triton tiles on GPU).
    experimental ORPOTrainer, CPOTrainer  ``concatenated_forward``, every supported version
        (:mod:`~fastalign.integrations.trl.preference`): TRL computes full logits ([2B, T, V], plus float32 copies);
        the replacement scores the preference and SFT targets in one sweep without them and returns what TRL's
        returns, so ``get_batch_loss_metrics`` (TRL's loss and metrics) is untouched.

    RewardTrainer is not patched: a reward model's head has one output, there are no vocabulary logits to avoid.
    GRPO / RLOO are not patched (they keep TRL's own fused head).

Metric fields. fastalign's sweep computes log-probs (the only field with a gradient in these trainers); the
metric-only fields (``entropy``, ``mean_logits``, ``is_top1``, ``log_sum_sq_probs``, and ORPO/CPO's mean logits)
come from one extra no-grad sweep over the same rows, so the logged metrics equal TRL's. ``exact_metrics=False``
skips that sweep (one vocabulary matmul fewer per step) and reports them as NaN (``is_top1``: False, so token
accuracy reads 0).

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

import warnings

from fastalign.integrations.trl import seams, state
from fastalign.integrations.trl.seams import SUPPORTED_RANGE

__all__ = ["SUPPORTED_RANGE", "is_patched", "patch_trl", "unpatch_trl"]

ON_UNKNOWN_VERSION = ("check", "error", "warn")


def patch_trl(
    *,
    exact_metrics: bool = True,
    impl: str = "auto",
    on_unknown_version: str = "check",
    strict_version: bool | None = None,
) -> None:
    """Route TRL's DPO, KTO, SFT, ORPO and CPO trainers through fastalign (see the module docstring).

    Call before constructing the trainer. Idempotent (a second call updates the options).

    Args:
        exact_metrics: compute the metric-only fields (entropy, mean logits, token accuracy, WPO's
            ``log_sum_sq_probs``) with one extra no-grad sweep, so the logged metrics equal TRL's; False logs NaN.
        impl: implementation of ``fastalign.linear_logprobs``.
        on_unknown_version: what to do with a TRL outside ``SUPPORTED_RANGE``, patched at the seams of the nearest
            supported version:
            "check": first run the self-check in a child CPU process (a few seconds, once per process), and patch
                only if every trainer's patched loss, logged values and gradients equal TRL's own;
            "error": refuse;
            "warn": patch without a check, with a warning (at your own risk).
        strict_version: deprecated; True means ``on_unknown_version="error"``, False ``"warn"`` (and overrides it).

    Raises:
        ImportError: TRL is not installed.
        RuntimeError: a TRL outside the range that is refused or fails the self-check, or a seam is missing (the
            message names the version found, the supported range, and the seam or the differences).
    """
    import trl

    policy = _policy(on_unknown_version, strict_version)
    if not state.OPTIONS["patched"]:
        version = trl.__version__
        layout, supported = seams.layout_for(version)
        if not supported:
            _admit_unknown(layout, version, policy)
        seams.install(layout, version)
    state.OPTIONS.update(exact_metrics=exact_metrics, impl=impl)


def unpatch_trl() -> None:
    """Restore every TRL attribute :func:`patch_trl` replaced (the very same objects). No-op when not patched."""
    seams.uninstall()


def is_patched() -> bool:
    return state.OPTIONS["patched"]


def _policy(on_unknown_version: str, strict_version: bool | None) -> str:
    if strict_version is not None:
        replacement = "error" if strict_version else "warn"
        warnings.warn(
            f"patch_trl(strict_version={strict_version}) is deprecated: use on_unknown_version={replacement!r}",
            FutureWarning,
            stacklevel=3,
        )
        return replacement
    if on_unknown_version not in ON_UNKNOWN_VERSION:
        raise ValueError(f"on_unknown_version must be one of {ON_UNKNOWN_VERSION}, got {on_unknown_version!r}")
    return on_unknown_version


def _admit_unknown(layout: seams.Layout, version: str, policy: str) -> None:
    """Return if ``version`` (outside the range) may be patched at ``layout``'s seams under ``policy``; else raise."""
    found = f"fastalign.integrations.trl: found trl=={version}, outside {SUPPORTED_RANGE}"
    if policy == "error":
        raise RuntimeError(
            f"{found}. Install a supported TRL (pip install 'trl>=1.14,<1.17'), or pass "
            "on_unknown_version='check' to patch it after a self-check against TRL's own code."
        )
    for seam in layout.seams:  # a missing seam fails here, naming it, before any check runs
        seams.resolve(seam, version)
    if policy == "warn":
        warnings.warn(
            f"{found}; patched without a check at the seams of the nearest supported release ({layout.name})",
            UserWarning,
            stacklevel=3,
        )
        return
    from fastalign.integrations.trl import self_check

    self_check.require_passing(layout, version)
