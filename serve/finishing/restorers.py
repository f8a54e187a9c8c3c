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

from serve.errors import InvalidInput
from serve.faces.analyze import detect_faces
from serve.faces.pack import FaceEntry
from serve.finishing import aligned_faces, faces
from serve.listing import FileEntry, Kind, Listing
from serve.triton.spec import DynamicBatching, EngineRunner, ModelSpec, TensorSpec

RESTORER_PREFIX = "restorer_"
FACE_SIDE = 512
"""The restorers' input side (GFPGAN's)."""
NO_FACE = "no face found: the image is unchanged"
FIDELITY = "fidelity"
"""CodeFormer's ``w``, one per crop: its engine's second input."""
TAKES_FIDELITY = ("CodeFormer",)
"""The architectures whose engines take a fidelity, and whose faces are aligned by the face models where a stack
serves them (as CodeFormer's inference aligns them; GFPGAN keeps the square crops it has been served with)."""
DEFAULT_FIDELITY = 0.5
"""CodeFormer's own default ``w``."""


def restorer_spec(name: str, side: int = FACE_SIDE, fidelity: bool = False) -> ModelSpec:
    """The Triton model of restorer ``name``: face crops in (with ``fidelity``, one each), restored crops out."""
    image = TensorSpec("image", "float32", (3, side, side))
    return ModelSpec(
        name=f"{RESTORER_PREFIX}{name}",
        inputs=(image, TensorSpec(FIDELITY, "float32", (1,))) if fidelity else (image,),
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
        return restorer_spec(self.name, fidelity=self.takes_fidelity)

    @property
    def takes_fidelity(self) -> bool:
        """Whether its engine takes a fidelity (CodeFormer's) and its faces are aligned where face models are served."""
        return self.architecture in TAKES_FIDELITY


@dataclass(frozen=True)
class Restorers(Listing):
    """The face restorers a stack was started with (ready or refused with why): listed, checked, their engines."""

    KIND = Kind("restorers.json", RestorerEntry, "face restorer", "--face-restorer")

    def choose(self, name: str, field: str = "restore_faces.restorer", fidelity: float | None = None) -> RestorerEntry:
        """The ready restorer ``name``; a 400 naming ``field`` otherwise, or its ``fidelity`` one that takes none."""
        entry = self.chosen(name, field)
        if fidelity is not None and not entry.takes_fidelity:
            where = field.rsplit(".", 1)[0] + ".fidelity"
            message = f"{name} is a {entry.architecture}, which takes no fidelity (CodeFormer's)"
            raise InvalidInput(f"{where}: {message}", where)
        return entry


async def restore_faces(
    pixels: np.ndarray,
    entry: RestorerEntry,
    weight: float,
    runner: EngineRunner,
    fidelity: float | None = None,
    face_models: FaceEntry | None = None,
) -> tuple[np.ndarray, dict]:
    """RGB ``uint8`` ``pixels`` with each face restored by ``entry``'s engine, and what the answer says of it.

    With ``face_models`` (``easel up --faces``), each face is aligned by its landmarks and pasted back through the
    inverse (:mod:`serve.finishing.aligned_faces`); without, found by the Haar cascade and cropped square
    (:mod:`serve.finishing.faces`). ``fidelity``: CodeFormer's ``w`` (its default where None). ``{"found": n,
    "crops": [...], "aligned": bool}``; with no face, the pixels unchanged and a ``note`` saying so.
    """
    if face_models is not None:
        found = await detect_faces(pixels, face_models, runner, faces.MAX_FACES)
        places = [aligned_faces.alignment(points, FACE_SIDE) for points in found.landmarks]
        crops = [faces.Crop(round(x1), round(y1), round(max(x2 - x1, y2 - y1))) for x1, y1, x2, y2 in found.boxes]
        cut = lambda: [aligned_faces.aligned_input(pixels, matrix, FACE_SIDE) for matrix in places]  # noqa: E731
        paste = aligned_faces.paste_back
    else:
        height, width = pixels.shape[:2]
        crops = [faces.crop_for(box, width, height) for box in await asyncio.to_thread(faces.detect, pixels)]
        places = crops
        cut = lambda: [faces.restorer_input(pixels, crop, FACE_SIDE) for crop in crops]  # noqa: E731
        paste = faces.paste
    if not crops:
        return pixels, {"found": 0, "note": NO_FACE}
    batch = np.stack(await asyncio.to_thread(cut))
    inputs = {"image": batch}
    if entry.takes_fidelity:
        chosen = DEFAULT_FIDELITY if fidelity is None else fidelity
        inputs[FIDELITY] = np.full((len(batch), 1), chosen, np.float32)
    restored = (await runner.infer(entry.spec, inputs))["restored"]

    def pasted() -> np.ndarray:
        result = pixels
        for place, face in zip(places, restored, strict=True):  # its alignment, or its square crop
            result = paste(result, place, face, weight)
        return result

    answer = {"found": len(crops), "crops": [crop.public() for crop in crops], "aligned": face_models is not None}
    return await asyncio.to_thread(pasted), answer
