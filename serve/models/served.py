"""The models one stack serves, by name: each an engine folder, its Triton model names, what a request may bring it.

:meth:`ServedModels.resolve` is the one door from a request's ``model`` to a served model (absent: the stack's
default, the first given; unknown: a 400 naming ``model``). The stack names the Triton models with
:meth:`ServedModels.prefix` when it installs them, and the replicas call them by the same rule: the default model's
engines keep their bare names (``unet``, ``vae_decoder``: a one-model stack is what it always was), every other
model's carry its name (``sdxl.unet``), and a version installed while the stack runs its name and version
(``sdxl.v2.unet``).

:class:`~serve.models.table.ModelTable` (its own module) is what the stack serves now; every replica
reads it again when it changes (:meth:`ServedModels.refreshed`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from serve.adapters.catalog import LoraTarget, registry_folder
from serve.adapters.requests import StackAdapters, lora_rows
from serve.errors import InvalidInput, NotFound
from serve.models.admission import DEFAULT_MAX_COST, Admission, Checked, Limits, Work, engines_used, upscale_work
from serve.models.table import ModelEntry, ModelTable, check_name
from serve.protocol.ip_scale import ip_choices
from serve.text_to_image.engine_folder import MANIFEST, EngineFolder, open_engine_folder
from serve.text_to_image.generation import Outline
from serve.text_to_image.images import input_pixels, output_size
from serve.text_to_image.loop_protocol import LOOP_MODEL, loop_spec
from serve.text_to_image.video import motion_of
from serve.triton.activations import ANY_ENGINE, PoolSpec
from serve.triton.engine_files import LORAS_LINK
from serve.triton.memory import MemoryBudgetTooSmall, default_memory_budget
from serve.triton.repository import install_model, uninstall_model
from serve.triton.runtimes import Runtime, RuntimeChoice, runs_on_gpu
from serve.triton.spec import ModelSpec


def triton_specs(folder: EngineFolder, prefix: str) -> dict[str, ModelSpec]:
    """A folder's engine specs by engine, each named as the Triton model that serves it (``prefix`` + engine)."""
    return {engine: replace(spec, name=f"{prefix}{engine}") for engine, spec in folder.specs.items()}


@dataclass(frozen=True)
class ServedModel:
    """One served model: its engine folder, the prefix of its Triton models, its adapters and its admission limits."""

    name: str
    folder: EngineFolder
    prefix: str = ""
    adapters: StackAdapters = field(default_factory=StackAdapters)
    limits: Limits = field(default_factory=lambda: Limits(0))
    version: int = 1
    loop: bool = False  # its loop model inside Triton draws what it can (loop_protocol.draws_in_triton)

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

    @property
    def takes_seed(self) -> bool:
        """Whether a request's seed reaches what draws it (always, here: a job's seed is drawn at submission)."""
        return True

    def triton_name(self, engine: str) -> str:
        """The Triton model that serves its engine ``engine``."""
        return f"{self.prefix}{engine}"

    def triton_names(self) -> tuple[str, ...]:
        """Its Triton model names: its engines', and its loop model's where it has one."""
        return tuple(spec.name for spec in self.triton_specs())

    def triton_specs(self) -> list[ModelSpec]:
        """Its Triton models' specs under their names (what the repository holds and the server watches)."""
        loop = [loop_spec(self.folder.path, self.prefix)] if self.loop else []
        return [*triton_specs(self.folder, self.prefix).values(), *loop]

    @property
    def loop_model(self) -> str | None:
        """The Triton name of its loop model (None: the replica's loop draws all its requests)."""
        return self.triton_name(LOOP_MODEL) if self.loop else None

    def install(self, repository: Path) -> None:
        """Install its engines (built and measured) and its loop model in ``repository`` under its Triton names.

        Each on the device its engine runs on (the torch runtime's on the GPU, as the start installs them). A
        LoRA-ready engine's version folder links its LoRA registry folder, where the engine loads adapters from.
        """
        for engine, spec in triton_specs(self.folder, self.prefix).items():
            files = (engine_files := self.folder.engine(engine)).files()
            if engine_files.lora_ready and self.adapters.loras_dir is not None:
                files[LORAS_LINK] = Path(self.adapters.loras_dir)
            install_model(spec, repository, files, gpu=runs_on_gpu(engine_files))
        self.install_loop(repository)

    def install_loop(self, repository: Path) -> None:
        """Install its loop model (where it has one), on its denoiser's device."""
        if self.loop:
            denoiser = self.folder.engine(self.folder.family.denoiser)
            install_model(loop_spec(self.folder.path, self.prefix), repository, gpu=runs_on_gpu(denoiser))

    def uninstall(self, repository: Path) -> None:
        """Remove its Triton models from ``repository`` (a version the running stack installed, once unloaded)."""
        for name in self.triton_names():
            uninstall_model(name, repository)

    def check(self, request, owner: str | None = None) -> Checked:
        """``request``'s work checked (400 naming the field) by the rules needing no run, and its replica's plan.

        ``owner``: the key it came with, whose LoRAs (with the shared set) its names are; the plan carries them.
        """
        loras, shipped = self.adapters.check(request, owner), self.adapters.shipped(request)
        ranks = sum(entry.rank or 0 for entry in (*loras, *shipped))
        work, family = self.work(request, ranks), self.folder.family
        family.check(Outline.of_request(request, work.width, work.height), request.controlnets)
        uses = engines_used(request, family.dims.inpainting)
        plan = Admission.for_engines(self.folder, self.limits).check(work, uses)
        rows = (*lora_rows(loras, request), *((entry.key, 1.0) for entry in shipped))  # an identity's FaceID's LoRA
        return Checked(work, replace(plan, loras=rows))

    def lora_target(self) -> LoraTarget:
        """This model as a LoRA upload is read against (400 naming ``model`` when its engines are not LoRA-ready)."""
        if self.adapters.loras_dir is None:
            why = f"{self.name} takes no LoRA adapters (start the stack with --loras {self.name}=DIR)"
            raise InvalidInput(f"model: {why}", "model")
        folder = self.folder
        return LoraTarget(self.name, self.adapters, folder.key, folder.family.pipeline_class, folder.lora_slots())

    def work(self, request, lora_rank: int = 0) -> Work:
        """What ``request`` asks of this model: its cost is the one both doors and the replicas count.

        No pixel is decoded: sizes come from the images' headers (no size and no image: this model's native one).
        ``lora_rank``: its LoRAs' ranks together, priced for every row of the denoiser's batch they may slow.
        """
        width, height = output_size(request, self.native_size)
        batch = self.folder.specs[self.folder.family.denoiser].max_batch_size
        frames = motion.frames if (motion := motion_of(request)) else 1
        return Work(
            request.drawn_rows,  # best-of-n's candidates are drawn (and priced) too
            request.denoising_steps,
            width,
            height,
            request.passes,
            encodes=bool(request.image) or self.folder.family.dims.inpainting,
            reference=any(ip.choice.images for ip in ip_choices(request)),
            input_pixels=input_pixels(request),
            upscale=upscale_work(request, width, height, frames),
            lora_rank_rows=lora_rank * batch,
            frames=frames,
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
            "ip_adapter_kinds": {name: ip.kind(i) for i, name in enumerate(ip.names)} if ip is not None else {},
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
        loop: str = "auto",
    ) -> None:
        if not table.current:
            raise ValueError("a stack serves at least one model")
        self.table = table
        self.activation_bytes = activation_bytes
        self.room = room_bytes
        self.adapters = dict(adapters or {})  # each model's, as the stack started it
        self.max_cost = max_cost
        self.table_path = table_path
        self.loop = loop  # where requests are drawn: one of loop_protocol.LOOPS
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
        remotes: Mapping[str, dict] | None = None,
        fallbacks: Mapping[str, tuple[str, ...]] | None = None,
        loop: str = "auto",
    ) -> ServedModels:
        """The models ``engine_dirs`` names (name -> engine folder, the default first); ``adapters``: each one's.

        One memory budget for all: ``room_bytes`` for the loaded models' weights (None: every model's, so all stay
        loaded) and the rest of ``memory_budget_bytes`` (None: the default for that room) one activation pool that
        every model's engines share. Each model's admission counts its own weights and that pool. Raises
        :class:`~serve.triton.memory.MemoryBudgetTooSmall` when the pool cannot run some model at all. With a
        ``table_path`` whose file exists, the models are the table's (``engine_dirs`` set the budget only), else the
        table also holds ``remotes`` and ``fallbacks`` (:meth:`ModelTable.declared`).
        """
        folders = {check_name(name): EngineFolder(path) for name, path in engine_dirs.items()}
        room = room_bytes or sum(folder.weights_bytes for folder in folders.values())
        activations = (memory_budget_bytes or default_memory_budget(room)) - room
        by_path = {str(folder.path): folder for folder in folders.values()}
        path = Path(table_path) if table_path else None
        table = ModelTable.start(engine_dirs).declared(remotes or {}, fallbacks or {})
        started = cls(table, by_path, activations, room_bytes, adapters, max_cost, path, loop)
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
                table,
                folders,
                self.activation_bytes,
                self.room,
                self.adapters,
                self.max_cost,
                self.table_path,
                self.loop,
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
        adapters, loop = self._adapters(entry, folder), self._in_triton(folder)
        return ServedModel(entry.name, folder, prefix, adapters, limits, entry.version, loop)

    def _in_triton(self, folder: EngineFolder) -> bool:
        """Whether a model of ``folder`` has a loop model inside Triton (``self.loop``: ``loop_protocol.LOOPS``).

        Never an inpainting model's: every request of it starts from an image (its UNet's extra inputs).
        """
        if folder.family.dims.inpainting:
            return False
        if self.loop != "auto":
            return self.loop == "triton"
        return RuntimeChoice.of(folder.engine(folder.family.denoiser)).runtime is Runtime.TORCH

    def _adapters(self, entry: ModelEntry, folder: EngineFolder) -> StackAdapters:
        """A version's adapters: as the stack started it (version 1), else its folder's IP-Adapter and own LoRAs."""
        if entry.version == 1 and entry.name in self.adapters and entry.loras_dir is None:
            return self.adapters[entry.name]
        stack = next(iter(self.adapters.values()), StackAdapters())  # the stack's store and LoRA limits
        loras_dir = entry.loras_dir and str(registry_folder(entry.loras_dir, bool(folder.lora_slots())))
        ip = folder.adapters.ip_adapter is not None
        return StackAdapters(loras_dir, ip, stack.store_url, entry.name, stack.limits)

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

    def resolve(self, requested: str | None, remote: Iterable[str] = ()) -> ServedModel:
        """The served model a request's ``model`` names (None or empty: the default); unknown: 400 naming ``model``.

        ``remote``: the stack's remote models, listed in the refusal beside the served ones.
        """
        if not requested:
            return self.default
        model = self._models.get(requested)
        if model is None:
            gone = " was removed from this stack" if requested in self.table.versions else ""
            known = ", ".join(self._models) + (f", remote: {', '.join(remote)}" if remote else "")
            raise InvalidInput(f"model: unknown model {requested!r}{gone} (served: {known})", "model")
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
