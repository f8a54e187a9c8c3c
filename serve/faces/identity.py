"""How much a picture keeps a person: the cosine of its best face's embedding with the person's (``scores.identity``).

As ArcFace's users read two embeddings: their dot product once both are unit length. A picture in which the face
models find no face has no identity (None).
"""

from __future__ import annotations

import asyncio

import numpy as np

from serve.faces.analyze import analyze_faces
from serve.faces.pack import FaceEntry
from serve.triton.spec import EngineRunner

NO_FACE_RANK = -2.0
"""Where a picture without a face ranks among candidates: below every cosine."""


async def identity_scores(
    images: list[np.ndarray], reference: np.ndarray, entry: FaceEntry, runner: EngineRunner
) -> list[float | None]:
    """Each RGB ``uint8`` image's identity: the highest cosine of its faces with unit-length ``reference``."""
    found = await asyncio.gather(*(analyze_faces(image, entry, runner) for image in images))
    return [max((float(np.dot(face.embedding, reference)) for face in faces), default=None) for faces in found]
