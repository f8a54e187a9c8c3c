"""Best-of-n, as a request asks it: ``candidates`` images drawn for each asked one, the best ``n`` by ``best_of``.

Row ``i`` is drawn from its own generator, seeded ``seed + i`` (:func:`candidate_seeds`), so it is the image a
one-image request with that seed draws. Ranking them is the loop's (:mod:`serve.text_to_image.best_of`). It is priced
as ``k x n`` images (:attr:`BestOf.drawn_rows`).

Text to image only: an input image's encoding draws from the generator before the noise, which one generator per
row would not draw as a one-image request does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_core import PydanticCustomError

from serve.integers import JsonInt

MAX_CANDIDATES = 8


class BestOf(BaseModel):
    """The request's best-of-n part (:class:`serve.protocol.schema.GenerationRequest` is made of it too)."""

    candidates: JsonInt = Field(
        1,
        ge=1,
        le=MAX_CANDIDATES,
        description=f"Best-of-n (up to {MAX_CANDIDATES}): images drawn for each asked one in the same steps (seeds "
        "seed, seed+1, ...), scored by the stack's scorer (easel up --scorer); the best n by best_of are answered, "
        "each with its seed, and every candidate's seed and scores are listed. Priced as candidates x n images. "
        "Text to image only (no input image, no approximate cache).",
    )
    best_of: Literal["clip_score", "aesthetic", "identity"] = Field(
        "clip_score",
        description="With candidates: the score that ranks them (clip_score: against the prompt; aesthetic: needs "
        "the stack's aesthetic head; identity: the candidate whose face is most its character's, with a character "
        "made where the stack serves face models).",
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
