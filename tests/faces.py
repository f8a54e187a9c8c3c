"""InsightFace as the face models' parity reference: its ``FaceAnalysis`` over the same ONNX files, CPU, 640x640.

``insightface`` is installed without its dependencies (the README's test command): it asks for ``opencv-python``,
whose ``cv2`` would replace the headless build the stack uses; everything else it imports is installed already.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serve.faces.pack import DETECTION_SIDE


def insightface_faces(folder: Path, pixels: np.ndarray, max_num: int = 0) -> list[dict]:
    """The faces InsightFace finds in RGB ``pixels`` with ``folder``'s detector and recognizer, as the API answers."""
    from insightface.app import FaceAnalysis

    analysis = FaceAnalysis(
        name=str(folder), providers=["CPUExecutionProvider"], allowed_modules=["detection", "recognition"]
    )
    analysis.prepare(ctx_id=-1, det_size=(DETECTION_SIDE, DETECTION_SIDE))
    found = analysis.get(np.ascontiguousarray(pixels[..., ::-1]), max_num=max_num)  # it reads BGR, as cv2 does
    return [
        {
            "box": f.bbox.tolist(),
            "score": float(f.det_score),
            "landmarks": f.kps.tolist(),
            "embedding": f.normed_embedding,
        }
        for f in found
    ]


def assert_same_faces(ours: list[dict], theirs: list[dict]) -> None:
    """Boxes and landmarks within 1 pixel of InsightFace's, embeddings at cosine >= 0.9999, in the same order."""
    assert len(ours) == len(theirs) > 0, (len(ours), len(theirs))
    for face, reference in zip(ours, theirs, strict=True):
        assert np.abs(np.subtract(face["box"], reference["box"])).max() <= 1.0, (face["box"], reference["box"])
        assert np.abs(np.subtract(face["landmarks"], reference["landmarks"])).max() <= 1.0
        cosine = float(np.dot(face["embedding"], reference["embedding"]))
        assert cosine >= 0.9999, cosine
