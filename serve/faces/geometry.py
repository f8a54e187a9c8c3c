"""What the face engines are fed and what their outputs mean: SCRFD's letterbox, decoding and NMS, ArcFace's crop.

Each step is InsightFace's (``SCRFD.detect`` at one ``det_size``, ``face_align.norm_crop``), on RGB ``uint8``
pixels: the image is resized to fit the detector's square (its top left corner, the rest black), the anchors whose
score passes :data:`THRESHOLD` decoded into boxes and landmarks, overlapping ones dropped (:data:`NMS_OVERLAP`), and
each face cut out by the similarity transform that takes its landmarks to ArcFace's (Umeyama's estimate).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from serve.faces.pack import ANCHORS, STRIDES

THRESHOLD = 0.5
NMS_OVERLAP = 0.4
DETECTOR_MEAN, DETECTOR_STD = 127.5, 128.0
ARCFACE_LANDMARKS = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
"""Where ArcFace's training put the eyes, nose tip and mouth corners in a 112x112 face."""


@dataclass(frozen=True)
class Detections:
    """Faces found: boxes (N x 4: x1, y1, x2, y2) and scores (N), 5 landmarks each (N x 5 x 2), best first."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, rows: np.ndarray) -> Detections:
        """Only ``rows``, in their order."""
        return Detections(self.boxes[rows], self.scores[rows], self.landmarks[rows])


def letterbox(pixels: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """The detector's input (1 x 3 x side x side, normalised) and the scale from the image to it."""
    height, width = pixels.shape[:2]
    if height / width > 1.0:
        new_height, new_width = side, int(side / (height / width))
    else:
        new_width, new_height = side, int(side * (height / width))
    canvas = np.zeros((side, side, 3), dtype=np.uint8)
    canvas[:new_height, :new_width] = cv2.resize(pixels, (new_width, new_height))
    blob = (canvas.astype(np.float32) - DETECTOR_MEAN) * np.float32(1 / DETECTOR_STD)
    return np.ascontiguousarray(blob.transpose(2, 0, 1)[None]), new_height / height


def _anchor_centres(side: int, stride: int) -> np.ndarray:
    """Each anchor's centre at ``stride`` (row by row, ANCHORS per position), in input pixels."""
    cells = side // stride
    centres = np.stack(np.mgrid[:cells, :cells][::-1], axis=-1).astype(np.float32)
    return np.repeat((centres * stride).reshape(-1, 2), ANCHORS, axis=0)


def decode(outputs: dict[str, np.ndarray], side: int, scale: float) -> Detections:
    """The detector's outputs as faces in image pixels, overlapping ones dropped, best first."""
    found_scores, found_boxes, found_landmarks = [], [], []
    for stride in STRIDES:
        scores = outputs[f"score_{stride}"]
        centres = _anchor_centres(side, stride)
        distances = outputs[f"box_{stride}"] * stride
        offsets = (outputs[f"landmarks_{stride}"] * stride).reshape(-1, 5, 2)
        kept = np.where(scores >= THRESHOLD)[0]
        boxes = np.concatenate([centres - distances[:, :2], centres + distances[:, 2:]], axis=1)
        found_scores.append(scores[kept])
        found_boxes.append(boxes[kept])
        found_landmarks.append((centres[:, None, :] + offsets)[kept])
    scores = np.vstack(found_scores).ravel()
    order = np.argsort(-scores, kind="stable")
    boxes = (np.vstack(found_boxes) / scale).astype(np.float32)[order]
    landmarks = (np.concatenate(found_landmarks) / scale)[order]
    found = Detections(boxes, scores[order].astype(np.float32), landmarks)
    return found.take(np.asarray(_nms(found), dtype=np.int64))


def _nms(found: Detections) -> list[int]:
    """The rows that overlap no better one by more than NMS_OVERLAP (InsightFace's +1 pixel areas)."""
    x1, y1, x2, y2 = found.boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = np.argsort(-found.scores, kind="stable"), []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = width * height
        order = rest[inter / (areas[best] + areas[rest] - inter) <= NMS_OVERLAP]
    return keep


def most_central(found: Detections, height: int, width: int, count: int) -> Detections:
    """At most ``count`` faces: the largest and most central (InsightFace's ``max_num`` by its default metric)."""
    if len(found) <= count:
        return found
    boxes = found.boxes
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    off_x = (boxes[:, 0] + boxes[:, 2]) / 2 - width // 2
    off_y = (boxes[:, 1] + boxes[:, 3]) / 2 - height // 2
    return found.take(np.argsort(area - (off_x**2 + off_y**2) * 2.0)[::-1][:count])


def alignment(landmarks: np.ndarray, side: int) -> np.ndarray:
    """The 2 x 3 similarity transform taking a face's 5 ``landmarks`` to ArcFace's, at ``side`` (112 or 128 x k)."""
    ratio, shift = (side / 112.0, 0.0) if side % 112 == 0 else (side / 128.0, 8.0 * side / 128.0)
    target = ARCFACE_LANDMARKS * ratio + np.array([shift, 0.0], dtype=np.float32)
    return similarity(landmarks, target)


def similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, one scale, shift) from ``source`` points to ``target``'s, 2 x 3.

    Umeyama's estimate, as scikit-image's ``SimilarityTransform`` (InsightFace's) computes it, in numpy: scikit-image
    would bring SciPy into the Gateway for ten lines of linear algebra.
    """
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    source_mean, target_mean = source.mean(0), target.mean(0)
    centred = source - source_mean
    covariance = (target - target_mean).T @ centred / len(source)
    signs = np.array([1.0, -1.0 if np.linalg.det(covariance) < 0 else 1.0])
    u, singular, vt = np.linalg.svd(covariance)
    rotation = u @ np.diag(signs) @ vt
    scale = (singular @ signs) / centred.var(0).sum()
    return np.hstack([scale * rotation, (target_mean - scale * rotation @ source_mean)[:, None]])


def aligned_face(pixels: np.ndarray, landmarks: np.ndarray, side: int) -> np.ndarray:
    """The face at ``landmarks`` cut out and aligned as ArcFace was trained: ``side`` x ``side`` x 3 ``uint8``."""
    return cv2.warpAffine(pixels, alignment(landmarks, side), (side, side), borderValue=0.0)


KEYPOINT_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
"""InstantID's colour per landmark (eyes, nose tip, mouth corners), RGB."""
LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))
"""The landmarks InstantID joins by a stick: each eye and mouth corner to the nose tip."""


def keypoints_drawing(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """A face's 5 ``landmarks`` drawn as InstantID's ``draw_kps`` draws them (its IdentityNet was trained on these).

    On a black ``width`` x ``height`` canvas: a stick 4 px thick from each eye and mouth corner to the nose tip in
    the first point's colour, dimmed to 60 %, then a dot of radius 10 at each landmark. RGB ``uint8``.
    """
    canvas = np.zeros((height, width, 3), np.float64)
    points = np.asarray(landmarks)  # in their own dtype (InsightFace's float32), as InstantID reads them
    for start, end in LIMBS:
        (x0, y0), (x1, y1) = points[start], points[end]
        length = ((x0 - x1) ** 2 + (y0 - y1) ** 2) ** 0.5
        angle = int(np.degrees(np.arctan2(y0 - y1, x0 - x1)))
        centre = (int((x0 + x1) / 2), int((y0 + y1) / 2))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), 4), angle, 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, KEYPOINT_COLOURS[start])
    canvas = (canvas * 0.6).astype(np.uint8)
    for (x, y), colour in zip(points, KEYPOINT_COLOURS, strict=True):
        cv2.circle(canvas, (int(x), int(y)), 10, colour, -1)
    return canvas
