"""``fastalign.integrations.trl``: TRL 1.16's trainers give the same losses, metrics and updates when patched.

Each case trains a tiny Llama (vocab 256, hidden 32, 2 layers) for two SGD steps with and without ``patch_trl()``,
from the same initial weights and data order, in float32 (``bf16=False``), and compares every logged value (same
names) and the parameters after the steps. Tolerances: the fused head sums the vocabulary in another order than
TRL's (or than ``log_softmax`` for ORPO/CPO), ~1e-6 relative per log-prob; logged values are compared at 1e-4
relative and parameters at 1e-4 relative / 1e-5 absolute (two steps of SGD at lr 0.1 carry gradient differences).
"""

import copy
import string
import warnings
from unittest import mock

import datasets
import pytest
import torch
import transformers

trl = pytest.importorskip("trl")
if trl.__version__ != "1.16.0":
    pytest.skip(
        f"fastalign.integrations.trl is pinned to trl==1.16.0, found {trl.__version__}", allow_module_level=True
    )

from tiny_models import TINY_SHAPE  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

from fastalign.integrations import trl as fastalign_trl  # noqa: E402

PROMPTS = ["hello ", "what is up", "a b c", "good day ", "how are you", "tell me ", "one two", "yes or no"]
CHOSEN = ["world.", " nothing", " d e", "sir", " fine thanks", "a story", " three", " yes"]
REJECTED = ["there friend", " all", " x", "madam ok", " bad", "no", " ten twenty", " maybe not"]


def char_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """One token per character: 4 special tokens and 31 characters, built in memory."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({c: i + 4 for i, c in enumerate(string.ascii_lowercase + " .,?!")})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=256,
        **TINY_SHAPE,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # peaked logits: token accuracy and entropy are not trivial
        model.lm_head.weight.mul_(10.0)
    return model


def preference_data():
    return datasets.Dataset.from_dict({"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED})


def unpaired_data():
    return datasets.Dataset.from_dict(
        {"prompt": PROMPTS * 2, "completion": CHOSEN + REJECTED, "label": [True] * 8 + [False] * 8}
    )


def common_args(**overrides) -> dict:
    return dict(
        output_dir="/tmp/fastalign-test-trl",
        max_steps=2,
        per_device_train_batch_size=4,
        logging_steps=1,
        learning_rate=0.1,
        optim="sgd",
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        seed=0,
        **overrides,
    )


def train(make_trainer, patched: bool, **patch_options):
    """(logged entries, trained model, trainer) of two steps, with or without the patch."""
    if patched:
        fastalign_trl.patch_trl(**patch_options)
    try:
        torch.manual_seed(0)
        trainer = make_trainer()
        trainer.train()
    finally:
        fastalign_trl.unpatch_trl()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return logs, trainer.model, trainer


def assert_same_training(expected, actual):
    (expected_logs, expected_model, _), (logs, model, _) = expected, actual
    assert len(logs) == len(expected_logs) == 2
    for entry, expected_entry in zip(logs, expected_logs):
        assert set(entry) == set(expected_entry)
        for key, value in expected_entry.items():
            assert entry[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    for (name, param), expected_param in zip(model.named_parameters(), expected_model.parameters()):
        torch.testing.assert_close(param, expected_param, rtol=1e-4, atol=1e-5, msg=name)


def compare(make_trainer, **patch_options):
    expected = train(make_trainer, patched=False)
    fastalign_trl._WARNED.clear()
    with mock.patch.object(fastalign_trl, "linear_logprobs", wraps=fastalign_trl.linear_logprobs) as fused:
        actual = train(make_trainer, patched=True, **patch_options)
    assert fused.called and not fastalign_trl._WARNED  # fastalign scored the tokens; no fallback
    assert_same_training(expected, actual)
    return actual


def dpo_trainer(base_model, tokenizer, **config):
    def make():
        return trl.DPOTrainer(
            model=copy.deepcopy(base_model),
            ref_model=copy.deepcopy(base_model),
            args=trl.DPOConfig(**common_args(**config)),
            train_dataset=preference_data(),
            processing_class=tokenizer,
        )

    return make


@pytest.mark.parametrize(
    "config",
    [
        {"loss_type": ["sigmoid"]},
        {"loss_type": ["ipo"]},
        {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]},  # TRL's own combination of losses
        {"loss_type": ["sigmoid"], "precompute_ref_log_probs": True},
        {"loss_type": ["sigmoid"], "use_weighting": True},  # WPO: needs log_sum_sq_probs
    ],
    ids=["sigmoid", "ipo", "sigmoid+sft", "precomputed-ref", "wpo"],
)
def test_dpo(base_model, tokenizer, config):
    compare(dpo_trainer(base_model, tokenizer, **config))


def test_dpo_peft_lora_reference_by_disabled_adapter(base_model, tokenizer):
    import peft

    def make():
        model = peft.get_peft_model(
            copy.deepcopy(base_model), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
        )
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.1, generator=torch.Generator().manual_seed(1))
        return trl.DPOTrainer(
            model=model,
            args=trl.DPOConfig(**common_args()),
            train_dataset=preference_data(),
            processing_class=tokenizer,
        )

    compare(make)


def test_kto(base_model, tokenizer):
    def make():
        return trl.KTOTrainer(
            model=copy.deepcopy(base_model),
            ref_model=copy.deepcopy(base_model),
            args=trl.KTOConfig(**common_args()),
            train_dataset=unpaired_data(),
            processing_class=tokenizer,
        )

    compare(make)


def test_sft_and_eval_and_generation_still_get_logits(base_model, tokenizer):
    data = datasets.Dataset.from_dict({"text": [p + c for p, c in zip(PROMPTS, CHOSEN)]})

    def make():
        return trl.SFTTrainer(
            model=copy.deepcopy(base_model),
            args=trl.SFTConfig(**common_args()),
            train_dataset=data,
            eval_dataset=data,
            processing_class=tokenizer,
        )

    _, model, trainer = compare(make)
    fastalign_trl.patch_trl()
    try:
        metrics = trainer.evaluate()
        assert metrics["eval_loss"] > 0
        ids = torch.tensor([[1, 5, 6, 7]])
        assert model(input_ids=ids).logits.shape == (1, 4, 256)
        assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 7)
    finally:
        fastalign_trl.unpatch_trl()


@pytest.mark.parametrize("kind", ["orpo", "cpo-sigmoid", "cpo-simpo"])
def test_orpo_cpo(base_model, tokenizer, kind):
    if kind == "orpo":
        from trl.experimental.orpo import ORPOConfig as Config
        from trl.experimental.orpo import ORPOTrainer as Trainer

        config = {}
    else:
        from trl.experimental.cpo import CPOConfig as Config
        from trl.experimental.cpo import CPOTrainer as Trainer

        config = {"loss_type": kind.split("-")[1]}

    def make():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Trainer(
                model=copy.deepcopy(base_model),
                args=Config(**common_args(max_length=32, **config)),
                train_dataset=preference_data(),
                processing_class=tokenizer,
            )

    compare(make)


def test_inexact_metrics_skip_the_metric_sweep(base_model, tokenizer):
    expected = train(dpo_trainer(base_model, tokenizer), patched=False)
    logs, model, _ = train(dpo_trainer(base_model, tokenizer), patched=True, exact_metrics=False)
    assert logs[0]["loss"] == pytest.approx(expected[0][0]["loss"], rel=1e-5)
    assert logs[0]["logits/chosen"] != logs[0]["logits/chosen"]  # NaN: not computed


def test_unpatch_restores_the_very_same_objects():
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer
    from trl.trainer import dpo_trainer, kto_trainer, sft_trainer, utils

    before = [m.add_fused_lm_head for m in (dpo_trainer, kto_trainer, sft_trainer)]
    methods = [ORPOTrainer.__dict__["concatenated_forward"], CPOTrainer.__dict__["concatenated_forward"]]
    fastalign_trl.patch_trl()
    assert fastalign_trl.is_patched()
    assert dpo_trainer.add_fused_lm_head is not utils.add_fused_lm_head
    assert ORPOTrainer.__dict__["concatenated_forward"] is not methods[0]
    fastalign_trl.patch_trl()  # idempotent
    fastalign_trl.unpatch_trl()
    assert not fastalign_trl.is_patched()
    assert [m.add_fused_lm_head for m in (dpo_trainer, kto_trainer, sft_trainer)] == before
    assert all(f is utils.add_fused_lm_head for f in before)
    assert [ORPOTrainer.__dict__["concatenated_forward"], CPOTrainer.__dict__["concatenated_forward"]] == methods


def test_other_trl_versions_are_refused_or_warned(monkeypatch):
    monkeypatch.setattr(trl, "__version__", "1.17.0")
    with pytest.raises(RuntimeError, match="1.16.0"):
        fastalign_trl.patch_trl()
    assert not fastalign_trl.is_patched()
    with pytest.warns(UserWarning, match="1.16.0"):
        fastalign_trl.patch_trl(strict_version=False)
    fastalign_trl.unpatch_trl()


def test_unsupported_model_falls_back_to_trl_with_one_warning(tokenizer):
    """A MoE model with router logits: fastalign does not add the load-balancing loss, so TRL's own head runs."""
    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=2,
        num_experts_per_tok=1,
        output_router_logits=True,
        pad_token_id=0,
    )
    moe = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    data = datasets.Dataset.from_dict({"text": [p + c for p, c in zip(PROMPTS, CHOSEN)]})

    def make():
        return trl.SFTTrainer(
            model=copy.deepcopy(moe),
            args=trl.SFTConfig(**common_args()),
            train_dataset=data,
            processing_class=tokenizer,
        )

    expected = train(make, patched=False)
    fastalign_trl._WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        actual = train(make, patched=True)
    ours = [w for w in caught if "fastalign.integrations.trl" in str(w.message)]
    assert len(ours) == 1 and "TRL's own fused LM head" in str(ours[0].message)
    assert_same_training(expected, actual)
