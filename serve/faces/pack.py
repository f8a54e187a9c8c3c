"""The face models a stack serves (``easel up --faces DIR``): InsightFace's model-zoo layout, as two engines.

A folder like ``buffalo_l`` holds SCRFD detection (``det_*.onnx``: scores, box distances and 5 landmarks of 2 anchors
at strides 8, 16 and 32) and ArcFace recognition (``w600k_*.onnx``: an aligned square face in, an embedding out). The
build tells them apart as InsightFace's model router does and installs them as the engines ``faces_detector`` (one
``DETECTION_SIDE`` square letterboxed image) and ``faces_recognizer`` (aligned faces, batched across requests).
``faces.json`` in the finishing engines' folder says what it found, or why the folder is not served.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve.errors import InvalidInput
from serve.listing import FileEntry, Kind, Listing
from serve.triton.spec import DynamicBatching, ModelSpec, TensorSpec

DETECTOR = "faces_detector"
RECOGNIZER = "faces_recognizer"
DETECTION_SIDE = 640
"""The detector's input side: InsightFace's ``det_size=(640, 640)``."""
STRIDES = (8, 16, 32)
ANCHORS = 2
"""Anchors per position at each stride (SCRFD's 9-output models: ``det_10g``, ``det_2.5g``, ``det_500m``)."""
OUTPUT_KINDS = (("score", 1), ("box", 4), ("landmarks", 10))
"""The detector's outputs, stride by stride within each kind, in the graph's order."""
MAX_FACES = 16
"""Faces one image may report (the most central and largest kept past it, as InsightFace's ``max_num`` keeps)."""


def detector_spec(side: int = DETECTION_SIDE) -> ModelSpec:
    """The detector's Triton model: one letterboxed image in, each stride's scores, boxes and landmarks out."""
    outputs = tuple(
        TensorSpec(f"{kind}_{stride}", "float32", ((side // stride) ** 2 * ANCHORS, width))
        for kind, width in OUTPUT_KINDS
        for stride in STRIDES
    )
    return ModelSpec(DETECTOR, inputs=(TensorSpec("image", "float32", (1, 3, side, side)),), outputs=outputs)


def recognizer_spec(side: int = 112, size: int = 512) -> ModelSpec:
    """The recognizer's Triton model: aligned faces in (``side`` square), their embeddings out, batched."""
    return ModelSpec(
        RECOGNIZER,
        inputs=(TensorSpec("face", "float32", (3, side, side)),),
        outputs=(TensorSpec("embedding", "float32", (size,)),),
        max_batch_size=MAX_FACES,
        dynamic_batching=DynamicBatching(max_queue_delay_us=2000),
    )


@dataclass(frozen=True)
class FaceEntry(FileEntry):
    """``--faces DIR``: ready with its two files and the recognizer's input, or the error that keeps it out."""

    detector: str | None = None
    recognizer: str | None = None
    face_side: int = 112
    embedding_size: int = 512
    input_mean: float = 127.5
    input_std: float = 127.5
    """The recognizer's pixel normalisation, ``(x - mean) / std``, read from its graph as InsightFace reads it."""

    def public(self) -> dict:
        """Its listing's entry."""
        files = {"detector": self.detector, "recognizer": self.recognizer, "embedding_size": self.embedding_size}
        return super().public() | files

    @property
    def specs(self) -> tuple[ModelSpec, ModelSpec]:
        """Its engines' Triton models: the detector's and the recognizer's."""
        return detector_spec(), recognizer_spec(self.face_side, self.embedding_size)


@dataclass(frozen=True)
class Faces(Listing):
    """The face models a stack was started with (one folder at most), ready or listed with why not."""

    KIND = Kind("faces.json", FaceEntry, "face model folder", "--faces")

    def served(self, field: str) -> FaceEntry:
        """The ready face models; a 400 naming ``field`` when there are none."""
        entry = next(iter(self.entries), None)
        if entry is None:
            raise InvalidInput(f"{field}: no face models are served (start the stack with --faces DIR)", field)
        return self.chosen(entry.name, field)

    @property
    def specs(self) -> list[ModelSpec]:
        """The Triton models of the ready folder's engines."""
        return [spec for entry in self.ready for spec in entry.specs]
