"""The one place where a loss head chooses its implementation.

Every public head (``dpo_loss``, ``orpo_loss``, ... and ``fastalign.sequence_logprobs``) validates its inputs,
normalises its options into tensors and plain scalars, and then calls ``call(name, torch_impl, *args)``. The
compiled extension (``csrc/``, loaded by ``fastalign.ext``) registers ``torch.ops.fastalign.<name>`` with the
exact positional signature below; ``call`` routes to it when ``FASTALIGN_EXT`` allows (1 = required, 0 = never,
unset = when it builds) and it has a kernel for the inputs' device, and runs the PyTorch implementation otherwise.
Nothing else in the package picks an implementation.

Contract (all tensors on one device; ``f32`` = float32, ``B`` = batch, ``S`` = sequences). Each op returns
``(loss, metrics)``: ``loss`` a 0-dim f32 tensor differentiable w.r.t. the float inputs marked (grad), ``metrics``
a detached 1-D f32 tensor whose entries follow the module-level name tuple listed. Preconditions are checked by
the public function before ``call``, so an op may assume them.

``dpo_terms(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_lengths, rejected_lengths,
beta: float, loss_type: str, label_smoothing: float, discopop_tau: float)``
    First four f32 [B] (grad); lengths f32 [B], >= 1 (ones when not given); ``loss_type`` in ``DPO_LOSS_TYPES``.
    Metrics ``DPO_METRICS`` = (rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins,
    logps/chosen, logps/rejected). Math: ``fastalign/losses/dpo.py``.

``orpo_terms(chosen_logps, rejected_logps, nll_loss, beta: float)``
    Length-averaged log-probs f32 [B] (grad); ``nll_loss`` f32 0-dim (grad; zeros when not given).
    Metrics ``ORPO_METRICS`` = DPO_METRICS + (log_odds_ratio, log_odds_chosen, nll_loss).
    Math: ``fastalign/losses/orpo.py``.

``kto_terms(policy_logps, ref_logps, desirable, kl, beta: float, desirable_weight: float,
undesirable_weight: float, loss_type: str)``
    Log-probs f32 [B] (grad); ``desirable`` bool [B]; ``kl`` f32 0-dim, detached; ``loss_type`` in
    ``KTO_LOSS_TYPES``. Metrics ``KTO_METRICS`` = (kl, rewards/chosen, rewards/rejected, rewards/margins,
    logps/chosen, logps/rejected). Math: ``fastalign/losses/kto.py``.

``cpo_terms(chosen_logps, rejected_logps, nll_loss, beta: float, gamma: float, loss_type: str,
label_smoothing: float, cpo_alpha: float)``
    Log-probs f32 [B] (grad); ``nll_loss`` f32 0-dim (grad; zeros when not given); ``loss_type`` in
    ``CPO_LOSS_TYPES``. Metrics ``CPO_METRICS`` = DPO_METRICS + (nll_loss,). Math: ``fastalign/losses/cpo.py``.

``bradley_terry_terms(chosen_rewards, rejected_rewards, margin, center_rewards_coefficient: float)``
    Rewards f32 [B] (grad); ``margin`` f32 [B] (zeros when not given); coefficient 0.0 when not given.
    Metrics ``BRADLEY_TERRY_METRICS`` = (accuracy, margin, mean_reward, min_reward, max_reward).
    Math: ``fastalign/losses/reward.py``.

``segment_sum(values, mask, cu_seqlens, mean: bool)``
    ``values`` f32 [total] (grad), ``mask`` bool [total], ``cu_seqlens`` int64 [S+1] with cu_seqlens[0] == 0,
    non-decreasing, cu_seqlens[-1] == total. Returns only f32 [S] (no metrics): per segment the sum of
    ``values`` where ``mask``, divided by the number of such positions when ``mean`` (0.0 when there are none).
    Math: ``fastalign/sequence_logprobs.py``.
"""

from collections.abc import Callable, Sequence

import torch

from fastalign import ext


def call(name: str, torch_impl: Callable, *args):
    """Run the op ``name`` on ``args``.

    Args:
        name: the op's name in the contract above (and in ``torch.ops.fastalign``).
        torch_impl: the PyTorch implementation, called as ``torch_impl(*args)``.
        *args: positional arguments exactly as listed in the contract.

    Returns:
        Whatever the op returns (see the contract).
    """
    if ext.handles(name, args):
        return getattr(torch.ops.fastalign, name)(*args)
    return torch_impl(*args)


def metrics_dict(names: Sequence[str], values: torch.Tensor) -> dict[str, torch.Tensor]:
    """Name the entries of a metrics vector: ``values`` [K] -> ``{names[k]: values[k]}`` (0-dim tensors)."""
    return dict(zip(names, values.unbind(0), strict=True))
