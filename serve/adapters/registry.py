"""The LoRA folder a stack serves, as ``registry.json`` lists it: each adapter ready, or with its error.

``easel up --loras DIR`` prepares each adapter for the built engines once, at start-up
(:mod:`build_engines.text_to_image.loras`: diffusers' own reading of the file, kept in the engines' slot order), and
writes ``registry.json`` into the stack's run folder: name, status (``ready``, or ``error`` with the reason), rank,
bytes and the prepared file. The registry folder is linked as ``loras`` into each LoRA-ready engine's version folder,
where the python-backend model loads adapters from it on demand (:mod:`.backend`). This module reads it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from serve.adapters.lora import LoraBanks, load_slots

logger = logging.getLogger(__name__)

REGISTRY_FILE = "registry.json"
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

    def to_json(self) -> dict:
        """What ``registry.json`` holds."""
        return {"resident": self.resident, "adapters": [dataclasses.asdict(e) for e in self.entries.values()]}

    @classmethod
    def load(cls, folder: Path) -> LoraRegistry:
        """Read ``registry.json`` from ``folder`` (none there: no adapters)."""
        path = folder / REGISTRY_FILE
        if not path.is_file():
            return cls({})
        raw = json.loads(path.read_text())
        entries = {e["name"]: LoraEntry(**e) for e in raw["adapters"]}
        return cls(entries, int(raw.get("resident", DEFAULT_RESIDENT)))


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


def engine_banks(slots: Path, engine: str, registry_folder: Path, on_event=None) -> LoraBanks:
    """The LoRA banks of a LoRA-ready engine (``slots``: its slot table) over a stack's registry folder."""
    loader = RegistryLoader(registry_folder, engine)
    return LoraBanks(engine, load_slots(slots), loader, loader.registry.resident, on_event)
