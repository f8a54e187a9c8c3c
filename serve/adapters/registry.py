"""The LoRA folder a stack serves: every ``NAME.safetensors`` read once at start-up, ready or reported with its error.

``easel up --loras DIR`` prepares each adapter for the built engines (:func:`serve.adapters.lora.prepare`: diffusers'
own reading of the file, kept in the engines' slot order) into a cache keyed by the file's content and the engines,
and writes ``registry.json`` into the stack's run folder: name, status (``ready``, or ``error`` with the reason),
rank, bytes and the prepared file. A file that cannot be served is logged with its name at start-up and listed
with its error; the other adapters are unaffected. The registry folder is linked as ``loras`` into each LoRA-ready
engine's version folder, where the python-backend model loads adapters from it on demand (:mod:`.backend`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from serve.adapters.lora import LORA_ENGINES, SLOTS_FILE, LoraBanks, load_slots
from serve.files import file_hash
from serve.paths import easel_home

logger = logging.getLogger(__name__)

REGISTRY_FILE = "registry.json"
LORAS_LINK = "loras"
DEFAULT_RESIDENT = 8
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
READY, ERROR = "ready", "error"


@dataclass(frozen=True)
class LoraEntry:
    """One adapter of the folder as the API lists it (``GET /v1/loras``)."""

    name: str
    status: str  # "ready" or "error"
    error: str | None = None
    rank: int | None = None
    bytes: int | None = None
    layers: dict[str, int] = field(default_factory=dict)  # engine -> layers the adapter changes
    prepared: str | None = None  # the prepared tensors (not shown by the API)

    def public(self) -> dict:
        """What the API shows of it."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "prepared" and v not in (None, {})}


@dataclass(frozen=True)
class LoraRegistry:
    """The adapters of one stack, and how many each engine instance keeps loaded (``resident``)."""

    entries: dict[str, LoraEntry]
    resident: int = DEFAULT_RESIDENT

    def get(self, name: str) -> LoraEntry | None:
        """The entry called ``name``, if any."""
        return self.entries.get(name)

    def save(self, folder: Path) -> Path:
        """Write ``registry.json`` in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        payload = {"resident": self.resident, "adapters": [dataclasses.asdict(e) for e in self.entries.values()]}
        path = folder / REGISTRY_FILE
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(payload, indent=2))
        partial.replace(path)
        return path

    @classmethod
    def load(cls, folder: Path) -> LoraRegistry:
        """Read ``registry.json`` from ``folder`` (none there: no adapters)."""
        path = folder / REGISTRY_FILE
        if not path.is_file():
            return cls({})
        raw = json.loads(path.read_text())
        entries = {e["name"]: LoraEntry(**e) for e in raw["adapters"]}
        return cls(entries, int(raw.get("resident", DEFAULT_RESIDENT)))


def build_registry(
    loras_dir: Path, engine_dir: Path, model_dir: Path, pipeline_class: str, resident: int = DEFAULT_RESIDENT
) -> LoraRegistry:
    """Prepare every ``*.safetensors`` of ``loras_dir`` for the engines in ``engine_dir`` (cached by content)."""
    slots = {e: load_slots(engine_dir / e / SLOTS_FILE) for e in LORA_ENGINES if (engine_dir / e / SLOTS_FILE).exists()}
    cache = easel_home() / "adapters" / engine_dir.name
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
    from safetensors.numpy import load_file, save_file

    from serve.adapters.lora_layers import AdapterError, prepare

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
    registry.save(folder)
    for engine in engines:
        link = repository / engine / "1" / LORAS_LINK
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(folder.resolve(), target_is_directory=True)


class AdapterUnavailable(ValueError):
    """A request named an adapter this stack cannot serve (the replica checks names first; this is the backstop)."""


class RegistryLoader:
    """Loads one engine's part of an adapter from a registry folder, re-read when it names an adapter not seen yet."""

    def __init__(self, folder: Path, engine: str) -> None:
        self.folder, self.engine = folder, engine
        self.registry = LoraRegistry.load(folder)

    def __call__(self, name: str) -> dict[int, tuple]:
        """``{slot: (down, up)}`` of adapter ``name`` for this engine (numpy, from its prepared file)."""
        from safetensors import safe_open

        entry = self.registry.get(name)
        if entry is None:  # the registry may be newer than this process's copy
            self.registry = LoraRegistry.load(self.folder)
            entry = self.registry.get(name)
        if entry is None or entry.status != READY or not entry.prepared:
            raise AdapterUnavailable(f"LoRA adapter {name!r} is not available on this stack")
        prefix = f"{self.engine}."
        tensors: dict[int, list] = {}
        with safe_open(entry.prepared, framework="numpy") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key.startswith(prefix):
                    _, slot, part = key.split(".")
                    tensors.setdefault(int(slot), [None, None])[part == "up"] = handle.get_tensor(key)
        return {slot: (down, up) for slot, (down, up) in tensors.items()}


def engine_banks(engine_folder: Path, engine: str, registry_folder: Path, on_event=None) -> LoraBanks:
    """The LoRA banks of a LoRA-ready engine (its folder holds the slot table) over a stack's registry folder."""
    loader = RegistryLoader(registry_folder, engine)
    return LoraBanks(engine, load_slots(engine_folder / SLOTS_FILE), loader, loader.registry.resident, on_event)
