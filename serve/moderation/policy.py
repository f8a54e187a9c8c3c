"""What the policy does to a generation's images: each checked and marked; under ``block`` a flagged one blacked out.

The image check is a protocol (:class:`ImageChecker`: one :class:`~serve.moderation.Verdict` per image), so that a
served safety checker plugs in; without one, each image carries the verdict on the request's prompt and inputs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from serve.moderation import Policy, Screening, Verdict


class ImageChecker(Protocol):
    """What checks generated or uploaded images (a served safety checker)."""

    def check_images(self, images: list[bytes]) -> list[Verdict]:
        """One verdict per encoded image, in order."""


def blacked_out(image: bytes) -> bytes:
    """A black PNG of ``image``'s size (what diffusers' safety checker puts in a flagged image's place)."""
    with Image.open(io.BytesIO(image)) as opened:
        size = opened.size
    out = io.BytesIO()
    Image.new("RGB", size).save(out, format="PNG")
    return out.getvalue()


@dataclass(frozen=True)
class Moderated:
    """A generation's images after its policy: some blacked out under ``block``, and each one's verdict."""

    images: list[bytes]
    verdicts: list[Verdict] | None  # None: the policy is off, nothing was checked nor is marked
    checked: list[Verdict] = field(default_factory=list)  # the image checker's own verdicts (none without one)

    @property
    def flagged(self) -> bool:
        """Whether any image is flagged (such an answer is not cached)."""
        return any(verdict.flagged for verdict in self.verdicts or ())

    def marks(self) -> list[dict] | None:
        """Each image's ``moderation`` mark (OpenAI's moderation result), or None when nothing was checked."""
        return None if self.verdicts is None else [verdict.to_api() for verdict in self.verdicts]


def moderated(images: list[bytes], screening: Screening, checker: ImageChecker | None) -> Moderated:
    """``images`` under ``screening``'s policy: checked, marked, and under ``block`` blacked out if flagged.

    Checked by ``checker`` if the stack has one; each verdict is merged with the request's inputs'.
    """
    if screening.policy is Policy.OFF:
        return Moderated(images, None)
    checked = checker.check_images(images) if checker is not None and images else [Verdict() for _ in images]
    verdicts = [screening.inputs.merged(verdict) for verdict in checked]
    if screening.policy is Policy.BLOCK:
        images = [blacked_out(image) if v.flagged else image for image, v in zip(images, verdicts, strict=True)]
    return Moderated(images, verdicts, checked if checker is not None else [])
