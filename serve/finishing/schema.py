"""The upscale route's request, as JSON (``image`` base64) or as a multipart form (``image`` a file part).

Imports no image library and no torch: Ray Serve's HTTP proxy loads the routes, which name it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_UPSCALE = 4
"""The largest scale of the upscalers Easel recognises (a hires fix without ``scale`` is priced at it)."""
MAX_UPSCALE_REQUEST_BYTES = 32 << 20
"""Bytes an upscale request may carry (its image; base64 adds a third)."""
UPSCALE_FIELD = (
    "Upscale each image before it is answered (GET /v1/upscalers); with `denoise`, a hires fix: img2img at that "
    "strength at the upscaled size."
)
"""A generation's ``upscale``, as the document describes it."""


class UpscaleOptions(BaseModel):
    """What to upscale with: an upscaler this stack serves, and a scale up to its own."""

    model_config = ConfigDict(extra="forbid")

    upscaler: str = Field(description="An upscaler of this stack (GET /v1/upscalers).")
    scale: float | None = Field(
        None,
        ge=1,
        le=MAX_UPSCALE,
        description="1 up to the upscaler's scale (default: its own); a lower one resizes its output down.",
    )


class UpscaleJson(UpscaleOptions):
    """``POST /v1/images/upscale`` as JSON."""

    image: str = Field(description="The image, base64 (PNG, JPEG, WebP, ...).")


class UpscaleChoice(BaseModel):
    """A generation's ``upscale``: its images upscaled before they are answered (with ``denoise``: a hires fix)."""

    model_config = ConfigDict(extra="forbid")

    upscaler: str = Field(min_length=1, max_length=64, description="An upscaler of this stack (GET /v1/upscalers).")
    scale: float | None = Field(
        None, ge=1, le=MAX_UPSCALE, description="1 up to the upscaler's scale (default: its own)."
    )
    denoise: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Hires fix: after the upscale, img2img at this strength at the larger size (0.3-0.6 is usual).",
    )
