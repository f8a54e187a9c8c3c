"""The stack's face restorers: each ``--face-restorer NAME=FILE`` ready (its engine built) or listed with why not.

A restorer's engine ``restorer_<NAME>`` takes face crops (3 x :data:`FACE_SIDE` x :data:`FACE_SIDE`, RGB in
``[0, 1]``, batched) and gives them restored; :func:`restore_faces` finds the faces of an image
(:mod:`serve.finishing.faces`), runs their crops in one call and pastes them back. ``restorers.json`` in the
restorers' engine folder is what the build recognised; a request naming one that is not ready is a 400.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from serve.finishing import faces
from serve.listing import FileEntry, Listing
from serve.triton.spec import DynamicBatching, EngineRunner, ModelSpec, TensorSpec

RESTORER_PREFIX = "restorer_"
FACE_SIDE = 512
"""The restorers' input side (GFPGAN's)."""
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
class RestorerEntry(FileEntry):
    """One ``--face-restorer NAME=FILE``: ready with its architecture, or the error that keeps it out."""

    @property
    def spec(self) -> ModelSpec:
        """Its engine's Triton model (ready entries only)."""
        return restorer_spec(self.name)


@dataclass(frozen=True)
class Restorers(Listing):
    """The face restorers a stack was started with (ready or refused with why): listed, checked, their engines."""

    LISTING = "restorers.json"
    ENTRY = RestorerEntry
    KIND = "face restorer"
    OPTION = "--face-restorer"

    def choose(self, name: str, field: str = "restore_faces.restorer") -> RestorerEntry:
        """The ready restorer ``name``; a 400 naming ``field`` otherwise."""
        return self.chosen(name, field)


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
