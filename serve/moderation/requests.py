"""``POST /v1/moderations``' body in OpenAI's shape, and its limits (stated in the OpenAPI document by the schema).

``input``: a string, a list of strings, or a list of parts (``{"type": "text", "text": ...}``,
``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``); one result per item.
"""

from __future__ import annotations

import binascii
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from serve.images import base64_bytes

MAX_MODERATION_INPUTS = 32
"""Items one request may moderate."""
MAX_MODERATION_TEXT_CHARS = 32_000
"""Characters one text item may have."""
MAX_MODERATION_IMAGE_BYTES = 4 << 20
"""Bytes one image item may have, decoded."""
MAX_MODERATION_URL_CHARS = 4 * MAX_MODERATION_IMAGE_BYTES // 3
"""Characters an image's data URL may have: its base64 decodes to at most :data:`MAX_MODERATION_IMAGE_BYTES`."""
MAX_MODERATION_REQUEST_BYTES = 16 << 20
"""Bytes the request body may have (its images travel base64 in the JSON)."""
DATA_URL_PATTERN = r"^data:image/[^;,]*;base64,[A-Za-z0-9+/]"
"""How an image item's URL starts: a data URL (nothing is fetched from elsewhere) with data after its comma."""

Text = Annotated[str, Field(max_length=MAX_MODERATION_TEXT_CHARS)]


class TextPart(BaseModel):
    """A text item."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: Text


class ImageUrl(BaseModel):
    """An image as a data URL (``data:image/png;base64,...``): nothing is fetched from elsewhere."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=MAX_MODERATION_URL_CHARS,
        pattern=DATA_URL_PATTERN,
        description=f"A base64 data URL (data:image/png;base64,...) of at most {MAX_MODERATION_IMAGE_BYTES} bytes "
        "decoded; nothing is fetched.",
    )

    @field_validator("url")
    @classmethod
    def _base64(cls, url: str) -> str:
        try:
            base64_bytes(url.partition(",")[2])
        except (binascii.Error, ValueError):
            raise ValueError("its data is not base64") from None
        return url

    @property
    def image(self) -> bytes:
        """The image's bytes."""
        return base64_bytes(self.url.partition(",")[2])


class ImagePart(BaseModel):
    """An image item."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["image_url"]
    image_url: ImageUrl


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


def _as_parts(value: object) -> object:
    """OpenAI's shorter shapes as parts: a text, or a list of texts."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [{"type": "text", "text": item} if isinstance(item, str) else item for item in value]
    return value


_TEXT_SCHEMA = {"type": "string", "maxLength": MAX_MODERATION_TEXT_CHARS}
_URL_SCHEMA = {"type": "string", "maxLength": MAX_MODERATION_URL_CHARS, "pattern": DATA_URL_PATTERN}


def _part_schema(kind: str, value: dict) -> dict:
    """The JSON schema of one part: its ``type`` and the field of that name."""
    properties = {"type": {"type": "string", "const": kind}, kind: value}
    return {"type": "object", "required": ["type", kind], "properties": properties, "additionalProperties": False}


_IMAGE_URL_SCHEMA = {
    "type": "object",
    "required": ["url"],
    "properties": {"url": _URL_SCHEMA},
    "additionalProperties": False,
}
_PARTS_SCHEMA = [_TEXT_SCHEMA, _part_schema("text", _TEXT_SCHEMA), _part_schema("image_url", _IMAGE_URL_SCHEMA)]
Inputs = Annotated[
    list[Part],
    Field(min_length=1, max_length=MAX_MODERATION_INPUTS),
    BeforeValidator(_as_parts),
    WithJsonSchema(
        {
            "anyOf": [
                _TEXT_SCHEMA,
                {
                    "type": "array",
                    "items": {"anyOf": _PARTS_SCHEMA},
                    "minItems": 1,
                    "maxItems": MAX_MODERATION_INPUTS,
                },
            ]
        }
    ),
]


class ModerationRequest(BaseModel):
    """What to moderate: one result per item of ``input``."""

    model_config = ConfigDict(extra="forbid")

    input: Inputs = Field(
        description='A text, a list of texts, or a list of parts: {"type": "text", "text": ...} or '
        '{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}} (at most '
        f"{MAX_MODERATION_INPUTS} items, {MAX_MODERATION_TEXT_CHARS} characters a text, "
        f"{MAX_MODERATION_IMAGE_BYTES} bytes an image)."
    )
    model: str | None = Field(None, description="Accepted for OpenAI's clients; the stack's checks answer.")

    def items(self) -> list[str | bytes]:
        """The items in order: a text as ``str``, an image as its ``bytes``."""
        return [item.text if isinstance(item, TextPart) else item.image_url.image for item in self.input]
