"""Run configuration: YAML -> dataclasses, validated before anything heavy is loaded.

A config has four parts — ``objective`` (what is optimized), ``model``, ``data`` and ``training`` — and every field
below is documented where it is declared; ``examples/*.yaml`` show complete configs. Loading checks every key
against these dataclasses and reports the first problem with its path in the config::

    config error at training.learning_rate: expected float, got 'abc'
    config error at data.train.path: file not found: x.jsonl
    config error at model.lora.rank: unknown key (known: alpha, dropout, r, target_modules)

Dotted overrides (``training.max_steps=10 model.lora.r=8``) are applied to the YAML before validation; their
values are parsed as YAML (``10`` is an int, ``[q_proj, v_proj]`` a list, ``null`` None).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fastalign.data import CleaningOptions, CPTOptions, PreferenceOptions, SFTOptions
from fastalign.losses import CPO_LOSS_TYPES, DPO_LOSS_TYPES, KTO_LOSS_TYPES

# The objectives the trainer knows (see fastalign/training/objectives.py and fastalign/training/preference.py).
Objective = Literal["cpt", "sft", "reward", "dpo", "orpo", "kto", "cpo"]
PREFERENCE_OBJECTIVES = ("reward", "dpo", "orpo", "kto", "cpo")


class ConfigError(ValueError):
    """A problem in a config, with the dotted path of the offending key."""

    def __init__(self, path: str, message: str):
        self.path, self.message = path, message
        super().__init__(f"config error at {path}: {message}" if path else f"config error: {message}")


def _local_file(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or Path(path).suffix in {".jsonl", ".json", ".csv", ".parquet"}


@dataclass
class LoraConfig:
    """Low-rank adapters (peft). The LM head is never adapted: it stays frozen and uses the cheap fused path."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    # Module names to adapt, or "all-linear" (every linear layer except the LM head).
    target_modules: str | list[str] = "all-linear"


@dataclass
class ModelConfig:
    # A local directory or a Hugging Face hub name, e.g. meta-llama/Llama-2-7b-hf.
    name_or_path: str
    # Tokenizer directory or hub name; defaults to name_or_path.
    tokenizer: str | None = None
    # Weights and compute dtype. bfloat16 on GPUs that have it; float32 on CPU.
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    # bitsandbytes: nf4 = QLoRA (4-bit NormalFloat, double quantization), int8 = LLM.int8(), none = full precision.
    quantization: Literal["nf4", "int8", "none"] = "none"
    # Adapters; null = full fine-tuning (the LM head then trains too). Required when quantization is not none.
    lora: LoraConfig | None = None
    # LoRA adapter directories of earlier runs, merged into the base in this order when it is loaded (in memory,
    # nothing written) before this run's own adapters: `fastalign pipeline` sets it for `handoff: stack`.
    adapters: list[str] = field(default_factory=list)
    # Recompute activations in backward: less memory, about 30% more compute.
    gradient_checkpointing: bool = False
    # "sdpa" (PyTorch scaled-dot-product attention), "flash_attention_2" (needs flash-attn), or "eager".
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = "sdpa"

    def __post_init__(self):
        if self.quantization != "none" and self.lora is None:
            raise ValueError(f"quantization {self.quantization!r} needs lora (quantized weights cannot be trained)")


@dataclass
class DataSource:
    # A .jsonl/.json/.csv/.parquet file, a directory written by Dataset.save_to_disk, or a hub dataset name.
    path: str
    # Split of a DatasetDict or hub dataset, e.g. "train" or "train[:1000]".
    split: str | None = None


@dataclass
class DataConfig:
    train: DataSource
    # Held-out data for evaluation (training.eval_steps); null = no evaluation.
    eval: DataSource | None = None
    # cpt: cleaning of the raw corpus (normalization, exact and near dedup, PII scrubbing).
    cleaning: CleaningOptions = field(default_factory=CleaningOptions)
    # cpt: tokenization into blocks.
    cpt: CPTOptions = field(default_factory=CPTOptions)
    # sft: prompt formats, loss masking, truncation, packing.
    sft: SFTOptions = field(default_factory=SFTOptions)
    # reward, dpo, orpo, kto, cpo: prompt/chosen/rejected (or prompt/completion/label for kto) records.
    preference: PreferenceOptions = field(default_factory=PreferenceOptions)


def _check_range(name: str, value: float, low: float | None = None, high: float | None = None, open_low=False):
    if (low is not None and (value <= low if open_low else value < low)) or (high is not None and value > high):
        bounds = (
            f"{'(' if open_low else '['}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        )
        raise ValueError(f"{name} must be in {bounds}, got {value}")


@dataclass
class RewardOptions:
    """objective: reward — a sequence-classification head (one score at each sequence's last token), Bradley-Terry
    loss -log sigmoid(r_chosen - r_rejected - margin); a `margin` data column sets per-pair margins."""

    # c * mean((r_chosen + r_rejected)^2) is added to keep rewards centred (Eisenstein et al. 2023); null = off.
    center_rewards_coefficient: float | None = None

    def __post_init__(self):
        if self.center_rewards_coefficient is not None:
            _check_range("center_rewards_coefficient", self.center_rewards_coefficient, 0.0)


@dataclass
class DPOOptions:
    """objective: dpo — Direct Preference Optimization and its variants, against a reference policy."""

    # Inverse temperature of the implicit reward beta * log(pi / ref).
    beta: float = 0.1
    # sigmoid (DPO), robust, hinge (SLiC), ipo, sigmoid_norm, exo_pair, bco_pair, sppo_hard, nca_pair, apo_zero,
    # apo_down, discopop (formulas in fastalign/losses/dpo.py).
    loss_type: Literal[DPO_LOSS_TYPES] = "sigmoid"
    # Label noise eps in [0, 0.5] (sigmoid: cDPO, robust: rDPO needs < 0.5, exo_pair needs > 0).
    label_smoothing: float = 0.0
    # Temperature of discopop, in (0, 1].
    discopop_tau: float = 0.05

    def __post_init__(self):
        _check_range("beta", self.beta, 0.0, open_low=True)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        _check_range("discopop_tau", self.discopop_tau, 0.0, 1.0, open_low=True)
        if self.loss_type == "robust" and self.label_smoothing >= 0.5:
            raise ValueError("loss_type robust divides by 1 - 2 * label_smoothing: label_smoothing must be < 0.5")
        if self.loss_type == "exo_pair" and self.label_smoothing == 0.0:
            raise ValueError("loss_type exo_pair needs label_smoothing > 0")


@dataclass
class ORPOOptions:
    """objective: orpo — NLL on the chosen sequence plus beta * odds-ratio term; no reference model."""

    # Weight (lambda in the paper) of the odds-ratio term.
    beta: float = 0.1
    # The NLL term also scores the prompt tokens of the chosen sequence (as TRL's ORPOTrainer and the paper do);
    # false = chosen completion tokens only.
    nll_on_prompt: bool = True

    def __post_init__(self):
        _check_range("beta", self.beta, 0.0, open_low=True)


@dataclass
class KTOOptions:
    """objective: kto — unpaired desirable / undesirable examples against a reference policy; the reference point
    is a detached KL estimate on mismatched (prompt, completion) pairs of each batch."""

    beta: float = 0.1
    # kto, or apo_zero_unpaired (no KL reference point).
    loss_type: Literal[KTO_LOSS_TYPES] = "kto"
    # Weights of desirable / undesirable examples. The KTO paper recommends
    # desirable_weight * n_desirable / (undesirable_weight * n_undesirable) in [1, 4/3]; training warns otherwise.
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def __post_init__(self):
        _check_range("beta", self.beta, 0.0, open_low=True)
        _check_range("desirable_weight", self.desirable_weight, 0.0)
        _check_range("undesirable_weight", self.undesirable_weight, 0.0)


@dataclass
class CPOOptions:
    """objective: cpo — reference-free CPO / SimPO (loss_type: simpo) plus cpo_alpha * NLL on chosen completions."""

    beta: float = 0.1
    # SimPO target reward margin (simpo only).
    gamma: float = 0.5
    # simpo (length-averaged log-probs), sigmoid (CPO), hinge (summed log-probs), ipo (length-averaged).
    loss_type: Literal[CPO_LOSS_TYPES] = "simpo"
    # Label noise eps in [0, 0.5] (simpo, sigmoid).
    label_smoothing: float = 0.0
    # Weight of the NLL term on the chosen completions; plain SimPO is cpo_alpha: 0, CPO is sigmoid with 1.
    cpo_alpha: float = 1.0

    def __post_init__(self):
        _check_range("beta", self.beta, 0.0, open_low=True)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)


@dataclass
class ReferenceOptions:
    """The reference policy of dpo and kto (fastalign/training/reference.py).

    Default: with LoRA, the policy itself with its adapter disabled (no second copy of the weights); without
    LoRA, a frozen copy of model.name_or_path loaded at start. `model` names a different reference.
    """

    # A separate frozen reference model (local directory or hub name); null = see above.
    model: str | None = None
    # Score the whole training (and eval) set with the reference once, before training, and cache the log-probs
    # on disk: training then runs only the policy.
    precompute: bool = False
    # Where the precomputed log-probs are cached, keyed by dataset fingerprint and reference identity;
    # null = <training.output_dir>/reference_cache.
    cache_dir: str | None = None


@dataclass
class AlignmentConfig:
    """Options of the preference objectives; only the section of the chosen `objective` is used."""

    reward: RewardOptions = field(default_factory=RewardOptions)
    dpo: DPOOptions = field(default_factory=DPOOptions)
    orpo: ORPOOptions = field(default_factory=ORPOOptions)
    kto: KTOOptions = field(default_factory=KTOOptions)
    cpo: CPOOptions = field(default_factory=CPOOptions)
    reference: ReferenceOptions = field(default_factory=ReferenceOptions)


@dataclass
class TrainingConfig:
    # Checkpoints (checkpoint-<step>/), the final model or adapter, metrics.json and training_curves.png.
    output_dir: str
    # Optimizer steps; -1 = run `epochs` epochs.
    max_steps: int = -1
    epochs: float = 1.0
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    # Linear warmup: a number of steps (>= 1) or a fraction of all steps (< 1).
    warmup_steps: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # Sequences per device per micro-batch; the global batch is batch_size * gradient_accumulation_steps * GPUs.
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    # Autocast precision; "no" keeps the model dtype. QLoRA on a GPU usually runs bf16.
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # Evaluate on data.eval every eval_steps optimizer steps (null = only at the end, if data.eval is set).
    eval_steps: int | None = None
    save_steps: int = 500
    # Keep at most this many checkpoints (null = all).
    save_total_limit: int | None = 2
    logging_steps: int = 10
    seed: int = 42
    # Experiment trackers: "none", "tensorboard", "wandb", ... (transformers report_to).
    report_to: str | list[str] = "none"
    # A non-finite loss or gradient: "stop" raises naming the step; "skip" drops that optimizer step and counts it.
    # Either way the parameters are never updated with it.
    nan_policy: Literal["stop", "skip"] = "stop"
    # Continue from the last checkpoint in output_dir (true) or from a given checkpoint directory.
    resume_from_checkpoint: bool | str = False


@dataclass
class Config:
    # What is optimized: cpt (next-token loss on every token), sft (loss on completions only), reward (a
    # Bradley-Terry reward model), dpo, orpo, kto, or cpo (CPO / SimPO); options of the last five in `alignment`.
    objective: Objective
    model: ModelConfig
    data: DataConfig
    training: TrainingConfig
    # reward, dpo, orpo, kto, cpo: loss options and the reference policy (dpo, kto).
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply ``key.sub=value`` overrides, and validate it (types, choices, files)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"file not found: {path}")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path} must hold a mapping at top level, got {type(raw).__name__}")
    for override in overrides:
        apply_override(raw, override)
    return from_dict(Config, raw, base_dir=path.parent)


def apply_override(raw: dict, override: str) -> None:
    """``training.max_steps=10`` -> raw["training"]["max_steps"] = 10 (value parsed as YAML)."""
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError("", f"override {override!r} is not of the form key.sub=value")
    *parents, leaf = key.split(".")
    node = raw
    for depth, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(".".join(parents[: depth + 1]), f"cannot set {key}: not a section")
    node[leaf] = yaml.safe_load(value)


def from_dict(cls: type, raw: Any, path: str = "", base_dir: Path = Path(".")) -> Any:
    """Build dataclass ``cls`` from plain YAML data, checking keys and types; errors carry the dotted path."""
    if not isinstance(raw, dict):
        raise ConfigError(path, f"expected a section (mapping), got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(fields))}"
            raise ConfigError(_join(path, key), f"unknown key ({hint})")
    values = {}
    for name, f in fields.items():
        key_path = _join(path, name)
        if name in raw:
            values[name] = _convert(hints[name], raw[name], key_path, base_dir)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(key_path, "missing required key")
    if cls is DataSource and _local_file(values["path"]):
        values["path"] = _existing(values["path"], _join(path, "path"), base_dir)
    if cls is ReferenceOptions and values.get("model") and values["model"].startswith(("/", "./", "../", "~")):
        values["model"] = _existing(values["model"], _join(path, "model"), base_dir)
    if cls is ModelConfig:
        for name in ("name_or_path", "tokenizer"):
            if values.get(name) and values[name].startswith(("/", "./", "../", "~")):
                values[name] = _existing(values[name], _join(path, name), base_dir)
        for index, adapter in enumerate(values.get("adapters", ())):
            values["adapters"][index] = _existing(adapter, _join(path, f"adapters[{index}]"), base_dir)
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:  # the dataclass's own __post_init__ checks
        raise ConfigError(path, str(error)) from None


def _existing(value: str, key_path: str, base_dir: Path) -> str:
    """Relative paths are relative to the config file's directory, else to the working directory."""
    candidate = Path(value).expanduser()
    for resolved in (candidate, base_dir / candidate) if not candidate.is_absolute() else (candidate,):
        if resolved.exists():
            return str(resolved)
    raise ConfigError(key_path, f"file not found: {value}")


def _convert(hint: Any, value: Any, path: str, base_dir: Path) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, path, base_dir)
            except ConfigError as error:
                errors.append(error)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(path, f"expected {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(path, f"expected one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_convert(item, v, f"{path}[{i}]", base_dir) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        key_type, value_type = args or (Any, Any)
        return {
            _convert(key_type, k, path, base_dir): _convert(value_type, v, _join(path, str(k)), base_dir)
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path, base_dir)
    if hint is Any or hint is object:
        return value
    if hint is float:
        # YAML 1.1 reads 2e-4 as a string; accept any number-like value.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(path, f"expected float, got {value!r}")
    if hint not in (str, int, bool):
        raise ConfigError(path, f"a {getattr(hint, '__name__', hint)} cannot be given in a config file")
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(path, f"expected {hint.__name__}, got {value!r}")
    return value


def _describe(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    names = [getattr(a, "__name__", None) or str(a).replace("typing.", "") for a in args]
    return " or ".join(names)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)
