"""Where the assistant turns are in a rendered chat, found by rendering the conversation prefix by prefix."""

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase


def render_chat_with_assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, Any]]
) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` with the tokenizer's chat template and locate each assistant turn in the text.

    The span of assistant turn i is the text that rendering messages[: i + 1] adds to rendering messages[:i] with
    the generation prompt (the assistant header): the reply and whatever the template closes it with (EOS or an
    end-of-turn token). This works with any template that renders prefix-stably, with or without
    `{% generation %}` markers.

    Returns:
        The full text and the [start, end) character spans of the assistant turns, in order.

    Raises:
        ValueError: the template renders a conversation so that it does not start with the rendering of its
            prefixes (e.g. templates that drop earlier reasoning), which makes the spans ill-defined.
    """

    def render(prefix, add_generation_prompt):
        return tokenizer.apply_chat_template(list(prefix), tokenize=False, add_generation_prompt=add_generation_prompt)

    text = render(messages, False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        # An empty conversation cannot be rendered; a conversation opening with the assistant starts at 0.
        before = render(messages[:index], True) if index else ""
        through = render(messages[: index + 1], False)
        if not (through.startswith(before) and text.startswith(through)):
            raise ValueError(
                "the chat template does not render conversations prefix-stably (the text of a conversation must "
                f"start with the text of its first turns), so assistant turn {index} cannot be located"
            )
        spans.append((len(before), len(through)))
    return text, spans
