"""``easel build``: diffusers model -> parity-checked ONNX engines (cached by content hash) -> Triton repository.

This is the one writer of an engine folder (:class:`serve.text_to_image.engine_folder.EngineFolder` reads it): the
engines, then what the serving side needs beside them (tokenizers, scheduler, ``pipeline.json``, ``adapters.json``),
the manifest last.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch

from build_engines.memory import measure as measure_memory
from build_engines.memory import measured, sides_up_to
from build_engines.tensorrt import build_plan, latent_range, profile
from build_engines.text_to_image.adapters import AdapterBuild, identity_nets, ip_info, write_face_loras
from build_engines.text_to_image.controlnets import controlnet_support, controlnets_key
from build_engines.text_to_image.default_model import INPAINTING, TRAINED, create_default_model
from build_engines.text_to_image.export import (
    EXPORTER_VERSION,
    OPSET,
    EngineReport,
    ParityReport,
    export_all,
    reuse_graphs,
)
from build_engines.text_to_image.motion import checked_motion_adapters, motion_key
from build_engines.text_to_image.torch_engines import check_torch_build, torch_engines
from serve.adapters.lora import MOTION_UNET_PREFIX
from serve.adapters.support import AdapterSupport
from serve.errors import InvalidInput, UnsupportedModel
from serve.files import content_hash
from serve.models.served import triton_specs
from serve.paths import easel_home
from serve.text_to_image import engine_folder as layout
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.families import Family, family_of_folder
from serve.text_to_image.families.folder import MODEL_INDEX
from serve.text_to_image.spec import ALL_ENGINE_NAMES, CONTROLNET_PREFIX, UNET, VAE_DECODER
from serve.triton.engine_files import ONNX, PLAN
from serve.triton.repository import install_model
from serve.triton.runtimes import (
    AUTO,
    DEFAULT_PRECISION,
    DEFAULT_RUNTIME,
    FITTING_PRECISION,
    GPU_PRECISION,
    PRECISIONS,
    RUNTIME_CHOICES,
    Runtime,
    check_choice,
    concrete_runtime,
    resolve_device,
    runs_on_gpu,
    runtime_versions,
)
from serve.triton.spec import Backend

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


def default_model_dir(variant: str = "tiny") -> Path:
    """The embedded model ``variant``: a trained one's committed folder, else created under ``$EASEL_HOME/models``."""
    if variant in TRAINED:
        return TRAINED[variant]
    model_dir = easel_home() / "models" / variant
    if not (model_dir / MODEL_INDEX).exists():
        shutil.rmtree(model_dir, ignore_errors=True)
        if variant.endswith(INPAINTING):
            from build_engines.text_to_image.random_controls import make_inpainting_model

            make_inpainting_model(default_model_dir(variant.removesuffix(INPAINTING)), model_dir)
        else:
            create_default_model(model_dir, variant)
    return model_dir


def engine_dir_for(
    model_dir: Path,
    precision: str = "fp32",
    adapters: AdapterBuild | None = None,
    controlnets: Mapping[str, Path] | None = None,
    step_cache: bool = False,
    runtime: str = DEFAULT_RUNTIME,
    vae_decoder: Path | None = None,
    motion_adapters: Mapping[str, Path] | None = None,
) -> Path:
    """Cache folder named by model hash, runtime and precision, what the engines take or add, and versions.

    What they take or add: adapters, ControlNets, step caching's engines, a tiny VAE decoder, motion adapters. ONNX
    Runtime folders keep the names they had before runtimes were chosen.
    """
    return engine_dirs(model_dir, adapters, controlnets, step_cache, vae_decoder, motion_adapters)[runtime, precision]


def engine_dirs(
    model_dir: Path,
    adapters: AdapterBuild | None = None,
    controlnets: Mapping[str, Path] | None = None,
    step_cache: bool = False,
    vae_decoder: Path | None = None,
    motion_adapters: Mapping[str, Path] | None = None,
) -> dict[tuple[str, str], Path]:
    """:func:`engine_dir_for` of every runtime and precision that can be built (the model hashed once)."""
    versions = f"opset{OPSET}-export{EXPORTER_VERSION}-torch{torch.__version__.split('+')[0]}-onnx{onnx.__version__}"
    model_hash = content_hash(model_dir)[:16]
    extras = [adapters.key() if adapters else "", controlnets_key(controlnets), "stepcache" if step_cache else ""]
    extras.append(f"taesd{content_hash(vae_decoder)[:12]}" if vae_decoder else "")
    extras.append(motion_key(motion_adapters or {}, bool(adapters and adapters.lora)))
    folders = {}
    for runtime in RUNTIME_CHOICES:
        for precision, declared in PRECISIONS.items():
            if runtime == AUTO or Runtime(runtime) in declared.runtimes:
                runs = concrete_runtime(runtime, precision)  # auto with one candidate builds that one's folder
                how = precision if runs == Runtime.ONNXRUNTIME else f"{runs}-{precision}"
                name = "-".join([part for part in [model_hash, how, *extras] if part] + [versions])
                folders[runtime, precision] = easel_home() / "engines" / (name + runtime_versions(runs))
    return folders


def build(
    model_dir: Path | None,
    repository: Path | None,
    force: bool = False,
    backend: Backend = Backend.PYTHON_ONNX,
    precision: str = DEFAULT_PRECISION,
    adapters: AdapterBuild | None = None,
    controlnets: Mapping[str, Path] | None = None,
    step_cache: bool = False,
    prefix: str = "",
    runtime: str = DEFAULT_RUNTIME,
    vae_decoder: Path | None = None,
    motion_adapters: Mapping[str, Path] | None = None,
    device: str = "auto",
    measure_memory: bool = True,
) -> EngineFolder:
    """Build (or reuse) the engines of ``model_dir`` (default: the embedded model) and install them in ``repository``.

    A folder that is not a supported pipeline (or an ``adapters.ip_adapters`` folder that does not fit it) raises a
    one-line error before anything is written. ``adapters``: build LoRA-ready and/or IP-Adapter engines
    (:mod:`build_engines.text_to_image.adapters`); ``controlnets``: NAME -> diffusers ControlNetModel folder, an
    engine each where it fits the model (:mod:`build_engines.text_to_image.controlnets`); ``step_cache``: step
    caching's engines too (:mod:`serve.text_to_image.step_cache`); ``runtime``: what runs each engine
    (:mod:`serve.triton.runtimes`; ``auto``: the torch runtime where ``device`` is a GPU, else measured at build);
    ``precision`` ``auto``: fp16 on a GPU, else fp32, or :data:`~serve.triton.runtimes.FITTING_PRECISION` when
    this machine cannot serve the fp32 engines (:func:`fits_here`); ``device``: ``cpu``, ``cuda`` or ``auto`` (a GPU
    where PyTorch sees one); ``vae_decoder``: a diffusers ``AutoencoderTiny`` folder served as the model's
    ``vae_decoder``; ``motion_adapters``: NAME -> diffusers ``MotionAdapter`` folder, a
    video UNet engine each (:mod:`build_engines.text_to_image.motion`; one that does not fit is refused);
    ``prefix``: the Triton model names start with it (:meth:`serve.models.served.ServedModels.prefix`);
    ``measure_memory`` off: each engine's memory is not measured (a fresh process each; a stack needs it, a benchmark
    that bounds no run by it does not).
    ``repository`` None: built and measured, not installed (``easel models add`` hands the folder to a running stack,
    which installs it). Returns the engine folder, opened.
    """
    check_choice(runtime, precision)
    device = resolve_device(device)
    model_dir = default_model_dir() if model_dir is None else model_dir
    if precision == AUTO and device == "cuda" and runtime in (AUTO, Runtime.TORCH):
        precision = GPU_PRECISION
    if precision == AUTO:
        how = {"force": force, "adapters": adapters, "controlnets": controlnets, "step_cache": step_cache}
        how |= {"runtime": runtime, "vae_decoder": vae_decoder, "motion_adapters": motion_adapters, "device": device}
        folder = build(model_dir, None, precision="fp32", **how)
        fitting_runs = runtime in (AUTO, *PRECISIONS[FITTING_PRECISION].runtimes)
        if fitting_runs and not fits_here(folder):
            side, gib = folder.family.dims.native_size, folder.weights_bytes / 2**30
            logger.warning(
                "precision auto: this machine cannot serve one %dx%d image on the fp32 engines (their weights: "
                "%.2f GiB): serving them with %s weights instead",
                side,
                side,
                gib,
                FITTING_PRECISION,
            )
            folder = build(model_dir, None, precision=FITTING_PRECISION, **how)
        if repository is not None:
            install(folder, repository, backend, prefix)
        return folder
    runtime = concrete_runtime(runtime, precision, device)
    adapters = adapters or AdapterBuild()
    if runtime == Runtime.TORCH:
        check_torch_build(bool(adapters.ip_adapters), bool(motion_adapters))
    family = family_of_folder(model_dir)
    if adapters.ip_adapters and family.denoiser != UNET:
        raise UnsupportedModel(f"{model_dir}: IP-Adapters are served with UNet models, not {family.name} models")
    controlnets = dict(controlnets or {})
    motion = checked_motion_adapters(family, model_dir, motion_adapters or {})
    folders = engine_dirs(model_dir, adapters, controlnets, step_cache, vae_decoder, motion_adapters)
    engine_dir = folders[runtime, precision]
    graph = PRECISIONS[precision].graph_dtype
    same_graphs = [  # the torch runtime's folders hold no graphs
        f
        for (r, p), f in folders.items()
        if PRECISIONS[p].graph_dtype == graph and f != engine_dir and r != Runtime.TORCH
    ]
    with one_build(engine_dir):
        exported = next((f for f in same_graphs if EngineFolder.built(f) and runtime != Runtime.TORCH), None)
        if EngineFolder.built(engine_dir) and not force:
            logger.info("engines up to date in %s (use --force to rebuild)", engine_dir)
        elif exported is not None and not force and not adapters.lora and not adapters.ip_adapters:
            logger.info("the ONNX graphs of %s are exported in %s: given their runtime", engine_dir.name, exported)
            _build_into(engine_dir, EngineFolder(exported).family, model_dir, precision, adapters, runtime, exported)
        else:
            how = (precision, adapters, runtime, controlnets, step_cache, vae_decoder, motion)
            _build_new(engine_dir, family, model_dir, *how)
        folder = EngineFolder(engine_dir)
        if measure_memory:
            measure(folder)
    if repository is not None:
        install(folder, repository, backend, prefix)
    return folder


def _build_new(
    engine_dir, family, model_dir, precision, adapters, runtime, controlnets, step_cache, vae_decoder, motion=None
):
    """Export ``family``'s engines of ``model_dir`` (adapters, ControlNets, step caching, motion) into ``engine_dir``.

    With a tiny ``vae_decoder``, the rest is linked from the build without it when that one is built.
    """
    family = family.with_engines(
        AdapterSupport(adapters.lora, ip_info(adapters, model_dir)),
        controlnet_support(family, model_dir, controlnets, identity_nets(adapters)),
        step_cache,
        motion,
    )
    what = (family.name, runtime, precision, family.pipeline_class, model_dir)
    logger.info("building %s engines (%s %s, %s) of %s", *what)
    base = (
        engine_dirs(model_dir, adapters, controlnets, step_cache, None, motion)[runtime, precision]
        if vae_decoder
        else None
    )
    base = base if base is not None and EngineFolder.built(base) else None
    _build_into(engine_dir, family, model_dir, precision, adapters, runtime, vae_decoder=vae_decoder, base=base)


def fits_here(folder: EngineFolder) -> bool:
    """Whether this machine serves one image of ``folder``'s model at its native size on the default memory budget.

    As the stack's start and admission decide it, from the engines' measured memory: the weights leave room for one
    row of every engine (the VAE decoder's in tiles where they fit).
    """
    from serve.models.admission import Admission, Limits, Work
    from serve.triton.memory import MemoryBudgetTooSmall

    side = folder.family.dims.native_size
    try:
        admission = Admission.for_engines(folder, Limits(folder.memory_budget(), max_cost=float("inf")))
        admission.check(Work(rows=1, steps=1, width=side, height=side))
    except (MemoryBudgetTooSmall, InvalidInput):
        return False
    return True


@contextmanager
def one_build(engine_dir: Path) -> Iterator[None]:
    """Hold ``engine_dir``'s build lock: a second build of the same engines waits for the first, then finds them built.

    Another ``easel up`` or ``easel models add`` (or a test) is told whose build it waits for. The lock goes with its
    process.
    """
    lock = engine_dir.parent.with_name("locks") / f"{engine_dir.name}.lock"  # beside the engine cache, not in it
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            logger.info("waiting for pid %s, which builds the same engines (%s)", handle.read() or "?", engine_dir)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def measure(folder: EngineFolder) -> None:
    """Measure each engine's memory and time per row once (in a fresh process), what serving bounds its runs by."""
    sides = sides_up_to(folder.family.dims.sample_size)
    for name, spec in folder.specs.items():
        engine = folder.engine(name)
        if name.startswith(MOTION_UNET_PREFIX):  # a video row is its frames' UNet rows (admission prices it so)
            continue
        if not measured(engine, spec, sides):
            try:
                measure_memory(engine.folder, spec, sides)
            except RuntimeError as error:  # e.g. fp16 graphs, which ONNX Runtime's CPU provider cannot run
                logger.warning("%s: memory not measured, its batches will not be bounded: %s", name, error)


def _build_into(
    engine_dir: Path,
    family: Family,
    model_dir: Path,
    precision: str,
    adapters: AdapterBuild,
    runtime: str,
    exported: Path | None = None,
    vae_decoder: Path | None = None,
    base: Path | None = None,
) -> None:
    """Export into a scratch folder beside ``engine_dir`` and rename it at the end: a failed build leaves nothing.

    ``exported``: a built folder with the same ONNX graphs (another runtime's): they are linked, not exported again.
    ``base``: the same build without the tiny ``vae_decoder``: its other engines are linked as they are.
    """
    partial = engine_dir.with_name(f"{engine_dir.name}{PARTIAL_SUFFIX}-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        if runtime == Runtime.TORCH:
            reports = torch_engines(family, model_dir, partial, precision, vae_decoder)
        elif exported is None:
            reports = _link_engines(EngineFolder(base), partial, skip=VAE_DECODER) if base else []
            reports += export_all(
                family,
                model_dir,
                partial,
                precision,
                adapters=adapters,
                runtime=runtime,
                vae_decoder=vae_decoder,
                only={VAE_DECODER} if base else None,
            )
        else:
            reports = reuse_graphs(EngineFolder(exported), partial, runtime, precision)
        _write_beside_engines(partial, family, model_dir)
        write_face_loras(partial / layout.FACE_LORAS, adapters, model_dir)
        manifest = {"model_dir": str(model_dir.resolve()), "engines": [dataclasses.asdict(r) for r in reports]}
        (partial / layout.MANIFEST).write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(engine_dir, ignore_errors=True)
        partial.rename(engine_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _link_engines(base: EngineFolder, folder: Path, skip: str) -> list[EngineReport]:
    """Hard-link every engine of ``base`` but ``skip`` into ``folder`` (their measured memory too); their reports."""
    kept = json.loads((base.path / layout.MANIFEST).read_text())["engines"]
    reports = []
    for report in kept:
        if report["engine"] == skip:
            continue
        (folder / report["engine"]).mkdir()
        for path in base.engine(report["engine"]).files().values():
            os.link(path, folder / report["engine"] / path.name)
        reports.append(EngineReport(**report | {"parity": ParityReport(**report["parity"])}))
    return reports


def _write_beside_engines(folder: Path, family: Family, model_dir: Path) -> None:
    """What serving reads beside the engines: the family and dims, the adapters, tokenizers and scheduler config."""
    kept = [*family.tokenizers(), layout.SCHEDULER, MODEL_INDEX]
    reads_images = family.adapters.ip_adapter is not None or family.animates_images
    if reads_images and (model_dir / layout.FEATURE_EXTRACTOR).is_dir():
        kept.append(layout.FEATURE_EXTRACTOR)  # the CLIP preprocessing of IP-Adapter references, of SVD's still
    for name in kept:
        source = model_dir / name
        copy = shutil.copytree if source.is_dir() else shutil.copy2
        copy(source, folder / name)
    if family.adapters.ip_adapter is not None:  # InstantStyle's mappings are expanded over the UNet's blocks
        shutil.copy2(model_dir / "unet" / "config.json", folder / layout.UNET_CONFIG)
    declaration = {"family": family.name, "dims": dataclasses.asdict(family.dims), "step_cache": family.step_cache}
    if family.motion_adapters:
        declaration["motion_adapters"] = family.motion_adapters
    (folder / layout.PIPELINE).write_text(json.dumps(declaration, indent=2))
    if family.adapters.any:
        (folder / layout.ADAPTERS).write_text(json.dumps(family.adapters.to_json(), indent=2))
    if family.controlnets.entries:
        (folder / layout.CONTROLNETS).write_text(json.dumps(family.controlnets.to_json(), indent=2))


def install(folder: EngineFolder, repository: Path, backend: Backend = Backend.PYTHON_ONNX, prefix: str = "") -> None:
    """Install the family's engines (measured: :func:`measure`) in ``repository`` as Triton models ``prefix`` + engine.

    Text-to-image engines under ``prefix`` that it does not use are removed (another model's, under another prefix,
    stay).
    """
    family = folder.family
    named = triton_specs(folder, prefix)
    stale_controlnets = {path.name for path in repository.glob(f"{prefix}{CONTROLNET_PREFIX}*")}
    stale_controlnets |= {path.name for path in repository.glob(f"{prefix}{MOTION_UNET_PREFIX}*")}
    wanted = {spec.name for spec in named.values()}
    for name in ({f"{prefix}{engine}" for engine in ALL_ENGINE_NAMES} | stale_controlnets) - wanted:
        if (repository / name).exists():
            shutil.rmtree(repository / name)
            logger.info("removed %s from %s (not an engine of %s models)", name, repository, family.name)
    for name, spec in folder.specs.items():
        files = folder.engine(name).files()
        if backend is Backend.TENSORRT:
            shapes = profile(spec, latent_range(family.dims.native_size, family.dims.vae_scale_factor))
            files = {PLAN: build_plan(files[ONNX], shapes)}
        install_model(named[name], repository, files, backend, gpu=runs_on_gpu(folder.engine(name)))
