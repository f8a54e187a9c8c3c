"""A character's words: ``POST /v1/characters``' body, and the ``character`` a generation, job or video names.

Apart from the store and the code that makes one, so that the routes' table imports no engine code.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from serve.adapters.registry import NAME
from serve.images import MAX_IMAGE_BYTES, Base64Image, checked_base64
from serve.protocol.adapter_choices import LoraChoice
from serve.protocol.ip_scale import MAX_IP_SCALE, IpScale
from serve.schema_rules import exactly_one

MAX_CHARACTER_IMAGES = 8
MAX_TRIGGER_CHARS = 200
MAX_NOTE_CHARS = 1000
CHARACTER_NAME_PATTERN = f"^{NAME.pattern}$"


class NewCharacter(BaseModel):
    """``POST /v1/characters`` (and ``PUT /v1/characters/{name}``) body: who the character is, made once."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=CHARACTER_NAME_PATTERN, description="Its name, as a generation's character names it.")
    model: str | None = Field(
        None,
        max_length=64,
        description="The served model it is drawn by (absent: the default): its images' "
        "IP-Adapter embeddings are that model's.",
    )
    images: list[Base64Image] = Field(
        min_length=1,
        max_length=MAX_CHARACTER_IMAGES,
        description=f"1 to {MAX_CHARACTER_IMAGES} pictures of the character, base64 PNG/JPEG/WebP of at most "
        f"{MAX_IMAGE_BYTES >> 20} MiB each: encoded once by the model's IP-Adapter (where it has one) and, where the "
        "stack serves face models (easel up --faces), each face embedded for scores.identity.",
    )
    face: Literal["only", "largest"] = Field(
        "only",
        description="With face models served, which face of each image is the character's: only (an image with "
        "several faces is a 400 naming it) or largest. An image with no face is a 400 naming it.",
    )
    lora: LoraChoice | None = Field(None, description="A LoRA adapter of the key's (GET /v1/loras) and its weight.")
    trigger_words: str = Field(
        "", max_length=MAX_TRIGGER_CHARS, description="Put before each prompt that names the character."
    )
    note: str = Field("", max_length=MAX_NOTE_CHARS, description="Free text, shown with it.")
    visibility: Literal["private", "shared"] = Field(
        "private",
        description="private: the key's alone; shared: every key may draw it (an admin key's to give, a 403 "
        "otherwise; an open API's are shared). A PUT replaces the one of this visibility.",
    )

    @field_validator("images")
    @classmethod
    def _base64(cls, value: list[str]) -> list[str]:
        return [checked_base64(image, f"image {index}") for index, image in enumerate(value)]


class CharacterChoice(BaseModel):
    """The character a generation draws: its LoRA, trigger words and pictures (as IP-Adapter references)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="A character of GET /v1/characters.")
    scale: IpScale = Field(1.0, description=f"Its pictures' weight as IP-Adapter references, in [0, {MAX_IP_SCALE:g}].")


MAX_EMBEDDING = 2048


class IdentityChoice(BaseModel):
    """The face a generation keeps (``identity``): an IP-Adapter FaceID's or an InstantID's reference.

    A FaceID draws with its LoRA; an InstantID's IdentityNet reads the face's landmarks drawn (``keypoints``). One of
    ``image`` (its face found and embedded by the stack's face models), ``character`` (the face kept with it) or
    ``embedding`` (as ``POST /v1/faces/analyze`` answers one). At admission the first two become the third.
    """

    model_config = ConfigDict(
        extra="forbid", json_schema_extra=exactly_one(image="string", character="string", embedding="array")
    )

    image: Base64Image | None = Field(
        None,
        description=f"A picture of the face: base64 PNG/JPEG/WebP of at most {MAX_IMAGE_BYTES >> 20} MiB, read by "
        "the stack's face models (easel up --faces). One with no face is a 400 naming identity.image.",
    )
    face: Literal["only", "largest"] = Field(
        "only", description="Which face of image: only (several faces are a 400 naming identity.image) or largest."
    )
    character: str | None = Field(
        None, min_length=1, max_length=64, description="A character of GET /v1/characters made with face models."
    )
    embedding: list[float] | None = Field(
        None,
        min_length=1,
        max_length=MAX_EMBEDDING,
        description="A face's embedding as POST /v1/faces/analyze answers it (ArcFace's 512, unit length).",
    )
    aligned_face: Base64Image | None = Field(
        None,
        description="With embedding, for a FaceID Plus: the face aligned as InsightFace's norm_crop at 224 px "
        "(base64 PNG), whose CLIP hidden states it reads too; made from image at admission.",
    )
    keypoints: Base64Image | None = Field(
        None,
        description="For an InstantID: the face's five landmarks drawn as InstantID draws them (base64 PNG), what its "
        "IdentityNet reads; drawn from image at admission. Sent (with any of the three), the pose of another face.",
    )
    strength: float = Field(1.0, ge=0, le=MAX_IP_SCALE, description="The face's weight (the adapter's IP scale).")
    pose_strength: float = Field(
        1.0, ge=0, le=2, description="For an InstantID: its IdentityNet's conditioning scale (InstantX use 0.8)."
    )
    adapter: str | None = Field(
        None, min_length=1, max_length=64, description="The model's IP-Adapter FaceID or InstantID (absent: its first)."
    )

    @field_validator("image", "aligned_face", "keypoints")
    @classmethod
    def _base64(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else checked_base64(value, info.field_name)

    @model_validator(mode="after")
    def _one_face(self) -> IdentityChoice:
        given = [name for name in ("image", "character", "embedding") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of image, character and embedding, not {len(given) or 'none'}")
        return self


class CharacterReplacement(NamedTuple):
    """``PUT /v1/characters/{name}``: the character the path names, and its new body (whose name must be that)."""

    name: str
    character: NewCharacter
