"""An engine's file as ``easel up`` was given it (ready, or listed with why not), and one kind's listing.

The face restorers (:mod:`serve.finishing.restorers`), the frame interpolators (:mod:`serve.finishing.interpolators`)
and the face models (:mod:`serve.faces.pack`) are each a :class:`Listing` of their entries, saved as JSON in the
finishing engines' folder beside the engines; a request naming one that is not ready is a 400 naming its field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

from serve.errors import InvalidInput

READY = "ready"
ERROR = "error"


@dataclass(frozen=True)
class FileEntry:
    """One ``--OPTION NAME=FILE``: ready with its architecture, or the error that keeps it out."""

    name: str
    source: str
    status: str = READY
    architecture: str | None = None
    error: str | None = None

    def public(self) -> dict:
        """Its ``GET /v1/upscalers`` entry."""
        entry = {"name": self.name, "status": self.status, "architecture": self.architecture}
        return entry | ({"error": self.error} if self.error else {})


@dataclass(frozen=True)
class Kind:
    """One kind of listed engine: its listing's file, its entry type, what a request calls one, its option."""

    file: str
    entry: type[FileEntry]
    noun: str
    option: str


@dataclass(frozen=True)
class Listing:
    """The entries of one kind a stack was started with (ready or refused with why): listed, chosen, saved."""

    KIND: ClassVar[Kind]

    entries: tuple[FileEntry, ...] = ()

    @classmethod
    def read(cls, folder: Path | str | None) -> Self:
        """The entries built into ``folder`` (None or a folder without this listing: none)."""
        path = Path(folder) / cls.KIND.file if folder else None
        if path is None or not path.is_file():
            return cls()
        return cls(tuple(cls.KIND.entry(**entry) for entry in json.loads(path.read_text())))

    def write(self, folder: Path) -> None:
        """Save the listing in ``folder`` (the build does, beside the engines)."""
        (folder / self.KIND.file).write_text(json.dumps([dataclasses.asdict(e) for e in self.entries], indent=2))

    @property
    def ready(self) -> tuple[FileEntry, ...]:
        """The entries whose engines were built."""
        return tuple(entry for entry in self.entries if entry.status == READY)

    def listing(self) -> list[dict]:
        """Every entry the stack was started with, ready or with its error."""
        return [entry.public() for entry in self.entries]

    def chosen(self, name: str | None, field: str) -> FileEntry:
        """The ready entry ``name`` (None: the first ready); a 400 naming ``field`` otherwise."""
        ready = ", ".join(e.name for e in self.ready) or f"none: start the stack with {self.KIND.option} NAME=FILE"
        entry = next((e for e in self.entries if e.name == name), None) if name else next(iter(self.ready), None)
        if entry is None:
            asked = f"unknown {self.KIND.noun} {name!r}" if name else f"no {self.KIND.noun} is served"
            raise InvalidInput(f"{field}: {asked} (ready: {ready})", field)
        if entry.status != READY:
            raise InvalidInput(f"{field}: {self.KIND.noun} {name!r} cannot be served: {entry.error}", field)
        return entry
