"""Version guards: the installed libraries fastalign builds on, checked when the feature that needs them is imported.

Two kinds of checks, each failing with a message that names the version found and the range supported, instead of
an ``AttributeError`` deep inside a training step:

- :func:`require` compares an installed distribution with the range fastalign declares for it (the requirement
  in fastalign's own metadata, i.e. ``pyproject.toml``; a source checkout that is not installed skips it).
- :data:`TRAINER_SEAMS` lists every private part of ``transformers.Trainer`` that ``FastAlignTrainer`` overrides
  or sets (and the ``trainer_utils`` helpers it calls), and :func:`check_trainer_seams` verifies each still exists
  with the arguments fastalign passes. Private names may change in any release without notice; the check turns
  that into one clear error. The documented attributes the trainer also sets (``model_accepts_loss_kwargs``,
  ``loss_is_scaled_for_ga``, which releases before 5.25 do not read and infer the same way) are not listed: the
  gradient-accumulation tests pin their effect on every tested release.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
from dataclasses import dataclass

from packaging.requirements import Requirement
from packaging.version import Version


class IncompatibleVersionError(ImportError):
    """An installed library outside the range fastalign supports, or missing a private seam fastalign uses."""


@functools.cache
def declared_requirement(distribution: str) -> Requirement | None:
    """fastalign's requirement on ``distribution`` (core or any extra), or None when fastalign is not installed."""
    try:
        lines = importlib.metadata.requires("fastalign") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for line in lines:
        requirement = Requirement(line)
        if requirement.name.lower() == distribution.lower():
            return requirement
    return None


def require(distribution: str, feature: str) -> str:
    """The installed version of ``distribution``; raises if fastalign declares a range that excludes it.

    Raises:
        IncompatibleVersionError: naming ``feature``, the version found and the supported range.
    """
    try:
        found = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError as error:
        raise IncompatibleVersionError(f"{feature} needs {distribution}, which is not installed") from error
    requirement = declared_requirement(distribution)
    if requirement is not None and not requirement.specifier.contains(Version(found), prereleases=True):
        raise IncompatibleVersionError(
            f"{feature} supports {distribution}{requirement.specifier}; found {distribution} {found}. "
            f"Install a supported version: pip install '{distribution}{requirement.specifier}'"
        )
    return found


@dataclass(frozen=True)
class TrainerSeam:
    """A private attribute of ``transformers.Trainer`` (or ``transformers.trainer_utils``) fastalign relies on.

    Attributes:
        owner: "Trainer" or "trainer_utils".
        name: the attribute.
        use: what fastalign does with it (the error message says so).
        parameters: for a callable, the parameter names fastalign passes or receives.
        read_by_trainer: for an attribute fastalign sets, True when Trainer's own code must still read it
            (checked in its source: setting an attribute nobody reads would silently change nothing).
    """

    owner: str
    name: str
    use: str
    parameters: tuple[str, ...] = ()
    read_by_trainer: bool = False


TRAINER_SEAMS = (
    TrainerSeam("Trainer", "_inner_training_loop", "wrapped to start the tokens-per-second clock"),
    TrainerSeam("Trainer", "_save_checkpoint", "wrapped: checkpoints are staged and renamed", ("model", "trial")),
    TrainerSeam("Trainer", "_get_output_dir", "overridden to point the checkpoint writer at the stage", ("trial",)),
    TrainerSeam(
        "Trainer",
        "_loss_shifts_labels",
        "set so the Trainer counts num_items_in_batch over labels[..., 1:]",
        read_by_trainer=True,
    ),
    TrainerSeam(
        "trainer_utils",
        "rotate_checkpoints",
        "called after a staged checkpoint is renamed into place",
        ("output_dir", "save_total_limit", "best_model_checkpoint", "use_mtime"),
    ),
    TrainerSeam("trainer_utils", "PREFIX_CHECKPOINT_DIR", "names checkpoint folders"),
)


@functools.cache
def check_trainer_seams() -> None:
    """Verify every :data:`TRAINER_SEAMS` entry against the installed transformers (once per process).

    Raises:
        IncompatibleVersionError: naming the seam, what fastalign uses it for, and the transformers version.
    """
    import transformers
    from transformers import Trainer, trainer_utils

    owners = {"Trainer": Trainer, "trainer_utils": trainer_utils}
    trainer_source = inspect.getsource(Trainer)
    for seam in TRAINER_SEAMS:
        problem = _seam_problem(seam, owners[seam.owner], trainer_source)
        if problem:
            raise IncompatibleVersionError(
                f"fastalign's trainer uses transformers' private {seam.owner}.{seam.name} ({seam.use}), but in the "
                f"installed transformers {transformers.__version__} it {problem}. Supported: the range in "
                f"fastalign's requirements ({declared_requirement('transformers') or 'transformers>=5.13'}), tested "
                "from the floor to the newest release at fastalign's last CI run"
            )


def _seam_problem(seam: TrainerSeam, owner, trainer_source: str) -> str | None:
    """Why ``seam`` does not hold in ``owner`` (None when it does)."""
    if seam.read_by_trainer:
        return None if f"self.{seam.name}" in trainer_source else "is no longer read"
    if not hasattr(owner, seam.name):
        return "does not exist"
    if seam.parameters:
        parameters = inspect.signature(getattr(owner, seam.name)).parameters
        missing = [p for p in seam.parameters if p not in parameters]
        if missing:
            return f"takes no parameter {', '.join(missing)}"
    return None
