"""The sizes a generation accepts, and outpainting's margins: the sides' limits, their pattern and their check."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from serve.integers import JsonInt

MIN_SIDE = 64
MAX_SIDE = 1024
SIDE_MULTIPLE = 8
_SIZE = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")  # canonical ASCII digits, matched whole (no newline)


def _side_pattern() -> str:
    """Every side :data:`_SIZE` and the limits accept (canonical digits: no zeros in front), as one expression."""
    return "|".join(str(side) for side in range(MIN_SIDE, MAX_SIDE + 1) if side % SIDE_MULTIPLE == 0)


SIZE_PATTERN = f"^(?:{_side_pattern()})x(?:{_side_pattern()})(?!\\n)$"
"""The sizes the API accepts, for the schema (``(?!\\n)$``: the end, not a newline before it)."""


def checked_size(value: str) -> str:
    """``value`` if it is a size the API accepts (``WIDTHxHEIGHT``), else a ValueError saying the limits."""
    match = _SIZE.fullmatch(value)
    if not match:
        raise ValueError("size must look like '256x256' (WIDTHxHEIGHT, digits without zeros in front)")
    for side in map(int, match.groups()):
        if side % SIDE_MULTIPLE or not MIN_SIDE <= side <= MAX_SIDE:
            raise ValueError(f"size sides must be multiples of {SIDE_MULTIPLE} between {MIN_SIDE} and {MAX_SIDE}")
    return value


class Outpaint(BaseModel):
    """Pixels added on each side of the input image, to be drawn: the image padded, the new area the mask."""

    model_config = ConfigDict(extra="forbid")

    left: JsonInt = Field(0, ge=0, le=MAX_SIDE, multiple_of=SIDE_MULTIPLE)
    top: JsonInt = Field(0, ge=0, le=MAX_SIDE, multiple_of=SIDE_MULTIPLE)
    right: JsonInt = Field(0, ge=0, le=MAX_SIDE, multiple_of=SIDE_MULTIPLE)
    bottom: JsonInt = Field(0, ge=0, le=MAX_SIDE, multiple_of=SIDE_MULTIPLE)

    @model_validator(mode="after")
    def _some(self) -> Outpaint:
        if not (self.left or self.top or self.right or self.bottom):
            raise PydanticCustomError("no_side", "needs at least one side over 0", {})
        return self
