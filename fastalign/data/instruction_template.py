"""`InstructionTemplate`: how instruction/context/response records become a prompt and a completion."""

from dataclasses import dataclass


@dataclass
class InstructionTemplate:
    """Section headers of the instruction format; every section is "header\\n text", sections joined by a blank line.

    Attributes:
        instruction_header: heads the instruction.
        context_header: heads the context; the whole section is left out when the context is empty or null.
        response_header: ends the prompt; the response (the completion) follows on the next line.
        preamble: optional text before the first section (e.g. "Below is an instruction ...").
    """

    instruction_header: str = "### Instruction:"
    context_header: str = "### Context:"
    response_header: str = "### Response:"
    preamble: str = ""

    def render_prompt(self, instruction: str, context: str | None = None) -> str:
        """The prompt text, ending with the response header and a newline, ready for the response to follow."""
        sections = [self.preamble] if self.preamble else []
        sections.append(f"{self.instruction_header}\n{instruction}")
        if context and context.strip():
            sections.append(f"{self.context_header}\n{context}")
        sections.append(f"{self.response_header}\n")
        return "\n\n".join(sections)
