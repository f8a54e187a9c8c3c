"""The images API request (OpenAI Images shape plus Easel's extensions) and its limits."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, ValidationInfo, field_validator

from serve.text_to_image.priority import Priority
from serve.vectorize.tiers import Tier

MAX_IMAGES = 4
MIN_SIDE = 64
MAX_SIDE = 1024
SIDE_MULTIPLE = 8
MAX_STEPS = 150
MAX_GUIDANCE = 50.0
MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**63 - 1
SCHEDULER_NAMES = ("ddim", "euler", "dpmpp_2m")
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")  # ASCII digits only, matched whole (no trailing newline)


class GenerationRequest(BaseModel):
    """``POST /v1/images/generations`` body. Types are strict: ``"7"`` is not a number, ``true`` not a count."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw.")
    n: StrictInt = Field(1, ge=1, le=MAX_IMAGES, description="Number of images.")
    size: str | None = Field(
        None,
        description=f"WIDTHxHEIGHT, each a multiple of {SIDE_MULTIPLE} in [{MIN_SIDE}, {MAX_SIDE}]; "
        "default: the served model's native size (64x64 for the embedded default).",
    )
    response_format: Literal["b64_json"] = Field("b64_json", description="Only b64_json: Easel keeps no image store.")
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="What to steer away from.")
    num_inference_steps: StrictInt = Field(20, ge=1, le=MAX_STEPS, description="Denoising steps.")
    guidance_scale: Annotated[float, Strict()] = Field(
        7.5, ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False, description="Classifier-free guidance; <= 1 disables it."
    )
    seed: Annotated[StrictInt, Field(ge=0, le=MAX_SEED)] | None = Field(
        None, description="Random seed; drawn at random when omitted."
    )
    scheduler: Literal[SCHEDULER_NAMES] = Field("ddim", description="Sampler.")
    output_format: Literal["png", "jpeg", "webp", "svg"] = Field(
        "png", description="Image encoding; svg: the generated image vectorized by the Vectorizer."
    )
    vectorize_tier: Tier | None = Field(
        None, description="With output_format svg: the vectorize tier (as /v1/vectorize's tier; default auto)."
    )
    background: StrictBool = Field(
        False,
        description="Run as a background job: answered at once with 202 and the job (GET /v1/jobs/{id} for the "
        "result, /events for its progress). An Idempotency-Key header returns the same job for the same body.",
    )
    priority: Priority = Field(
        Priority.NORMAL,
        description="Under load, higher-priority generations start first and their denoising steps go first.",
    )
    # Accepted for OpenAI client compatibility; Easel serves the one model it was started with.
    model: str | None = None
    quality: str | None = None
    style: str | None = None
    user: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must contain at least one non-space character")
        return value

    @field_validator("vectorize_tier")
    @classmethod
    def _tier_only_with_svg(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("output_format") != "svg":
            raise ValueError("vectorize_tier is only accepted with output_format 'svg'")
        return value

    @field_validator("size")
    @classmethod
    def _size_in_range(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _SIZE.fullmatch(value)
        if not match:
            raise ValueError("size must look like '256x256' (WIDTHxHEIGHT)")
        for side in map(int, match.groups()):
            if side % SIDE_MULTIPLE or not MIN_SIDE <= side <= MAX_SIDE:
                raise ValueError(f"size sides must be multiples of {SIDE_MULTIPLE} between {MIN_SIDE} and {MAX_SIDE}")
        return value

    def width_height(self, native_size: int) -> tuple[int, int]:
        """The requested (width, height) in pixels; ``native_size`` square when no size was given."""
        if self.size is None:
            return native_size, native_size
        width, height = self.size.split("x")
        return int(width), int(height)
