"""``fastalign.integrations.transformers``: a model's ``labels=`` loss through fastalign equals its own, logits-free.

Tolerances: float32 everywhere; the fused loss sums the vocabulary in another order than the model's
``log_softmax``, so losses agree to ~1e-6 relative (checked at 1e-5) and gradients at 1e-4 relative. Trainer runs
compare parameters after two SGD steps at the same tolerance.
"""

import copy

import peft
import pytest
import torch
import transformers
from tiny_models import TINY_SHAPE

from fastalign.integrations.transformers import CausalLMLoss, apply_to_model, is_applied, remove_from_model

VOCAB = 256
COMMON = dict(vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=0, **TINY_SHAPE)
ARCHITECTURES = {
    "llama": (transformers.LlamaConfig, {}),
    "qwen2": (transformers.Qwen2Config, {}),
    "qwen3": (transformers.Qwen3Config, {"head_dim": 8}),
    "mistral": (transformers.MistralConfig, {}),
    "phi3": (transformers.Phi3Config, {}),
    "gemma2-softcap": (transformers.Gemma2Config, {"head_dim": 8, "final_logit_softcapping": 3.0}),
    "gemma3-softcap": (transformers.Gemma3TextConfig, {"head_dim": 8, "final_logit_softcapping": 3.0}),
}


def tiny_model(name: str = "llama") -> transformers.PreTrainedModel:
    config_class, extra = ARCHITECTURES[name]
    model = transformers.AutoModelForCausalLM.from_config(config_class(**{**COMMON, **extra}), dtype=torch.float32)
    with torch.no_grad():  # peaked logits, so that softcap matters
        model.get_output_embeddings().weight.mul_(10.0)
    return model.train()


def batch(batch_size: int = 2, length: int = 12) -> dict:
    input_ids = torch.randint(1, VOCAB, (batch_size, length))
    labels = input_ids.clone()
    labels[0, :4] = -100  # a prompt
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -3:] = 0  # right padding
    labels[1, -3:] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def loss_and_grads(model, inputs, **kwargs):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(**inputs, **kwargs).loss
    return loss, torch.autograd.grad(loss, params)


def assert_matches_own_loss(model, inputs, **kwargs):
    expected, expected_grads = loss_and_grads(model, inputs, **kwargs)
    apply_to_model(model)
    head_outputs = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, out: head_outputs.append(out.shape))
    loss, grads = loss_and_grads(model, inputs, **kwargs)
    hook.remove()
    assert all(shape[-2] == 0 for shape in head_outputs), head_outputs  # the head projected no position
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_loss_and_gradients_equal_the_models_own(name):
    assert_matches_own_loss(tiny_model(name), batch())


def test_peft_lora_model_frozen_head():
    model = peft.get_peft_model(tiny_model("llama"), peft.LoraConfig(r=4, target_modules="all-linear", lora_dropout=0))
    with torch.no_grad():  # LoRA B starts at zero; make the adapters matter
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    assert_matches_own_loss(model, batch())


def test_num_items_in_batch_and_shift_labels_are_honoured():
    inputs = batch()
    assert_matches_own_loss(tiny_model("llama"), inputs, num_items_in_batch=torch.tensor(23))
    # Hugging Face uses shift_labels (as given, e.g. by context parallelism) in place of shifting labels
    shift_labels = torch.nn.functional.pad(inputs["labels"], (0, 1), value=-100)[:, 1:].contiguous()
    shift_labels[0, 5] = -100
    assert_matches_own_loss(tiny_model("llama"), inputs, shift_labels=shift_labels, num_items_in_batch=11)


def test_logits_outside_training_steps_and_remove_restores_the_forward():
    model = apply_to_model(tiny_model("llama"))
    inputs = batch()
    assert model(**inputs).logits is None  # training step with labels: loss only
    assert model(input_ids=inputs["input_ids"]).logits.shape == (2, 12, VOCAB)  # no labels: the model's forward
    with torch.no_grad():
        assert model(**inputs).logits.shape == (2, 12, VOCAB)
    model.eval()
    assert model(**inputs).logits.shape == (2, 12, VOCAB)
    assert model.generate(inputs["input_ids"][:, :3], max_new_tokens=2, do_sample=False).shape == (2, 5)
    model.train()
    remove_from_model(model)
    assert not is_applied(model) and "forward" not in model.__dict__
    assert model(**inputs).logits.shape == (2, 12, VOCAB)


def trainer_run(model, *, compute_loss_func=None, steps: int = 2) -> tuple[list[float], torch.nn.Module]:
    """Two optimizer steps of transformers.Trainer with gradient accumulation (so num_items_in_batch is used)."""
    data = [{k: v[i] for k, v in batch(8, 10).items()} for i in range(8)]
    args = transformers.TrainingArguments(
        output_dir="/tmp/fastalign-test-trainer",
        max_steps=steps,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=0.5,
        optim="sgd",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, compute_loss_func=compute_loss_func)
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry], model


def assert_same_training(reference, candidate):
    (losses, model), (expected_losses, expected_model) = candidate, reference
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected_losses), rtol=1e-5, atol=1e-6)
    for param, expected in zip(model.parameters(), expected_model.parameters()):
        torch.testing.assert_close(param, expected, rtol=1e-4, atol=1e-5)


def test_trainer_with_gradient_accumulation_matches_the_models_own_loss():
    model = tiny_model("llama")
    torch.manual_seed(0)
    reference = trainer_run(copy.deepcopy(model))
    torch.manual_seed(0)
    assert_same_training(reference, trainer_run(apply_to_model(copy.deepcopy(model))))


def test_compute_loss_func_is_logits_free_with_hidden_for_loss():
    model = tiny_model("llama")
    torch.manual_seed(0)
    reference = trainer_run(copy.deepcopy(model))
    fused = apply_to_model(copy.deepcopy(model), hidden_for_loss=True)
    head_outputs = []
    fused.lm_head.register_forward_hook(lambda m, a, out: head_outputs.append(out.shape))
    torch.manual_seed(0)
    assert_same_training(reference, trainer_run(fused, compute_loss_func=CausalLMLoss()))
    assert head_outputs and all(shape[-2] == 0 for shape in head_outputs)


def test_compute_loss_func_label_smoothing_fused_and_on_logits():
    model = tiny_model("llama")
    inputs = batch()
    labels = inputs.pop("labels")
    outputs = model(**inputs)
    logits, targets = outputs.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
    expected = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.1, reduction="sum") / 13
    loss_func = CausalLMLoss(label_smoothing=0.1)
    with pytest.warns(UserWarning, match="materialized"):
        torch.testing.assert_close(loss_func(outputs, labels, num_items_in_batch=torch.tensor(13)), expected)
    apply_to_model(model, hidden_for_loss=True)
    fused_outputs = model(**inputs)
    assert fused_outputs.logits is None
    fused = loss_func(fused_outputs, labels, num_items_in_batch=torch.tensor(13))
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)


def test_qlora_4bit_model(tmp_path):
    pytest.importorskip("bitsandbytes")
    from fastalign.config import LoraConfig, ModelConfig
    from fastalign.modeling import load_model

    config_class, extra = ARCHITECTURES["llama"]
    transformers.AutoModelForCausalLM.from_config(
        config_class(**{**COMMON, **extra, "hidden_size": 64})
    ).save_pretrained(tmp_path)  # bitsandbytes blocks are 64 wide
    config = ModelConfig(
        name_or_path=str(tmp_path), dtype="float32", quantization="nf4", lora=LoraConfig(r=4, dropout=0.0)
    )
    try:
        model = load_model(config)
    except (RuntimeError, NotImplementedError, ImportError) as error:
        pytest.skip(f"bitsandbytes 4-bit does not run on this machine: {error}")
    assert_matches_own_loss(model.train(), batch())
