"""PII scrubbers: each finds one kind of personal data and replaces it with a placeholder such as <EMAIL>.

A scrubber is anything with a `name` and a `scrub(text) -> (text, replacements)` method; `RegexScrubber` covers
the usual case (a pattern, an optional check of each match, a placeholder). The built-in ones are `PII_SCRUBBERS`.
"""

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol


class PIIScrubber(Protocol):
    """What `preprocess_corpus` needs from a scrubber."""

    name: str

    def scrub(self, text: str) -> tuple[str, int]:
        """`text` with this kind of PII replaced, and the number of replacements."""
        ...


@dataclass(frozen=True)
class RegexScrubber:
    """Replace every match of `pattern` (for which `accept(match)` holds, when given) with `placeholder`.

    Args:
        name: the kind of PII, used in the report ("email").
        pattern: a regular expression (Python `re` syntax).
        placeholder: the replacement; default ``<NAME>`` from `name` ("employee_id" -> "<EMPLOYEE_ID>").
        accept: a check on the matched string that filters false positives (e.g. the Luhn checksum).
    """

    name: str
    pattern: str
    placeholder: str | None = None
    accept: Callable[[str], bool] | None = None

    @cached_property
    def _compiled(self) -> re.Pattern:
        return re.compile(self.pattern)

    def scrub(self, text: str) -> tuple[str, int]:
        placeholder = self.placeholder or f"<{self.name.upper()}>"
        replacements = 0

        def replace(match: re.Match) -> str:
            nonlocal replacements
            if self.accept is not None and not self.accept(match.group()):
                return match.group()
            replacements += 1
            return placeholder

        return self._compiled.sub(replace, text), replacements


def passes_luhn_check(number: str) -> bool:
    """Whether the 13-19 digits in `number` (spaces and dashes ignored) carry a valid Luhn checksum."""
    digits = [int(char) for char in number if char.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    checksum = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 1:  # every second digit from the right is doubled, its digits summed
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        checksum += digit
    return checksum % 10 == 0


def is_ip_address(candidate: str) -> bool:
    """Whether `candidate` parses as an IPv4 or IPv6 address (filters version numbers and times like 10:30:00)."""
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


EMAIL = RegexScrubber("email", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CREDIT_CARD = RegexScrubber("credit_card", r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])", accept=passes_luhn_check)
IP_ADDRESS = RegexScrubber(
    "ip_address",
    r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:|:){2,7}(?:[0-9A-Fa-f]{1,4}|:)(?![\w:])",
    accept=is_ip_address,
)
# North American (555-013-2047, (555) 013 2047) and international (+44 20 7946 0958) numbers; an area code
# followed by a separator is required, and no digit group may touch the match, so that order numbers, card-like
# digit runs and plain digit runs are left alone.
PHONE = RegexScrubber(
    "phone",
    r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}(?!\w|[ .-]\d)",
)

# Applied in this order: credit cards and IP addresses before phone numbers, whose pattern would eat their digits.
PII_SCRUBBERS: dict[str, RegexScrubber] = {
    scrubber.name: scrubber for scrubber in (EMAIL, CREDIT_CARD, IP_ADDRESS, PHONE)
}
