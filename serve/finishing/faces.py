"""Faces found, cut out for a restorer and pasted back: detection, the expanded square crop, the feathered paste.

The detector is OpenCV's bundled frontal-face Haar cascade (it ships in the ``opencv-python-headless`` wheel; nothing
is downloaded). Each face's box is widened to a square of :data:`EXPANSION` times its side around its centre (the
restorer was trained on faces with hair and chin around them), moved inside the image, resized to the restorer's
side, restored, resized back, blended with the original by ``weight`` and pasted with a mask that ramps from 0 at
the crop's edge to 1 at :data:`FEATHER` of its side inside, so no seam shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

EXPANSION = 1.5
"""A crop's side over its detected face's side."""
FEATHER = 0.125
"""The paste mask's ramp, as a fraction of the crop's side."""
MAX_FACES = 4
"""Faces restored per image (the largest; admission prices this many)."""
MIN_FACE = 32
"""The smallest face side (pixels) the detector reports."""


@dataclass(frozen=True)
class Crop:
    """A face's square crop in the image: left, top and side in pixels."""

    left: int
    top: int
    side: int

    def public(self) -> dict:
        """The crop as the answer reports it."""
        return {"x": self.left, "y": self.top, "width": self.side, "height": self.side}


@cache
def _cascade() -> cv2.CascadeClassifier:
    return cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")


def detect(pixels: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The faces in RGB ``uint8`` ``pixels``: (x, y, width, height) boxes, the largest first, at most MAX_FACES."""
    gray = cv2.equalizeHist(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY))
    found = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(MIN_FACE, MIN_FACE))
    boxes = sorted((tuple(int(v) for v in box) for box in found), key=lambda box: -box[2] * box[3])
    return boxes[:MAX_FACES]


def crop_for(box: tuple[int, int, int, int], width: int, height: int) -> Crop:
    """The square crop around ``box``: EXPANSION times its larger side, moved (and shrunk) to fit the image."""
    x, y, w, h = box
    side = min(round(max(w, h) * EXPANSION), width, height)
    left = min(max(round(x + w / 2 - side / 2), 0), width - side)
    top = min(max(round(y + h / 2 - side / 2), 0), height - side)
    return Crop(left, top, side)


def restorer_input(pixels: np.ndarray, crop: Crop, side: int) -> np.ndarray:
    """The crop of ``pixels`` resized to the restorer's ``side``: 3 x side x side float32 in ``[0, 1]``."""
    cut = pixels[crop.top : crop.top + crop.side, crop.left : crop.left + crop.side]
    resized = cv2.resize(cut, (side, side), interpolation=cv2.INTER_CUBIC if side > crop.side else cv2.INTER_AREA)
    return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32) / 255.0


def feather_mask(side: int) -> np.ndarray:
    """The paste mask of a crop ``side`` pixels square: 0 at its edge, ramping to 1 at FEATHER x side inside."""
    ramp_length = max(1, round(side * FEATHER))
    along = np.minimum(np.arange(side, dtype=np.float32) + 0.5, np.arange(side, 0, -1, dtype=np.float32) - 0.5)
    along = np.clip(along / ramp_length, 0.0, 1.0)
    return along[:, None] * along[None, :]


def paste(pixels: np.ndarray, crop: Crop, restored: np.ndarray, weight: float) -> np.ndarray:
    """``pixels`` with ``restored`` (3 x s x s in ``[0, 1]``) blended by ``weight`` into ``crop``, feathered."""
    face = np.clip(restored.transpose(1, 2, 0), 0.0, 1.0) * 255.0
    if face.shape[0] != crop.side:
        shrink = face.shape[0] > crop.side
        face = cv2.resize(face, (crop.side, crop.side), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    region = (slice(crop.top, crop.top + crop.side), slice(crop.left, crop.left + crop.side))
    original = pixels[region].astype(np.float32)
    mask = (feather_mask(crop.side) * weight)[:, :, None]
    out = pixels.copy()
    out[region] = np.clip(original + mask * (face - original), 0, 255).round().astype(np.uint8)
    return out
