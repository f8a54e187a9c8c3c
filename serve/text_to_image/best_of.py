"""Best-of-n drawn: every candidate row scored against the prompt, the best ``n`` by ``best_of`` answered.

A request asking ``candidates: k`` (:class:`serve.protocol.best_of.BestOf`) is one job of ``k x n`` rows (one batch:
every step's denoiser call carries them all). The served scorer (:class:`serve.scoring.Scorer`) scores
every row, and the ``n`` best are answered, best first, each with its seed; the answer lists every candidate's seed
and scores.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from serve.errors import InvalidInput
from serve.faces.identity import NO_FACE_RANK
from serve.protocol.best_of import candidate_seeds
from serve.scoring import Scoring, check_scores


def check_best_of(candidates: int, best_of: str, given: Collection[str]) -> None:
    """A 400 naming ``candidates`` when there is no scorer to rank them, ``best_of`` for a score it does not give.

    ``given``: the scores the stack gives the request (its scorer's; ``identity`` with a character's face; none: no
    scorer and no face); checked at the Gateway's admission.
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


def best(scores: list[dict[str, float | None]], by: str, n: int) -> list[int]:
    """The rows of the ``n`` highest ``by`` scores, best first (a tie: the earlier row; None: below every one)."""
    return sorted(range(len(scores)), key=lambda row: (-_ranked(scores[row][by]), row))[:n]


def _ranked(score: float | None) -> float:
    return NO_FACE_RANK if score is None else score


async def choose(scoring: Scoring, images: list[np.ndarray], seed: int, prompt: str, by: str, n: int) -> Chosen:
    """The best ``n`` of ``images`` (drawn with :func:`candidate_seeds` of ``seed``) by score ``by`` on ``prompt``."""
    scores = await scoring.score(images, prompt)
    seeds = candidate_seeds(seed, len(images))
    kept = best(scores, by, n)
    candidates = [{"seed": s, "scores": scores[row], "kept": row in kept} for row, s in enumerate(seeds)]
    return Chosen(
        [images[row] for row in kept], [scores[row] for row in kept], [seeds[row] for row in kept], candidates
    )
