"""Config loading: every problem is reported with its path in the config, before any model is loaded."""

from pathlib import Path

import pytest
import yaml

from fastalign.config import Config, ConfigError, load_config

EXAMPLES = Path(__file__).parent.parent / "examples"
MINIMAL = {
    "objective": "sft",
    "model": {"name_or_path": "meta-llama/Llama-2-7b-hf"},
    "data": {"train": {"path": "train.jsonl"}},
    "training": {"output_dir": "out"},
}


@pytest.fixture
def write_config(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')

    def write(raw: dict) -> Path:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


def with_(raw: dict, dotted: str, value) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(raw))
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return raw


@pytest.mark.parametrize("name", ["cpt_7b_qlora.yaml", "sft_7b_qlora.yaml"])
def test_examples_parse_without_loading_a_model(name, monkeypatch):
    monkeypatch.chdir(EXAMPLES.parent)  # their data paths are relative to the repository root
    config = load_config(EXAMPLES / name)
    assert isinstance(config, Config)
    assert config.model.quantization == "nf4" and config.model.lora is not None


def test_minimal_config_gets_documented_defaults(write_config):
    config = load_config(write_config(MINIMAL))
    assert config.training.nan_policy == "stop"
    assert config.model.lora is None and config.model.attn_implementation == "sdpa"
    assert Path(config.data.train.path).is_file()  # resolved relative to the config file


def test_dotted_overrides_are_parsed_as_yaml_and_validated(write_config):
    raw = with_(MINIMAL, "model.lora", {"r": 4})
    config = load_config(write_config(raw), ["training.max_steps=10", "model.lora.r=8", "training.learning_rate=3e-4"])
    assert config.training.max_steps == 10 and config.model.lora.r == 8 and config.training.learning_rate == 3e-4
    config = load_config(write_config(raw), ["model.lora.target_modules=[q_proj, v_proj]"])
    assert config.model.lora.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    "dotted, value, message",
    [
        ("training.learning_rate", "abc", "training.learning_rate: expected float, got 'abc'"),
        ("training.max_steps", "10", "training.max_steps: expected int, got '10'"),
        ("training.max_steps", True, "training.max_steps: expected int, got True"),
        ("training.lerning_rate", 1e-4, "training.lerning_rate: unknown key (did you mean learning_rate?)"),
        ("model.lora.rank", 8, "model.lora.rank: unknown key (known: alpha, dropout, r, target_modules)"),
        ("model.quantization", "nf3", "model.quantization: expected one of nf4, int8, none, got 'nf3'"),
        ("objective", "ppo", "objective: expected one of cpt, sft, reward, dpo, orpo, kto, cpo, got 'ppo'"),
        ("data.train.path", "x.jsonl", "data.train.path: file not found: x.jsonl"),
        ("model.name_or_path", "./no/such/model", "model.name_or_path: file not found: ./no/such/model"),
        ("data.sft.max_length", "long", "data.sft.max_length: expected int, got 'long'"),
        ("data.cleaning.near_dedup", "yes please", "data.cleaning.near_dedup: expected bool"),
        ("data.cpt.max_length", 1, "data.cpt: max_length must be at least 2"),
        ("model.quantization", "nf4", "model: quantization 'nf4' needs lora"),
        ("training.report_to", 3, "training.report_to: expected str or list"),
    ],
)
def test_errors_name_the_key(write_config, dotted, value, message):
    with pytest.raises(ConfigError) as error:
        load_config(write_config(with_(MINIMAL, dotted, value)))
    assert str(error.value).startswith(f"config error at {message}")


def test_missing_required_key_and_bad_override(write_config):
    raw = yaml.safe_load(yaml.safe_dump(MINIMAL))
    del raw["training"]["output_dir"]
    with pytest.raises(ConfigError, match="training.output_dir: missing required key"):
        load_config(write_config(raw))
    with pytest.raises(ConfigError, match="not of the form key.sub=value"):
        load_config(write_config(MINIMAL), ["training.max_steps"])
    with pytest.raises(ConfigError, match="file not found"):
        load_config("no_such_config.yaml")
