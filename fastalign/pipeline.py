"""``fastalign pipeline``: training stages run in order, each starting from the previous stage's result.

A pipeline file lists stages (``cpt`` -> ``sft`` -> ``dpo`` or ``orpo``, ...); each stage is an ordinary
``fastalign train`` config, inline or a path, validated by ``fastalign.config`` like any other::

    output_dir: runs/pipeline          # stage outputs default to <output_dir>/<stage name>
    handoff: merge                     # how a LoRA stage's result reaches the next stage: merge | stack
    stages:
      - name: sft
        config: sft.yaml               # relative to this file
        overrides: [training.max_steps=100]
      - name: dpo
        config: {objective: dpo, model: {lora: {r: 16}}, data: {...}, training: {...}}

What it does, per stage:

1. **model**: the first stage loads its own ``model.name_or_path``; every later stage starts from the previous
   stage's result (its ``model.name_or_path`` may be left out and is replaced if given; the rest of ``model`` —
   dtype, quantization, LoRA — is the stage's own). A full fine-tuning stage hands on its saved model. A LoRA stage
   hands on, with ``handoff: merge``, its adapter merged into a full-precision copy of its base
   (``merge_and_unload``) and saved as a full model in ``<stage output>/merged``; with ``handoff: stack``, the base
   plus the chain of adapters (``model.adapters``), merged in memory when the next stage loads: nothing but
   adapters is written to disk.
2. **resume**: a stage whose output directory holds ``pipeline_stage.json`` (written last, when the stage and its
   hand-off are complete) is skipped on a re-run; a stage with checkpoints but no marker resumes from its last
   checkpoint (``training.resume_from_checkpoint``). Delete a stage's directory to run it again.
3. **summary**: a table (stage, objective, steps, train loss, held-out metrics before -> after, time, output) is
   printed at the end and written to ``<output_dir>/pipeline_summary.json``.

Everything is validated before any model is loaded: the pipeline keys, then each stage's config with its errors
prefixed by the stage's place in the pipeline (``config error at stages[1].config.training.max_steps: ...``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fastalign.config import Config, ConfigError, apply_override, from_dict

MARKER = "pipeline_stage.json"  # a stage's completion marker, holding its summary and its hand-off
MERGED_DIR = "merged"


@dataclass
class StageSpec:
    # Name in the summary and the default output directory (<pipeline output_dir>/<name>).
    name: str
    # The stage's fastalign config: a YAML path (relative to the pipeline file) or the config itself, inline.
    config: str | dict[str, Any]
    # Dotted overrides applied to the stage config, as on the `fastalign train` command line.
    overrides: list[str] = field(default_factory=list)
    # How this stage's LoRA adapter reaches the next stage; null = the pipeline's `handoff`.
    handoff: Literal["merge", "stack"] | None = None


@dataclass
class PipelineSpec:
    stages: list[StageSpec]
    # Default parent of the stages' training.output_dir, and where pipeline_summary.json goes.
    output_dir: str | None = None
    # merge: merge_and_unload the adapter into its base and save a full model for the next stage.
    # stack: hand on base + adapters; the next stage merges them in memory (only adapters are written to disk).
    handoff: Literal["merge", "stack"] = "merge"


@dataclass
class Stage:
    spec: StageSpec
    config: Config  # validated; for stages after the first, model.name_or_path is a placeholder until run time

    @property
    def output_dir(self) -> Path:
        return Path(self.config.training.output_dir)

    @property
    def handoff(self) -> str:
        return self.spec.handoff


@dataclass
class Pipeline:
    stages: list[Stage]
    output_dir: Path | None


def load_pipeline(path: str | os.PathLike, overrides: list[str] = ()) -> Pipeline:
    """Read and validate a pipeline file and every stage config in it; nothing is loaded or trained.

    Args:
        overrides: ``<stage name>.<key.sub>=value``, e.g. ``sft.training.max_steps=10``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path} must hold a mapping at top level, got {type(raw).__name__}")
    spec = from_dict(PipelineSpec, raw, base_dir=path.parent)
    if not spec.stages:
        raise ConfigError("stages", "a pipeline needs at least one stage")
    names = [stage.name for stage in spec.stages]
    for index, name in enumerate(names):
        if not name or "/" in name or name in names[:index]:
            raise ConfigError(f"stages[{index}].name", f"stage names must be unique, non-empty, no '/': {name!r}")
    by_stage: dict[str, list[str]] = {name: [] for name in names}
    for override in overrides:
        name, _, rest = override.partition(".")
        if name not in by_stage or not rest:
            raise ConfigError("", f"override {override!r} must start with a stage name ({', '.join(names)})")
        by_stage[name].append(rest)

    stages = []
    for index, stage in enumerate(spec.stages):
        stage.handoff = stage.handoff or spec.handoff
        raw_config, base_dir, where = _stage_raw(stage, index, path.parent)
        for override in [*stage.overrides, *by_stage[stage.name]]:
            try:
                apply_override(raw_config, override)
            except ConfigError as error:
                raise _in_stage(error, where) from None
        training = raw_config.setdefault("training", {})
        if isinstance(training, dict) and "output_dir" not in training and spec.output_dir is not None:
            training["output_dir"] = str(Path(spec.output_dir) / stage.name)  # (not a mapping: from_dict says so)
        if index > 0 and isinstance(raw_config.get("model", {}), dict):
            # Filled in at run time with the previous stage's result; a placeholder keeps validation honest
            # about everything else (it is not a local path, so it is not checked for existence).
            raw_config.setdefault("model", {})["name_or_path"] = f"<result of stage {names[index - 1]}>"
        try:
            config = from_dict(Config, raw_config, base_dir=base_dir)
        except ConfigError as error:
            raise _in_stage(error, where) from None
        stages.append(Stage(stage, config))
    outputs = [str(Path(s.config.training.output_dir).resolve()) for s in stages]
    for index, output in enumerate(outputs):
        if output in outputs[:index]:
            raise ConfigError(f"stages[{index}].config.training.output_dir", f"shared with an earlier stage: {output}")
    return Pipeline(stages, Path(spec.output_dir) if spec.output_dir else None)


def _stage_raw(stage: StageSpec, index: int, pipeline_dir: Path) -> tuple[dict, Path, str]:
    """The stage's raw config dict, the directory its relative paths are relative to, and its error prefix."""
    where = f"stages[{index}].config"
    if isinstance(stage.config, dict):
        return json.loads(json.dumps(stage.config)), pipeline_dir, where  # a copy: overrides must not leak
    candidate = Path(stage.config).expanduser()
    file = candidate if candidate.is_absolute() or candidate.is_file() else pipeline_dir / candidate
    if not file.is_file():
        raise ConfigError(where, f"file not found: {stage.config}")
    raw = yaml.safe_load(file.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(where, f"{file} must hold a mapping at top level, got {type(raw).__name__}")
    return raw, file.parent, f"{where}({file.name})"


def _in_stage(error: ConfigError, where: str) -> ConfigError:
    return ConfigError(f"{where}.{error.path}" if error.path else where, error.message)


@dataclass
class StageResult:
    """What a finished stage reports and hands on (the content of its ``pipeline_stage.json``)."""

    stage: str
    objective: str
    output_dir: str
    steps: int
    train_loss: float | None
    # {metric: [before, after]} for every held-out metric the run measured before and after (eval_loss, ...).
    held_out: dict[str, list[float | None]]
    seconds: float
    # The next stage's starting point: a model directory or hub name, and adapters merged into it when loaded.
    next_model: str
    next_adapters: list[str]
    skipped: bool = False  # complete before this run: read from its marker

    @classmethod
    def read(cls, path: Path) -> StageResult:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in fields}, skipped=True)

    def write(self, path: Path) -> None:
        staged = path.with_suffix(".tmp")
        staged.write_text(json.dumps({k: v for k, v in dataclasses.asdict(self).items() if k != "skipped"}, indent=2))
        os.replace(staged, path)  # the marker appears complete or not at all


def run_pipeline(pipeline: Pipeline, *, callbacks=()) -> list[StageResult]:
    """Run (or skip, or resume) every stage in order; print and write the summary; return the stage results."""
    from transformers.trainer_utils import get_last_checkpoint

    from fastalign.training import train

    results: list[StageResult] = []
    for index, stage in enumerate(pipeline.stages):
        label = f"[stage {index + 1}/{len(pipeline.stages)}] {stage.spec.name} ({stage.config.objective})"
        marker = stage.output_dir / MARKER
        if marker.is_file():
            results.append(StageResult.read(marker))
            print(f"{label}: complete in {stage.output_dir}, skipped")
            continue
        config = stage.config
        if results:
            model = dataclasses.replace(
                config.model, name_or_path=results[-1].next_model, adapters=list(results[-1].next_adapters)
            )
            config = dataclasses.replace(config, model=model)
        checkpoint = get_last_checkpoint(str(stage.output_dir)) if stage.output_dir.is_dir() else None
        if checkpoint and not config.training.resume_from_checkpoint:
            config = dataclasses.replace(
                config, training=dataclasses.replace(config.training, resume_from_checkpoint=True)
            )
        print(f"{label}: from {config.model.name_or_path}" + (f" (resuming {checkpoint})" if checkpoint else ""))
        start = time.perf_counter()
        trainer, metrics = train(config, callbacks=callbacks)
        steps, adapter_trained = trainer.state.global_step, config.model.lora is not None
        del trainer
        _free_memory()
        next_model, next_adapters = str(stage.output_dir), []
        if adapter_trained and stage.handoff == "merge":
            next_model = str(merge_adapter(config, stage.output_dir, stage.output_dir / MERGED_DIR))
        elif adapter_trained:  # stack
            next_model, next_adapters = config.model.name_or_path, [*config.model.adapters, str(stage.output_dir)]
        result = StageResult(
            stage=stage.spec.name,
            objective=config.objective,
            output_dir=str(stage.output_dir),
            steps=steps,
            train_loss=metrics["train"].get("train_loss"),
            held_out=_held_out(metrics),
            seconds=round(time.perf_counter() - start, 1),
            next_model=next_model,
            next_adapters=next_adapters,
        )
        result.write(marker)
        results.append(result)
    print("\n" + summary_table(results))
    if pipeline.output_dir is not None:
        pipeline.output_dir.mkdir(parents=True, exist_ok=True)
        summary = [dataclasses.asdict(r) for r in results]
        (pipeline.output_dir / "pipeline_summary.json").write_text(json.dumps(summary, indent=2))
    return results


def merge_adapter(config: Config, adapter_dir: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Merge ``adapter_dir`` (and ``config.model.adapters`` before it) into a full-precision copy of the base.

    The base is loaded unquantized in ``model.dtype`` even for a QLoRA stage, so the merge is exact and the next
    stage quantizes the merged weights again if it asks to. Written to a staging directory and renamed into place.
    """
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    from fastalign.modeling import load_tokenizer

    output_dir = Path(output_dir)
    staged = output_dir.with_name(output_dir.name + ".staging")
    shutil.rmtree(staged, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(config.model.name_or_path, dtype=getattr(torch, config.model.dtype))
    for adapter in [*config.model.adapters, str(adapter_dir)]:
        model = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.save_pretrained(staged)
    load_tokenizer(config.model).save_pretrained(staged)
    del model
    _free_memory()
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(staged, output_dir)
    return output_dir


def _held_out(metrics: dict) -> dict[str, list[float | None]]:
    """{name: [before, after]} from the run's ``<name>_before`` / ``<name>_after`` metrics."""
    names = [key.removesuffix("_after") for key in metrics if key.endswith("_after")]
    names += [key.removesuffix("_before") for key in metrics if key.endswith("_before")]
    return {name: [metrics.get(f"{name}_before"), metrics.get(f"{name}_after")] for name in dict.fromkeys(names)}


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def summary_table(results: list[StageResult]) -> str:
    """A plain-text table: stage, objective, steps, train loss, held-out before -> after, time, output."""

    def held_out(result: StageResult) -> str:
        parts = []
        for name, (before, after) in result.held_out.items():
            short = name.removeprefix("eval_")
            parts.append(f"{short} {_number(before)} -> {_number(after)}")
        return "; ".join(parts) or "-"

    rows = [["stage", "objective", "steps", "train loss", "held-out (before -> after)", "time", "output"]]
    for r in results:
        time_text = "done earlier" if r.skipped else f"{r.seconds:.0f} s"
        rows.append([r.stage, r.objective, str(r.steps), _number(r.train_loss), held_out(r), time_text, r.output_dir])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
