"""Faces restored through their alignment, as facexlib's ``FaceRestoreHelper`` restores them for CodeFormer and GFPGAN.

Each face the face models find (``easel up --faces``: 5 landmarks) is cut out by the similarity that takes its
landmarks to FFHQ's at 512 pixels (:data:`FFHQ_512`, OpenCV's partial affine by least median of squares, the border
filled with FFHQ's grey), restored, and pasted back through the inverse transform with a soft mask: the warped
square eroded by 2 pixels, then by an edge of a twentieth of the face's side and blurred as wide, so no seam shows.
"""

from __future__ import annotations

import cv2
import numpy as np

FFHQ_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    np.float32,
)
"""Eyes, nose tip and mouth corners of an FFHQ-aligned 512x512 face (facexlib's template)."""
BORDER = (135, 133, 132)
"""What the crop holds beyond the image's edge (facexlib's)."""


def alignment(landmarks: np.ndarray, side: int) -> np.ndarray:
    """The 2x3 similarity taking a face's 5 ``landmarks`` (x, y) to the template at ``side`` pixels."""
    template = FFHQ_512 * (side / 512)
    return cv2.estimateAffinePartial2D(np.asarray(landmarks, np.float32), template, method=cv2.LMEDS)[0]


def aligned_input(pixels: np.ndarray, matrix: np.ndarray, side: int) -> np.ndarray:
    """The face ``matrix`` cuts out of RGB ``uint8`` ``pixels``: 3 x side x side float32 in ``[0, 1]``."""
    face = cv2.warpAffine(pixels, matrix, (side, side), borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER)
    return np.ascontiguousarray(face.transpose(2, 0, 1), dtype=np.float32) / 255.0


def paste_back(pixels: np.ndarray, matrix: np.ndarray, restored: np.ndarray, weight: float) -> np.ndarray:
    """``pixels`` with ``restored`` (3 x s x s in ``[0, 1]``) warped back by ``matrix``'s inverse, softly masked.

    ``weight``: how much of the restored face replaces the original (the mask's height).
    """
    height, width = pixels.shape[:2]
    side = restored.shape[-1]
    inverse = cv2.invertAffineTransform(matrix)
    face = cv2.warpAffine(np.clip(restored.transpose(1, 2, 0), 0.0, 1.0) * 255.0, inverse, (width, height))
    mask = cv2.erode(cv2.warpAffine(np.ones((side, side), np.float32), inverse, (width, height)), np.ones((2, 2)))
    edge = max(1, int(mask.sum() ** 0.5) // 20)
    centre = cv2.erode(mask, np.ones((2 * edge, 2 * edge), np.uint8))
    soft = cv2.GaussianBlur(centre, (2 * edge + 1, 2 * edge + 1), 0)[..., None] * weight
    blended = soft * (mask[..., None] * face) + (1.0 - soft) * pixels.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
