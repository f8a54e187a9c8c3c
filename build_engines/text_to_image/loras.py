"""Prepare a stack's LoRA folder at start-up: each ``NAME.safetensors`` read as diffusers reads it, once per content.

Each adapter is read by :func:`~build_engines.text_to_image.lora_layers.prepare` for the built engines' slots into a
cache keyed by the file's content and the engine folder; a file that cannot be served is logged with its name and
listed with its error, the other adapters unaffected. The result is the registry a stack serves
(:class:`serve.adapters.registry.LoraRegistry`), saved and linked into each LoRA-ready Triton model.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from safetensors.numpy import load_file, save_file

from build_engines.text_to_image.lora_layers import AdapterError, prepare
from serve.adapters.registry import DEFAULT_RESIDENT, ERROR, NAME, READY, REGISTRY_FILE, LoraEntry, LoraRegistry
from serve.files import file_hash
from serve.paths import easel_home
from serve.text_to_image.engine_folder import EngineFolder
from serve.triton.engine_files import LORAS_LINK

logger = logging.getLogger(__name__)


def build_registry(
    loras_dir: Path, engines: EngineFolder, model_dir: Path, resident: int = DEFAULT_RESIDENT
) -> LoraRegistry:
    """Prepare every ``*.safetensors`` of ``loras_dir`` for the LoRA-ready ``engines`` (cached by content)."""
    slots, pipeline_class = engines.lora_slots(), engines.family.pipeline_class
    cache = easel_home() / "adapters" / engines.key
    cache.mkdir(parents=True, exist_ok=True)
    entries: dict[str, LoraEntry] = {}
    for path in sorted(loras_dir.glob("*.safetensors")):
        name = path.stem
        if not NAME.fullmatch(name):
            entries[name] = LoraEntry(name, ERROR, f"name must match {NAME.pattern}")
        else:
            entries[name] = _prepare_one(path, name, cache, model_dir, pipeline_class, slots)
        entry = entries[name]
        if entry.status == ERROR:
            logger.warning("LoRA %r (%s) cannot be served: %s", name, path, entry.error)
    ready = sum(e.status == READY for e in entries.values())
    logger.info("LoRA adapters in %s: %d ready, %d with errors", loras_dir, ready, len(entries) - ready)
    return LoraRegistry(entries, resident)


def _prepare_one(path, name, cache, model_dir, pipeline_class, slots) -> LoraEntry:
    started = time.perf_counter()
    try:
        prepared_path = cache / f"{file_hash(path)[:24]}.safetensors"
        if prepared_path.is_file():
            tensors = load_file(prepared_path)
            meta = json.loads(prepared_path.with_suffix(".json").read_text())
        else:
            prepared = prepare(path, model_dir, pipeline_class, slots)
            tensors, meta = prepared.tensors, {"rank": prepared.rank, "layers": prepared.layers}
            partial = prepared_path.with_name(prepared_path.name + ".partial")
            save_file(tensors, partial)
            prepared_path.with_suffix(".json").write_text(json.dumps(meta))
            partial.replace(prepared_path)
    except AdapterError as error:
        return LoraEntry(name, ERROR, str(error))
    except OSError as error:
        return LoraEntry(name, ERROR, f"unreadable ({error})")
    logger.info(
        "LoRA %r ready in %.2f s (rank %d, %s)", name, time.perf_counter() - started, meta["rank"], meta["layers"]
    )
    nbytes = sum(t.nbytes for t in tensors.values())
    return LoraEntry(name, READY, None, meta["rank"], nbytes, meta["layers"], str(prepared_path))


def install_registry(registry: LoraRegistry, folder: Path, repository: Path, engines: list[str]) -> None:
    """Save ``registry`` in ``folder`` and link it as ``loras`` into each LoRA-ready engine's version folder."""
    save_registry(registry, folder)
    for engine in engines:
        link = repository / engine / "1" / LORAS_LINK
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(folder.resolve(), target_is_directory=True)


def save_registry(registry: LoraRegistry, folder: Path) -> Path:
    """Write ``registry.json`` in ``folder`` (replaced whole: a reader never sees half a file)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REGISTRY_FILE
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(registry.to_json(), indent=2))
    partial.replace(path)
    return path
