"""The stack's face restorers: each ``--face-restorer NAME=FILE`` ready (its engine built) or listed with why not.

A restorer's engine ``restorer_<NAME>`` takes face crops (3 x :data:`FACE_SIDE` x :data:`FACE_SIDE`, RGB in
``[0, 1]``, batched) and gives them restored; :func:`restore_faces` finds the faces of an image
(:mod:`serve.finishing.faces`), runs their crops in one call and pastes them back. ``restorers.json`` in the
restorers' engine folder is what the build recognised; a request naming one that is not ready is a 400.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.errors import InvalidInput
from serve.finishing import faces
from serve.triton.spec import DynamicBatching, EngineRunner, ModelSpec, TensorSpec

RESTORER_PREFIX = "restorer_"
FACE_SIDE = 512
"""The restorers' input side (GFPGAN's)."""
LISTING = "restorers.json"
READY = "ready"
ERROR = "error"
NO_FACE = "no face found: the image is unchanged"


def restorer_spec(name: str, side: int = FACE_SIDE) -> ModelSpec:
    """The Triton model of restorer ``name``: face crops in, restored crops out, batched across requests."""
    return ModelSpec(
        name=f"{RESTORER_PREFIX}{name}",
        inputs=(TensorSpec("image", "float32", (3, side, side)),),
        outputs=(TensorSpec("restored", "float32", (3, side, side)),),
        max_batch_size=faces.MAX_FACES,
        dynamic_batching=DynamicBatching(max_queue_delay_us=2000),
    )


@dataclass(frozen=True)
class RestorerEntry:
    """One ``--face-restorer NAME=FILE``: ready with its architecture, or the error that keeps it out."""

    name: str
    source: str
    status: str = READY
    architecture: str | None = None
    error: str | None = None

    def public(self) -> dict:
        """Its ``GET /v1/upscalers`` entry (under ``face_restorers``)."""
        entry = {"name": self.name, "status": self.status, "architecture": self.architecture}
        return entry | ({"error": self.error} if self.error else {})

    @property
    def spec(self) -> ModelSpec:
        """Its engine's Triton model (ready entries only)."""
        return restorer_spec(self.name)


@dataclass(frozen=True)
class Restorers:
    """The face restorers a stack was started with (ready or refused with why): listed, checked, their engines."""

    entries: tuple[RestorerEntry, ...] = ()

    @classmethod
    def read(cls, folder: Path | str | None) -> Restorers:
        """The restorers built into ``folder`` (None or a folder without a listing: none)."""
        path = Path(folder) / LISTING if folder else None
        if path is None or not path.is_file():
            return cls()
        return cls(tuple(RestorerEntry(**entry) for entry in json.loads(path.read_text())))

    def write(self, folder: Path) -> None:
        """Save the listing in ``folder`` (the build does, beside the engines)."""
        (folder / LISTING).write_text(json.dumps([dataclasses.asdict(e) for e in self.entries], indent=2))

    @property
    def ready(self) -> tuple[RestorerEntry, ...]:
        """The entries whose engines were built."""
        return tuple(entry for entry in self.entries if entry.status == READY)

    def listing(self) -> list[dict]:
        """Every face restorer the stack was started with, ready or with its error."""
        return [entry.public() for entry in self.entries]

    def choose(self, name: str, field: str = "restore_faces.restorer") -> RestorerEntry:
        """The ready restorer ``name``; a 400 naming ``field`` otherwise."""
        entry = next((e for e in self.entries if e.name == name), None)
        if entry is None:
            ready = ", ".join(e.name for e in self.ready) or "none: start the stack with --face-restorer NAME=FILE"
            raise InvalidInput(f"{field}: unknown face restorer {name!r} (ready: {ready})", field)
        if entry.status != READY:
            raise InvalidInput(f"{field}: face restorer {name!r} cannot be served: {entry.error}", field)
        return entry


async def restore_faces(
    pixels: np.ndarray, entry: RestorerEntry, weight: float, runner: EngineRunner
) -> tuple[np.ndarray, dict]:
    """RGB ``uint8`` ``pixels`` with each face restored by ``entry``'s engine, and what the answer says of it.

    ``{"found": n, "crops": [...]}``; with no face, the pixels unchanged and a ``note`` saying so.
    """
    boxes = await asyncio.to_thread(faces.detect, pixels)  # CPU work off the event loop
    if not boxes:
        return pixels, {"found": 0, "note": NO_FACE}
    height, width = pixels.shape[:2]
    crops = [faces.crop_for(box, width, height) for box in boxes]
    batch = await asyncio.to_thread(lambda: np.stack([faces.restorer_input(pixels, c, FACE_SIDE) for c in crops]))
    restored = (await runner.infer(entry.spec, {"image": batch}))["restored"]
    pasted = await asyncio.to_thread(_pasted, pixels, crops, restored, weight)
    return pasted, {"found": len(crops), "crops": [crop.public() for crop in crops]}


def _pasted(pixels: np.ndarray, crops: list[faces.Crop], restored: np.ndarray, weight: float) -> np.ndarray:
    for crop, face in zip(crops, restored, strict=True):
        pixels = faces.paste(pixels, crop, face, weight)
    return pixels
