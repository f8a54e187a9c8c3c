"""How a stack draws: the techniques it gives requests that leave them unset, and where its loop runs.

A part of the stack's settings (:class:`serve.settings.AppSettings`), as the circuit breakers' and the webhooks' are.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, field_validator

from serve.latent_cache import DEFAULT_SIMILARITY
from serve.spelling import Cli
from serve.text_to_image.generation import StackDefaults
from serve.text_to_image.guidance import NO_CUTOFF
from serve.text_to_image.loop_protocol import LOOPS


class DrawingSettings(BaseModel):
    """Adaptive guidance, the approximate cache and the loop's place: what every text-to-image replica is told."""

    guidance_cutoff: float = Field(
        NO_CUTOFF,
        gt=0,
        le=1,
        description="Adaptive guidance for requests that do not set guidance_cutoff: the share of a generation's "
        "steps that run guided (1: all of them, today's images).",
    )

    approximate_cache: Annotated[float, Cli(metavar="SHARE")] = Field(
        0.0,
        ge=0,
        lt=1,
        description="Approximate caching across requests: keep each generation's latents this share of its steps "
        "in, and start a later one whose prompt is similar (same model, size, sampler, steps, guidance, adapters) "
        "from them, skipping those steps (0: off). Requests without a seed use it unless they say "
        "approximate_cache false; requests with one only when they say true.",
    )
    approximate_similarity: float = Field(
        DEFAULT_SIMILARITY,
        gt=0,
        le=1,
        description="The similarity (cosine of the prompts' mean-pooled text embeddings) at which a kept prompt's "
        "latents are reused.",
    )
    loop: Annotated[str, Cli(choices=LOOPS)] = Field(
        "auto",
        description="Where text-to-image requests are drawn: triton (the loop inside Triton, beside the engines: one "
        "call per generation, steps of concurrent requests merged there; input images, ControlNets, LoRAs, "
        "references, videos, the approximate cache and tiled decodes stay on the replica's loop), replica (the "
        "replica's loop, one Triton call per engine per step), or auto (triton for models on the torch runtime, "
        "what a GPU builds; replica on a CPU). Each answer's Easel-Loop header names the loop that drew it.",
    )

    @field_validator("loop")
    @classmethod
    def _loop_is_one_of_the_loops(cls, loop: str) -> str:
        if loop not in LOOPS:
            raise ValueError(f"loop must be one of {', '.join(LOOPS)}, not {loop!r}")
        return loop

    @property
    def defaults(self) -> StackDefaults:
        """What the stack gives requests that leave a technique unset."""
        return StackDefaults(self.guidance_cutoff, self.approximate_cache, self.approximate_similarity)
