"""Many prompts per call: a generation's ``prompt``, or its ``prompts``, each a one-prompt generation of the same call.

A request of ``prompts`` is admitted and priced once, for all its rows (``n`` images of each prompt); its replica
runs the one-prompt generations it is (:meth:`PromptBatch.singles`) at once, so their engine calls merge into each
step's (:func:`run_together`). Prompt ``i`` draws with its own ``seed``, else with the request's ``seed`` + ``i``
(the request's drawn once where it has none): each prompt's images are those of its own one-prompt request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, TypeVar

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_serializer, model_validator
from pydantic_core import PydanticCustomError

from serve.integers import json_int
from serve.protocol.prompt_weights import WEIGHTING, checked_prompt

MAX_PROMPT_CHARS = 4000
MAX_PROMPTS = 4
"""As many as a generation's images (:data:`serve.protocol.schema.MAX_IMAGES`)."""
MAX_SEED = 2**63 - 1
SPACES = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
"""Python's whitespace (``str.isspace``) as a regular expression's character class, for the schema's patterns."""
PROMPT_PATTERN = f"[^{SPACES}]"
"""A prompt holds at least one character that is not whitespace."""
ONE_OF_THEM = {"oneOf": [{"required": ["prompt"]}, {"required": ["prompts"]}]}
"""The schema's rule: a request has a ``prompt`` or ``prompts``, exactly one of them."""


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("prompt must contain at least one non-space character")
    return value


def _text_schema(schema: dict) -> None:
    """A prompt's schema: its pattern; no default (absent, not null: the other of prompt and prompts is given)."""
    schema["pattern"] = PROMPT_PATTERN
    schema.pop("default", None)


PromptText = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS), AfterValidator(_not_blank)]


class PromptChoice(BaseModel):
    """One prompt of many, and the seed it draws with."""

    model_config = ConfigDict(extra="forbid")

    prompt: PromptText = Field(description="What to draw, weighted as `prompt` is.", json_schema_extra=_text_schema)
    seed: json_int(ge=0, le=MAX_SEED) | None = Field(
        None, description="Its random seed; default: the request's seed + its index."
    )


class PromptBatch(BaseModel):
    """A generation's prompt part: one ``prompt``, or ``prompts``, exactly one of them."""

    prompt: PromptText = Field(
        None,
        description=f"What to draw (or prompts: exactly one of them), weighted as AUTOMATIC1111's prompts are: "
        f"{WEIGHTING}",
        json_schema_extra=_text_schema,
    )
    prompts: Annotated[list[PromptChoice], Field(min_length=1, max_length=MAX_PROMPTS)] = Field(
        None,
        description=f"Instead of prompt: up to {MAX_PROMPTS} prompts generated in one call (n images of each, priced "
        "as one generation, their rows in the same denoising steps), each with its own seed or the request's seed + "
        "its index. The answer's images go prompt by prompt; each prompt's are those of its own request.",
        json_schema_extra=lambda schema: schema.pop("default", None),
    )

    @model_validator(mode="after")
    def _one_of_them(self) -> PromptBatch:
        if self.prompt is None and self.prompts is None:
            raise PydanticCustomError("missing", "Field required (or prompts)", {"field": "prompt"})
        if self.prompt is not None and self.prompts is not None:
            raise PydanticCustomError("one_of", "give prompt or prompts, not both", {"field": "prompts"})
        for field, text in self.prompt_texts():  # each one's weighting parses: a 400 naming it otherwise
            checked_prompt(text, field)
        return self

    @model_serializer(mode="wrap")
    def _the_one_given(self, dump):
        """Dumped with the one of prompt and prompts it has.

        A stored request validates again; a one-prompt request dumps as before prompts existed.
        """
        dumped = dump(self)
        for name in ("prompt", "prompts"):
            if name in dumped and dumped[name] is None:
                del dumped[name]
        return dumped

    @property
    def prompt_count(self) -> int:
        """How many prompts it draws."""
        return 1 if self.prompts is None else len(self.prompts)

    def prompt_texts(self) -> list[tuple[str, str]]:
        """Each prompt with the field that names it (``prompt``, ``prompts.0.prompt``...)."""
        if self.prompts is None:
            return [("prompt", self.prompt)]
        return [(f"prompts.{i}.prompt", choice.prompt) for i, choice in enumerate(self.prompts)]

    def singles(self, seed: int) -> list:
        """The one-prompt requests it is, each with its seed set (``seed``: the request's, drawn if it had none)."""
        if self.prompts is None:
            return [self.model_copy(update={"seed": seed})]
        return [
            self.model_copy(
                update={
                    "prompt": choice.prompt,
                    "prompts": None,
                    "seed": choice.seed if choice.seed is not None else (seed + index) % (MAX_SEED + 1),
                }
            )
            for index, choice in enumerate(self.prompts)
        ]

    def origin(self, index: int, seed: int) -> tuple:
        """Image ``index`` of the answer: the one-prompt request it is of (its seed set), and its index there."""
        if self.prompts is None:  # one prompt: itself (a video's frames too, more than its rows)
            return self.model_copy(update={"seed": seed}), index
        per_prompt = self.rows // self.prompt_count
        return self.singles(seed)[index // per_prompt], index % per_prompt


Result = TypeVar("Result")


async def run_together(runs: Sequence[Awaitable[Result]]) -> list[Result]:
    """Await ``runs`` at once (their engine calls merge into the same requests); the first failure cancels the rest."""
    tasks = [asyncio.ensure_future(run) for run in runs]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()  # a no-op for those done


StepReport = Callable[[int, int, np.ndarray], Awaitable[None]]


def steps_together(on_step: StepReport | None, count: int) -> list[StepReport | None]:
    """``count`` step callbacks whose generations run together: ``on_step`` hears each step once, when all did it."""
    if on_step is None:
        return [None] * count
    done, reported = [0] * count, [0]

    def callback(which: int) -> StepReport:
        async def report(step: int, total: int, latents: np.ndarray) -> None:
            done[which] = step
            if min(done) > reported[0]:
                reported[0] = min(done)
                await on_step(reported[0], total, latents)

        return report

    return [callback(which) for which in range(count)]
