r"""Prompt weighting in AUTOMATIC1111's syntax: ``(text:1.2)``, ``(text)`` (x1.1), ``[text]`` (/1.1), nested.

The parse is AUTOMATIC1111's ``parse_prompt_attention`` (stable-diffusion-webui, ``modules/prompt_parser.py``): the
same tokens, the same multipliers, the same merging of neighbouring fragments of equal weight. It is stricter where
that tool guesses: a bracket that is never closed, a closing bracket with none open, a weight that is not a number
or lies outside [0, :data:`MAX_WEIGHT`] is refused (400 naming the field) rather than read some way. A literal bracket
is escaped: ``\(``, ``\)``, ``\[``, ``\]`` (``\\`` a backslash; a lone one is dropped, as there). The weights are
applied to the text encoders' hidden states by :mod:`serve.text_to_image.prompt_chunks`. AUTOMATIC1111's ``BREAK``
and prompt editing (``[from:to:when]``) are not read: they stay text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from serve.errors import InvalidInput

MAX_WEIGHT = 10.0
"""The largest weight a fragment may be given (its bracketed nesting multiplied in)."""
WEIGHTING = (
    "(text:1.3) weighs text 1.3, (text) 1.1, [text] 1/1.1, nested brackets multiply, weights in [0, 10]; a literal "
    "bracket is escaped (\\( \\) \\[ \\]). Longer than the text encoder reads at once: in chunks (SD, SDXL)."
)
"""The weighting, as the API's fields describe it."""
ROUND, SQUARE = 1.1, 1 / 1.1
"""What ``(text)`` and ``[text]`` multiply their text's weight by."""
_ATTENTION = re.compile(
    r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|   # escapes (and a lone backslash)
\(|\[|
:\s*([+-]?[.\d]+)\s*\)|       # a weight closing a round bracket
\)|]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
"""AUTOMATIC1111's ``re_attention``, token by token."""


@dataclass(frozen=True)
class Fragment:
    """A run of a prompt's text and the weight its tokens are given."""

    text: str
    weight: float


def parse_weighted(text: str, field: str = "prompt") -> tuple[Fragment, ...]:
    """``text``'s fragments and their weights, as AUTOMATIC1111 parses them; a prompt without brackets is one fragment.

    Raises:
        InvalidInput: an unbalanced bracket or a weight that is not a number in [0, :data:`MAX_WEIGHT`], naming
            ``field``.
    """
    parts: list[list] = []
    open_brackets: list[tuple[str, int, int]] = []  # (bracket, first fragment inside, character)
    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            parts.append([token[1:], 1.0])  # a lone backslash is dropped, as there
        elif token in "([":
            open_brackets.append((token, len(parts), match.start()))
        elif weight is not None or token in ")]":
            start, by = _closed(open_brackets, token, weight, match.end() - 1, field)
            for part in parts[start:]:
                part[1] *= by
        else:
            parts.append([token, 1.0])
    if open_brackets:
        bracket, _, at = open_brackets[-1]
        raise InvalidInput(
            f"{field}: {bracket!r} at character {at} is never closed (prompt weighting: write a literal bracket as "
            f"\\{bracket})",
            field,
        )
    return _merged(parts, field)


def _closed(open_brackets: list, token: str, weight: str | None, at: int, field: str) -> tuple[int, float]:
    """The bracket ``token`` closes taken off ``open_brackets``: its first fragment and what it multiplies by."""
    bracket = "[" if token == "]" else "("
    if not open_brackets or open_brackets[-1][0] != bracket:
        raise InvalidInput(
            f"{field}: {token[-1]!r} at character {at} closes no {bracket!r} (prompt weighting: write a literal "
            f"bracket as \\{token[-1]})",
            field,
        )
    start = open_brackets.pop()[1]
    return start, _weight(weight, field) if weight is not None else ROUND if bracket == "(" else SQUARE


def _merged(parts: list[list], field: str) -> tuple[Fragment, ...]:
    """Neighbouring ``parts`` of equal weight as one fragment (one empty fragment for none), each weight checked."""
    fragments: list[list] = []
    for part in parts or [["", 1.0]]:
        if fragments and fragments[-1][1] == part[1]:
            fragments[-1][0] += part[0]
        else:
            fragments.append(part)
    for _, weight in fragments:
        if not 0.0 <= weight <= MAX_WEIGHT:
            raise InvalidInput(f"{field}: a nested weight of {weight:g} is outside [0, {MAX_WEIGHT:g}]", field)
    return tuple(Fragment(text, weight) for text, weight in fragments)


def _weight(written: str, field: str) -> float:
    """A ``(text:WEIGHT)``'s weight: a number in [0, :data:`MAX_WEIGHT`]."""
    try:
        weight = float(written)
    except ValueError:
        raise InvalidInput(f"{field}: prompt weight {written!r} is not a number", field) from None
    if not 0.0 <= weight <= MAX_WEIGHT:
        raise InvalidInput(f"{field}: prompt weight {written} is outside [0, {MAX_WEIGHT:g}]", field)
    return weight


def checked_prompt(text: str, field: str) -> str:
    """``text`` unchanged once its weighting parses (the schema's check: a 400 naming ``field`` otherwise)."""
    parse_weighted(text, field)
    return text


def plain_text(text: str) -> str:
    """The words the encoders read from ``text``: its weighting syntax and escapes taken out."""
    return "".join(fragment.text for fragment in parse_weighted(text))
