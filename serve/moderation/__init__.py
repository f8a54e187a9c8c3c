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

    def merged(self, other: Verdict) -> Verdict:
        """This verdict and ``other`` as one: a category flagged if either flags it, its score the higher."""
        categories = {name: self.categories.get(name, False) or flag for name, flag in other.categories.items()}
        scores = {name: max(self.scores.get(name, 0.0), score) for name, score in other.scores.items()}
        return Verdict(self.categories | categories, self.scores | scores)

    @property
    def flagged_categories(self) -> list[str]:
        """The categories it flags, sorted (what logs and metrics name; never the text)."""
        return sorted(name for name, flag in self.categories.items() if flag)


def policy_of(stack: Policy, key_policy: Policy | None) -> Policy:
    """The policy a request runs under: its key's own (``easel keys create --moderation``), else the stack's."""
    return stack if key_policy is None else key_policy


@dataclass(frozen=True)
class Screening:
    """What admission found of a generation: its policy, the verdict on what it brings (prompt, images), its key."""

    policy: Policy = Policy.OFF
    inputs: Verdict = field(default_factory=Verdict)  # its prompt's and input images' flags, merged
    key_id: str | None = None
