"""Moderation: what a prompt or an image is flagged for, and what the stack does about it (its policy).

The checks are served models (an image safety checker, a text classifier) and a prompt blocklist; each answers a
:class:`Verdict`. The policy (:class:`Policy`) says what a flag does: nothing, a mark on the answer, or a refusal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Policy(StrEnum):
    """What a flag does: ``off`` checks nothing, ``flag`` marks the answer, ``block`` refuses or blanks."""

    OFF = "off"
    FLAG = "flag"
    BLOCK = "block"


@dataclass(frozen=True)
class Verdict:
    """One input's moderation (OpenAI's ``results[]`` entry): flagged if any category is."""

    categories: dict[str, bool] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def flagged(self) -> bool:
        """Whether any category is flagged."""
        return any(self.categories.values())

    def to_api(self) -> dict:
        """The JSON shape of OpenAI's moderation result (and of an image's ``moderation`` mark)."""
        return {"flagged": self.flagged, "categories": dict(self.categories), "category_scores": dict(self.scores)}
