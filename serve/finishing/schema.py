"""The upscale route's request, as JSON (``image`` base64) or as a multipart form (``image`` a file part).

Imports no image library and no torch: Ray Serve's HTTP proxy loads the routes, which name it.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve.images import BASE64_IMAGE

MAX_UPSCALE = 4
"""The largest scale of the upscalers Easel recognises (a hires fix without ``scale`` is priced at it)."""
MAX_UPSCALE_REQUEST_BYTES = 32 << 20
"""Bytes an upscale request may carry (its image; base64 adds a third)."""
UPSCALE_FIELD = (
    "Upscale each image before it is answered (GET /v1/upscalers); with `denoise`, a hires fix: img2img at that "
    "strength at the upscaled size."
)
"""A generation's ``upscale``, as the document describes it."""


RESTORE_FACES_FIELD = (
    "Restore each face found (GET /v1/upscalers lists the face restorers): the answer's image object says how many "
    "were found in `faces`; with none, the image is unchanged and `faces.note` says so."
)
"""A request's ``restore_faces``, as the document describes it."""


def form_json(value: object) -> object:
    """A form field's JSON text read as the object it carries (not JSON: as it is, for pydantic to name the field)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


INTERPOLATE_FIELD = (
    "Frame interpolation (GET /v1/upscalers lists the interpolators): factor - 1 frames drawn between each two, "
    "so n frames become (n - 1) x factor + 1, shown at factor x fps (the video object's frames and fps say so)."
)
"""A video's ``interpolate``, as the document describes it."""


class Interpolate(BaseModel):
    """A video's frames multiplied: an interpolator this stack serves and the factor."""

    model_config = ConfigDict(extra="forbid")

    factor: Literal[2, 4, 8] = Field(description="Frames drawn per gap + 1: 2, 4 or 8.")
    interpolator: str | None = Field(
        None, min_length=1, max_length=64, description="An interpolator of this stack (default: its first ready)."
    )

    def frames_from(self, frames: int) -> int:
        """The frames ``frames`` become: ``factor - 1`` new ones between each two."""
        return (frames - 1) * self.factor + 1


class RestoreFaces(BaseModel):
    """Faces restored: a face restorer this stack serves, and how much of its output replaces each face."""

    model_config = ConfigDict(extra="forbid")

    restorer: str = Field(min_length=1, max_length=64, description="A face restorer of this stack (GET /v1/upscalers).")
    weight: float = Field(
        0.5, ge=0, le=1, description="How much of the restored face replaces the original: 0 none, 1 all of it."
    )
    fidelity: float | None = Field(
        None,
        ge=0,
        le=1,
        description="A CodeFormer restorer's fidelity (its w): 0 the most restored, 1 the most faithful to the face "
        "given; default 0.5. Not taken by other restorers (GFPGAN).",
    )


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
    restore_faces: RestoreFaces | None = Field(None, description=RESTORE_FACES_FIELD)

    @field_validator("restore_faces", mode="before")
    @classmethod
    def _form_json(cls, value: object) -> object:
        """A multipart form carries ``restore_faces`` as JSON text."""
        return form_json(value)


class UpscaleJson(UpscaleOptions):
    """``POST /v1/images/upscale`` as JSON."""

    image: str = Field(
        min_length=1, json_schema_extra=BASE64_IMAGE, description="The image, base64 (PNG, JPEG, WebP, ...)."
    )


class FrameUpscale(BaseModel):
    """A video's ``upscale``: each frame upscaled as a still is (no hires fix: a frame redrawn alone would flicker)."""

    model_config = ConfigDict(extra="forbid")

    upscaler: str = Field(min_length=1, max_length=64, description="An upscaler of this stack (GET /v1/upscalers).")
    scale: float | None = Field(
        None, ge=1, le=MAX_UPSCALE, description="1 up to the upscaler's scale (default: its own)."
    )


class UpscaleChoice(FrameUpscale):
    """A generation's ``upscale``: its images upscaled before they are answered (with ``denoise``: a hires fix)."""

    denoise: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Hires fix: after the upscale, img2img at this strength at the larger size (0.3-0.6 is usual).",
    )
