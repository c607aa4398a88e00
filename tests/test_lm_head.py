"""The fused training loss equals each model's own ``labels=`` loss (full logits), with the same gradients.

Tiny configs of each architecture family exercise what ``fastalign.lm_head`` must read: plain heads (Llama, Qwen2,
Mistral, Phi-3), Gemma-2's final logit softcap, Cohere's and Granite's logit scales, tied embeddings, LoRA (frozen
head), PEFT ``modules_to_save`` heads, bitsandbytes 4-bit models and heads, and autocast. Tolerances: float32
everywhere; the fused loss sums over the vocabulary in a different order than the reference, so agreement is ~1e-6
relative, checked at 1e-5.
"""

import peft
import pytest
import torch
import transformers
from tiny_models import TINY_SHAPE

from fastalign.lm_head import last_hidden_states, lm_head_of
from fastalign.training.objectives import next_token_loss

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, max_position_embeddings=64, **TINY_SHAPE)
ARCHITECTURES = {
    "llama": (transformers.LlamaConfig, {}),
    "qwen2": (transformers.Qwen2Config, {}),
    "mistral": (transformers.MistralConfig, {}),
    "phi3": (transformers.Phi3Config, {"pad_token_id": 0}),
    "gemma2-softcap": (transformers.Gemma2Config, {"head_dim": 8, "final_logit_softcapping": 3.0}),
    "cohere-logit-scale": (transformers.CohereConfig, {"logit_scale": 0.5}),
    "granite-logits-scaling": (transformers.GraniteConfig, {"logits_scaling": 4.0}),
    "llama-tied": (transformers.LlamaConfig, {"tie_word_embeddings": True}),
}


def tiny_model(name: str, **overrides) -> transformers.PreTrainedModel:
    config_class, extra = ARCHITECTURES[name]
    config = config_class(**{**COMMON, **extra, **overrides})
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random heads give near-uniform logits; make them peaked so softcap/scale matter
        model.get_output_embeddings().weight.mul_(20.0)
    return model


def batch(batch_size: int = 2, length: int = 12) -> dict:
    input_ids = torch.randint(0, VOCAB, (batch_size, length))
    labels = input_ids.clone()
    labels[0, :4] = -100  # a prompt
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -3:] = 0  # right padding
    labels[1, -3:] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def assert_same_loss_and_gradients(model, inputs):
    model.train()  # as in training (gradient checkpointing only runs in train mode); the configs have no dropout
    params = [p for p in model.parameters() if p.requires_grad]
    reference = model(**inputs).loss
    expected = torch.autograd.grad(reference, params)
    fused = next_token_loss(model, inputs, num_items_in_batch=None)
    grads = torch.autograd.grad(fused, params)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, expected):
        # Float32 rounding scales with a gradient's largest entries, not with each entry: on the quantized models
        # some entries are ~1e-3 of the largest (measured error <= 8e-7 of the largest over 12 seeds, int8 and nf4)
        torch.testing.assert_close(g, e, rtol=1e-4, atol=max(1e-6, 1e-5 * e.abs().max().item()))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_fused_loss_matches_model_loss_full_finetuning(name):
    model = tiny_model(name)
    head = lm_head_of(model)
    assert head.weight.requires_grad
    if name == "llama-tied":
        assert head.weight is model.get_input_embeddings().weight
    assert head.softcap == (3.0 if name == "gemma2-softcap" else None)
    assert head.logit_scale == {"cohere-logit-scale": 0.5, "granite-logits-scaling": 0.25}.get(name, 1.0)
    assert_same_loss_and_gradients(model, batch())


@pytest.mark.parametrize("name", ["llama", "gemma2-softcap", "llama-tied"])
def test_fused_loss_matches_model_loss_lora_with_frozen_head(name):
    model = peft.get_peft_model(tiny_model(name), peft.LoraConfig(r=4, target_modules="all-linear", lora_dropout=0))
    with torch.no_grad():  # LoRA B starts at zero; make the adapters matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    assert not lm_head_of(model).weight.requires_grad
    assert_same_loss_and_gradients(model, batch())


def test_modules_to_save_head_is_the_trainable_copy():
    model = peft.get_peft_model(
        tiny_model("llama"), peft.LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    )
    head = lm_head_of(model)
    assert head.weight.requires_grad
    assert_same_loss_and_gradients(model, batch())


def test_lora_on_the_head_is_refused_with_advice():
    model = peft.get_peft_model(tiny_model("llama"), peft.LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="modules_to_save"):
        lm_head_of(model)


def test_hidden_states_are_the_decoder_output_and_no_logits_are_formed():
    model = tiny_model("llama")
    inputs = batch()
    expected = model.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    heads = []
    model.lm_head.register_forward_hook(lambda module, args, output: heads.append(output.shape))
    hidden = last_hidden_states(model, inputs["input_ids"], inputs["attention_mask"])
    torch.testing.assert_close(hidden, expected)
    assert heads == [torch.Size([2, 0, VOCAB])]  # the head projected no position


@pytest.mark.parametrize("quantization, layer", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_fused_loss_matches_model_loss_quantized_lora_with_gradient_checkpointing(tmp_path, quantization, layer):
    pytest.importorskip("bitsandbytes")
    from fastalign.config import LoraConfig, ModelConfig
    from fastalign.modeling import load_model

    tiny_model("llama", hidden_size=64).save_pretrained(tmp_path)  # bitsandbytes blocks are 64 wide
    config = ModelConfig(
        name_or_path=str(tmp_path),
        dtype="float32",
        quantization=quantization,
        lora=LoraConfig(r=4, dropout=0.0),
        gradient_checkpointing=True,
    )
    try:
        model = load_model(config)
    except (RuntimeError, NotImplementedError, ImportError) as error:
        pytest.skip(f"bitsandbytes {quantization} does not run on this machine: {error}")
    assert type(model.base_model.model.model.layers[0].mlp.up_proj.base_layer).__name__ == layer
    assert_same_loss_and_gradients(model, batch())


def test_4bit_quantized_head_is_dequantized_to_what_the_layer_computes():
    bnb = pytest.importorskip("bitsandbytes")
    model = tiny_model("llama", hidden_size=64)
    head = bnb.nn.Linear4bit(64, VOCAB, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    head.weight = bnb.nn.Params4bit(model.lm_head.weight.data.clone(), requires_grad=False, quant_type="nf4")
    model.lm_head = head.to("cpu")  # quantizes
    model.requires_grad_(False)
    model.model.norm.weight.requires_grad_(True)
    assert_same_loss_and_gradients(model, batch())


def test_under_autocast_the_fused_loss_computes_in_the_autocast_dtype_like_the_model():
    model = tiny_model("llama")
    inputs = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = model(**inputs).loss
        fused = next_token_loss(model, inputs, num_items_in_batch=None)
        hidden, head = lm_head_of(model).matching(last_hidden_states(model, inputs["input_ids"]))
    assert hidden.dtype == head.weight.dtype == torch.bfloat16
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, reference.float(), rtol=2e-2, atol=0)  # bf16 logits: ~3 significant digits
