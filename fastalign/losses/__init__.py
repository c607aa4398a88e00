"""Alignment loss heads: per-sequence log-probs (or rewards) in, ``(loss, metrics)`` out.

Each objective's math lives in one file (``dpo.py``, ``orpo.py``, ``kto.py``, ``cpo.py``, ``reward.py``) as a
``*_terms`` function of tensors and plain scalars; the public ``*_loss`` function validates its inputs and reaches
that math through ``_dispatch.call``, the single point where a compiled implementation can take over.
Metrics are dicts of detached 0-dim float32 tensors named as in TRL's trainers.

The fused modules (hidden states + LM head in, no logits in memory) are in ``fastalign.losses.fused``; they are not
imported here because they build on ``fastalign.sequence_logprobs``, which itself dispatches through this package.
"""

from fastalign.losses.cpo import CPO_LOSS_TYPES, CPO_METRICS, cpo_loss
from fastalign.losses.dpo import DPO_LOSS_TYPES, DPO_METRICS, dpo_loss
from fastalign.losses.kto import KTO_LOSS_TYPES, KTO_METRICS, kto_kl, kto_loss
from fastalign.losses.orpo import ORPO_METRICS, orpo_loss
from fastalign.losses.reward import BRADLEY_TERRY_METRICS, bradley_terry_loss

__all__ = [
    "BRADLEY_TERRY_METRICS",
    "CPO_LOSS_TYPES",
    "CPO_METRICS",
    "DPO_LOSS_TYPES",
    "DPO_METRICS",
    "KTO_LOSS_TYPES",
    "KTO_METRICS",
    "ORPO_METRICS",
    "bradley_terry_loss",
    "cpo_loss",
    "dpo_loss",
    "kto_kl",
    "kto_loss",
    "orpo_loss",
]
