"""``POST /v1/images/rerun``'s body: a kept image named, made again from its record."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

IMAGE_ID_PATTERN = r"^img_[0-9a-f]{24}$"


class RerunRequest(BaseModel):
    """A kept image (one of the caller's) to make again, and how to answer it."""

    model_config = ConfigDict(extra="forbid")

    image_id: str = Field(pattern=IMAGE_ID_PATTERN, description="A kept image of the caller's key (its `id`).")
    response_format: Literal["b64_json", "url"] = Field("b64_json", description="As a generation's.")
