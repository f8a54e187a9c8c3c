"""``POST /v1/images/score``: images scored by the stack's scorer engines, with an optional prompt.

The images are decoded and scored in a ``TextToImage`` replica, where the scorer's engines are reached
(:class:`serve.text_to_image.scores.Scorer`): ``clip_score`` (the prompt-image cosine, with a prompt) and
``aesthetic`` (with the head served), each image's in order.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray.serve.handle import DeploymentHandle

from serve.images import MAX_IMAGE_BYTES, MAX_IMAGE_CHARS, checked_base64
from serve.text_to_image.prompt_weights import checked_prompt
from serve.text_to_image.schema import MAX_PROMPT_CHARS

MAX_SCORED_IMAGES = 16
"""Images one request may score."""


class ScoreRequest(BaseModel):
    """``POST /v1/images/score`` body."""

    model_config = ConfigDict(extra="forbid")

    images: list[Annotated[str, Field(min_length=1, max_length=MAX_IMAGE_CHARS)]] = Field(
        min_length=1,
        max_length=MAX_SCORED_IMAGES,
        description=f"Up to {MAX_SCORED_IMAGES} base64 PNG/JPEG/WebP images, each at most {MAX_IMAGE_BYTES >> 20} MiB.",
    )
    prompt: str | None = Field(
        None,
        max_length=MAX_PROMPT_CHARS,
        description="What the images should show: with it each image gets clip_score (its weighting syntax read "
        "out, as a generation's).",
    )

    @field_validator("images")
    @classmethod
    def _base64(cls, value: list[str]) -> list[str]:
        return [checked_base64(image, f"image {index}") for index, image in enumerate(value)]

    @field_validator("prompt")
    @classmethod
    def _weighting_reads(cls, value: str | None) -> str | None:
        return None if value is None else checked_prompt(value, "prompt")


class ImageScores:
    """Scores images by the scorer the ``TextToImage`` replicas reach."""

    def __init__(self, text_to_image: DeploymentHandle) -> None:
        self.text_to_image = text_to_image

    async def scored(self, body: ScoreRequest) -> dict:
        """One entry per image, in order: its ``clip_score`` (with a prompt) and ``aesthetic`` (with a head)."""
        scores = await self.text_to_image.score.remote(body.images, body.prompt)
        return {"object": "list", "data": [{"index": i, **s} for i, s in enumerate(scores)]}
