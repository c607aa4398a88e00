"""Which private TRL objects each TRL version is patched at: the one table of seams, and installing it.

    trainer        trl 1.14 ("chunked")                             trl 1.15, 1.16 ("fused-head")
    DPOTrainer     DPOTrainer._get_per_token_logps_and_entropies    dpo_trainer.add_fused_lm_head
                   (called only with use_liger_kernel=True;
                   compute_loss warns when it is not)
    KTOTrainer     KTOTrainer._get_per_token_logps_and_entropies    kto_trainer.add_fused_lm_head
                   (same)
    SFTTrainer     sft_trainer._patch_chunked_ce_lm_head            sft_trainer.add_fused_lm_head
                   (called only for loss_type="chunked_nll", the
                   default; compute_loss warns for nll / dft)
    ORPOTrainer    ORPOTrainer.concatenated_forward                 the same (identical code in 1.14 to 1.16)
    CPOTrainer     CPOTrainer.concatenated_forward                  the same
    read only      sft_trainer._ChunkedCELMHeadOutput               utils.FusedCausalLMOutput

A TRL release outside 1.14 to 1.16 gets the layout of the nearest supported minor release (1.16's for a newer one),
and only after every seam resolves; whether the replacements still compute what TRL computes there is for the
self-check (:mod:`fastalign.integrations.trl.self_check`) to say.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

from packaging.version import InvalidVersion, Version

from fastalign.integrations.trl import head, preference, state


@dataclasses.dataclass(frozen=True)
class Seam:
    """A TRL object: ``attribute`` (a dotted path, e.g. ``"ORPOTrainer.concatenated_forward"``) of ``module``.

    ``replace(original) -> replacement`` is installed in its place; None: the replacements only read it.
    """

    module: str
    attribute: str
    replace: Callable | None = None

    @property
    def name(self) -> str:
        return f"{self.module}.{self.attribute}"


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    seams: tuple[Seam, ...]


_ORPO_CPO = (
    Seam("trl.experimental.orpo.orpo_trainer", "ORPOTrainer.concatenated_forward", preference.orpo_forward),
    Seam("trl.experimental.cpo.cpo_trainer", "CPOTrainer.concatenated_forward", preference.cpo_forward),
)
FUSED_HEAD = Layout(
    "fused-head",
    (
        Seam("trl.trainer.dpo_trainer", "add_fused_lm_head", head.fused_lm_head),
        Seam("trl.trainer.kto_trainer", "add_fused_lm_head", head.fused_lm_head),
        Seam("trl.trainer.sft_trainer", "add_fused_lm_head", head.fused_lm_head),
        Seam("trl.trainer.utils", "FusedCausalLMOutput"),
        *_ORPO_CPO,
    ),
)
CHUNKED = Layout(
    "chunked",
    (
        Seam("trl.trainer.dpo_trainer", "DPOTrainer._get_per_token_logps_and_entropies", head.fused_per_token_logps),
        Seam("trl.trainer.dpo_trainer", "DPOTrainer.compute_loss", head.warn_when_unfused(head.without_liger_path)),
        Seam("trl.trainer.kto_trainer", "KTOTrainer._get_per_token_logps_and_entropies", head.fused_per_token_logps),
        Seam("trl.trainer.kto_trainer", "KTOTrainer.compute_loss", head.warn_when_unfused(head.without_liger_path)),
        Seam("trl.trainer.sft_trainer", "_patch_chunked_ce_lm_head", head.fused_chunked_ce),
        Seam("trl.trainer.sft_trainer", "SFTTrainer.compute_loss", head.warn_when_unfused(head.without_chunked_nll)),
        Seam("trl.trainer.sft_trainer", "_ChunkedCELMHeadOutput"),
        *_ORPO_CPO,
    ),
)
LAYOUTS = {layout.name: layout for layout in (FUSED_HEAD, CHUNKED)}
SUPPORTED = {(1, 14): CHUNKED, (1, 15): FUSED_HEAD, (1, 16): FUSED_HEAD}  # (major, minor) -> layout
SUPPORTED_RANGE = "trl>=1.14,<1.17 (1.14.x, 1.15.x, 1.16.x)"


def layout_for(version: str) -> tuple[Layout, bool]:
    """The layout to patch ``version`` at, and whether the version is supported (else: the nearest one's)."""
    try:
        minor = Version(version).release[:2]
    except InvalidVersion:  # e.g. "unknown" (no package metadata): assume the newest
        return SUPPORTED[max(SUPPORTED)], False
    if minor in SUPPORTED:
        return SUPPORTED[minor], True
    return SUPPORTED[max(SUPPORTED) if minor > max(SUPPORTED) else min(SUPPORTED)], False


def resolve(seam: Seam, version: str):
    """(owner, attribute name) of ``seam``: its module, or the class a method is defined on (not inherited).

    Raises:
        RuntimeError: naming the seam and ``version`` when the module, the class or the attribute is missing.
    """
    try:
        owner = importlib.import_module(seam.module)
        *path, name = seam.attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        if isinstance(owner, type) and name not in owner.__dict__:
            raise AttributeError(f"{owner.__name__} does not define {name} itself")
        getattr(owner, name)
    except (ImportError, AttributeError) as error:
        raise RuntimeError(
            f"fastalign.integrations.trl: TRL seam {seam.name} not found in trl=={version} ({error}); "
            f"fastalign supports {SUPPORTED_RANGE}"
        ) from error
    return owner, name


def install(layout: Layout, version: str) -> None:
    """Replace every seam of ``layout``, after checking that all of them resolve (nothing changes otherwise)."""
    targets = [(seam, *resolve(seam, version)) for seam in layout.seams]
    for seam, owner, name in targets:
        if seam.replace is None:
            continue
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        state.ORIGINALS[(seam.module, seam.attribute)] = original
        setattr(owner, name, seam.replace(original))
    state.OPTIONS["patched"] = True


def uninstall() -> None:
    """Put back the very objects :func:`install` replaced."""
    import trl

    for (module, attribute), original in state.ORIGINALS.items():
        owner, name = resolve(Seam(module, attribute), trl.__version__)
        setattr(owner, name, original)
    state.ORIGINALS.clear()
    state.OPTIONS["patched"] = False
