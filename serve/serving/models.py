"""The models a stack serves: listed in OpenAI's shape, added, replaced and removed while it runs (admin).

Also the ControlNets the default model takes (its LoRAs: :mod:`serve.serving.adapters`).
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError
from ray.serve.handle import DeploymentHandle

from serve.errors import Conflict, InvalidInput
from serve.experiments.traffic import Experiments
from serve.models.served import ServedModel
from serve.models.table import ModelFolder
from serve.names import NAME, NAME_RULE
from serve.remote.models import RemoteModel
from serve.remote.settings import RemoteBackend
from serve.resilience.circuits import Circuits
from serve.schema_rules import exactly_one
from serve.serving.current_models import CurrentModels

MAX_CHAIN = 16
"""The most links a fallback chain may have."""


WHAT_DRAWS = {
    "allOf": [
        exactly_one(engine_dir="string", remote="object"),
        {
            "if": {"required": ["remote"], "properties": {"remote": {"type": "object"}}},
            "then": {"properties": {"loras_dir": {"type": "null"}}},
        },
    ]
}
"""What the schema states: exactly one of ``engine_dir`` and ``remote``, and no ``loras_dir`` with a remote."""


class NewModel(ModelFolder):
    """``POST /v1/models``' body: a name and what draws it, a built engine folder or a remote service."""

    model_config = ConfigDict(json_schema_extra=WHAT_DRAWS)

    name: str = Field(pattern=NAME.pattern, description=f"The model's name: {NAME_RULE}.")
    engine_dir: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description=f"{ModelFolder.model_fields['engine_dir'].description} Give it or remote, not both.",
    )
    remote: RemoteBackend | None = Field(
        None,
        description="A service that draws the model through OpenAI's images API (another Easel, or any compatible "
        "service), as `easel up --remote` declares one: served as family remote, usable in fallback chains. Its "
        "key_env must name a variable declared for remotes' keys (`easel up --remote-key-envs`, EASEL_REMOTE_* by "
        "default) and set in the stack's environment; its value is never shown back.",
    )

    @model_validator(mode="after")
    def _engines_or_remote(self) -> NewModel:
        if (self.engine_dir is None) == (self.remote is None):
            message = "give engine_dir (a built engine folder) or remote, one of them"
            raise PydanticCustomError("one_of", message, {"field": "engine_dir"})
        if self.remote is not None and self.loras_dir is not None:
            raise PydanticCustomError("no_loras", "a remote model takes no LoRAs", {"field": "loras_dir"})
        return self


class FallbackChain(BaseModel):
    """``PUT /v1/models/{model_id}/fallback``'s body: the models that answer, in turn, when this one cannot serve."""

    model_config = ConfigDict(extra="forbid")

    chain: list[str] = Field(
        max_length=MAX_CHAIN,
        description="Models this stack serves (or remote ones), each once, not the model itself, tried in this order "
        "when it cannot serve (its engines unavailable, its circuit open, a timeout, saturated); empty: no chain.",
    )


class ModelAdmin:
    """What the model routes answer: the model table, whether each model is loaded, and changes to it."""

    def __init__(
        self,
        models: CurrentModels,
        text_to_image: DeploymentHandle,
        residency: DeploymentHandle,
        experiments: Experiments,
        circuits: Circuits | None = None,
    ) -> None:
        self.circuits = circuits or Circuits()  # each model's breaker (the Generations' own)
        self.models = models
        self.text_to_image = text_to_image
        self.residency = residency
        self.experiments = experiments

    def controlnets(self) -> dict:
        """The ControlNets of every model of this stack, each with its model: ready, or listed with why not."""
        served = self.models.now().items()
        data = [entry | {"model": name} for name, model in served for entry in model.folder.controlnets.listing()]
        return {"object": "list", "data": data}

    async def listing(self) -> dict:
        """OpenAI's model list: every model this stack serves (the default first), with its family and what it takes."""
        loaded = await self.loaded()
        models = self.models.now().items()
        data = [self._public(model, loaded[name]) for name, model in models]
        return {"object": "list", "data": data + [self._public(remote) for remote in self.models.remotes.values()]}

    async def describe(self, model_id: str) -> dict:
        """One served model, as the list gives it (404 if this stack serves none of that name)."""
        if model_id in self.models.remotes:
            return self._public(self.models.remotes[model_id])
        model = self.models.now().require(model_id)
        return self._public(model, (await self.loaded())[model_id])

    def _public(self, model: ServedModel | RemoteModel, loaded: bool = True) -> dict:
        """A model's entry: :meth:`ServedModel.public`, its circuit breaker's state (this replica's), its chain."""
        chain = list(self.models.chains().get(model.name, ()))
        return model.public(loaded) | {"circuit": str(self.circuits.state(model.name)), "fallback": chain}

    async def add(self, body: NewModel) -> dict:
        """Serve a built engine folder, or a remote service, as a new model.

        409 for a name an experiment has (a model may not shadow it); a 400 naming ``remote.key_env`` where the
        remote's key_env is not a variable declared for remotes' keys (then it is not read) or is not set in the
        stack's environment.
        """
        if await asyncio.to_thread(self.experiments.exists, body.name):
            raise Conflict(f"name: an experiment is named {body.name!r}; a model may not shadow it", "name")
        if body.remote is None:
            return await self.residency.add.remote(body.name, body.engine_dir, body.loras_dir)
        try:
            body.remote.api_key(self.models.key_envs)
        except ValueError as error:
            raise InvalidInput(f"remote.{error}", "remote.key_env") from None
        declaration = body.remote.declaration()
        await self.residency.add_remote.remote(body.name, declaration)
        return self._public(self.models.remote(body.name, declaration))

    async def replace(self, model_id: str, body: ModelFolder) -> dict:
        """Serve a built engine folder as the model's next version (409 for a remote model)."""
        if model_id in self.models.remotes:
            why = f"model_id: {model_id!r} is a remote model: remove it and add it again to change it"
            raise Conflict(why, "model_id")
        return await self.residency.replace.remote(model_id, body.engine_dir, body.loras_dir)

    async def chain(self, model_id: str, body: FallbackChain) -> dict:
        """Make ``body.chain`` the model's fallback chain; its entry (404 for no model of that name)."""
        await self.residency.chain.remote(model_id, tuple(body.chain))
        return await self.describe(model_id)

    async def remove(self, model_id: str) -> dict:
        """Stop serving a model: 409 while an experiment has it as a variant."""
        experiments = await asyncio.to_thread(self.experiments.using, model_id)
        if experiments:
            named = ", ".join(experiments)
            raise Conflict(f"model_id: {model_id!r} is a variant of {named}: redefine or delete it first", "model_id")
        return await self.residency.remove.remote(model_id)

    async def loaded(self) -> dict[str, bool]:
        """Whether each model is loaded (its engines all ready in Triton)."""
        states = await self.text_to_image.ready.remote(await self.loaded_triton_models())
        models = self.models.now()
        return {name: all(states.get(t, False) for t in model.triton_names()) for name, model in models.items()}

    async def loaded_triton_models(self) -> list[str]:
        """The Triton models of the versions loaded now (old versions still finishing their requests included)."""
        loaded = set(await self.residency.loaded.remote())
        versions = self.models.now().versions()
        return [name for model in versions if model.version_id in loaded for name in model.triton_names()]
