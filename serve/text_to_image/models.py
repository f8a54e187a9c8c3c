"""The models one stack serves, by name: each an engine folder, its Triton model names, what a request may bring it.

:meth:`ServedModels.resolve` is the one door from a request's ``model`` to a served model (absent: the stack's
default, the first given; unknown: a 400 naming ``model``). The stack names the Triton models with
:meth:`ServedModels.prefix` when it installs them, and the replicas call them by the same rule: the default model's
engines keep their bare names (``unet``, ``vae_decoder``: a one-model stack is what it always was), every other
model's carry its name (``sdxl.unet``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from serve.adapters.requests import StackAdapters
from serve.cli_options import NAME, NAME_RULE
from serve.errors import InvalidInput, NotFound
from serve.text_to_image.admission import DEFAULT_MAX_COST, Limits
from serve.text_to_image.engine_folder import MANIFEST, EngineFolder
from serve.triton.activations import PoolSpec
from serve.triton.memory import default_memory_budget
from serve.triton.spec import ModelSpec


def triton_specs(folder: EngineFolder, prefix: str) -> dict[str, ModelSpec]:
    """A folder's engine specs by engine, each named as the Triton model that serves it (``prefix`` + engine)."""
    return {engine: replace(spec, name=f"{prefix}{engine}") for engine, spec in folder.specs.items()}


def check_name(name: str) -> str:
    """``name`` if it may name a model, else :class:`ValueError` saying the rule."""
    if not NAME.match(name):
        raise ValueError(f"{name!r} cannot name a model: use {NAME_RULE}")
    return name


@dataclass(frozen=True)
class ServedModel:
    """One served model: its engine folder, the prefix of its Triton models, its adapters and its admission limits."""

    name: str
    folder: EngineFolder
    prefix: str = ""
    adapters: StackAdapters = field(default_factory=StackAdapters)
    limits: Limits = field(default_factory=lambda: Limits(0))

    @property
    def key(self) -> str:
        """The engine folder's content key (the result cache's key names it)."""
        return self.folder.key

    @property
    def native_size(self) -> int:
        """The side its images have when a request gives no size."""
        return self.folder.family.dims.native_size

    def triton_name(self, engine: str) -> str:
        """The Triton model that serves its engine ``engine``."""
        return f"{self.prefix}{engine}"

    def triton_names(self) -> tuple[str, ...]:
        """Its engines' Triton model names."""
        return tuple(self.triton_name(engine) for engine in self.folder.specs)

    def triton_specs(self) -> list[ModelSpec]:
        """Its engines' specs under their Triton names (what the repository holds and the server watches)."""
        return list(triton_specs(self.folder, self.prefix).values())

    def check(self, request) -> None:
        """Refuse (400 naming the field) what ``request`` brings that this model does not take."""
        family = self.folder.family
        self.adapters.check(request)
        family.check_images(bool(request.image), request.mask is not None, bool(request.controlnets))
        family.controlnets.check(request.controlnets)

    def public(self, loaded: bool) -> dict:
        """``GET /v1/models``' entry: OpenAI's fields, then what Easel adds."""
        family = self.folder.family
        manifest = self.folder.path / MANIFEST
        return {
            "id": self.name,
            "object": "model",
            "created": int(manifest.stat().st_mtime) if manifest.exists() else 0,
            "owned_by": "easel",
            "family": family.name,
            "native_size": f"{self.native_size}x{self.native_size}",
            "loaded": loaded,
            "loras": self.adapters.loras_dir is not None,
            "ip_adapter": self.adapters.ip_adapter,
            "controlnets": list(family.controlnets.ready),
            "takes_images": family.takes_images,
        }


class ServedModels(Mapping[str, ServedModel]):
    """The stack's models in the order given; the first is the default."""

    def __init__(self, models: Mapping[str, ServedModel], room_bytes: int = 0, activation_bytes: int = 0) -> None:
        if not models:
            raise ValueError("a stack serves at least one model")
        self._models = dict(models)
        self.room_bytes = room_bytes  # what the loaded models' weights may use together
        self.activation_bytes = activation_bytes  # the one activation pool every model's engines share

    @classmethod
    def open(
        cls,
        engine_dirs: Mapping[str, str],
        adapters: StackAdapters | None = None,
        memory_budget_bytes: int | None = None,
        max_cost: float = DEFAULT_MAX_COST,
        room_bytes: int | None = None,
    ) -> ServedModels:
        """The models ``engine_dirs`` names (name -> engine folder, the default first); ``adapters``: the default's.

        One memory budget for all: ``room_bytes`` for the loaded models' weights (None: every model's, so all stay
        loaded) and the rest of ``memory_budget_bytes`` (None: the default for that room) one activation pool that
        every model's engines share. Each model's admission counts its own weights and that pool. Raises
        :class:`~serve.triton.memory.MemoryBudgetTooSmall` when the pool cannot run some model at all.
        """
        folders = {check_name(name): EngineFolder(path) for name, path in engine_dirs.items()}
        room = room_bytes or sum(folder.weights_bytes for folder in folders.values())
        activations = (memory_budget_bytes or default_memory_budget(room)) - room
        models = {}
        for index, (name, folder) in enumerate(folders.items()):
            limits = Limits(activations + folder.weights_bytes, max_cost, 2 * max_cost)
            folder.activation_bytes(limits.memory_budget_bytes)  # too small a pool for this model: refused now
            own = (adapters or StackAdapters()) if index == 0 else StackAdapters()
            models[name] = ServedModel(name, folder, cls.prefix(name, index == 0), own, limits)
        return cls(models, room, activations)

    def pool(self) -> PoolSpec:
        """The activation pool Triton's stubs of every model's engines reserve their runs from."""
        engines = (model.triton_name(engine) for model in self.values() for engine in model.folder.memory_models)
        return PoolSpec(self.activation_bytes, tuple(engines))

    @staticmethod
    def prefix(name: str, default: bool) -> str:
        """The prefix of a model's Triton model names: none for the default model, ``NAME.`` for the others."""
        return "" if default else f"{name}."

    @property
    def default(self) -> ServedModel:
        """The model a request without ``model`` gets."""
        return next(iter(self._models.values()))

    def resolve(self, requested: str | None) -> ServedModel:
        """The served model a request's ``model`` names (None or empty: the default); unknown: 400 naming ``model``."""
        if not requested:
            return self.default
        model = self._models.get(requested)
        if model is None:
            raise InvalidInput(f"model: unknown model {requested!r} (served: {', '.join(self._models)})", "model")
        return model

    def require(self, model_id: str) -> ServedModel:
        """The model ``GET /v1/models/{model_id}`` names (404 if none)."""
        model = self._models.get(model_id)
        if model is None:
            raise NotFound(f"no model {model_id!r} (served: {', '.join(self._models)})", "model_id")
        return model

    def __getitem__(self, name: str) -> ServedModel:
        return self._models[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)
