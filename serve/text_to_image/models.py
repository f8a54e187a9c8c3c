"""The models one stack serves, by name: each an engine folder, its Triton model names, what a request may bring it.

:meth:`ServedModels.resolve` is the one door from a request's ``model`` to a served model (absent: the stack's
default, the first given; unknown: a 400 naming ``model``). The stack names the Triton models with
:meth:`ServedModels.prefix` when it installs them, and the replicas call them by the same rule: the default model's
engines keep their bare names (``unet``, ``vae_decoder``: a one-model stack is what it always was), every other
model's carry its name (``sdxl.unet``), and a version installed while the stack runs its name and version
(``sdxl.v2.unet``).

:class:`ModelTable` is what the stack serves now: the models by name, each at a version, and the old versions that
still finish their requests. It is a file in the run folder (``models.json``) that the ``ModelResidency`` writes when
a model is added, replaced or removed, and every replica reads again when it changes (:meth:`ServedModels.refreshed`).
It is the stack's state: the next start resumes it (:meth:`ModelTable.resumed`), the command line seeds a new one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from serve.adapters.catalog import LoraTarget, registry_folder
from serve.adapters.requests import StackAdapters
from serve.errors import Conflict, InvalidInput, NotFound
from serve.names import NAME, NAME_RULE
from serve.text_to_image.admission import DEFAULT_MAX_COST, Admission, Checked, Limits, Work, engines_used, upscale_work
from serve.text_to_image.engine_folder import MANIFEST, EngineFolder, open_engine_folder
from serve.text_to_image.generation import Outline
from serve.text_to_image.images import input_pixels, output_size
from serve.text_to_image.ip_scale import ip_choices
from serve.text_to_image.video import motion_of
from serve.triton.activations import ANY_ENGINE, PoolSpec
from serve.triton.engine_files import LORAS_LINK
from serve.triton.memory import MemoryBudgetTooSmall, default_memory_budget
from serve.triton.repository import install_model, uninstall_model
from serve.triton.spec import ModelSpec


def triton_specs(folder: EngineFolder, prefix: str) -> dict[str, ModelSpec]:
    """A folder's engine specs by engine, each named as the Triton model that serves it (``prefix`` + engine)."""
    return {engine: replace(spec, name=f"{prefix}{engine}") for engine, spec in folder.specs.items()}


def check_name(name: str) -> str:
    """``name`` if it may name a model, else :class:`ValueError` saying the rule."""
    if not NAME.match(name):
        raise ValueError(f"{name!r} cannot name a model: use {NAME_RULE}")
    return name


MODEL_TABLE = "models.json"
"""The run folder's file that names the models a stack serves now (:class:`ModelTable`)."""


@dataclass(frozen=True)
class ModelEntry:
    """One version of a served model: its engine folder; version 1 is what the stack started with (or first added)."""

    name: str
    engine_dir: str
    version: int = 1
    loras_dir: str | None = None  # its LoRA registry folder (`easel models add --loras`); None: as the stack started

    @property
    def version_id(self) -> str:
        """The version's id: Ray Serve's multiplexed model id and the residency's key (``sd.v2``)."""
        return f"{self.name}.v{self.version}"


@dataclass
class ModelTable:
    """The models served now by name (the default first), and old versions still finishing their requests.

    Versions of a name are never reused (``versions`` remembers the last of every name ever served), so an old
    version's Triton models, loop and counts are never mistaken for a new one's. A name in ``versions`` that is not
    served was removed.
    """

    current: dict[str, ModelEntry]
    retired: dict[str, ModelEntry] = field(default_factory=dict)  # by version id, until its requests have ended
    versions: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for entry in self.entries():
            self.versions[entry.name] = max(self.versions.get(entry.name, 0), entry.version)

    @classmethod
    def start(cls, engine_dirs: Mapping[str, str]) -> ModelTable:
        """The table of a stack's start: every model at version 1, in the order given."""
        return cls({name: ModelEntry(name, str(path)) for name, path in engine_dirs.items()})

    @classmethod
    def resumed(cls, kept: ModelTable | None, engine_dirs: Mapping[str, str]) -> ModelTable:
        """The table of a start over ``kept``, the table the last run left (None: a new stack, :meth:`start`).

        What the API changed stays: models added, versions replaced, models removed, the default. A version 1 (what
        a start serves) follows this start's build of it; a model of the command line the table never served is
        added; retired versions are gone (their requests ended with the last run).
        """
        if kept is None:
            return cls.start(engine_dirs)
        current = {
            name: replace(entry, engine_dir=engine_dirs[name]) if entry.version == 1 and name in engine_dirs else entry
            for name, entry in kept.current.items()
        }
        table = cls(current, {}, dict(kept.versions))
        for name, engine_dir in engine_dirs.items():
            if name not in table.versions:
                table.add(name, engine_dir)
        return table

    def entries(self) -> list[ModelEntry]:
        """Every version with Triton models: the current ones, then the retired."""
        return [*self.current.values(), *self.retired.values()]

    def copy(self) -> ModelTable:
        """A table to change (this one stays as it is until the change is done)."""
        return ModelTable(dict(self.current), dict(self.retired), dict(self.versions))

    def add(self, name: str, engine_dir: str, loras_dir: str | None = None) -> ModelEntry:
        """Serve ``engine_dir`` as a new model ``name`` (409 naming ``name`` if one is served)."""
        if name in self.current:
            raise Conflict(f"name: model {name!r} is served already (replace it instead)", "name")
        return self._serve(name, engine_dir, loras_dir)

    def replace(self, name: str, engine_dir: str, loras_dir: str | None = None) -> tuple[ModelEntry, ModelEntry]:
        """Serve ``engine_dir`` as model ``name``'s next version; (the new version, the old, now retired)."""
        old = self._served(name)
        self.retired[old.version_id] = old
        return self._serve(name, engine_dir, loras_dir), old

    def remove(self, name: str) -> ModelEntry:
        """Stop serving ``name`` (the default model cannot go: 409); its version, retired."""
        old = self._served(name)
        if name == next(iter(self.current)):
            raise Conflict(f"model_id: {name!r} is the default model: replace it instead", "model_id")
        del self.current[name]
        self.retired[old.version_id] = old
        return old

    def drop(self, version_id: str) -> None:
        """Forget a retired version (its requests ended, its Triton models unloaded)."""
        self.retired.pop(version_id, None)

    def _serve(self, name: str, engine_dir: str, loras_dir: str | None) -> ModelEntry:
        entry = ModelEntry(check_name(name), engine_dir, self.versions.get(name, 0) + 1, loras_dir)
        self.current[name] = entry
        self.versions[name] = entry.version
        return entry

    def _served(self, name: str) -> ModelEntry:
        if name not in self.current:
            raise NotFound(f"no model {name!r} (served: {', '.join(self.current)})", "model_id")
        return self.current[name]

    def to_json(self) -> dict:
        """The table as its file holds it."""
        return {
            "current": [asdict(entry) for entry in self.current.values()],
            "retired": [asdict(entry) for entry in self.retired.values()],
            "versions": self.versions,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> ModelTable:
        """The table its file held."""
        current = [ModelEntry(**entry) for entry in data["current"]]
        retired = [ModelEntry(**entry) for entry in data.get("retired", ())]
        return cls({e.name: e for e in current}, {e.version_id: e for e in retired}, dict(data.get("versions", {})))

    def write(self, path: Path) -> None:
        """Replace the file at ``path`` with this table whole (written aside, then renamed)."""
        aside = path.with_name(f".{path.name}.{os.getpid()}")
        aside.write_text(json.dumps(self.to_json(), indent=2))
        aside.replace(path)

    @classmethod
    def read(cls, path: Path) -> ModelTable:
        """The table in the file at ``path``."""
        return cls.from_json(json.loads(path.read_text()))


class ModelFolder(BaseModel):
    """``PUT /v1/models/{model_id}``'s body: the engine folder that becomes the model's next version."""

    model_config = ConfigDict(extra="forbid")

    engine_dir: str = Field(
        min_length=1,
        max_length=4096,
        description="Absolute path, on the stack's machine, of an engine folder `easel build` built (the `engines:` "
        "it prints; `easel models add` builds one and sends it); the stack installs and loads it.",
    )
    loras_dir: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="Absolute path of the model's LoRA registry folder, prepared for these LoRA-ready engines "
        "(`easel models add --loras DIR` prepares and sends it); absent: the model takes no LoRAs.",
    )


class NewModel(ModelFolder):
    """``POST /v1/models``' body: a name and the engine folder served under it."""

    name: str = Field(pattern=NAME.pattern, description=f"The model's name: {NAME_RULE}.")


@dataclass(frozen=True)
class ServedModel:
    """One served model: its engine folder, the prefix of its Triton models, its adapters and its admission limits."""

    name: str
    folder: EngineFolder
    prefix: str = ""
    adapters: StackAdapters = field(default_factory=StackAdapters)
    limits: Limits = field(default_factory=lambda: Limits(0))
    version: int = 1

    @property
    def version_id(self) -> str:
        """This version's id (:attr:`ModelEntry.version_id`): what routes it to replicas and counts its requests."""
        return ModelEntry(self.name, "", self.version).version_id

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

    def install(self, repository: Path) -> None:
        """Install its engines (built and measured) in Triton's ``repository`` under its Triton names.

        A LoRA-ready engine's version folder links its LoRA registry folder, where the engine loads adapters from.
        """
        for engine, spec in triton_specs(self.folder, self.prefix).items():
            files = (engine_files := self.folder.engine(engine)).files()
            if engine_files.lora_ready and self.adapters.loras_dir is not None:
                files[LORAS_LINK] = Path(self.adapters.loras_dir)
            install_model(spec, repository, files)

    def uninstall(self, repository: Path) -> None:
        """Remove its Triton models from ``repository`` (a version the running stack installed, once unloaded)."""
        for name in self.triton_names():
            uninstall_model(name, repository)

    def check(self, request) -> Checked:
        """``request``'s work checked (400 naming the field) by the rules needing no run, and its replica's plan."""
        self.adapters.check(request)
        work, family = self.work(request), self.folder.family
        family.check(Outline.of_request(request, work.width, work.height), request.controlnets)
        uses = engines_used(request, family.dims.inpainting)
        return Checked(work, Admission.for_engines(self.folder, self.limits).check(work, uses))

    def lora_target(self) -> LoraTarget:
        """This model as a LoRA upload is read against (400 naming ``model`` when its engines are not LoRA-ready)."""
        if self.adapters.loras_dir is None:
            why = f"{self.name} takes no LoRA adapters (start the stack with --loras {self.name}=DIR)"
            raise InvalidInput(f"model: {why}", "model")
        folder = self.folder
        return LoraTarget(self.name, self.adapters, folder.key, folder.family.pipeline_class, folder.lora_slots())

    def work(self, request) -> Work:
        """What ``request`` asks of this model: its cost is the one both doors and the replicas count.

        No pixel is decoded: sizes come from the images' headers (no size and no image: this model's native one).
        """
        width, height = output_size(request, self.native_size)
        return Work(
            request.rows,
            request.denoising_steps,
            width,
            height,
            request.passes,
            encodes=bool(request.image) or self.folder.family.dims.inpainting,
            reference=any(ip.choice.images for ip in ip_choices(request)),
            input_pixels=input_pixels(request),
            upscale=upscale_work(request, width, height),
            frames=motion.frames if (motion := motion_of(request)) else 1,
            guided=request.guidance_scale > 1.0,
        )

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
            "ip_adapters": list(ip.names) if (ip := self.folder.adapters.ip_adapter) is not None else [],
            "controlnets": list(family.controlnets.ready),
            "takes_images": family.takes_images,
            "version": self.version,
        }


class ServedModels(Mapping[str, ServedModel]):
    """The stack's models in the order given (the first is the default), and old versions finishing their requests.

    ``room_bytes`` is what the loaded models' weights may use together (None: all of them, whatever is added);
    ``activation_bytes`` the one activation pool every model's engines share (fixed at the stack's start).
    ``table_path``: the table file this was read from, read again by :meth:`refreshed` when it changes.
    """

    def __init__(
        self,
        table: ModelTable,
        folders: Mapping[str, EngineFolder],
        activation_bytes: int = 0,
        room_bytes: int | None = None,
        adapters: Mapping[str, StackAdapters] | None = None,
        max_cost: float = DEFAULT_MAX_COST,
        table_path: Path | None = None,
    ) -> None:
        if not table.current:
            raise ValueError("a stack serves at least one model")
        self.table = table
        self.activation_bytes = activation_bytes
        self.room = room_bytes
        self.adapters = dict(adapters or {})  # each model's, as the stack started it
        self.max_cost = max_cost
        self.table_path = table_path
        self._stamp = _stamp(table_path)
        self._folders = dict(folders)  # by engine folder path
        self._versions = {entry.version_id: self._served(entry) for entry in table.entries()}
        self._models = {name: self._versions[entry.version_id] for name, entry in table.current.items()}

    @classmethod
    def open(
        cls,
        engine_dirs: Mapping[str, str],
        adapters: Mapping[str, StackAdapters] | None = None,
        memory_budget_bytes: int | None = None,
        max_cost: float = DEFAULT_MAX_COST,
        room_bytes: int | None = None,
        table_path: str | Path | None = None,
    ) -> ServedModels:
        """The models ``engine_dirs`` names (name -> engine folder, the default first); ``adapters``: each one's.

        One memory budget for all: ``room_bytes`` for the loaded models' weights (None: every model's, so all stay
        loaded) and the rest of ``memory_budget_bytes`` (None: the default for that room) one activation pool that
        every model's engines share. Each model's admission counts its own weights and that pool. Raises
        :class:`~serve.triton.memory.MemoryBudgetTooSmall` when the pool cannot run some model at all. With a
        ``table_path`` whose file exists, the models are the table's (``engine_dirs`` set the budget only).
        """
        folders = {check_name(name): EngineFolder(path) for name, path in engine_dirs.items()}
        room = room_bytes or sum(folder.weights_bytes for folder in folders.values())
        activations = (memory_budget_bytes or default_memory_budget(room)) - room
        by_path = {str(folder.path): folder for folder in folders.values()}
        path = Path(table_path) if table_path else None
        started = cls(ModelTable.start(engine_dirs), by_path, activations, room_bytes, adapters, max_cost, path)
        started._stamp = None  # the table's file, if there is one, is read at once
        return started.refreshed()

    def with_table(self, table: ModelTable) -> ServedModels:
        """These models as ``table`` lists them (the same budget); a folder that cannot be served is a 400."""
        folders = dict(self._folders)
        for entry in table.entries():
            if entry.engine_dir not in folders:
                folders[entry.engine_dir] = open_engine_folder(entry.engine_dir)
        try:
            return ServedModels(
                table, folders, self.activation_bytes, self.room, self.adapters, self.max_cost, self.table_path
            )
        except MemoryBudgetTooSmall as error:  # its engines cannot run in the stack's activation pool
            raise InvalidInput(f"engine_dir: {error}", "engine_dir") from None

    def refreshed(self) -> ServedModels:
        """These models, or the table file's if it changed since they were read (one ``stat`` when it did not)."""
        stamp = _stamp(self.table_path)  # before the read: a change after it is seen next time
        if stamp == self._stamp or stamp is None:
            return self
        models = self.with_table(ModelTable.read(self.table_path))
        models._stamp = stamp
        return models

    def _served(self, entry: ModelEntry) -> ServedModel:
        folder = self._folders[entry.engine_dir]
        limits = Limits(self.activation_bytes + folder.weights_bytes, self.max_cost, 2 * self.max_cost)
        folder.activation_bytes(limits.memory_budget_bytes)  # too small a pool for this model: refused now
        prefix = self.prefix(entry.name, entry.name == next(iter(self.table.current)), entry.version)
        return ServedModel(entry.name, folder, prefix, self._adapters(entry, folder), limits, entry.version)

    def _adapters(self, entry: ModelEntry, folder: EngineFolder) -> StackAdapters:
        """A version's adapters: as the stack started it (version 1), else its folder's IP-Adapter and own LoRAs."""
        if entry.version == 1 and entry.name in self.adapters and entry.loras_dir is None:
            return self.adapters[entry.name]
        store_url = next((adapters.store_url for adapters in self.adapters.values()), None)
        loras_dir = entry.loras_dir and str(registry_folder(entry.loras_dir, bool(folder.lora_slots())))
        return StackAdapters(loras_dir, folder.adapters.ip_adapter is not None, store_url, entry.name)

    @property
    def room_bytes(self) -> int:
        """What the loaded models' weights may use together: as set, or every version's that has Triton models."""
        return self.room if self.room is not None else sum(m.folder.weights_bytes for m in self.versions())

    def versions(self) -> list[ServedModel]:
        """Every version with Triton models: the current ones, then those finishing their requests."""
        return list(self._versions.values())

    def version(self, version_id: str) -> ServedModel:
        """The version ``version_id`` names (current or retired); one no longer served is a 400 naming ``model``."""
        model = self._versions.get(version_id)
        if model is None:
            raise InvalidInput(f"model: no version {version_id!r} is served (served: {', '.join(self)})", "model")
        return model

    def pool(self) -> PoolSpec:
        """The activation pool Triton's stubs of every model's engines reserve their runs from.

        Engines installed while the stack runs draw from it too (:data:`~serve.triton.activations.ANY_ENGINE`).
        """
        engines = (model.triton_name(engine) for model in self.versions() for engine in model.folder.memory_models)
        return PoolSpec(self.activation_bytes, (*engines, ANY_ENGINE))

    @staticmethod
    def prefix(name: str, default: bool, version: int = 1) -> str:
        """The prefix of a model's Triton model names: none for the default model, ``NAME.`` for the others.

        A later version's carry it too: ``NAME.vN.``.
        """
        if version > 1:
            return f"{name}.v{version}."
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
            gone = " was removed from this stack" if requested in self.table.versions else ""
            raise InvalidInput(f"model: unknown model {requested!r}{gone} (served: {', '.join(self._models)})", "model")
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


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    """What tells a file's versions apart (its inode, size and change time), None when there is none."""
    try:
        stat = path.stat() if path is not None else None
    except FileNotFoundError:
        return None
    return None if stat is None else (stat.st_ino, stat.st_size, stat.st_mtime_ns)
