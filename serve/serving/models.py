"""The models a stack serves: listed in OpenAI's shape, added, replaced and removed while it runs (admin).

Also the ControlNets the default model takes (its LoRAs: :mod:`serve.serving.adapters`).
"""

from __future__ import annotations

import asyncio

from ray.serve.handle import DeploymentHandle

from serve.errors import Conflict
from serve.experiments.traffic import Experiments
from serve.remote.models import RemoteModel
from serve.resilience.circuits import Circuits
from serve.serving.current_models import CurrentModels
from serve.text_to_image.models import ModelFolder, NewModel, ServedModel


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
        """A model's entry: :meth:`ServedModel.public`, and its circuit breaker's state (this replica's)."""
        return model.public(loaded) | {"circuit": str(self.circuits.state(model.name))}

    async def add(self, body: NewModel) -> dict:
        """Serve a built engine folder as a new model: 409 for a name an experiment has (a model may not shadow it)."""
        if await asyncio.to_thread(self.experiments.exists, body.name):
            raise Conflict(f"name: an experiment is named {body.name!r}; a model may not shadow it", "name")
        return await self.residency.add.remote(body.name, body.engine_dir, body.loras_dir)

    async def replace(self, model_id: str, body: ModelFolder) -> dict:
        """Serve a built engine folder as the model's next version."""
        return await self.residency.replace.remote(model_id, body.engine_dir, body.loras_dir)

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
