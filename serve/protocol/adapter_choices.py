"""The LoRAs and ControlNets a generation names, each with its weight (and a ControlNet's control image)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator
from pydantic_core import PydanticCustomError

from serve.images import BASE64_IMAGE, MAX_IMAGE_CHARS
from serve.images import checked_base64 as _base64_image

MAX_LORAS = 4
MAX_LORA_SCALE = 4.0
MAX_CONTROLNETS = 4
MAX_CONTROL_SCALE = 2.0


class LoraChoice(BaseModel):
    """One LoRA adapter of a request and its weight (diffusers' ``set_adapters`` weight)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="An adapter of `GET /v1/loras`.")
    scale: Annotated[float, Strict()] = Field(
        1.0, ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE, allow_inf_nan=False, description="The adapter's weight."
    )


Unit = Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class ControlNetChoice(BaseModel):
    """One ControlNet of a request: which, its control image, its weight and the part of the steps it guides."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="A ControlNet of `GET /v1/controlnets`.")
    image: str = Field(
        min_length=1,
        max_length=MAX_IMAGE_CHARS,
        json_schema_extra=BASE64_IMAGE,
        description="The control image (an edge map, a depth map, a pose...), base64 PNG/JPEG/WebP; resized to the "
        "output's size. With preprocess canny: a photo, turned into its edges here.",
    )
    scale: Annotated[float, Strict()] = Field(
        1.0,
        ge=0.0,
        le=MAX_CONTROL_SCALE,
        allow_inf_nan=False,
        description="Its weight (diffusers' controlnet_conditioning_scale).",
    )
    start: Unit = Field(0.0, description="The share of the steps before it guides (control_guidance_start).")
    end: Unit = Field(1.0, description="The share of the steps after which it stops (control_guidance_end).")
    preprocess: Literal["none", "canny"] = Field(
        "none", description="canny: the image's edges (Canny, as OpenCV's with L2 gradients) are the control image."
    )
    low_threshold: Annotated[float, Strict()] = Field(
        100.0, ge=0.0, le=1000.0, allow_inf_nan=False, description="With canny: the hysteresis' low gradient."
    )
    high_threshold: Annotated[float, Strict()] = Field(
        200.0, ge=0.0, le=1000.0, allow_inf_nan=False, description="With canny: the hysteresis' high gradient."
    )

    @field_validator("image")
    @classmethod
    def _image_is_base64(cls, value: str) -> str:
        return _base64_image(value)

    @model_validator(mode="after")
    def _consistent(self) -> ControlNetChoice:
        if self.start >= self.end:
            raise PydanticCustomError(
                "start_after_end", f"must be below end ({self.start} >= {self.end})", {"field": "start"}
            )
        if self.preprocess == "canny" and self.low_threshold > self.high_threshold:
            message = f"is above high_threshold ({self.low_threshold} > {self.high_threshold})"
            raise PydanticCustomError("thresholds", message, {"field": "low_threshold"})
        return self
