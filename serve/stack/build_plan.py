"""What a start needs, decided and built: every engine (or the engine cache's), installed, and what Triton loads.

:class:`ModelBuild` is what one model's engines are built with: ``easel up`` builds each served model's
(:meth:`ModelBuild.of_stack`: its own adapters and ControlNets, the default model's step caching, VAE decoder and
motion adapters), ``easel build`` and ``easel models add`` one folder's, all through :meth:`ModelBuild.build`.
:class:`StartPlan` is a start's whole plan (:meth:`StartPlan.build`): the models, the finishing engines, the
moderation checks, each ``--loras`` folder, vectorize, the model tables kept from the last run, and the models Triton
leaves unloaded; :class:`Built` what it built, for the stack (:class:`serve.stack.Stack`) to start and deploy. Only an
entry point may build: this module imports ``build_engines/``, in the functions that build.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from serve.models.served import ServedModels
from serve.models.table import MODEL_TABLE, ModelTable
from serve.service_engines import ServiceEngines
from serve.settings import StackOptions
from serve.stack.config import triton_models
from serve.text_to_image.engine_folder import EngineFolder
from serve.triton.residency import IN_FLIGHT_FILE, Residency, write_parked
from serve.triton.runtimes import DEFAULT_DEVICE, DEFAULT_PRECISION, DEFAULT_RUNTIME
from serve.triton.spec import Backend
from serve.vectorize.versions import VECTORIZE_TABLE, start_table

logger = logging.getLogger(__name__)

PARKED_FILE = "parked-models.json"
"""The file naming the Triton models not loaded now (in the run folder), which Triton's supervisor reads."""


@dataclass(frozen=True)
class ModelBuild:
    """What one model's engines are built with, whichever command builds them (``easel up``, ``build``, ``models``).

    ``model_dir``: a diffusers folder (None: the embedded default); ``extras``: the default model's own (step caching,
    a VAE decoder, motion adapters) or ``easel build``'s.
    """

    model_dir: Path | None
    lora: bool = False  # LoRA-ready engines
    ip_adapters: dict[str, Path] = field(default_factory=dict)
    controlnets: dict[str, Path] = field(default_factory=dict)
    runtime: str = DEFAULT_RUNTIME
    precision: str = DEFAULT_PRECISION
    device: str = DEFAULT_DEVICE
    extras: dict = field(default_factory=dict)

    @classmethod
    def of_stack(cls, options: StackOptions, name: str, default: bool) -> ModelBuild:
        """Served model ``name``'s build in a stack: its own adapters and ControlNets; the default's extras too."""
        extras = {}
        if default:
            extras = {"step_cache": options.step_cache, "vae_decoder": options.vae_decoder_dir}
            extras["motion_adapters"] = options.motion_adapters
        return cls(
            options.served[name],
            lora=name in options.loras_dir,
            ip_adapters=options.ip_adapters.get(name, {}),
            controlnets=options.controlnets.get(name, {}),
            runtime=options.runtime,
            precision=options.precision,
            device=options.device,
            extras=extras,
        )

    def build(
        self, repository: Path | None, prefix: str = "", force: bool = False, backend: Backend = Backend.PYTHON_ONNX
    ) -> EngineFolder:
        """Build (or reuse) the engines and install them in ``repository`` under ``prefix`` (None: not installed)."""
        from build_engines.text_to_image.adapters import AdapterBuild
        from build_engines.text_to_image.build import build

        adapters = AdapterBuild(lora=self.lora, ip_adapters=dict(self.ip_adapters))
        return build(
            self.model_dir,
            repository,
            prefix=prefix,
            force=force,
            backend=backend,
            adapters=adapters,
            controlnets=self.controlnets,
            runtime=self.runtime,
            precision=self.precision,
            device=self.device,
            **self.extras,
        )


@dataclass(frozen=True)
class Built:
    """What a start built and installed, and the files the Serve app and Triton read it from."""

    engine_dirs: dict[str, str]  # model name -> engine folder
    service_engines: ServiceEngines  # the finishing, moderation and scoring engines' folders
    loras_dirs: dict[str, str]  # model name -> its LoRA registry folder
    table: Path | None  # the model table (None on a cluster)
    vectorize: bool
    vectorize_table: Path | None
    pools: dict
    triton_models: list  # the specs of every Triton model served at start
    parked: Path | None  # the models Triton leaves unloaded at start
    served: ServedModels  # every served model
    memory_budget_bytes: int  # the models' weights room and their activations

    @property
    def engines(self) -> EngineFolder:
        """The default model's engines (the table's default: with a kept table, not always the first built)."""
        return self.served.default.folder

    def triton_models_of(self, served: ServedModels) -> list:
        """The specs of every Triton model served now, with the models ``served`` (the table as changed since)."""
        return triton_models(served, self.vectorize, self.vectorize_table, self.service_engines)


class StartPlan:
    """A start's plan: what ``options`` serve, built (or found built) and installed, and what Triton loads first."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options

    def build(self) -> Built:
        """Build (or reuse) every engine, install what this start serves, and decide what Triton loads at start."""
        from build_engines.moderation.text_moderator import build_text_moderator
        from build_engines.scoring import build_scorer
        from build_engines.vectorize.repository import install_vectorize

        opts = self.options
        on_this_machine = opts.address is None  # with --address, Triton runs on the cluster's model nodes
        engine_dirs = self.models()
        service_engines = ServiceEngines.built(
            upscalers=self.upscalers(),
            safety_checker=self.safety_checker(),
            text_moderator=build_text_moderator(opts.text_moderator, opts.repository),
            scorer=build_scorer(opts.scorers, opts.repository),
        )
        loras_dirs = self.loras(engine_dirs)
        table = self.model_table(engine_dirs) if on_this_machine else None
        served = ServedModels.open(
            engine_dirs, None, opts.memory_budget_bytes, opts.max_cost, opts.model_weights_bytes, table, loop=opts.loop
        )
        self.install_kept(served, engine_dirs)
        opts.graphs.write(opts.repository)  # what the torch runtime's engines capture (serve.triton.graph_shapes)
        vectorize = install_vectorize(opts.repository)
        vectorize_table = self.vectorize_table() if vectorize and on_this_machine else None
        return Built(
            engine_dirs=engine_dirs,
            service_engines=service_engines,
            loras_dirs=loras_dirs,
            table=table,
            vectorize=vectorize,
            vectorize_table=vectorize_table,
            pools={"text_to_image": served.pool()},  # one activation pool for every model's engines
            triton_models=triton_models(served, vectorize, vectorize_table, service_engines),
            parked=self.park(served) if on_this_machine else None,
            served=served,
            memory_budget_bytes=served.room_bytes + served.activation_bytes,
        )

    def models(self) -> dict[str, str]:
        """Build (or reuse) each model's engines and install them under its Triton names; name -> engine folder.

        Each model is built with its own adapters and ControlNets, under the Triton names the start's table gives it;
        the default model also with step caching, the tiny VAE decoder and the motion adapters
        (:meth:`ModelBuild.of_stack`).
        """
        opts = self.options
        built = {}
        default_name = ModelTable.start_default(self.kept_table(), list(opts.served), named=bool(opts.models))
        for name, model_dir in opts.served.items():
            default = name == default_name  # the table's default: its Triton models keep their bare names
            logger.info("model %s: %s", name, model_dir or "embedded")
            folder = ModelBuild.of_stack(opts, name, default).build(
                opts.repository, prefix=ServedModels.prefix(name, default)
            )
            built[name] = str(folder.path)
        return built

    def upscalers(self) -> Path | None:
        """Build (or reuse) the finishing engines (upscalers, face restorers, interpolators, face models); install."""
        from build_engines.finishing.upscalers import build_upscalers

        opts = self.options
        return build_upscalers(
            opts.upscalers,
            opts.repository,
            restorers=opts.face_restorers,
            interpolators=opts.interpolators,
            face_models=opts.faces,
        )

    def safety_checker(self) -> Path | None:
        """Build (or reuse) the image safety checker's engine and install it; its folder (None: no checker).

        ``--safety-checker DIR``, else the default model's own (an SD 1.x folder with ``safety_checker/``). None to
        build and none to remove imports nothing (torch and diffusers were most of a fresh start's build).
        """
        from serve.moderation.images import SAFETY_CHECKER, has_safety_checker

        opts = self.options
        source = opts.safety_checker or (opts.model_dir if has_safety_checker(opts.model_dir) else None)
        if source is None and (opts.repository is None or not (opts.repository / SAFETY_CHECKER).exists()):
            return None
        from build_engines.moderation.safety_checker import build_safety_checker

        return build_safety_checker(source, opts.repository)

    def loras(self, engine_dirs: dict[str, str]) -> dict[str, str]:
        """Prepare each ``--loras`` folder for its model in ``run/loras[-NAME]/``, linked into its engines; by model."""
        from build_engines.text_to_image.build import default_model_dir
        from build_engines.text_to_image.loras import build_registry, install_registry

        opts = self.options
        folders, default_name = {}, next(iter(opts.served))
        for name, loras_dir in opts.loras_dir.items():
            default = name == default_name
            engines, model_dir = EngineFolder(engine_dirs[name]), opts.served[name] or default_model_dir()
            registry = build_registry(loras_dir, engines, model_dir, opts.lora_resident, name, opts.lora_limits)
            folder = opts.run_dir / ("loras" if default else f"loras-{name}")
            install_registry(registry, folder, opts.repository, engines, model_dir, ServedModels.prefix(name, default))
            folders[name] = str(folder)
        return folders

    def model_table(self, engine_dirs: dict[str, str]) -> Path:
        """Write the model table of this start: the last run's, the command line winning for what it names.

        What it names: models, remote models and fallback chains. The models the table serves that this start did
        not build (added, or replaced, through the API) are installed in the repository again (:meth:`install_kept`).
        """
        opts = self.options
        path = opts.run_dir / MODEL_TABLE
        path.parent.mkdir(parents=True, exist_ok=True)
        table = ModelTable.resumed(self.kept_table(), engine_dirs, named=bool(opts.models))
        table.declared(opts.remote_declarations(), opts.fallbacks).write(path)
        return path

    def kept_table(self) -> ModelTable | None:
        """The model table the last run left, unless ``--reset-models`` (or a cluster: no table)."""
        opts = self.options
        return None if opts.reset_models or opts.address is not None else ModelTable.kept(opts.run_dir)

    def install_kept(self, served: ServedModels, engine_dirs: dict[str, str]) -> None:
        """Install the served versions this start did not build (the API's, kept from the last run), and loop models."""
        for model in served.versions():
            if str(model.folder.path) != engine_dirs.get(model.name) or model.version > 1:
                model.install(self.options.repository)
            else:  # its engines this start built and installed; its loop model beside them
                model.install_loop(self.options.repository)

    def vectorize_table(self) -> Path:
        """Write the vectorize versions of this start (:func:`start_table`: version 1 is the committed set)."""
        from build_engines.vectorize.runtime import TRAINED_DIR

        path = self.options.run_dir / VECTORIZE_TABLE
        start_table(path, self.options.repository, TRAINED_DIR.resolve())
        return path

    def park(self, served: ServedModels) -> Path:
        """Decide which models Triton loads at start (the pinned, then in order while their weights fit the room).

        Writes the others' Triton models to the file the supervisor and the residency read; returns its path.
        """
        weights = {name: model.folder.weights_bytes for name, model in served.items()}
        loaded = Residency(weights, served.room_bytes, frozenset(self.options.pin)).fill(served)
        path = self.options.run_dir / PARKED_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        (self.options.run_dir / IN_FLIGHT_FILE).unlink(missing_ok=True)  # the last run's requests ended with it
        write_parked(path, [t for name, model in served.items() if name not in loaded for t in model.triton_names()])
        logger.info("models loaded at start: %s (weights room %.2f GiB)", ", ".join(loaded), served.room_bytes / 2**30)
        return path
