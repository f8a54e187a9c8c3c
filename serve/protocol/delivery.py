"""How a generation's images are answered: encoded, as base64 or a URL, with or without their record.

Their encoding is OpenAI's ``output_format`` and ``output_compression``, their form ``response_format``, whether they
carry what made them ``metadata``. A part of the images API request
(:class:`serve.protocol.schema.GenerationRequest` is made of it too).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from serve.integers import json_int
from serve.vectorize.schema import Tier

OUTPUT_FORMATS = ("png", "jpeg", "webp", "svg")
COMPRESSED_FORMATS = ("jpeg", "webp")


class Delivery(BaseModel):
    """The answer's encoding and form."""

    response_format: Literal["b64_json", "url"] = Field(
        "b64_json",
        description="b64_json: each image base64 in the answer; url: a signed URL to it that needs no API key, valid "
        "for the stack's --image-url-ttl-s (GET /v1/images/{id} with a key answers it after). Either way the image "
        "is kept under its id (unless the stack keeps none: --no-image-store, where url is refused).",
    )
    output_format: Literal[OUTPUT_FORMATS] = Field(
        "png", description="Image encoding; svg: the generated image vectorized by the Vectorizer."
    )
    output_compression: json_int(ge=0, le=100) | None = Field(
        None,
        description="With output_format jpeg or webp: the encoder's quality in percent, as OpenAI's (100: the least "
        "loss). Default: Pillow's (JPEG 75, WebP 80).",
    )
    vectorize_tier: Tier | None = Field(
        None, description="With output_format svg: the vectorize tier (as /v1/vectorize's tier; default auto)."
    )
    metadata: Literal["full", "none"] = Field(
        "full",
        description="full: each PNG carries what made it (AUTOMATIC1111's `parameters` text chunk and an `easel` JSON "
        "chunk) and the image store keeps that record; none: neither.",
    )

    @field_validator("vectorize_tier")
    @classmethod
    def _tier_only_with_svg(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("output_format") != "svg":
            raise ValueError("vectorize_tier is only accepted with output_format 'svg'")
        return value

    @field_validator("output_compression")
    @classmethod
    def _compression_of_lossy_formats(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("output_format") not in COMPRESSED_FORMATS:
            formats = " or ".join(COMPRESSED_FORMATS)
            raise ValueError(f"output_compression is only accepted with output_format {formats}")
        return value

    @property
    def raster_format(self) -> str:
        """The raster encoding the replica answers with (svg's images are PNGs, for the Vectorizer)."""
        return "png" if self.output_format == "svg" else self.output_format
