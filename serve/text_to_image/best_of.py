"""Best-of-n: ``candidates`` images drawn for each asked one in the same steps, and the best ``n`` by a score answered.

A request asking ``candidates: k`` is one job of ``k x n`` rows (one batch: every step's denoiser call carries them
all). Row ``i`` is drawn from its own generator, seeded ``seed + i`` (:func:`candidate_seeds`), so it is the image a
one-image request with that seed draws. The served scorer (:class:`serve.text_to_image.scores.Scorer`) scores every
row against the prompt, and the ``n`` best by ``best_of`` are answered, best first, each with its seed; the answer
lists every candidate's seed and scores. It is priced as ``k x n`` images (:attr:`BestOf.drawn_rows`).

Text to image only: an input image's encoding draws from the generator before the noise, which one generator per
row would not draw as a one-image request does.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator
from pydantic_core import PydanticCustomError

from serve.errors import InvalidInput
from serve.integers import JsonInt
from serve.text_to_image.scores import Scorer, check_scores

MAX_CANDIDATES = 8


class BestOf(BaseModel):
    """The request's best-of-n part (:class:`serve.text_to_image.schema.GenerationRequest` is made of it too)."""

    candidates: JsonInt = Field(
        1,
        ge=1,
        le=MAX_CANDIDATES,
        description=f"Best-of-n (up to {MAX_CANDIDATES}): images drawn for each asked one in the same steps (seeds "
        "seed, seed+1, ...), scored by the stack's scorer (easel up --scorer); the best n by best_of are answered, "
        "each with its seed, and every candidate's seed and scores are listed. Priced as candidates x n images. "
        "Text to image only (no input image, no approximate cache).",
    )
    best_of: Literal["clip_score", "aesthetic"] = Field(
        "clip_score",
        description="With candidates: the score that ranks them (clip_score: against the prompt; aesthetic: needs "
        "the stack's aesthetic head).",
    )

    @model_validator(mode="after")
    def _candidates_of_text_to_image(self) -> BestOf:
        if self.candidates > 1 and (getattr(self, "image", None) or getattr(self, "approximate_cache", None)):
            message = "candidates are drawn from text only: not with an input image or approximate_cache"
            raise PydanticCustomError("text_only", message, {"field": "candidates"})
        return self

    @property
    def drawn_rows(self) -> int:
        """Images drawn (and priced): ``candidates`` for each image the answer holds (the request's ``rows``)."""
        return self.candidates * self.rows


def candidate_seeds(seed: int, count: int) -> tuple[int, ...]:
    """The seed of each of ``count`` candidate rows: ``seed``, ``seed + 1``, ..."""
    return tuple(seed + i for i in range(count))


def check_best_of(candidates: int, best_of: str, given: Collection[str]) -> None:
    """A 400 naming ``candidates`` when there is no scorer to rank them, ``best_of`` for a score it does not give.

    ``given``: the scores the stack's scorer gives (none: it serves no scorer); checked at the Gateway's admission.
    """
    if candidates <= 1:
        return
    if not given:
        raise InvalidInput(
            "candidates: this stack serves no scorer to rank them (easel up --scorer clip=DIR)", "candidates"
        )
    check_scores([best_of], given, "best_of")


@dataclass(frozen=True)
class Chosen:
    """The answered images of a best-of-n draw, best first, and what the answer says of every candidate."""

    images: list[np.ndarray]
    scores: list[dict[str, float]]  # the answered images'
    seeds: list[int]  # the answered images'
    candidates: list[dict]  # every row's seed, scores and whether it was answered, in drawn order


def best(scores: list[dict[str, float]], by: str, n: int) -> list[int]:
    """The rows of the ``n`` highest ``by`` scores, best first (a tie: the earlier row)."""
    return sorted(range(len(scores)), key=lambda row: (-scores[row][by], row))[:n]


async def choose(scorer: Scorer, images: list[np.ndarray], seed: int, prompt: str, by: str, n: int) -> Chosen:
    """The best ``n`` of ``images`` (drawn with :func:`candidate_seeds` of ``seed``) by score ``by`` on ``prompt``."""
    scores = await scorer.score(images, prompt)
    seeds = candidate_seeds(seed, len(images))
    kept = best(scores, by, n)
    candidates = [{"seed": s, "scores": scores[row], "kept": row in kept} for row, s in enumerate(seeds)]
    return Chosen(
        [images[row] for row in kept], [scores[row] for row in kept], [seeds[row] for row in kept], candidates
    )
