"""Feedback on what was served: a reward in [0, 1] (or a 1-5 rating) for one image or one background job.

Every generated image has an id (``img_`` and 24 hex digits, in its answer's ``data`` item); a background job's id
names the job's generation. Each id may be rated once; the reward goes to the posterior of the variant that served it
when it was served through an experiment, and to the per-variant reward metric in any case.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator
from pydantic_core import PydanticCustomError

from serve.schema_rules import exactly_one

IMAGE_ID_PATTERN = r"^img_[0-9a-f]{24}$"
JOB_ID_PATTERN = r"^job_[0-9a-f]{24}$"
RATINGS = (1, 5)
"""A rating's range; rating r is the reward (r - 1) / 4."""


def new_image_id() -> str:
    """A fresh image id (``img_`` and 24 hex digits)."""
    return f"img_{secrets.token_hex(12)}"


ONE_OF_EACH = [exactly_one(image_id="string", job_id="string"), exactly_one(reward="number", rating="integer")]
"""What the schema states of the two pairs: exactly one of ``image_id`` and ``job_id``, one of ``reward`` and
``rating``, given (and not null)."""


def _integral(value: object) -> object:
    """A number JSON Schema counts as an integer (``5.0``) as the int it is; anything else as it came."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


RATING = Annotated[int, Strict(), Field(ge=RATINGS[0], le=RATINGS[1]), BeforeValidator(_integral)]
"""A rating, an integer as JSON Schema's ``integer`` is one: ``5`` or ``5.0``, never ``true`` or ``"5"``."""


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: what is rated (``image_id`` or ``job_id``) and how (``reward`` or ``rating``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"allOf": ONE_OF_EACH})

    image_id: str | None = Field(None, pattern=IMAGE_ID_PATTERN, description="An image's id (its data item's id).")
    job_id: str | None = Field(None, pattern=JOB_ID_PATTERN, description="A background job's id.")
    reward: Annotated[float, Strict()] | None = Field(
        None, ge=0, le=1, allow_inf_nan=False, description="The reward, 0 (bad) to 1 (good)."
    )
    rating: RATING | None = Field(None, description="Or a rating of 1 to 5 stars: the reward (rating - 1) / 4.")

    @model_validator(mode="after")
    def _one_target_one_value(self) -> FeedbackRequest:
        if (self.image_id is None) == (self.job_id is None):
            raise PydanticCustomError("one_target", "give one of image_id and job_id", {"field": "image_id"})
        if (self.reward is None) == (self.rating is None):
            message = "give one of reward (0 to 1) and rating (1 to 5)"
            raise PydanticCustomError("one_value", message, {"field": "reward"})
        return self

    @property
    def target(self) -> tuple[str, str]:
        """The field that names what is rated, and its id."""
        return ("image_id", self.image_id) if self.image_id is not None else ("job_id", self.job_id)

    @property
    def value(self) -> float:
        """The reward in [0, 1]."""
        return self.reward if self.reward is not None else (self.rating - RATINGS[0]) / (RATINGS[1] - RATINGS[0])
