"""``fastalign.integrations.trl``: TRL's trainers give the same losses, metrics and updates when patched.

Run on each supported TRL (1.14.x, 1.15.x, 1.16.x; see the module docstring of ``fastalign.integrations.trl``).
Where the installed TRL has no seam for a configuration (trl 1.14: DPO and KTO outside ``use_liger_kernel``, SFT
outside ``loss_type="chunked_nll"``), the case asserts the documented fallback instead: TRL's own code, the same
results, and one warning naming the TRL version.

Each case trains a tiny Llama (vocab 256, hidden 32, 2 layers) for two SGD steps with and without ``patch_trl()``,
from the same initial weights and data order, in float32 (``bf16=False``), and compares every logged value (same
names) and the parameters after the steps. Tolerances: the fused head sums the vocabulary in another order than
TRL's (or than ``log_softmax`` for ORPO/CPO), ~1e-6 relative per log-prob; logged values are compared at 1e-4
relative and parameters at 1e-4 relative / 1e-5 absolute (two steps of SGD at lr 0.1 carry gradient differences).
"""

import copy
import warnings
from unittest import mock

import datasets
import pytest
import torch
import transformers
from packaging.version import Version

trl = pytest.importorskip("trl")
TRL_MINOR = Version(trl.__version__).release[:2]
if not (1, 14) <= TRL_MINOR <= (1, 16):
    pytest.skip(
        f"fastalign.integrations.trl supports trl 1.14 to 1.16, found {trl.__version__}", allow_module_level=True
    )

from tiny_models import TINY_SHAPE  # noqa: E402

from fastalign.integrations import trl as fastalign_trl  # noqa: E402
from fastalign.integrations.trl import head, preference, seams, state  # noqa: E402
from fastalign.integrations.trl.self_check import char_tokenizer  # noqa: E402

# trl 1.14 scores DPO and KTO without logits only with use_liger_kernel=True, which refuses WPO
TRL_1_14 = TRL_MINOR == (1, 14)

PROMPTS = ["hello ", "what is up", "a b c", "good day ", "how are you", "tell me ", "one two", "yes or no"]
CHOSEN = ["world.", " nothing", " d e", "sir", " fine thanks", "a story", " three", " yes"]
REJECTED = ["there friend", " all", " x", "madam ok", " bad", "no", " ten twenty", " maybe not"]


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


def compare(make_trainer, fused: bool = True, **patch_options):
    """Train with and without the patch; ``fused``: fastalign scored the tokens with no fallback, else TRL's own
    code ran and said so once, naming the TRL version."""
    expected = train(make_trainer, patched=False)
    state.WARNED.clear()
    with (
        mock.patch.object(head, "linear_logprobs", wraps=head.linear_logprobs) as fused_head,
        mock.patch.object(preference, "linear_logprobs", wraps=preference.linear_logprobs) as fused_preference,
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        actual = train(make_trainer, patched=True, **patch_options)
    ours = [str(w.message) for w in caught if "fastalign.integrations.trl" in str(w.message)]
    if fused:
        assert (fused_head.called or fused_preference.called) and not ours
    else:
        assert not (fused_head.called or fused_preference.called)
        assert len(ours) == 1 and f"trl {trl.__version__}" in ours[0] and "is not fused" in ours[0], ours
    assert_same_training(expected, actual)
    return actual


def on_fused_path(trainer):
    """The trainer on the path its TRL has a seam for: trl 1.14's DPO / KTO take ``use_liger_kernel=True``'s path
    (set on the built trainer, so that liger-kernel need not be installed: TRL reads only this attribute)."""
    if TRL_1_14:
        trainer.use_liger_kernel = True
    return trainer


def dpo_trainer(base_model, tokenizer, fused_path: bool = True, **config):
    def make():
        trainer = trl.DPOTrainer(
            model=copy.deepcopy(base_model),
            ref_model=copy.deepcopy(base_model),
            args=trl.DPOConfig(**common_args(**config)),
            train_dataset=preference_data(),
            processing_class=tokenizer,
        )
        return on_fused_path(trainer) if fused_path else trainer

    return make


def kto_trainer(base_model, tokenizer, fused_path: bool = True):
    def make():
        trainer = trl.KTOTrainer(
            model=copy.deepcopy(base_model),
            ref_model=copy.deepcopy(base_model),
            args=trl.KTOConfig(**common_args()),
            train_dataset=unpaired_data(),
            processing_class=tokenizer,
        )
        return on_fused_path(trainer) if fused_path else trainer

    return make


def sft_trainer(model, tokenizer, with_eval: bool = False, **config):
    data = datasets.Dataset.from_dict({"text": [p + c for p, c in zip(PROMPTS, CHOSEN)]})

    def make():
        return trl.SFTTrainer(
            model=copy.deepcopy(model),
            args=trl.SFTConfig(**common_args(**config)),
            train_dataset=data,
            eval_dataset=data if with_eval else None,
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
    wpo_on_1_14 = TRL_1_14 and config.get("use_weighting", False)  # no seam: TRL's full-logits path, a warning
    compare(dpo_trainer(base_model, tokenizer, fused_path=not wpo_on_1_14, **config), fused=not wpo_on_1_14)


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
        trainer = trl.DPOTrainer(
            model=model,
            args=trl.DPOConfig(**common_args()),
            train_dataset=preference_data(),
            processing_class=tokenizer,
        )
        return on_fused_path(trainer)

    compare(make)


def test_kto(base_model, tokenizer):
    compare(kto_trainer(base_model, tokenizer))


@pytest.mark.parametrize("trainer", ["dpo", "kto"])
def test_trl_1_14_dpo_kto_without_liger_run_trl_with_one_warning(base_model, tokenizer, trainer):
    if not TRL_1_14:
        pytest.skip("trl 1.15+ fuses DPO and KTO in every configuration: test_dpo and test_kto cover it")
    make = dpo_trainer if trainer == "dpo" else kto_trainer
    compare(make(base_model, tokenizer, fused_path=False), fused=False)


def test_sft_and_eval_and_generation_still_get_logits(base_model, tokenizer):
    _, model, trainer = compare(sft_trainer(base_model, tokenizer, with_eval=True))
    fastalign_trl.patch_trl()
    try:
        metrics = trainer.evaluate()
        assert metrics["eval_loss"] > 0
        ids = torch.tensor([[1, 5, 6, 7]])
        assert model(input_ids=ids).logits.shape == (1, 4, 256)
        assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 7)
    finally:
        fastalign_trl.unpatch_trl()


@pytest.mark.parametrize("loss_type", ["nll", "dft"])
def test_sft_loss_types(base_model, tokenizer, loss_type):
    """Fused on trl 1.15+; trl 1.14 computes them with full logits (only "chunked_nll" has a seam) and says so."""
    compare(sft_trainer(base_model, tokenizer, loss_type=loss_type), fused=not TRL_1_14)


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
    assert expected[0][0]["entropy"] == expected[0][0]["entropy"]  # TRL's own: a number
    assert logs[0]["entropy"] != logs[0]["entropy"]  # NaN: not computed


def current(seam):
    owner, name = seams.resolve(seam, trl.__version__)
    return owner.__dict__[name]


def test_unpatch_restores_the_very_same_objects():
    layout, supported = seams.layout_for(trl.__version__)
    assert supported and layout is (seams.CHUNKED if TRL_1_14 else seams.FUSED_HEAD)
    replaced = [seam for seam in layout.seams if seam.replace is not None]
    before = [current(seam) for seam in replaced]
    fastalign_trl.patch_trl()
    assert fastalign_trl.is_patched()
    assert all(current(seam) is not original for seam, original in zip(replaced, before))
    fastalign_trl.patch_trl()  # idempotent
    fastalign_trl.unpatch_trl()
    assert not fastalign_trl.is_patched()
    assert all(current(seam) is original for seam, original in zip(replaced, before))
    if not TRL_1_14:
        from trl.trainer import dpo_trainer, kto_trainer, sft_trainer, utils

        assert all(m.add_fused_lm_head is utils.add_fused_lm_head for m in (dpo_trainer, kto_trainer, sft_trainer))


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
    make = sft_trainer(moe, tokenizer)

    expected = train(make, patched=False)
    state.WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        actual = train(make, patched=True)
    ours = [w for w in caught if "fastalign.integrations.trl" in str(w.message)]
    head_name = "chunked LM head" if TRL_1_14 else "fused LM head"
    assert len(ours) == 1 and f"TRL's own {head_name}" in str(ours[0].message)
    assert_same_training(expected, actual)
