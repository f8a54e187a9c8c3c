"""The circuit breakers' and fallback chains' settings, a part of the stack's (:class:`serve.settings.AppSettings`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, field_validator

from serve.names import NAME, NAME_RULE
from serve.spelling import Cli


class ResilienceSettings(BaseModel):
    """When a model's circuit opens and closes again, and which models answer when it cannot."""

    circuit_failures: int = Field(
        5,
        ge=0,
        description="Consecutive failed generations (a 5xx the model caused, not a client's 4xx or a 429) that open "
        "a model's circuit: it is not called until --circuit-open-s pass (0: never on a count).",
    )
    circuit_failure_rate: float = Field(
        0.5,
        gt=0,
        le=1,
        description="The share of failed generations among a model's last --circuit-window that opens its circuit "
        "(counted once the window is full).",
    )
    circuit_window: int = Field(
        20, ge=2, le=10_000, description="How many of a model's last generations the failure rate counts."
    )
    circuit_open_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Seconds an open circuit refuses its model (as LiteLLM's router cools a deployment down for a "
        "few seconds: a model back soon is not kept out long); then one probe goes through (half-open): it closes "
        "the circuit if it succeeds, opens it again if it fails.",
    )
    fallbacks: Annotated[
        dict[str, tuple[str, ...]], Cli("--fallback", "NAMED_LIST", metavar="MODEL=LINK,...", multiple=True)
    ] = Field(
        {},
        description="A fallback chain: when MODEL cannot serve (its engines unavailable, its circuit open, a "
        "timeout), the request goes to each LINK in turn (a link that cannot take it is skipped); the answer names "
        "who drew it (Easel-Model) and why (Easel-Fallback). A request with fallback false never takes it "
        "(repeatable).",
    )

    fallback_queue_wait_s: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="Seconds a request for a model with a fallback chain waits for a slot on its replica; past it "
        "the model counts as saturated and the request goes down the chain (Easel-Fallback: saturated). Unset: it "
        "waits its turn.",
    )

    @field_validator("fallbacks")
    @classmethod
    def _chains_named(cls, chains: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        """Each chain's model and links are names a model may have, and a chain never names its own model."""
        for model, links in chains.items():
            for name in (model, *links):
                if not NAME.match(name):
                    raise ValueError(f"fallbacks: {name!r} cannot name a model ({NAME_RULE})")
            if model in links or not links:
                raise ValueError(f"fallbacks: {model}'s chain must name other models, at least one")
        return chains
