"""``POST /v1/references``' body, apart from the reference store so that the routes' table imports no engine code."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve.images import BASE64_IMAGE
from serve.protocol.schema import BASE64_PATTERN, MAX_IMAGE_BYTES, MAX_IMAGE_CHARS, _base64_image


class NewReference(BaseModel):
    """``POST /v1/references``' body: the reference image, and optionally a name and the model it is for."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(
        min_length=1,
        max_length=MAX_IMAGE_CHARS,
        json_schema_extra={"pattern": BASE64_PATTERN} | BASE64_IMAGE,
        description=f"The reference image, base64 PNG/JPEG/WebP of at most {MAX_IMAGE_BYTES >> 20} MiB.",
    )
    name: str | None = Field(None, max_length=64, description="A name to find it by in the list.")
    model: str | None = Field(
        None, max_length=64, description="The served model whose IP-Adapter encodes it (absent: the default)."
    )

    @field_validator("image")
    @classmethod
    def _image_is_base64(cls, value: str) -> str:
        return _base64_image(value)
