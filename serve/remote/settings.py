"""``easel up --remote NAME=URL[,OPTION=VALUE...]``: the remote models a stack serves, a part of its settings."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from serve.names import NAME, NAME_RULE
from serve.spelling import Cli

Extension = Literal["seed", "negative_prompt", "num_inference_steps", "guidance_scale"]
EXTENSIONS: tuple[Extension, ...] = get_args(Extension)
"""Fields beyond OpenAI's own that Easel sends a remote by default (another Easel, and many compatible services,
take them); ``takes=`` narrows them (``takes=`` alone: none, an OpenAI service that would ignore them)."""

DEFAULT_KEY_ENVS = ("EASEL_REMOTE_*",)
"""The environment variables a remote's ``key_env`` may name unless ``easel up --remote-key-envs`` says others."""
KEY_ENV_DECLARED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")
"""What ``--remote-key-envs`` lists: a variable's name, or a prefix of names ending in ``*``."""


def declared_for_remotes(name: str, declared: Sequence[str]) -> bool:
    """Whether ``declared`` (names, and prefixes ending in ``*``) names the environment variable ``name``."""
    return any(name.startswith(entry[:-1]) if entry.endswith("*") else name == entry for entry in declared)


class RemoteBackend(BaseModel):
    """Where a remote model is drawn and within what bounds: ``NAME=URL`` then ``,OPTION=VALUE`` for these fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", description="The service's base URL.")
    key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The environment variable holding its API key (sent as a Bearer token; never on the command line): "
        "one the operator declared for remotes' keys (easel up --remote-key-envs; EASEL_REMOTE_* by default).",
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

    def check_key_env(self, declared: Sequence[str]) -> None:
        """A ValueError naming ``key_env`` unless it names a variable ``declared`` for remotes' keys (or none)."""
        if self.key_env is not None and not declared_for_remotes(self.key_env, declared):
            raise ValueError(
                f"key_env: {self.key_env} is not a variable declared for remotes' keys (declared: "
                f"{', '.join(declared) or 'none'}; easel up --remote-key-envs)"
            )

    def api_key(self, declared: Sequence[str]) -> str | None:
        """Its key, read from :attr:`key_env` only where that is ``declared`` for remotes' keys, and set.

        Otherwise a ValueError naming ``key_env`` (never the value of any variable): an undeclared variable is not
        read at all, so whether it is set is not told either.
        """
        self.check_key_env(declared)
        if self.key_env is None:
            return None
        key = os.environ.get(self.key_env)
        if not key:
            raise ValueError(
                f"key_env: {self.key_env}, the variable holding its key, is not set in the stack's environment"
            )
        return key


class RemoteSettings(BaseModel):
    """The remote models a stack serves, by name, and the environment variables their keys may be read from."""

    remote_key_envs: Annotated[tuple[str, ...], Cli(type="NAME_LIST", metavar="VAR,PREFIX*,...")] = Field(
        DEFAULT_KEY_ENVS,
        description="The environment variables a remote's key_env may name, comma-separated: a name, or a prefix "
        "ending in * (given, these replace the default). A remote naming any other is refused (here, and a 400 from "
        "POST /v1/models), so no other variable of the stack is ever sent to a remote's URL.",
    )
    remotes: Annotated[
        dict[str, RemoteBackend], Cli("--remote", "NAMED_REMOTE", metavar="NAME=URL[,OPTION=VALUE]", multiple=True)
    ] = Field(
        {},
        description="A model another service draws through OpenAI's images API (another Easel, or any compatible "
        "service), served as NAME (family remote) and usable in a fallback chain. Options: key_env=VAR (its key's "
        "environment variable, one --remote-key-envs declares), model=ID, unsupported=refuse|drop, "
        "takes=seed+negative_prompt+... , timeout_s=S, max_mb=M, native_size=PX (repeatable).",
    )

    @field_validator("remote_key_envs")
    @classmethod
    def _names_or_prefixes(cls, declared: tuple[str, ...]) -> tuple[str, ...]:
        for entry in declared:
            if not KEY_ENV_DECLARED.match(entry):
                raise ValueError(f"{entry!r} is neither an environment variable's name nor a prefix ending in *")
        return declared

    @field_validator("remotes")
    @classmethod
    def _named(cls, remotes: dict[str, RemoteBackend], info: ValidationInfo) -> dict[str, RemoteBackend]:
        """Each named as a model may be, its key's variable declared for remotes and set: else the start stops."""
        declared = info.data.get("remote_key_envs", DEFAULT_KEY_ENVS)  # declared above: validated first
        for name, backend in remotes.items():
            if not NAME.match(name):
                raise ValueError(f"remotes: {name!r} cannot name a model ({NAME_RULE})")
            try:
                backend.api_key(declared)
            except ValueError as error:
                raise ValueError(f"--remote {name}: {error}") from None
        return remotes

    def remote_declarations(self) -> dict[str, dict]:
        """Each remote model's declaration as the model table holds it (the fields given, JSON's types)."""
        return {name: backend.declaration() for name, backend in self.remotes.items()}
