"""The bodies of ``POST /v1/prompts/analyze`` and ``POST /v1/images/score``, apart from the code that answers them.

The routes' table (:mod:`serve.routes`) names them as the bodies their admission reads and prices, so they import no
engine code (as :mod:`serve.protocol.reference_request`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from serve.images import MAX_IMAGE_BYTES, Base64Image, checked_base64
from serve.moderation.requests import ModerationRequest
from serve.protocol.prompt_weights import WEIGHTING, checked_prompt
from serve.protocol.schema import MAX_PROMPT_CHARS

MAX_SCORED_IMAGES = 16
"""Images one request may score."""


class PromptAnalysisRequest(BaseModel):
    """``POST /v1/prompts/analyze`` body: a prompt (and negative prompt) as a generation would send them."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=MAX_PROMPT_CHARS, description=f"The prompt, as a generation takes it: {WEIGHTING}")
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="The negative prompt, weighted too.")
    model: str | None = Field(
        None,
        max_length=64,
        description="A model GET /v1/models lists (its encoders read the prompt); default: the stack's default model.",
    )

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _weighting_reads(cls, value: str, info: ValidationInfo) -> str:
        return checked_prompt(value, info.field_name)

    @property
    def moderated(self) -> ModerationRequest:
        """What its moderation verdict checks, as ``POST /v1/moderations`` takes it (so both price it alike)."""
        return ModerationRequest(input=[self.prompt])


class ScoreRequest(BaseModel):
    """``POST /v1/images/score`` body."""

    model_config = ConfigDict(extra="forbid")

    images: list[Base64Image] = Field(
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
