"""The reference policy of DPO and KTO: where ``log pi_ref(completion | prompt)`` comes from.

Three sources, one per ``alignment.reference`` setting:

- **adapter** (LoRA/QLoRA, the default): the policy itself with its adapter disabled (peft's ``disable_adapter()``
  context) — the frozen base weights are the reference, no second copy is loaded.
- **model** (full fine-tuning, or ``reference.model: <path>``): a separate frozen model, moved to the policy's
  device on first use, run under ``no_grad``.
- **precomputed** (``reference.precompute: true``): either of the above scores the whole dataset once before
  training (``precompute_reference_logps``); the summed completion log-probs become dataset columns
  (``ref_chosen_logps``/``ref_rejected_logps`` for pairs, ``ref_logps``/``ref_kl_logps`` for KTO rows), which the
  collators turn into batch tensors, so training runs only the policy. The columns are cached on disk in
  ``<cache_dir>/reference_logps-<key>.pt``, ``key`` = sha256 of the dataset's fingerprint (``dataset_digest``: a
  hash of its content, so the same rows give the same key in any process), the row kind and the reference
  identity (``model_identity``: ``name_or_path`` + a checksum of every reference parameter), and read back on the
  next run instead of recomputed.

API::

    reference = ReferencePolicy()                   # adapter disabling
    reference = ReferencePolicy(frozen_model)       # a separate model
    hidden, head = reference.hidden_states(policy, input_ids, attention_mask, position_ids)   # no_grad
    rows, path, reused = precompute_reference_logps(reference, policy, rows, collator, cache_dir=..., batch_size=8)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch
from torch import nn

from fastalign.lm_head import LMHead, last_hidden_states, lm_head_of, unwrap_model
from fastalign.losses.fused import _FusedLinearHead


class ReferencePolicy:
    """Reference hidden states and head for a batch, computed without gradients.

    Args:
        model: a separate frozen causal LM, or None to use the policy with its (PEFT) adapter disabled.
    """

    def __init__(self, model: nn.Module | None = None):
        self.model = model
        if model is not None:
            model.eval()
            model.requires_grad_(False)

    @property
    def kind(self) -> str:
        return "adapter" if self.model is None else "model"

    @torch.no_grad()
    def hidden_states(
        self,
        policy: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, LMHead]:
        """The reference's final hidden states [B, T, D] and its head, both in the head's compute dtype."""
        if self.model is not None:
            device = input_ids.device
            if next(self.model.parameters()).device != device:
                self.model.to(device)
            hidden = last_hidden_states(self.model, input_ids, attention_mask, position_ids)
            return lm_head_of(self.model).matching(hidden)
        peft_model = policy.module if isinstance(policy, nn.parallel.DistributedDataParallel) else policy
        if not hasattr(peft_model, "disable_adapter"):
            raise ValueError(
                "the reference policy is the model with its LoRA adapter disabled, but the model has no adapter: "
                "train with model.lora, or give a separate reference (alignment.reference.model)"
            )
        with peft_model.disable_adapter():
            hidden = last_hidden_states(peft_model, input_ids, attention_mask, position_ids)
            return lm_head_of(peft_model).matching(hidden)

    def identity(self, policy: nn.Module) -> str:
        """What the reference log-probs depend on (see ``model_identity``)."""
        if self.model is not None:
            return model_identity(self.model)
        return model_identity(policy, skip_adapters=True)


def model_identity(model: nn.Module, *, skip_adapters: bool = False) -> str:
    """sha256 of the model's ``name_or_path`` and a checksum (float64 sum, and L2 norm for float tensors) of every
    parameter and buffer; ``skip_adapters`` leaves out LoRA and ``modules_to_save`` copies (the reference of
    adapter disabling is the base). No full-size copy of a tensor is made."""
    digest = hashlib.sha256(str(getattr(unwrap_model(model).config, "name_or_path", "")).encode())
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if skip_adapters and ("lora_" in name or "modules_to_save" in name):
                continue
            stats = [tensor.sum(dtype=torch.float64)]
            if tensor.is_floating_point():
                stats.append(torch.linalg.vector_norm(tensor, dtype=torch.float64))
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(torch.stack(stats).cpu().numpy().tobytes())
    return digest.hexdigest()


def dataset_digest(rows: datasets.Dataset) -> str:
    """sha256 of a dataset's columns and values (the same rows give the same digest in any run or process)."""
    digest = hashlib.sha256(",".join(sorted(rows.column_names)).encode())
    table = rows.flatten_indices().data.table if rows._indices is not None else rows.data.table
    for name in sorted(rows.column_names):
        column = table.column(name).combine_chunks()
        digest.update(f"{name}:{column.type}".encode())
        while pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            offsets = column.offsets.to_numpy()
            digest.update((offsets - offsets[0]).astype(np.int64).tobytes())
            column = column.flatten()
        digest.update(column.to_numpy(zero_copy_only=False).tobytes())
    return digest.hexdigest()


def sequence_logps(
    hidden: torch.Tensor, head: LMHead, labels: torch.Tensor, cu_seqlens: torch.Tensor | None = None
) -> torch.Tensor:
    """Summed log-probs float32 [S] of the labelled tokens of each sequence (causal shift, -100 ignored); the same
    computation the fused losses run on reference hidden states."""
    scorer = _FusedLinearHead(softcap=head.softcap, logit_scale=head.logit_scale)
    targets = scorer._targets(labels, cu_seqlens)
    return scorer._score(hidden, head.weight, head.bias, targets, cu_seqlens, "sum")[0]


def _batch_reference_logps(reference: ReferencePolicy, policy: nn.Module, batch: dict, prefix: str) -> torch.Tensor:
    hidden, head = reference.hidden_states(
        policy, batch[f"{prefix}input_ids"], batch.get(f"{prefix}attention_mask"), batch.get(f"{prefix}position_ids")
    )
    with torch.autocast(hidden.device.type, enabled=False):
        return sequence_logps(hidden, head, batch[f"{prefix}labels"], batch.get(f"{prefix}cu_seqlens"))


@torch.no_grad()
def precompute_reference_logps(
    reference: ReferencePolicy,
    policy: nn.Module,
    rows: datasets.Dataset,
    collator,
    *,
    cache_dir: str | os.PathLike,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> tuple[datasets.Dataset, Path, bool]:
    """Score every row with the reference once and add the log-probs as columns (cached on disk).

    Args:
        reference: the reference policy (adapter disabling or a separate model).
        policy: the model being trained (its adapter is disabled for the reference in adapter mode).
        rows: pair rows (``chosen_input_ids`` ...) or KTO rows (``input_ids``, ``kl_input_ids`` ...).
        collator: the ``PreferenceCollator`` / ``UnpairedCollator`` of the run (padded or packed).
        cache_dir: where ``reference_logps-<key>.pt`` is written and looked up.
        batch_size: rows per reference forward.
        device: where to run (default: the policy's device).

    Returns:
        The rows with ``ref_chosen_logps``/``ref_rejected_logps`` (pairs) or ``ref_logps``/``ref_kl_logps`` (KTO),
        the cache file, and whether it was read from an earlier run (True) rather than computed.
    """
    paired = "chosen_input_ids" in rows.column_names
    columns = ("ref_chosen_logps", "ref_rejected_logps") if paired else ("ref_logps", "ref_kl_logps")
    rows = rows.remove_columns([c for c in columns if c in rows.column_names])
    kind = "pairs" if paired else "kto"
    key = hashlib.sha256(f"{dataset_digest(rows)}:{kind}:{reference.identity(policy)}".encode())
    path = Path(cache_dir) / f"reference_logps-{key.hexdigest()[:32]}.pt"
    reused = path.is_file()
    if reused:
        values = torch.load(path)
    else:
        device = device or next(policy.parameters()).device
        was_training = policy.training
        policy.eval()
        values = {column: [] for column in columns}
        try:
            for start in range(0, len(rows), batch_size):
                batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
                batch = {k: v.to(device) for k, v in batch.items()}
                if paired:
                    logps = _batch_reference_logps(reference, policy, batch, "").cpu()
                    half = logps.shape[0] // 2
                    values[columns[0]].append(logps[:half])
                    values[columns[1]].append(logps[half:])
                else:
                    values[columns[0]].append(_batch_reference_logps(reference, policy, batch, "").cpu())
                    values[columns[1]].append(_batch_reference_logps(reference, policy, batch, "kl_").cpu())
        finally:
            policy.train(was_training)
        values = {column: torch.cat(parts) for column, parts in values.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_suffix(f".{os.getpid()}.tmp")  # processes of one run may write it at once
        torch.save(values, staged)
        os.replace(staged, path)
    for column in columns:
        rows = rows.add_column(column, values[column].tolist())
    return rows, path, reused


__all__ = ["ReferencePolicy", "dataset_digest", "model_identity", "precompute_reference_logps", "sequence_logps"]
