"""The body of ``POST /v1/faces/analyze``, apart from the code that answers it (the routes' table names it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve.images import MAX_IMAGE_BYTES, Base64Image, checked_base64

MAX_ANALYZED_FACES = 16
"""Faces one analysis may report (the face engines' batch; :data:`serve.faces.pack.MAX_FACES` is held to it)."""


class FaceAnalysisRequest(BaseModel):
    """``POST /v1/faces/analyze`` body: an image, and how many of its faces to report."""

    model_config = ConfigDict(extra="forbid")

    image: Base64Image = Field(description=f"A base64 PNG/JPEG/WebP image, at most {MAX_IMAGE_BYTES >> 20} MiB.")
    max_faces: int = Field(
        MAX_ANALYZED_FACES,
        ge=1,
        le=MAX_ANALYZED_FACES,
        description="The most faces to report: past it, the largest and most central (as InsightFace's max_num).",
    )

    @field_validator("image")
    @classmethod
    def _base64(cls, value: str) -> str:
        return checked_base64(value)
