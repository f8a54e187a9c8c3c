"""Prepare a stack's LoRA folder at start-up: each ``NAME.safetensors`` read as diffusers reads it, once per content.

Each adapter is read by :func:`serve.adapters.lora_files.prepare_into` for the built engines' slots into a
cache keyed by the file's content and the engine folder; a file that cannot be served is logged with its name and
listed with its error (weights past the operator's limits too: NaN or Inf, a rank or norm over its bound), the
other adapters unaffected. The result is the registry a stack serves
(:class:`serve.adapters.registry.LoraRegistry`), saved and linked into each LoRA-ready Triton model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

from serve.adapters.limits import LoraLimits
from serve.adapters.lora_files import AdapterError, prepare_into
from serve.adapters.registry import (
    DEFAULT_RESIDENT,
    ERROR,
    MODEL_CONFIGS,
    NAME,
    READY,
    REGISTRY_FILE,
    LoraEntry,
    LoraRegistry,
)
from serve.paths import easel_home, run_dir
from serve.text_to_image.engine_folder import EngineFolder
from serve.triton.engine_files import LORAS_LINK

logger = logging.getLogger(__name__)


def build_registry(
    loras_dir: Path,
    engines: EngineFolder,
    model_dir: Path,
    resident: int = DEFAULT_RESIDENT,
    model: str | None = None,
    limits: LoraLimits | None = None,
) -> LoraRegistry:
    """Prepare every ``*.safetensors`` of ``loras_dir`` for the LoRA-ready ``engines`` (cached by content).

    ``model``: the served model's name the adapters are listed for; ``limits``: what their weights may be.
    """
    slots, pipeline_class = engines.lora_slots(), engines.family.pipeline_class
    cache = easel_home() / "adapters" / engines.key
    cache.mkdir(parents=True, exist_ok=True)
    configs = lora_configs(engines, model_dir, cache)
    entries: dict[str, LoraEntry] = {}
    prepared = (cache, configs, pipeline_class, slots, engines.key)
    for path in sorted(loras_dir.glob("*.safetensors")):
        name = path.stem
        if not NAME.fullmatch(name):
            entries[name] = LoraEntry(name, ERROR, f"name must match {NAME.pattern}")
        else:
            entries[name] = _prepare_one(path, name, *prepared, limits or LoraLimits())
    for name, path in engines.face_loras().items():  # a FaceID's own (the operator's adapter): past upload limits
        entries[name] = _prepare_one(path, name, *prepared, SHIPPED)
    for name, entry in entries.items():
        entries[name] = dataclasses.replace(entry, model=model)
        if entry.status == ERROR:
            logger.warning("LoRA %r cannot be served: %s", name, entry.error)
    ready = sum(e.status == READY for e in entries.values())
    logger.info("LoRA adapters in %s: %d ready, %d with errors", loras_dir, ready, len(entries) - ready)
    return LoraRegistry(entries, resident)


SHIPPED = LoraLimits(max_rank=1 << 16, max_norm=math.inf)
"""What a LoRA an adapter ships with (a FaceID's) is checked against: finite weights only."""


def _prepare_one(path, name, cache, model_dir, pipeline_class, slots, engines_key, limits) -> LoraEntry:
    try:
        prepared = prepare_into(path, cache, model_dir, pipeline_class, slots, engines_key, limits)
    except AdapterError as error:
        return LoraEntry(name, ERROR, str(error))
    except OSError as error:
        return LoraEntry(name, ERROR, f"unreadable ({error})")
    return LoraEntry(name, READY, None, prepared.rank, prepared.nbytes, prepared.layers, str(prepared.path))


def lora_configs(engines: EngineFolder, model_dir: Path, folder: Path) -> Path:
    """Write ``folder/model/<engine>/config.json`` for each LoRA-ready engine: what LoRA files are read against.

    Each is the model's component's config, or the one saved beside the engine (a motion UNet's).
    """
    configs = folder / MODEL_CONFIGS
    for engine in engines.lora_slots():
        saved = engines.engine(engine).module_config
        (configs / engine).mkdir(parents=True, exist_ok=True)
        source = saved if saved.is_file() else model_dir / engine / "config.json"
        shutil.copyfile(source, configs / engine / "config.json")
    return configs


def install_registry(
    registry: LoraRegistry,
    folder: Path,
    repository: Path,
    engines: EngineFolder,
    model_dir: Path,
    prefix: str = "",
) -> None:
    """Save ``registry`` in ``folder`` (:func:`write_registry_folder`), linked as ``loras`` into each LoRA-ready engine.

    ``prefix``: the model's Triton names' (:meth:`serve.models.served.ServedModels.prefix`).
    """
    write_registry_folder(registry, folder, engines, model_dir)
    for engine in engines.lora_slots():
        link = repository / f"{prefix}{engine}" / "1" / LORAS_LINK
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(folder.resolve(), target_is_directory=True)


def model_registry(loras_dir: Path, engine_dir: Path, model_dir: Path, model: str) -> Path:
    """``loras_dir`` prepared for model ``model``'s LoRA-ready engines (``engine_dir``, built from ``model_dir``).

    The folder is the stack's, in its run folder (``loras-<model>``), as ``easel up --loras MODEL=DIR`` makes it;
    ``easel models add|replace --loras DIR`` prepares it here, where the model's folder is, and sends its path.
    """
    engines = EngineFolder(engine_dir)
    registry = build_registry(loras_dir, engines, model_dir, model=model)
    return write_registry_folder(registry, run_dir() / f"loras-{model}", engines, model_dir)


def write_registry_folder(registry: LoraRegistry, folder: Path, engines: EngineFolder, model_dir: Path) -> Path:
    """Save ``registry`` in ``folder`` with the LoRA-ready engines' configs beside it; ``folder``.

    The configs (:func:`lora_configs`) are what an adapter uploaded while the stack runs is read against
    (:class:`serve.adapters.catalog.LoraCatalog`).
    """
    save_registry(registry, folder)
    lora_configs(engines, model_dir, folder)
    return folder


def save_registry(registry: LoraRegistry, folder: Path) -> Path:
    """Write ``registry.json`` in ``folder`` (replaced whole), each adapter's prepared tensors beside it by key.

    Engines load adapters from the folder by content key; a reader never sees half a file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, entry in registry.entries.items():
        if entry.prepared and Path(entry.prepared).parent != folder:
            kept = folder / Path(entry.prepared).name
            if not kept.is_file():
                shutil.copyfile(entry.prepared, kept.with_suffix(".partial"))
                kept.with_suffix(".partial").replace(kept)
            entry = dataclasses.replace(entry, prepared=str(kept))
        entries[name] = entry
    registry = LoraRegistry(entries, registry.resident)
    path = folder / REGISTRY_FILE
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(registry.to_json(), indent=2))
    partial.replace(path)
    return path
