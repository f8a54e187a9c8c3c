"""Faces found in an image by the face engines: boxes, 5 landmarks, scores and normalised 512-d embeddings.

The detector's engine sees the image letterboxed (:mod:`serve.faces.geometry`); each face found is aligned and all
of them are embedded in one call of the recognizer's engine (its batcher merges concurrent requests' faces).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from serve.faces.geometry import aligned_face, decode, letterbox, most_central
from serve.faces.pack import DETECTION_SIDE, MAX_FACES, FaceEntry
from serve.triton.spec import EngineRunner


@dataclass(frozen=True)
class Face:
    """One face: its box (x1, y1, x2, y2), detection score, 5 landmarks (x, y) and unit-length embedding."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    embedding: np.ndarray

    def public(self) -> dict:
        """The face as ``POST /v1/faces/analyze`` answers it."""
        return {
            "box": [float(v) for v in self.box],
            "score": float(self.score),
            "landmarks": [[float(x), float(y)] for x, y in self.landmarks],
            "embedding": [float(v) for v in self.embedding],
        }


async def analyze_faces(
    pixels: np.ndarray, entry: FaceEntry, runner: EngineRunner, max_faces: int = MAX_FACES
) -> list[Face]:
    """The faces in RGB ``uint8`` ``pixels``, best-scored first; past ``max_faces``, the largest and most central.

    Those kept past ``max_faces`` come in that order (largest and most central first), as InsightFace's ``max_num``.
    """
    found = await detect_faces(pixels, entry, runner, max_faces)
    if not len(found):
        return []
    faces = await asyncio.to_thread(_recognizer_input, pixels, found.landmarks, entry)
    embeddings = (await runner.infer(entry.specs[1], {"face": faces}))["embedding"]
    embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    return [Face(*face) for face in zip(found.boxes, found.scores, found.landmarks, embeddings, strict=True)]


async def detect_faces(pixels: np.ndarray, entry: FaceEntry, runner: EngineRunner, max_faces: int = MAX_FACES):
    """The faces the detector finds in ``pixels``: boxes, scores and 5 landmarks each, as :func:`analyze_faces`."""
    height, width = pixels.shape[:2]
    blob, scale = await asyncio.to_thread(letterbox, pixels, DETECTION_SIDE)
    outputs = await runner.infer(entry.specs[0], {"image": blob})
    found = await asyncio.to_thread(decode, outputs, DETECTION_SIDE, scale)
    return most_central(found, height, width, max_faces)


def _recognizer_input(pixels: np.ndarray, landmarks: np.ndarray, entry: FaceEntry) -> np.ndarray:
    """Each face aligned and normalised as the recognizer takes it: N x 3 x side x side float32."""
    faces = np.stack([aligned_face(pixels, points, entry.face_side) for points in landmarks]).astype(np.float32)
    normalised = (faces - np.float32(entry.input_mean)) * np.float32(1 / entry.input_std)
    return np.ascontiguousarray(normalised.transpose(0, 3, 1, 2))
