"""The vectorize API request options, their vocabulary (tiers, what a request puts first) and their limits."""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve.images import BASE64_IMAGE

MAX_UPLOAD_BYTES = 32 * 1024 * 1024
MAX_BUDGET_MS = 60_000
BASE64_PATTERN = r"^(?:(?:[A-Za-z0-9+/]{4})+=*|(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=))?(?!\n)$"
"""What ``base64.b64decode(text, validate=True)`` decodes, for the schemas (``(?!\\n)$``: the end, not a newline)."""


class Tier(enum.StrEnum):
    """A tier as the API names it (``tier`` option, ``Easel-Tier`` header, metric labels)."""

    AUTO = "auto"
    TIER1 = "1"
    TIER2 = "2"
    TIER3 = "3"
    DEFAULT = "default"


class Preference(enum.StrEnum):
    """What a request puts first: ``quality`` (never worse than the defaults) or ``size`` (the tier's pick as is)."""

    QUALITY = "quality"
    SIZE = "size"


class VectorizeOptions(BaseModel):
    """Options of ``POST /v1/vectorize`` (form fields with a multipart upload, or JSON fields beside ``image``)."""

    model_config = ConfigDict(extra="forbid")

    tier: Tier = Field(
        Tier.AUTO,
        description="1: fitted mapping, 2: predictor-guided search, 3: PPO policy, auto: by image class and "
        "time budget, default: vtracer's defaults.",
    )
    priority: Preference | None = Field(
        None,
        description="Deprecated: the former name of prefer (ignored when prefer is given).",
        json_schema_extra={"deprecated": True},
        exclude=True,
    )
    prefer: Preference = Field(
        Preference.QUALITY,
        description="quality: the answer is never worse than vtracer's defaults (SSIM); when the predictor is not "
        "sure of it, the SVG is rendered back beside the defaults' and the defaults answer if they score higher. "
        "size: the tier's smallest pick as is, unchecked.",
    )
    time_budget_ms: float = Field(
        1000.0,
        gt=0,
        le=MAX_BUDGET_MS,
        allow_inf_nan=False,
        description="Time the caller allows; auto picks a tier that fits it.",
    )
    target_quality: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Minimum SSIM wanted (in place of the defaults' quality): tier 2 keeps only candidates "
        "predicted to reach it; with validate, a result below it falls back to defaults.",
    )
    model_version: int | None = Field(
        None,
        ge=1,
        description="The vectorize model version to use (GET /v1/vectorize/models lists them); none: the current one.",
    )
    experiment: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="An experiment over vectorize versions (variants vectorize.vN): it picks the version.",
    )
    user: str | None = Field(
        None, min_length=1, max_length=256, description="Who asks: a split keeps each user on one variant."
    )
    validate_output: bool = Field(
        False, alias="validate", description="Render the SVG back and report its SSIM against the input."
    )

    @model_validator(mode="after")
    def _former_name(self) -> VectorizeOptions:
        if self.priority is not None and "prefer" not in self.model_fields_set:
            self.prefer = self.priority
        self.priority = None
        return self


class VectorizeJson(VectorizeOptions):
    """JSON body: the image as base64 plus the options."""

    image: str = Field(
        min_length=1,
        json_schema_extra={"pattern": BASE64_PATTERN} | BASE64_IMAGE,  # documented; decoded by the Gateway
        description="The PNG/JPEG/... file, base64-encoded.",
    )
