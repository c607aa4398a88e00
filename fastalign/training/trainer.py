"""``FastAlignTrainer``: ``transformers.Trainer`` with a fused loss, atomic checkpoints and a non-finite guard.

Everything else — gradient accumulation, evaluation, checkpoint rotation and resume, logging and ``report_to``,
DDP, progress bars — is transformers.Trainer's own. The subclass changes four things:

- ``compute_loss`` calls the objective (``fastalign.training.objectives``), which never forms logits;
- ``log`` adds ``tokens_per_second`` and ``peak_memory_gb`` to every log line, and the objective's metrics
  (preference objectives: TRL's names) averaged over the micro-batches since the previous log, like TRL's
  ``store_metrics`` (evaluation metrics with the ``eval_`` prefix);
- ``_save_checkpoint`` writes ``checkpoint-<step>`` into a staging directory and renames it into place when
  complete, so a crash mid-save leaves the previous checkpoint as the last one ``resume_from_checkpoint`` finds;
- a ``NonFiniteGuard`` callback stops (or skips) an optimizer step whose loss or gradients are NaN/inf before the
  parameters are touched.

The private parts of ``transformers.Trainer`` used here are listed in ``fastalign.compat.TRAINER_SEAMS`` and
checked when this module is imported, so a transformers release that changes one fails here, by name.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from collections import defaultdict

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from fastalign.compat import check_trainer_seams, require
from fastalign.training.objectives import OBJECTIVES, Objective

require("transformers", "fastalign's trainer")
check_trainer_seams()

STAGING_DIR = ".staging"


class NonFiniteLossError(RuntimeError):
    """A NaN/inf loss or gradient under ``nan_policy="stop"``; raised before the optimizer step."""


class NonFiniteGuard(TrainerCallback):
    """Check each optimizer step's losses and gradients before the optimizer sees them.

    ``policy="stop"`` raises ``NonFiniteLossError`` naming the step; ``policy="skip"`` drops the gradients (the
    optimizer then leaves every parameter and its state untouched), counts the step in ``skipped_steps`` and
    carries on. Gradients are checked after the data-parallel all-reduce, so every process takes the same decision.
    """

    def __init__(self, policy: str, check_gradients: bool = True):
        if policy not in ("stop", "skip"):
            raise ValueError(f"nan_policy must be 'stop' or 'skip', got {policy!r}")
        self.policy, self.check_gradients = policy, check_gradients
        self.skipped_steps = 0
        self._loss_finite: torch.Tensor | None = None  # over the micro-batches of the current step

    def observe_loss(self, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        loss_finite = self._loss_finite is None or bool(self._loss_finite)
        self._loss_finite = None
        grads = [p.grad for p in model.parameters() if p.grad is not None] if self.check_gradients else []
        grads_finite = not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all())
        if loss_finite and grads_finite:
            return
        step = state.global_step + 1
        what = "loss" if not loss_finite else "gradient"
        if self.policy == "stop":
            raise NonFiniteLossError(
                f"non-finite {what} at step {step}: training stopped before the optimizer step, so the parameters "
                "(and the last checkpoint) are unchanged; set training.nan_policy=skip to skip such steps"
            )
        self.skipped_steps += 1
        for p in model.parameters():
            p.grad = None
        print(f"nan_policy=skip: non-finite {what} at step {step}, step skipped ({self.skipped_steps} so far)")


class FastAlignTrainer(Trainer):
    """A ``transformers.Trainer`` for the objectives in ``OBJECTIVES``.

    Args:
        objective: a key of ``OBJECTIVES`` ("cpt", "sft", "reward", "dpo", "orpo", "kto", "cpo"; the preference
            ones with default options), or an ``Objective`` (e.g. ``preference_objective("dpo", alignment, ref)``).
        nan_policy: "stop" or "skip", see ``NonFiniteGuard``.
        *args, **kwargs: as for ``transformers.Trainer`` (model, args, datasets, data_collator, ...).
    """

    def __init__(self, *args, objective: str | Objective, nan_policy: str = "stop", **kwargs):
        if not isinstance(objective, Objective) and objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
        super().__init__(*args, **kwargs)
        self.objective = objective if isinstance(objective, Objective) else OBJECTIVES[objective]
        if self.objective.normalized_by_num_items:
            # Let the Trainer count the targets of the accumulated (and gathered) batch: labels[..., 1:] != -100.
            self.model_accepts_loss_kwargs = True
            self._loss_shifts_labels = True
            self.loss_is_scaled_for_ga = True
        else:
            # A mean over this micro-batch's examples: the Trainer divides it by the accumulation steps.
            self.model_accepts_loss_kwargs = False
            self.loss_is_scaled_for_ga = False
        self._stored_metrics: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        # fp16 overflows are the GradScaler's business: it skips those steps itself.
        self.nonfinite_guard = NonFiniteGuard(nan_policy, check_gradients=not self.args.fp16)
        self.add_callback(self.nonfinite_guard)
        self._staging_root: str | None = None
        self._last_log: tuple[float, int] | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.objective.loss(model, inputs, num_items_in_batch)
        if self.objective.metrics:
            loss, metrics = loss
            self.store_metrics(metrics, "train" if model.training else "eval")
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every process's targets, and DDP averages gradients over processes.
            loss = loss * self.accelerator.num_processes
        return (loss, {}) if return_outputs else loss  # no outputs: the logits were never formed

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.nonfinite_guard.observe_loss(loss)
        return loss

    def store_metrics(self, metrics: dict[str, torch.Tensor], mode: str = "train") -> None:
        """Keep a micro-batch's metrics (detached tensors, no device sync) until the next ``log`` averages them."""
        for key, value in metrics.items():
            self._stored_metrics[mode][key].append(value.detach().float().reshape(()))

    def _pop_metrics(self, mode: str) -> dict[str, float]:
        """The stored metrics' means over micro-batches (and processes), then forgotten."""
        stored, self._stored_metrics[mode] = self._stored_metrics[mode], defaultdict(list)
        prefix = "eval_" if mode == "eval" else ""
        means = {}
        for key, values in stored.items():
            values = torch.stack(values)
            if self.accelerator.num_processes > 1:
                values = self.accelerator.gather(values)
            means[f"{prefix}{key}"] = values.mean().item()
        return means

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the objective's averaged metrics, throughput (since the previous log) and peak memory (since the
        start) to training logs, and the averaged metrics to evaluation logs."""
        if "loss" in logs:
            logs.update(self._pop_metrics("train"))
        elif "eval_loss" in logs:
            logs.update(self._pop_metrics("eval"))
        if "loss" in logs:
            now, tokens = time.perf_counter(), self.state.num_input_tokens_seen
            if self._last_log is not None and now > self._last_log[0]:
                logs["tokens_per_second"] = round((tokens - self._last_log[1]) / (now - self._last_log[0]), 1)
            self._last_log = (now, tokens)
            logs["peak_memory_gb"] = round(peak_memory_bytes() / 2**30, 3)
            if self.nonfinite_guard.skipped_steps:
                logs["skipped_steps"] = self.nonfinite_guard.skipped_steps
        super().log(logs, start_time)

    def _inner_training_loop(self, *args, **kwargs):
        self._last_log = (time.perf_counter(), self.state.num_input_tokens_seen)
        return super()._inner_training_loop(*args, **kwargs)

    def _get_output_dir(self, trial) -> str:
        return self._staging_root or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Save ``checkpoint-<step>`` into ``<output_dir>/.staging`` and rename it into place once complete."""
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, STAGING_DIR)
        staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        if self.args.should_save and os.path.exists(staged):  # left over by a crash
            shutil.rmtree(staged)
        self.accelerator.wait_for_everyone()
        self._staging_root = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()  # every process has written its part (e.g. its RNG state)
        if self.args.should_save:
            if self.state.best_model_checkpoint == staged:
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
            if os.path.exists(final):  # saving the same step again (e.g. the final save): replace it
                shutil.rmtree(final)
            os.replace(staged, final)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()


def peak_memory_bytes() -> int:
    """Peak GPU memory allocated by this process (CUDA), else its peak resident set size (CPU)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


__all__ = ["FastAlignTrainer", "NonFiniteGuard", "NonFiniteLossError", "peak_memory_bytes"]
