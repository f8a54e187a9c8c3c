"""A request's IP-Adapters, declared once for HTTP, gRPC and jobs (:class:`IpAdapterChoice`).

Per adapter: its references, its scale (a number, or InstantStyle's per-block mapping) and optional region masks.

``ip_adapter_image`` / ``ip_adapter_reference`` / ``ip_adapter_scale`` stay as the one-adapter shorthand:
:func:`ip_choices` reads both spellings as one list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints, field_validator, model_validator
from pydantic_core import PydanticCustomError

from serve.adapters.ip_adapter import MAX_REFERENCES
from serve.images import MAX_IMAGE_BYTES, Base64Image, checked_base64
from serve.schema_rules import one_or_more

MAX_IP_SCALE = 2.0
MAX_IP_ADAPTERS = 4
REFERENCE_PATTERN = r"^ref_[0-9a-f]{24}$"
"""A stored reference's id (``POST /v1/references``)."""

IpScale = Annotated[float, Strict(), Field(ge=0.0, le=MAX_IP_SCALE, allow_inf_nan=False)]
IpBlock = Annotated[str, StringConstraints(pattern=r"^block_[0-9]{1,2}$")]
IpScaleMap = dict[Literal["down", "mid", "up"], IpScale | list[IpScale] | dict[IpBlock, IpScale | list[IpScale]]]
"""InstantStyle's per-block scales, as ``set_ip_adapter_scale`` takes them: ``{"up": {"block_0": [0, 1, 0]}}``."""


def _check_ip_scale(value, where: str) -> None:
    at = f"{where}: " if where else ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{at}must be a number or a mapping like {{'up': {{'block_0': [0.0, 1.0, 0.0]}}}}")
    if not 0.0 <= value <= MAX_IP_SCALE:  # NaN fails this too
        raise ValueError(f"{at}scales must be finite numbers in [0, {MAX_IP_SCALE:g}], not {value}")


def checked_shape(value):
    """``value`` (a number or a mapping); a ValueError naming what is wrong (where, and the limit) if it does not fit.

    Run before the union's own, less readable, errors.
    """
    if not isinstance(value, dict):
        _check_ip_scale(value, "")
        return value
    for part, scales in value.items():
        if part not in ("down", "mid", "up"):
            raise ValueError(f"keys must be 'down', 'mid' or 'up', not {part!r}")
        blocks = scales.items() if isinstance(scales, dict) else [("", scales)]
        for block, values in blocks:
            if block and not re.fullmatch(r"block_[0-9]{1,2}", block):
                raise ValueError(f"{part}: keys must look like 'block_0', not {block!r}")
            where = f"{part}.{block}".rstrip(".")
            for item in values if isinstance(values, list) else [values]:
                _check_ip_scale(item, where)
    return value


class IpAdapterChoice(BaseModel):
    """One IP-Adapter of a request: its references, their weight and, optionally, a region mask for each."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=one_or_more("images", "references"))

    name: str | None = Field(
        None, max_length=64, description="An IP-Adapter of the model (GET /v1/models lists them); absent: the first."
    )
    images: list[Base64Image] = Field(
        [],
        max_length=MAX_REFERENCES,
        description=f"Reference images, base64 PNG/JPEG/WebP of at most {MAX_IMAGE_BYTES >> 20} MiB each.",
    )
    references: list[Annotated[str, Field(pattern=REFERENCE_PATTERN)]] = Field(
        [],
        max_length=MAX_REFERENCES,
        description="References stored with POST /v1/references by the same key, after the images.",
    )
    scale: IpScale | IpScaleMap = Field(
        1.0,
        description=f"The references' weight in [0, {MAX_IP_SCALE:g}], or InstantStyle's per-block mapping "
        'as set_ip_adapter_scale takes it, e.g. {"up": {"block_0": [0.0, 1.0, 0.0]}}.',
    )
    masks: list[Base64Image] = Field(
        [],
        max_length=MAX_REFERENCES,
        description="Region masks, one per reference (images, then references), each a PNG of the output's size: "
        "where that reference applies (white), as diffusers' IPAdapterMaskProcessor reads it. Absent: everywhere.",
    )

    @field_validator("images", "masks")
    @classmethod
    def _base64(cls, value: list[str]) -> list[str]:
        return [checked_base64(image, f"image {index}") for index, image in enumerate(value)]

    @field_validator("scale", mode="before")
    @classmethod
    def _scale_shape(cls, value):
        return checked_shape(value)

    @model_validator(mode="after")
    def _references_and_masks(self) -> IpAdapterChoice:
        count = len(self.images) + len(self.references)
        if not 1 <= count <= MAX_REFERENCES:
            message = f"an IP-Adapter takes 1 to {MAX_REFERENCES} references (images and references), not {count}"
            raise PydanticCustomError("references", message, {"field": "images"})
        if self.masks and len(self.masks) != count:
            message = f"one mask per reference: {count} references, {len(self.masks)} masks"
            raise PydanticCustomError("masks", message, {"field": "masks"})
        return self


@dataclass(frozen=True)
class IpRequest:
    """One IP-Adapter of a request in either spelling, with the fields its errors name."""

    choice: IpAdapterChoice
    field: str  # "ip_adapters.0"; "" for the shorthand

    def name_of(self, part: str, index: int | None = None) -> str:
        """The request field of ``part`` (``images``, ``references``, ``masks``, ``scale``, ``name``)."""
        if not self.field:
            return {"images": "ip_adapter_image", "references": "ip_adapter_reference"}.get(part, f"ip_adapter_{part}")
        return f"{self.field}.{part}" + ("" if index is None else f".{index}")


def ip_choices(request) -> list[IpRequest]:
    """A request's IP-Adapters: its ``ip_adapters``, or the shorthand as one (none: [])."""
    if request.ip_adapters:
        return [IpRequest(choice, f"ip_adapters.{i}") for i, choice in enumerate(request.ip_adapters)]
    image, reference = request.ip_adapter_image, request.ip_adapter_reference
    if image is None and reference is None:
        return []
    choice = IpAdapterChoice.model_construct(
        name=None,
        images=[image] if image is not None else [],
        references=[reference] if reference is not None else [],
        scale=request.ip_adapter_scale,
        masks=[],
    )
    return [IpRequest(choice, "")]


def check_fields(request) -> None:
    """The IP-Adapter fields of ``request`` together: one spelling, a reference for a scale, each adapter once."""

    def wrong(field: str, message: str) -> PydanticCustomError:
        return PydanticCustomError("ip_adapter_fields", message, {"field": field})

    if request.ip_adapter_image is not None and request.ip_adapter_reference is not None:
        raise wrong("ip_adapter_reference", "give ip_adapter_image or ip_adapter_reference, not both")
    referenced = request.ip_adapter_image is not None or request.ip_adapter_reference is not None
    if not referenced and request.ip_adapter_scale != 1.0:  # the default is stored with every job
        message = "ip_adapter_scale is only accepted with ip_adapter_image or ip_adapter_reference"
        raise wrong("ip_adapter_scale", message)
    names = [choice.name for choice in request.ip_adapters]
    if len(set(names)) != len(names):
        raise wrong("ip_adapters", "each IP-Adapter may appear once")
    if request.ip_adapters and referenced:
        raise wrong("ip_adapters", "give ip_adapters or the one-adapter fields (ip_adapter_image...), not both")
