"""A face model folder with random weights in InsightFace's ``buffalo_l`` layout (nothing downloaded).

``det_10g.onnx``: SCRFD's graph contract (one ``1x3xHxW`` input; 9 outputs, the scores, box distances and 5
landmarks of 2 anchors at strides 8, 16 and 32, in that order); ``w600k_r50.onnx``: ArcFace's (``Nx3x112x112`` in,
a 512-d embedding out). The detector's score rises with the brightness around an anchor, so a light disc on a dark
ground is "a face" (:func:`drawn_faces`), found near its centre at the coarsest stride; its distances and landmarks
are positive biases plus random weights, so boxes and landmarks move with the picture as a trained detector's do.
Both read as InsightFace's model router reads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from build_engines.onnx_export import OPSET

DETECTOR_FILE = "det_10g.onnx"
RECOGNIZER_FILE = "w600k_r50.onnx"
STRIDES = (8, 16, 32)
LANDMARKS = ((-1.0, -0.8), (1.0, -0.8), (0.0, 0.1), (-0.8, 1.0), (0.8, 1.0))
"""Each anchor's landmark biases (in strides from its centre): eyes, nose tip, mouth corners, as a face has them."""
SCORE_SHIFT = {8: 10.0, 16: 8.0, 32: 0.0}
"""Lowers the score of the finer strides' anchors: a disc is found a few times, not at each of its anchors."""


class RandomScrfd(torch.nn.Module):
    """SCRFD's outputs from random convolutions over the picture's average at each stride."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.scores = torch.nn.ModuleList(torch.nn.Conv2d(channels, 2, 1) for _ in STRIDES)
        self.boxes = torch.nn.ModuleList(torch.nn.Conv2d(channels, 8, 1) for _ in STRIDES)
        self.landmarks = torch.nn.ModuleList(torch.nn.Conv2d(channels, 20, 1) for _ in STRIDES)
        with torch.no_grad():
            for score in self.scores:  # brightness (the input is in [-1, 1]) above ~0.6 scores over 0.5
                score.weight.mul_(0.05)
                score.bias.fill_(0.0)
            for box in self.boxes:
                box.weight.mul_(0.2)
                box.bias.fill_(3.0)  # about 2 strides from the centre to each side
            for landmark in self.landmarks:
                landmark.weight.mul_(0.1)
                landmark.bias.copy_(torch.tensor([v for point in LANDMARKS for v in point] * 2))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Scores (N x 1), box distances (N x 4) and landmark offsets (N x 10) per stride, as SCRFD gives them."""
        scores, boxes, landmarks = [], [], []
        for i, stride in enumerate(STRIDES):
            pooled = torch.nn.functional.avg_pool2d(image, stride)
            features = torch.tanh(self.stem(pooled))
            bright = torch.nn.functional.avg_pool2d(pooled.mean(1, keepdim=True), 3, 1, 1)  # its neighbours too
            logit = 12.0 * (bright - 0.6) - SCORE_SHIFT[stride] + self.scores[i](features)
            scores.append(torch.sigmoid(logit).permute(0, 2, 3, 1).reshape(-1, 1))
            boxes.append(torch.nn.functional.softplus(self.boxes[i](features)).permute(0, 2, 3, 1).reshape(-1, 4))
            landmarks.append(self.landmarks[i](features).permute(0, 2, 3, 1).reshape(-1, 10))
        return (*scores, *boxes, *landmarks)


class RandomArcFace(torch.nn.Module):
    """ArcFace's contract: a batch of 112x112 faces in ``[-1, 1]`` to 512-d embeddings (not normalised)."""

    def __init__(self, size: int = 512) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
            torch.nn.PReLU(8),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
            torch.nn.PReLU(16),
            torch.nn.AdaptiveAvgPool2d(4),
            torch.nn.Flatten(),
            torch.nn.Linear(16 * 16, size),
        )

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        """The faces' embeddings."""
        return self.body(face)


def random_face_pack(folder: Path, seed: int = 0) -> Path:
    """Write ``det_10g.onnx`` and ``w600k_r50.onnx`` with random weights into ``folder``; the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    detector, recognizer = RandomScrfd().eval(), RandomArcFace().eval()
    names = [f"{kind}_{stride}" for kind in ("score", "bbox", "kps") for stride in STRIDES]
    torch.onnx.export(
        detector,
        (torch.zeros(1, 3, 64, 64),),
        str(folder / DETECTOR_FILE),
        input_names=["input.1"],
        output_names=names,
        dynamic_axes={"input.1": {2: "height", 3: "width"}, **{name: {0: "anchors"} for name in names}},
        opset_version=OPSET,
        dynamo=False,
    )
    torch.onnx.export(
        recognizer,
        (torch.zeros(1, 3, 112, 112),),
        str(folder / RECOGNIZER_FILE),
        input_names=["input.1"],
        output_names=["embedding"],
        dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    return folder


def drawn_faces(centres: list[tuple[int, int, int]], size: tuple[int, int] = (320, 240), seed: int = 0) -> np.ndarray:
    """RGB ``uint8`` pixels: light discs ``(x, y, radius)`` with dark eyes on a dark, slightly noisy ground."""
    image = Image.new("RGB", size, (20, 24, 30))
    draw = ImageDraw.Draw(image)
    for x, y, radius in centres:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(240, 225, 210))
        draw.ellipse((x - radius // 2, y - radius // 3, x - radius // 4, y - radius // 6), fill=(40, 30, 30))
        draw.ellipse((x + radius // 4, y - radius // 3, x + radius // 2, y - radius // 6), fill=(40, 30, 30))
    pixels = np.asarray(image, dtype=np.int16)
    noise = np.random.default_rng(seed).integers(-6, 7, pixels.shape)
    return np.clip(pixels + noise, 0, 255).astype(np.uint8)
