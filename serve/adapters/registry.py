"""The LoRA adapters a stack serves: the ``--loras`` folder's (``registry.json``) and those uploaded while it runs.

``easel up --loras DIR`` prepares each adapter for the built engines once, at start-up
(:mod:`build_engines.text_to_image.loras`), and writes ``registry.json`` into the stack's registry folder
(``<run>/loras``): name, status (``ready``, or ``error`` with the reason), rank, bytes and the prepared file. Adapters
uploaded through ``POST /v1/loras`` are prepared into the same folder and listed in the stack's store
(:mod:`serve.adapters.catalog`). Every prepared adapter lies in that folder as ``<key>.safetensors``, named by its
content: a batch row names the key (a replaced adapter's new weights are a new key), and the registry folder is
linked as ``loras`` into each LoRA-ready engine's version folder, where the python-backend model loads keys from it
on demand (:mod:`.backend`). This module reads it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from serve.adapters.lora import AdapterUnavailable, LoraBanks, load_slots

logger = logging.getLogger(__name__)

REGISTRY_FILE = "registry.json"
MODEL_CONFIGS = "model"  # <registry folder>/model/<engine>/config.json: what uploads are read against
DEFAULT_RESIDENT = 8
MAX_LORA_BYTES = 256 << 20
"""The largest LoRA file an upload may carry (an SDXL LoRA of rank 32 is ~220 MB in fp16)."""
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KEY = re.compile(r"[0-9a-f]{24}")
READY, ERROR = "ready", "error"
FOLDER, UPLOAD = "folder", "upload"  # where an adapter came from: easel up --loras, or POST /v1/loras
PRIVATE, SHARED = "private", "shared"  # an upload's visibility: its key's alone, or every key's


@dataclass(frozen=True)
class LoraEntry:
    """One adapter of the folder as the API lists it (``GET /v1/loras``)."""

    name: str
    status: str  # "ready" or "error"
    error: str | None = None
    rank: int | None = None
    bytes: int | None = None
    layers: dict[str, int] = field(default_factory=dict)  # engine -> layers the adapter changes
    prepared: str | None = None  # the prepared tensors, ``<key>.safetensors`` (not shown by the API)
    model: str | None = None  # the served model it is for (None: the default model)
    source: str = FOLDER
    sha256: str | None = None  # the uploaded file's content hash
    created_at: float | None = None
    engines: str | None = None  # the key of the engine folder it was prepared for (an upload's)
    owner: str | None = None  # the id of the key that uploaded it, private to it (None: the shared set's)

    @property
    def key(self) -> str | None:
        """Its content key: the name of its prepared tensors in the registry folder (what batch rows carry)."""
        return Path(self.prepared).stem if self.prepared else None

    @property
    def visibility(self) -> str:
        """``private`` (its owner's alone) or ``shared`` (every key's)."""
        return SHARED if self.owner is None else PRIVATE

    def public(self, with_owner: bool = False) -> dict:
        """What the API shows of it (``with_owner``: its owner's key id too, as an admin sees it)."""
        hidden = ("prepared", "engines") if with_owner else ("prepared", "engines", "owner")
        shown = {k: v for k, v in dataclasses.asdict(self).items() if k not in hidden and v not in (None, {})}
        return shown | {"visibility": self.visibility}

    def to_json(self) -> str:
        """Its record in a store."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> LoraEntry:
        """The entry a store's record holds."""
        return cls(**json.loads(text))


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


class RegistryLoader:
    """Loads one engine's part of an adapter from a registry folder by its content key (``<key>.safetensors``)."""

    def __init__(self, folder: Path, engine: str) -> None:
        self.folder, self.engine = folder, engine
        self.registry = LoraRegistry.load(folder)

    def __call__(self, key: str) -> dict[int, tuple]:
        """``{slot: (down, up)}`` of adapter ``key`` for this engine (numpy, from its prepared file).

        ``key``: a content key, or the name of an adapter of ``registry.json`` (in-process runs name them so).
        """
        from safetensors import safe_open

        wanted = key
        if not KEY.fullmatch(key):
            entry = self.registry.get(key)
            if entry is None:  # the registry may be newer than this process's copy
                self.registry = LoraRegistry.load(self.folder)
                entry = self.registry.get(key)
            key = entry.key if entry is not None and entry.status == READY and entry.key else ""
        path = self.folder / f"{key}.safetensors"
        if not key or not path.is_file():
            raise AdapterUnavailable(f"LoRA adapter {wanted!r} is not available on this stack")
        prefix = f"{self.engine}."
        tensors: dict[int, list] = {}
        with safe_open(str(path), framework="numpy") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name.startswith(prefix):
                    _, slot, part = name.split(".")
                    tensors.setdefault(int(slot), [None, None])[part == "up"] = handle.get_tensor(name)
        return {slot: (down, up) for slot, (down, up) in tensors.items()}


def engine_banks(slots: Path, engine: str, registry_folder: Path, on_event=None) -> LoraBanks:
    """The LoRA banks of a LoRA-ready engine (``slots``: its slot table) over a stack's registry folder."""
    loader = RegistryLoader(registry_folder, engine)
    return LoraBanks(engine, load_slots(slots), loader, loader.registry.resident, on_event)
