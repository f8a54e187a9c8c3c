"""``easel up --remote NAME=URL[,OPTION=VALUE...]``: the remote models a stack serves, a part of its settings."""

from __future__ import annotations

import os
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve.names import NAME, NAME_RULE
from serve.spelling import Cli

Extension = Literal["seed", "negative_prompt", "num_inference_steps", "guidance_scale"]
EXTENSIONS: tuple[Extension, ...] = get_args(Extension)
"""Fields beyond OpenAI's own that Easel sends a remote by default (another Easel, and many compatible services,
take them); ``takes=`` narrows them (``takes=`` alone: none, an OpenAI service that would ignore them)."""


class RemoteBackend(BaseModel):
    """Where a remote model is drawn and within what bounds: ``NAME=URL`` then ``,OPTION=VALUE`` for these fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", description="The service's base URL.")
    key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The environment variable holding its API key (sent as a Bearer token; never on the command line).",
    )
    model: str | None = Field(None, min_length=1, max_length=256, description="The model it is asked for.")
    unsupported: Literal["refuse", "drop"] = Field(
        "refuse",
        description="A request asking what it cannot honour: refused, a 400 naming the field, or drawn without it, "
        "the field listed in the answer's dropped (and Easel-Dropped).",
    )
    takes: tuple[Extension, ...] = Field(
        EXTENSIONS, description="Easel's fields beyond OpenAI's it is sent (the flag: '+' apart)."
    )
    timeout_s: float = Field(120.0, gt=0, le=3600, description="Seconds its answer may take: then a 504.")
    max_mb: float = Field(64.0, gt=0, le=1024, description="Megabytes its answer may have: more is a 502.")
    native_size: int = Field(1024, ge=64, le=4096, description="The side its images have when a request gives none.")

    @field_validator("takes", mode="before")
    @classmethod
    def _plus_separated(cls, value):
        """``takes=seed+negative_prompt`` as the flag spells it."""
        return tuple(name for name in value.split("+") if name) if isinstance(value, str) else value

    def declaration(self) -> dict:
        """Its declaration as the model table holds it: the fields given, in JSON's types."""
        return self.model_dump(mode="json", exclude_defaults=True)

    def api_key(self) -> str | None:
        """Its key, read from :attr:`key_env` (unset there: an error naming the variable)."""
        if self.key_env is None:
            return None
        key = os.environ.get(self.key_env)
        if not key:
            raise ValueError(f"remote: the environment variable {self.key_env} holding its key is not set")
        return key


class RemoteSettings(BaseModel):
    """The remote models a stack serves, by name."""

    remotes: Annotated[
        dict[str, RemoteBackend], Cli("--remote", "NAMED_REMOTE", metavar="NAME=URL[,OPTION=VALUE]", multiple=True)
    ] = Field(
        {},
        description="A model another service draws through OpenAI's images API (another Easel, or any compatible "
        "service), served as NAME (family remote) and usable in a fallback chain. Options: key_env=VAR (its key's "
        "environment variable), model=ID, unsupported=refuse|drop, takes=seed+negative_prompt+... , timeout_s=S, "
        "max_mb=M, native_size=PX (repeatable).",
    )

    @field_validator("remotes")
    @classmethod
    def _named(cls, remotes: dict[str, RemoteBackend]) -> dict[str, RemoteBackend]:
        for name, backend in remotes.items():
            if not NAME.match(name):
                raise ValueError(f"remotes: {name!r} cannot name a model ({NAME_RULE})")
            backend.api_key()  # its key's variable is set: else the start stops here, naming it
        return remotes

    def remote_declarations(self) -> dict[str, dict]:
        """Each remote model's declaration as the model table holds it (the fields given, JSON's types)."""
        return {name: backend.declaration() for name, backend in self.remotes.items()}
