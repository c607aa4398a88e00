"""train_demo_tokenizer: trains offline, saves, and loads back through AutoTokenizer unchanged."""

from transformers import AutoTokenizer

from fastalign.data import DEMO_CHAT_TEMPLATE, train_demo_tokenizer


def test_demo_tokenizer_round_trips_through_auto_tokenizer(tmp_path):
    trained = train_demo_tokenizer(tmp_path / "tokenizer", vocab_size=2048)
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")

    assert 1500 <= len(reloaded) <= 2048  # the small demo corpus saturates below the target
    special_tokens = (reloaded.bos_token, reloaded.eos_token, reloaded.pad_token, reloaded.unk_token)
    assert special_tokens == ("<s>", "</s>", "<pad>", "<unk>")
    assert len({reloaded.bos_token_id, reloaded.eos_token_id, reloaded.pad_token_id, reloaded.unk_token_id}) == 4
    assert reloaded.chat_template == DEMO_CHAT_TEMPLATE

    text = "Hold the reset button on the Homely Hub for 15 seconds. Café ✓"
    encoded = reloaded(text)["input_ids"]
    assert encoded == trained(text)["input_ids"]
    assert encoded[0] == reloaded.bos_token_id
    assert reloaded.decode(encoded, skip_special_tokens=True) == text  # byte-level: lossless, no <unk>

    conversation = [{"role": "user", "content": "Is the hub offline?"}, {"role": "assistant", "content": "Yes."}]
    assert (
        reloaded.apply_chat_template(conversation, tokenize=False)
        == "<s><|user|>\nIs the hub offline?\n<|assistant|>\nYes.</s>"
    )
    generation_prompt = reloaded.apply_chat_template(conversation[:1], tokenize=False, add_generation_prompt=True)
    assert generation_prompt.endswith("<|assistant|>\n")
