"""What the policy does to a generation's images: each checked and marked; under ``block`` a flagged one blacked out.

The image check is a protocol (:class:`ImageChecker`: one :class:`~serve.moderation.Verdict` per RGB image), which
the served safety checker (:class:`serve.moderation.images.ImageChecker`) keeps; without one, each image carries the
verdict on the request's prompt and input images. The text check (:class:`TextChecker`) is the served text
classifier's (:class:`serve.moderation.text_model.TextModerator`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

from serve.moderation import Policy, Screening, Verdict


class ImageChecker(Protocol):
    """What checks generated or uploaded images (a served safety checker)."""

    async def check(self, images: list[np.ndarray]) -> list[Verdict]:
        """One verdict per ``H x W x 3`` ``uint8`` RGB image, in order."""


class TextChecker(Protocol):
    """What checks texts (a served text classifier)."""

    async def check(self, texts: list[str]) -> list[Verdict]:
        """One verdict per text, in order."""


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


def moderated(images: list[bytes], screening: Screening, checked: list[Verdict] | None = None) -> Moderated:
    """Encoded ``images`` under ``screening``'s policy: marked, and under ``block`` blacked out if flagged.

    ``checked``: the image checker's verdict on each (None: the stack serves none); each mark merges it with the
    verdict on the request's inputs.
    """
    if screening.policy is Policy.OFF:
        return Moderated(images, None)
    own = checked if checked is not None else [Verdict() for _ in images]
    verdicts = [screening.inputs.merged(verdict) for verdict in own]
    if screening.policy is Policy.BLOCK:
        images = [blacked_out(image) if v.flagged else image for image, v in zip(images, verdicts, strict=True)]
    return Moderated(images, verdicts, checked or [])


def marked(answer: dict, screening: Screening) -> dict:
    """``answer``'s images (its ``data``) each marked with the verdict on its input image, unless the policy is off."""
    if screening.policy is not Policy.OFF:
        for item in answer["data"]:
            item["moderation"] = screening.inputs.to_api()
    return answer
