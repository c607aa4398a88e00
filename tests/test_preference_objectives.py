"""Preference objectives on a tiny Llama with LoRA: one step's loss, metrics and gradients against a naive
implementation that forms the full logits (log_softmax -> gather -> sums -> the formula, written out here).

Tolerances: the fused path and the naive one differ only in summation order (chunked log-sum-exp vs. one
log_softmax over [S, T, V], float32), so losses and metrics agree to ~1e-6 relative and gradients to 1e-5.
"""

from __future__ import annotations

import datasets
import peft
import pytest
import torch
import torch.nn.functional as F
import transformers
from tiny_models import TINY_SHAPE

from fastalign.config import AlignmentConfig, CPOOptions, DPOOptions, KTOOptions, ORPOOptions, RewardOptions
from fastalign.data import PreferenceCollator, UnpairedCollator
from fastalign.training import preference_objective
from fastalign.training.preference import sequence_rewards
from fastalign.training.reference import ReferencePolicy, precompute_reference_logps

VOCAB, PAD, EOS = 128, 0, 2
TOL = dict(rtol=1e-5, atol=1e-6)


def tiny_config(**extra) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=VOCAB,
        **TINY_SHAPE,
        max_position_embeddings=64,
        use_cache=False,
        attn_implementation="sdpa",
        **extra,
    )


def tiny_base() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(tiny_config()).float()


def with_lora(model, task_type="CAUSAL_LM", random_init=True):
    torch.manual_seed(1)
    # random_init: random A and B (not B = 0), so the policy differs from the reference (adapter disabled)
    config = peft.LoraConfig(
        r=4, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=not random_init, task_type=task_type
    )
    return peft.get_peft_model(model, config)


def random_tokens(n, generator) -> list[int]:
    return torch.randint(3, VOCAB, (n,), generator=generator).tolist()


def pair_rows(num_pairs=3, seed=0, margin=False) -> list[dict]:
    """Pair rows as build_preference_dataset writes them: a shared prompt, completions of different lengths."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(num_pairs):
        prompt = random_tokens(3 + i, g)
        row = {}
        for kind, length in (("chosen", 4 + 2 * (i % 4)), ("rejected", 6 - i % 5)):
            completion = random_tokens(length, g) + [EOS]
            row[f"{kind}_input_ids"] = prompt + completion
            row[f"{kind}_labels"] = [-100] * len(prompt) + completion
        if margin:
            row["margin"] = 0.5 * i
        rows.append(row)
    return rows


def kto_rows(num=4, seed=0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    prompts = [random_tokens(3 + i % 2, g) for i in range(num)]
    completions = [random_tokens(4 + i, g) + [EOS] for i in range(num)]
    rows = []
    for i in range(num):
        kl_completion = completions[i - 1]  # shifted by one within the batch
        rows.append(
            {
                "input_ids": prompts[i] + completions[i],
                "labels": [-100] * len(prompts[i]) + completions[i],
                "kl_input_ids": prompts[i] + kl_completion,
                "kl_labels": [-100] * len(prompts[i]) + kl_completion,
                "desirable": i % 3 != 1,
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------- naive reference


def naive_sequence_logps(model, input_ids, attention_mask, labels):
    """Summed and mean completion log-probs [S] and counts [S] from the full logits."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
    logp = logits[:, :-1].log_softmax(-1)
    targets = labels[:, 1:]
    mask = targets != -100
    token = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0] * mask
    counts = mask.sum(-1)
    return token.sum(-1), token.sum(-1) / counts.clamp(min=1), counts, logp


def naive_reference_logps(model, batch):
    with torch.no_grad(), model.disable_adapter():
        return naive_sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])[0]


def naive_dpo(model, batch, beta, loss_type):
    sums, _, counts, _ = naive_sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    ref = naive_reference_logps(model, batch)
    b = sums.shape[0] // 2
    r_c, r_r = sums[:b] - ref[:b], sums[b:] - ref[b:]
    if loss_type == "sigmoid":
        loss = -F.logsigmoid(beta * (r_c - r_r)).mean()
    elif loss_type == "ipo":
        loss = ((r_c / counts[:b] - r_r / counts[b:]) - 1 / (2 * beta)).pow(2).mean()
    else:  # hinge
        loss = F.relu(1 - beta * (r_c - r_r)).mean()
    metrics = {
        "rewards/chosen": (beta * r_c).mean(),
        "rewards/rejected": (beta * r_r).mean(),
        "rewards/accuracies": (r_c > r_r).float().mean(),
        "rewards/margins": (beta * (r_c - r_r)).mean(),
        "logps/chosen": sums[:b].mean(),
        "logps/rejected": sums[b:].mean(),
    }
    return loss, metrics


def naive_orpo(model, batch, beta, nll_on_prompt):
    _, means, _, logp = naive_sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    b = means.shape[0] // 2
    nll_labels = batch["labels"][:b]
    if nll_on_prompt:
        nll_labels = torch.where(batch["attention_mask"][:b].bool(), batch["input_ids"][:b], -100)
    targets = nll_labels[:, 1:]
    mask = targets != -100
    nll = -(logp[:b].gather(-1, targets.clamp(min=0)[..., None])[..., 0] * mask).sum() / mask.sum()
    a_c, a_r = means[:b], means[b:]
    log_odds = (a_c - a_r) - (torch.log1p(-a_c.exp()) - torch.log1p(-a_r.exp()))
    loss = nll - beta * F.logsigmoid(log_odds).mean()
    return loss, {"nll_loss": nll, "log_odds_chosen": log_odds.mean(), "rewards/accuracies": (a_c > a_r).float().mean()}


def naive_cpo(model, batch, beta, gamma, loss_type, alpha):
    sums, means, _, logp = naive_sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    b = sums.shape[0] // 2
    logps = means if loss_type == "simpo" else sums
    z = logps[:b] - logps[b:]
    losses = -F.logsigmoid(beta * z - (gamma if loss_type == "simpo" else 0.0))
    targets = batch["labels"][:b, 1:]
    mask = targets != -100
    nll = -(logp[:b].gather(-1, targets.clamp(min=0)[..., None])[..., 0] * mask).sum() / mask.sum()
    loss = losses.mean() + alpha * nll
    return loss, {"nll_loss": nll, "rewards/margins": (beta * z).mean(), "logps/chosen": logps[:b].mean()}


def naive_kto(model, batch, beta, dw, uw, loss_type="kto"):
    logps = naive_sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])[0]
    ref = naive_reference_logps(model, batch)
    with torch.no_grad():
        kl_batch = {k[3:]: v for k, v in batch.items() if k.startswith("kl_")}
        policy_kl = naive_sequence_logps(model, kl_batch["input_ids"], kl_batch["attention_mask"], kl_batch["labels"])[
            0
        ]
        ref_kl = naive_reference_logps(model, kl_batch)
    kl = (policy_kl - ref_kl).mean().clamp(min=0)
    r = logps - ref
    desirable = batch["desirable"]
    if loss_type == "kto":
        losses = torch.where(
            desirable, dw * (1 - torch.sigmoid(beta * (r - kl))), uw * (1 - torch.sigmoid(beta * (kl - r)))
        )
        return losses.mean(), {"kl": kl, "rewards/chosen": (beta * r[desirable]).mean()}
    # apo_zero_unpaired: no reference point (the KL batch is not run: kl is reported as 0)
    losses = torch.where(desirable, dw * (1 - torch.sigmoid(beta * r)), uw * torch.sigmoid(beta * r))
    return losses.mean(), {"kl": torch.zeros(()), "rewards/rejected": (beta * r[~desirable]).mean()}


# --------------------------------------------------------------------------------------------------------- helpers


def grads_of(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def assert_same_step(model, objective, batch, naive_loss, naive_metrics):
    loss, metrics = objective.loss(model, batch, None)
    torch.testing.assert_close(loss, naive_loss.detach(), **TOL)
    for name, value in naive_metrics.items():
        # differences of summed log-probs (~ -30): 1e-5 absolute is float32 rounding of the sums
        torch.testing.assert_close(metrics[name], value.detach().float(), rtol=1e-5, atol=1e-5, msg=name)
    fused, naive = grads_of(model, loss), grads_of(model, naive_loss)
    assert fused.keys() == naive.keys() and fused
    for name in fused:
        torch.testing.assert_close(fused[name], naive[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def policy():
    model = with_lora(tiny_base())
    model.train()
    return model


# ----------------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_step_equals_naive_full_logits(policy, loss_type):
    batch = PreferenceCollator(PAD)(pair_rows())
    objective = preference_objective("dpo", AlignmentConfig(dpo=DPOOptions(beta=0.5, loss_type=loss_type)))
    _, naive_metrics = naive_dpo(policy, batch, 0.5, loss_type)
    # a second naive forward for the gradient check (the first one's graph is consumed by the metric comparison)
    naive_loss, _ = naive_dpo(policy, batch, 0.5, loss_type)
    assert_same_step(policy, objective, batch, naive_loss, naive_metrics)


@pytest.mark.parametrize("nll_on_prompt", [True, False])
def test_orpo_step_equals_naive_full_logits(policy, nll_on_prompt):
    batch = PreferenceCollator(PAD)(pair_rows())
    options = ORPOOptions(beta=0.3, nll_on_prompt=nll_on_prompt)
    naive_loss, naive_metrics = naive_orpo(policy, batch, 0.3, nll_on_prompt)
    assert_same_step(
        policy, preference_objective("orpo", AlignmentConfig(orpo=options)), batch, naive_loss, naive_metrics
    )


@pytest.mark.parametrize("loss_type, alpha", [("simpo", 0.0), ("sigmoid", 1.0)])
def test_cpo_and_simpo_step_equals_naive_full_logits(policy, loss_type, alpha):
    batch = PreferenceCollator(PAD)(pair_rows())
    options = CPOOptions(beta=2.0, gamma=0.5, loss_type=loss_type, cpo_alpha=alpha)
    naive_loss, naive_metrics = naive_cpo(policy, batch, 2.0, 0.5, loss_type, alpha)
    assert_same_step(
        policy, preference_objective("cpo", AlignmentConfig(cpo=options)), batch, naive_loss, naive_metrics
    )


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_step_equals_naive_full_logits_with_kl_from_mismatched_pairs(policy, loss_type):
    batch = UnpairedCollator(PAD)(kto_rows())
    options = KTOOptions(beta=0.4, desirable_weight=1.0, undesirable_weight=1.5, loss_type=loss_type)
    naive_loss, naive_metrics = naive_kto(policy, batch, 0.4, 1.0, 1.5, loss_type)
    if loss_type == "kto":
        assert naive_metrics["kl"] > 0  # the clamp does not hide the estimate (random adapter: policy != reference)
    assert_same_step(
        policy, preference_objective("kto", AlignmentConfig(kto=options)), batch, naive_loss, naive_metrics
    )


def test_reward_step_equals_naive_when_pad_is_eos():
    torch.manual_seed(0)
    base = transformers.LlamaForSequenceClassification(tiny_config(num_labels=1, pad_token_id=EOS))
    model = with_lora(base, task_type="SEQ_CLS")
    rows = pair_rows(margin=True)  # every sequence ends with EOS == pad: the model's own pooling would miss it
    batch = PreferenceCollator(EOS)(rows)
    objective = preference_objective("reward", AlignmentConfig(reward=RewardOptions(center_rewards_coefficient=0.01)))

    def naive():
        hidden = model.base_model.model.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        scores = model.base_model.model.score(hidden)[..., 0]
        last = batch["attention_mask"].sum(-1) - 1
        rewards = scores[torch.arange(scores.shape[0]), last]
        b = rewards.shape[0] // 2
        r_c, r_r = rewards[:b], rewards[b:]
        loss = -F.logsigmoid(r_c - r_r - batch["margin"]).mean() + 0.01 * ((r_c + r_r) ** 2).mean()
        return loss, {"accuracy": (r_c > r_r).float().mean(), "margin": (r_c - r_r).mean()}

    naive_loss, naive_metrics = naive()
    assert_same_step(model, objective, batch, naive_loss, naive_metrics)
    # the model's own pooling (last token that is not the pad id) misses the EOS == pad end of every sequence
    with torch.no_grad():
        pooled = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        assert not torch.allclose(pooled, sequence_rewards(model, batch))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("score.modules_to_save" in n for n in trainable)  # the new head trains


@pytest.mark.parametrize("objective_name", ["dpo", "orpo", "cpo", "reward"])
def test_packed_pair_batches_equal_padded_ones(policy, objective_name):
    rows = pair_rows(num_pairs=3, seed=1, margin=objective_name == "reward")
    model = policy
    if objective_name == "reward":
        torch.manual_seed(0)
        model = with_lora(
            transformers.LlamaForSequenceClassification(tiny_config(num_labels=1, pad_token_id=PAD)), "SEQ_CLS"
        )
    objective = preference_objective(objective_name)
    padded, packed = PreferenceCollator(PAD)(rows), PreferenceCollator(PAD, packed=True)(rows)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    loss_padded, metrics_padded = objective.loss(model, padded, None)
    loss_packed, metrics_packed = objective.loss(model, packed, None)
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-5)
    for name in metrics_padded:
        torch.testing.assert_close(metrics_packed[name], metrics_padded[name], rtol=1e-5, atol=1e-5, msg=name)
    grads_padded, grads_packed = grads_of(model, loss_padded), grads_of(model, loss_packed)
    for name in grads_padded:
        torch.testing.assert_close(grads_packed[name], grads_padded[name], rtol=1e-4, atol=1e-5, msg=name)


def test_packed_kto_batches_equal_padded_ones(policy):
    rows = kto_rows()
    objective = preference_objective("kto")
    loss_padded, metrics_padded = objective.loss(policy, UnpairedCollator(PAD)(rows), None)
    loss_packed, metrics_packed = objective.loss(policy, UnpairedCollator(PAD, packed=True)(rows), None)
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(metrics_packed["kl"], metrics_padded["kl"], rtol=1e-5, atol=1e-5)


def test_reference_by_adapter_disabling_equals_a_separate_base_copy(policy):
    separate = tiny_base()  # a second model with the seeded initialization the policy's base was built from
    batch = PreferenceCollator(PAD)(pair_rows())
    adapter = preference_objective("dpo", reference=ReferencePolicy())
    frozen = preference_objective("dpo", reference=ReferencePolicy(separate))
    loss_adapter, metrics_adapter = adapter.loss(policy, batch, None)
    loss_frozen, metrics_frozen = frozen.loss(policy, batch, None)
    torch.testing.assert_close(loss_frozen, loss_adapter, **TOL)
    torch.testing.assert_close(metrics_frozen["rewards/margins"], metrics_adapter["rewards/margins"], **TOL)
    assert not any(p.requires_grad for p in separate.parameters())


@pytest.mark.parametrize("kind", ["dpo", "kto"])
def test_precomputed_reference_matches_live_and_is_reused_from_cache(policy, tmp_path, monkeypatch, kind):
    rows = datasets.Dataset.from_list(pair_rows() if kind == "dpo" else kto_rows())
    collator = PreferenceCollator(PAD) if kind == "dpo" else UnpairedCollator(PAD)
    reference = ReferencePolicy()
    with_ref, path, reused = precompute_reference_logps(reference, policy, rows, collator, cache_dir=tmp_path)
    assert path.is_file() and not reused
    objective = preference_objective(kind)
    live_loss, live_metrics = objective.loss(policy, collator(list(rows)), None)
    cached_batch = collator(list(with_ref))
    assert ("ref_chosen_logps" if kind == "dpo" else "ref_logps") in cached_batch
    cached_loss, cached_metrics = objective.loss(policy, cached_batch, None)
    torch.testing.assert_close(cached_loss, live_loss, **TOL)
    for name in live_metrics:
        torch.testing.assert_close(cached_metrics[name], live_metrics[name], **TOL, msg=name)

    # a second run reads the cache file instead of running the reference
    import fastalign.training.reference as reference_module

    def no_forward(*args, **kwargs):
        raise AssertionError("the reference ran although its log-probs are cached")

    loaded = []
    real_load = torch.load
    monkeypatch.setattr(reference_module, "_batch_reference_logps", no_forward)
    monkeypatch.setattr(torch, "load", lambda p, *a, **k: loaded.append(p) or real_load(p, *a, **k))
    again, path_again, reused = precompute_reference_logps(reference, policy, rows, collator, cache_dir=tmp_path)
    assert reused and path_again == path and loaded == [path]
    assert (
        again[:]["ref_chosen_logps" if kind == "dpo" else "ref_logps"]
        == with_ref[:]["ref_chosen_logps" if kind == "dpo" else "ref_logps"]
    )
