"""Fused linear preference losses: hidden states and the LM head in, ``(loss, metrics)`` out, no logits in memory.

Each module writes its objective as per-token log-probs -> ``fastalign.sequence_logprobs`` -> the matching head of
``fastalign.losses`` (no objective is re-derived here) and scores the policy's sequences, chosen and rejected
together, with ONE call of ``fastalign.linear_logprobs_loss``: one sweep over the vocabulary. The objective is a sum
of independent terms, one per pair (per example for KTO), which that call exploits: it forms the gradients pair by
pair during the sweep, so that a trainable head recomputes few logits in backward.

Batch layout (``ignore_index`` marks prompt and padding tokens in ``labels``):
    padded  hidden [N, T, D], labels [N, T]
    packed  hidden [1, total, D] or [total, D], labels [1, total] or [total], cu_seqlens [N+1] (int32 / int64)
Pair losses (DPO, ORPO, CPO) take N = 2B sequences: 0..B-1 are the chosen completions, B..2B-1 the rejected
ones, and pair i is (i, B + i). With ``shift=True`` (Hugging Face causal LMs) the hidden state at position t
predicts ``labels[t + 1]``, within a sequence: the last position of each sequence predicts nothing.

Reference log-probs come either precomputed or as reference hidden states, scored under ``torch.no_grad`` by
the reference head (``ref_weight`` / ``ref_bias``; by default the policy's head, as with LoRA on a frozen head).
"""

import torch
from torch import nn

from fastalign.logprobs import linear_logprobs, linear_logprobs_loss
from fastalign.losses._validation import check_choice
from fastalign.losses.cpo import CPO_LOSS_TYPES, cpo_loss
from fastalign.losses.dpo import DPO_LOSS_TYPES, dpo_loss
from fastalign.losses.kto import KTO_LOSS_TYPES, kto_kl, kto_loss
from fastalign.losses.orpo import orpo_loss
from fastalign.sequence_logprobs import sequence_logprobs, sequence_token_counts


class _FusedLinearHead(nn.Module):
    """The head options and the plumbing shared by the fused losses: labels -> targets -> per-sequence log-probs.

    Args:
        ignore_index: label of tokens that are not scored (prompt, padding).
        shift: predict ``labels[t + 1]`` from ``hidden[t]`` within each sequence.
        softcap, logit_scale, temperature: the LM head's logit transform (see ``fastalign.linear_logprobs``).
        impl: implementation of ``linear_logprobs``: "auto", "triton", "torch" or "reference".
    """

    def __init__(
        self,
        *,
        ignore_index: int = -100,
        shift: bool = True,
        softcap: float | None = None,
        logit_scale: float = 1.0,
        temperature: float = 1.0,
        impl: str = "auto",
    ):
        super().__init__()
        self.ignore_index = ignore_index
        self.shift = shift
        self.softcap = softcap
        self.logit_scale = logit_scale
        self.temperature = temperature
        self.impl = impl

    def _num_sequences(self, hidden: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor | None) -> int:
        """Check the layout of ``hidden`` / ``labels`` and return the number of sequences N."""
        if not isinstance(hidden, torch.Tensor):
            raise TypeError(f"hidden must be a torch.Tensor, got {type(hidden).__name__}")
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor of token ids, got {_describe(labels)}")
        if labels.shape != hidden.shape[:-1]:
            raise ValueError(
                f"labels must have the leading shape of hidden, {tuple(hidden.shape[:-1])}, got {tuple(labels.shape)}"
            )
        if cu_seqlens is None:
            if hidden.dim() != 3:
                raise ValueError(
                    f"padded hidden must be [N, T, D] (pass cu_seqlens for packed input), got {tuple(hidden.shape)}"
                )
            return hidden.shape[0]
        if not (hidden.dim() == 2 or (hidden.dim() == 3 and hidden.shape[0] == 1)):
            raise ValueError(f"packed hidden must be [1, total, D] or [total, D], got {tuple(hidden.shape)}")
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1:
            raise ValueError(f"cu_seqlens must be a 1-D tensor [N+1], got {_describe(cu_seqlens)}")
        return cu_seqlens.shape[0] - 1

    def _targets(self, labels: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
        """labels -> the token each position predicts: ``labels[t + 1]`` with ``shift``, else ``labels[t]``."""
        if not self.shift:
            return labels
        targets = torch.full_like(labels, self.ignore_index)
        targets[..., :-1] = labels[..., 1:]
        if cu_seqlens is not None:
            # The last position of each packed sequence would predict the next sequence's first token. An empty
            # leading sequence gives index -1, the batch's last position, which is ignored already.
            targets.view(-1).index_fill_(0, cu_seqlens[1:].long() - 1, self.ignore_index)
        return targets

    def _head_options(self) -> dict:
        return dict(
            ignore_index=self.ignore_index,
            softcap=self.softcap,
            logit_scale=self.logit_scale,
            temperature=self.temperature,
            impl=self.impl,
        )

    def _token_logps(
        self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
    ) -> torch.Tensor:
        """float32 log p(target) per position, 0.0 where ignored (one sweep over the vocabulary)."""
        return linear_logprobs(hidden, weight, targets, bias=bias, **self._head_options())

    def _objective_loss(self, hidden, weight, bias, targets, groups, objective) -> tuple[torch.Tensor, dict]:
        """``objective(token_logps) -> (loss, metrics)`` of the policy's per-token log-probs of ``targets``, its loss
        a sum of independent terms over ``groups`` (see ``fastalign.linear_logprobs_loss``)."""
        loss, token_logps = linear_logprobs_loss(
            hidden, weight, targets, lambda logps: objective(logps)[0], groups=groups, bias=bias, **self._head_options()
        )
        return loss, objective(token_logps)[1]

    def _score(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        cu_seqlens: torch.Tensor | None,
        reduction: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sequence log-probs f32 [N], per-token log-probs) of ``targets``; ``reduction`` "sum" or "mean"."""
        token_logps = self._token_logps(hidden, weight, bias, targets)
        mask = targets != self.ignore_index
        return sequence_logprobs(token_logps, mask=mask, cu_seqlens=cu_seqlens, reduction=reduction), token_logps

    def _reference(
        self,
        hidden: torch.Tensor,
        ref_hidden: torch.Tensor,
        ref_weight: torch.Tensor | None,
        ref_bias: torch.Tensor | None,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        cu_seqlens: torch.Tensor | None,
        reduction: str,
    ) -> torch.Tensor:
        """Reference per-sequence log-probs [N] from reference hidden states, without gradients."""
        if not isinstance(ref_hidden, torch.Tensor) or ref_hidden.shape != hidden.shape:
            raise ValueError(f"ref_hidden must have hidden's shape {tuple(hidden.shape)}, got {_describe(ref_hidden)}")
        head_weight, head_bias = (weight, bias) if ref_weight is None else (ref_weight, ref_bias)
        with torch.no_grad():
            return self._score(ref_hidden, head_weight, head_bias, targets, cu_seqlens, reduction)[0]

    def _counts(self, targets, cu_seqlens) -> torch.Tensor:
        """Scored tokens per sequence, int64 [N]."""
        layout = torch.zeros(targets.shape, device=targets.device)
        return sequence_token_counts(layout, mask=targets != self.ignore_index, cu_seqlens=cu_seqlens)

    def _chosen_only(self, targets: torch.Tensor, cu_seqlens: torch.Tensor | None, num_pairs: int) -> torch.Tensor:
        """``targets`` with every position outside the chosen sequences (0..B-1) set to ignore_index."""
        if cu_seqlens is None:
            chosen = (torch.arange(targets.shape[0], device=targets.device) < num_pairs)[:, None]
        else:
            positions = torch.arange(targets.numel(), device=targets.device).view(targets.shape)
            chosen = positions < cu_seqlens[num_pairs]
        return torch.where(chosen, targets, self.ignore_index)

    def _nll(self, token_logps: torch.Tensor, nll_targets: torch.Tensor) -> torch.Tensor:
        """Token-mean cross-entropy over the positions scored by ``nll_targets``: -sum(log p) / max(count, 1)."""
        mask = nll_targets != self.ignore_index
        return -torch.where(mask, token_logps, 0.0).sum() / mask.sum().clamp(min=1)


def _sequence_ids(targets: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    """The sequence each position belongs to, int64 of targets' shape."""
    if cu_seqlens is None:
        return torch.arange(targets.shape[0], device=targets.device)[:, None].expand(targets.shape)
    positions = torch.arange(targets.numel(), device=targets.device).view(targets.shape)
    return torch.searchsorted(cu_seqlens[1:].long(), positions, right=True)


def _pair_ids(targets: torch.Tensor, cu_seqlens: torch.Tensor | None, num_pairs: int) -> torch.Tensor:
    """The pair each position belongs to (sequences i and B + i form pair i), int64 of targets' shape."""
    return _sequence_ids(targets, cu_seqlens) % num_pairs


def _num_pairs(num_sequences: int) -> int:
    if num_sequences % 2 or num_sequences == 0:
        raise ValueError(
            f"pair losses need 2B sequences (B chosen, then B rejected), got {num_sequences}: an odd number or none"
        )
    return num_sequences // 2


def _check_reference_source(precomputed: bool, ref_hidden, ref_weight, ref_bias) -> None:
    """Exactly one source of reference log-probs: precomputed ones, or ref_hidden (with its optional head)."""
    if precomputed == (ref_hidden is not None):
        raise ValueError("pass either precomputed reference log-probs or ref_hidden (exactly one)")
    if precomputed and (ref_weight is not None or ref_bias is not None):
        raise ValueError("ref_weight / ref_bias score ref_hidden; they are unused with precomputed log-probs")


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _empty_sequences(counts: torch.Tensor) -> torch.Tensor:
    """Metric ``empty_sequences``: policy sequences with no scored token (float32 0-dim)."""
    return (counts == 0).sum().float()


class FusedLinearDPOLoss(_FusedLinearHead):
    """DPO family (``fastalign.losses.dpo_loss``) from hidden states, on summed completion log-probs.

    Args:
        beta, loss_type, label_smoothing, discopop_tau: see ``dpo_loss``. ipo and sigmoid_norm use the number of
            scored tokens of each completion as its length.
        ignore_index, shift, softcap, logit_scale, temperature, impl: see ``_FusedLinearHead``.
    """

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        discopop_tau: float = 0.05,
        **head_options,
    ):
        super().__init__(**head_options)
        check_choice("loss_type", loss_type, DPO_LOSS_TYPES)
        self.beta, self.loss_type, self.label_smoothing, self.discopop_tau = (
            beta,
            loss_type,
            label_smoothing,
            discopop_tau,
        )

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        ref_chosen_logps: torch.Tensor | None = None,
        ref_rejected_logps: torch.Tensor | None = None,
        ref_hidden: torch.Tensor | None = None,
        ref_weight: torch.Tensor | None = None,
        ref_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DPO loss of 2B sequences (B chosen, then B rejected).

        Args:
            hidden, labels, cu_seqlens: the batch (see the module docstring).
            weight, bias: the policy's LM head [V, D], [V].
            ref_chosen_logps, ref_rejected_logps: [B] precomputed reference summed log-probs, or
            ref_hidden: the reference model's hidden states (hidden's shape), scored by ref_weight / ref_bias
                (default: weight / bias) under no_grad.

        Returns:
            loss (float32 0-dim) and the metrics of ``dpo_loss`` plus ``empty_sequences``.
        """
        num_pairs = _num_pairs(self._num_sequences(hidden, labels, cu_seqlens))
        if (ref_chosen_logps is None) != (ref_rejected_logps is None):
            raise ValueError("pass both ref_chosen_logps and ref_rejected_logps, or neither (and ref_hidden)")
        _check_reference_source(ref_chosen_logps is not None, ref_hidden, ref_weight, ref_bias)
        targets = self._targets(labels, cu_seqlens)
        if ref_hidden is not None:
            ref = self._reference(hidden, ref_hidden, ref_weight, ref_bias, weight, bias, targets, cu_seqlens, "sum")
            ref_chosen_logps, ref_rejected_logps = ref[:num_pairs], ref[num_pairs:]
        counts, mask = self._counts(targets, cu_seqlens), targets != self.ignore_index

        def objective(token_logps):
            logps = sequence_logprobs(token_logps, mask=mask, cu_seqlens=cu_seqlens, reduction="sum")
            return dpo_loss(
                logps[:num_pairs],
                logps[num_pairs:],
                ref_chosen_logps,
                ref_rejected_logps,
                beta=self.beta,
                loss_type=self.loss_type,
                label_smoothing=self.label_smoothing,
                chosen_lengths=counts[:num_pairs],
                rejected_lengths=counts[num_pairs:],
                discopop_tau=self.discopop_tau,
            )

        pairs = _pair_ids(targets, cu_seqlens, num_pairs)
        loss, metrics = self._objective_loss(hidden, weight, bias, targets, pairs, objective)
        metrics["empty_sequences"] = _empty_sequences(counts)
        return loss, metrics


class FusedLinearORPOLoss(_FusedLinearHead):
    """ORPO (``fastalign.losses.orpo_loss``) from hidden states: length-averaged log-probs plus an SFT term.

    The SFT term is the token-mean cross-entropy over the chosen sequences on the tokens of ``nll_labels``
    (default: the chosen rows of ``labels``), scored in the same vocabulary sweep as the preference log-probs.

    Args:
        beta: see ``orpo_loss``.
        ignore_index, shift, softcap, logit_scale, temperature, impl: see ``_FusedLinearHead``.
    """

    def __init__(self, beta: float = 0.1, **head_options):
        super().__init__(**head_options)
        self.beta = beta

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        nll_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """ORPO loss of 2B sequences (B chosen, then B rejected).

        Args:
            hidden, labels, cu_seqlens: the batch (see the module docstring).
            weight, bias: the LM head.
            nll_labels: labels of the SFT term, e.g. with the prompt scored too. Padded: [B, T] (the chosen rows);
                packed: labels' shape, positions outside the chosen sequences ignored. Where both score a
                position, nll_labels must agree with labels.

        Returns:
            loss (float32 0-dim) and the metrics of ``orpo_loss`` plus ``empty_sequences``.
        """
        num_pairs = _num_pairs(self._num_sequences(hidden, labels, cu_seqlens))
        targets = self._targets(labels, cu_seqlens)
        if nll_labels is None:
            nll_targets = self._chosen_only(targets, cu_seqlens, num_pairs)
            scored = targets
        else:
            nll_targets = self._nll_targets(nll_labels, labels, cu_seqlens, num_pairs)
            # one sweep scores both: a position's target is the same token under both label sets
            both = (targets != self.ignore_index) & (nll_targets != self.ignore_index)
            if (both & (targets != nll_targets)).any():
                raise ValueError("nll_labels and labels name different tokens at a position both score")
            scored = torch.where(targets != self.ignore_index, targets, nll_targets)
        mask = targets != self.ignore_index

        def objective(token_logps):
            logps = sequence_logprobs(token_logps, mask=mask, cu_seqlens=cu_seqlens, reduction="mean")
            nll = self._nll(token_logps, nll_targets)
            return orpo_loss(logps[:num_pairs], logps[num_pairs:], beta=self.beta, nll_loss=nll)

        pairs = _pair_ids(targets, cu_seqlens, num_pairs)
        loss, metrics = self._objective_loss(hidden, weight, bias, scored, pairs, objective)
        metrics["empty_sequences"] = _empty_sequences(self._counts(targets, cu_seqlens))
        return loss, metrics

    def _nll_targets(
        self, nll_labels: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor | None, num_pairs: int
    ) -> torch.Tensor:
        """nll_labels -> targets of the SFT term, in the layout of ``labels`` (rejected sequences ignored)."""
        if not isinstance(nll_labels, torch.Tensor) or nll_labels.is_floating_point() or nll_labels.dtype == torch.bool:
            raise TypeError(f"nll_labels must be an integer tensor of token ids, got {_describe(nll_labels)}")
        expected = (num_pairs, labels.shape[1]) if cu_seqlens is None else tuple(labels.shape)
        if tuple(nll_labels.shape) != expected:
            raise ValueError(f"nll_labels must have shape {expected}, got {tuple(nll_labels.shape)}")
        if cu_seqlens is None:
            nll_labels = torch.cat([nll_labels, torch.full_like(nll_labels, self.ignore_index)])
        return self._chosen_only(self._targets(nll_labels.to(labels.dtype), cu_seqlens), cu_seqlens, num_pairs)


class FusedLinearCPOLoss(_FusedLinearHead):
    """CPO / SimPO (``fastalign.losses.cpo_loss``) from hidden states, plus the SFT term on the chosen completions.

    Like TRL's CPOTrainer, simpo and ipo use length-averaged log-probs and sigmoid and hinge summed ones. The SFT
    term is the token-mean cross-entropy over the chosen completion tokens, from the same vocabulary sweep.

    Args:
        beta, gamma, loss_type, label_smoothing, cpo_alpha: see ``cpo_loss``.
        ignore_index, shift, softcap, logit_scale, temperature, impl: see ``_FusedLinearHead``.
    """

    def __init__(
        self,
        beta: float = 0.1,
        gamma: float = 0.5,
        loss_type: str = "simpo",
        label_smoothing: float = 0.0,
        cpo_alpha: float = 1.0,
        **head_options,
    ):
        super().__init__(**head_options)
        check_choice("loss_type", loss_type, CPO_LOSS_TYPES)
        self.beta, self.gamma, self.loss_type = beta, gamma, loss_type
        self.label_smoothing, self.cpo_alpha = label_smoothing, cpo_alpha

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """CPO loss of 2B sequences (B chosen, then B rejected); returns the metrics of ``cpo_loss`` plus
        ``empty_sequences``."""
        num_pairs = _num_pairs(self._num_sequences(hidden, labels, cu_seqlens))
        targets = self._targets(labels, cu_seqlens)
        reduction = "mean" if self.loss_type in ("simpo", "ipo") else "sum"
        mask, nll_targets = targets != self.ignore_index, self._chosen_only(targets, cu_seqlens, num_pairs)

        def objective(token_logps):
            logps = sequence_logprobs(token_logps, mask=mask, cu_seqlens=cu_seqlens, reduction=reduction)
            return cpo_loss(
                logps[:num_pairs],
                logps[num_pairs:],
                beta=self.beta,
                gamma=self.gamma,
                loss_type=self.loss_type,
                label_smoothing=self.label_smoothing,
                nll_loss=self._nll(token_logps, nll_targets),
                cpo_alpha=self.cpo_alpha,
            )

        pairs = _pair_ids(targets, cu_seqlens, num_pairs)
        loss, metrics = self._objective_loss(hidden, weight, bias, targets, pairs, objective)
        metrics["empty_sequences"] = _empty_sequences(self._counts(targets, cu_seqlens))
        return loss, metrics


class FusedLinearKTOLoss(_FusedLinearHead):
    """KTO (``fastalign.losses.kto_loss``) from hidden states of unpaired examples, on summed log-probs.

    The reference point kl is given (``kl``), or estimated with ``kto_kl`` from a "KL batch" of mismatched
    (prompt, completion) pairs: ``kl_hidden`` / ``kl_labels`` scored by the policy head and ``ref_kl_logps`` or
    ``ref_kl_hidden`` for the reference, all under no_grad. Without either, kl = 0 (what apo_zero_unpaired uses).

    Args:
        beta, desirable_weight, undesirable_weight, loss_type: see ``kto_loss``.
        ignore_index, shift, softcap, logit_scale, temperature, impl: see ``_FusedLinearHead``.
    """

    def __init__(
        self,
        beta: float = 0.1,
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        loss_type: str = "kto",
        **head_options,
    ):
        super().__init__(**head_options)
        check_choice("loss_type", loss_type, KTO_LOSS_TYPES)
        self.beta, self.loss_type = beta, loss_type
        self.desirable_weight, self.undesirable_weight = desirable_weight, undesirable_weight

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        *,
        desirable: torch.Tensor,
        bias: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        ref_logps: torch.Tensor | None = None,
        ref_hidden: torch.Tensor | None = None,
        ref_weight: torch.Tensor | None = None,
        ref_bias: torch.Tensor | None = None,
        kl: float | torch.Tensor | None = None,
        kl_hidden: torch.Tensor | None = None,
        kl_labels: torch.Tensor | None = None,
        kl_cu_seqlens: torch.Tensor | None = None,
        ref_kl_logps: torch.Tensor | None = None,
        ref_kl_hidden: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """KTO loss of B unpaired sequences.

        Args:
            hidden, labels, cu_seqlens: the batch of B sequences (see the module docstring).
            weight, bias: the policy's LM head.
            desirable: [B] bool, True for desirable examples.
            ref_logps: [B] precomputed reference summed log-probs, or
            ref_hidden: reference hidden states scored by ref_weight / ref_bias (default: weight / bias).
            kl: the reference point, or
            kl_hidden, kl_labels, kl_cu_seqlens: the KL batch for the policy, with its reference as
                ref_kl_logps ([B'] precomputed) or ref_kl_hidden (scored by the reference head).

        Returns:
            loss (float32 0-dim) and the metrics of ``kto_loss`` plus ``empty_sequences``.
        """
        self._num_sequences(hidden, labels, cu_seqlens)
        _check_reference_source(ref_logps is not None, ref_hidden, ref_weight, ref_bias)
        if kl is not None and kl_hidden is not None:
            raise ValueError("pass either kl or the KL batch (kl_hidden, kl_labels), not both")
        targets = self._targets(labels, cu_seqlens)
        if ref_hidden is not None:
            ref_logps = self._reference(
                hidden, ref_hidden, ref_weight, ref_bias, weight, bias, targets, cu_seqlens, "sum"
            )
        if kl_hidden is not None:
            kl = self._kl(
                kl_hidden, kl_labels, kl_cu_seqlens, ref_kl_logps, ref_kl_hidden, weight, bias, ref_weight, ref_bias
            )
        mask = targets != self.ignore_index

        def objective(token_logps):
            return kto_loss(
                sequence_logprobs(token_logps, mask=mask, cu_seqlens=cu_seqlens, reduction="sum"),
                ref_logps,
                desirable,
                kl=0.0 if kl is None else kl,
                beta=self.beta,
                desirable_weight=self.desirable_weight,
                undesirable_weight=self.undesirable_weight,
                loss_type=self.loss_type,
            )

        examples = _sequence_ids(targets, cu_seqlens)
        loss, metrics = self._objective_loss(hidden, weight, bias, targets, examples, objective)
        metrics["empty_sequences"] = _empty_sequences(self._counts(targets, cu_seqlens))
        return loss, metrics

    def _kl(self, kl_hidden, kl_labels, kl_cu_seqlens, ref_kl_logps, ref_kl_hidden, weight, bias, ref_weight, ref_bias):
        """kto_kl of the KL batch: policy and reference summed log-probs, all without gradients."""
        if kl_labels is None:
            raise ValueError("kl_hidden needs kl_labels")
        if (ref_kl_logps is None) == (ref_kl_hidden is None):
            raise ValueError("the KL batch needs either ref_kl_logps or ref_kl_hidden (exactly one)")
        self._num_sequences(kl_hidden, kl_labels, kl_cu_seqlens)
        targets = self._targets(kl_labels, kl_cu_seqlens)
        with torch.no_grad():
            policy_kl_logps = self._score(kl_hidden, weight, bias, targets, kl_cu_seqlens, "sum")[0]
        if ref_kl_hidden is not None:
            ref_kl_logps = self._reference(
                kl_hidden, ref_kl_hidden, ref_weight, ref_bias, weight, bias, targets, kl_cu_seqlens, "sum"
            )
        return kto_kl(policy_kl_logps, ref_kl_logps)
