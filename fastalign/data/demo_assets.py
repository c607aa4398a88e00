"""Paths of the demo data bundled in fastalign/assets/ (an invented "Homely Hub" smart-home product).

All files are JSON Lines:
    cpt_train / cpt_eval        {"text"}: help-center articles, forum answers and troubleshooting steps; the train
                                split holds planted exact and near duplicates, formatting noise and fake PII (emails,
                                phone numbers, IP addresses) for the preprocessing steps to find.
    sft_train / sft_eval        {"prompt", "completion"}: customer questions and support answers.
    sft_messages                {"messages"}: chat conversations with a system prompt, one or two turns.
    sft_instructions            {"instruction", "context", "response"}: the context is empty in about half.
    preference_train / _eval    {"prompt", "chosen", "rejected"}: customer questions, a concrete support answer
                                (chosen) and a polite reply with no usable step (rejected); 200 / 40 pairs, no
                                prompt shared between the splits or with the SFT files.
"""

from importlib import resources
from pathlib import Path

DEMO_DATA_FILES = {
    name: f"{name}.jsonl"
    for name in (
        "cpt_train",
        "cpt_eval",
        "sft_train",
        "sft_eval",
        "sft_messages",
        "sft_instructions",
        "preference_train",
        "preference_eval",
    )
}


def demo_data_path(name: str) -> Path:
    """The bundled file `name` (a key of `DEMO_DATA_FILES`), ready for `load_records`."""
    if name not in DEMO_DATA_FILES:
        raise ValueError(f"unknown demo data {name!r}; expected one of {list(DEMO_DATA_FILES)}")
    return Path(str(resources.files("fastalign") / "assets" / DEMO_DATA_FILES[name]))
