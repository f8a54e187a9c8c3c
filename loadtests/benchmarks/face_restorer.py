"""``easel bench face-restorer``: GFPGAN v1 clean at full size (v1.4's shape, random weights), ms per 512x512 face.

The engine as the stack exports it (ONNX, ``[0, 1]`` in and out), run in-process by one ONNX Runtime session (what
Triton's python-backend stub runs), at 1 and 4 faces per call; beside it the PyTorch module, and the whole finishing
step on a picture with one face (detection, crop, the engine, the feathered paste).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from loadtests.benchmarks import loop
from serve.finishing.restorers import FACE_SIDE, RestorerEntry, restore_faces
from serve.tables import text_table
from serve.triton.memory import peak_rss_reset, rss_bytes
from serve.triton.onnx_backend import make_session
from serve.triton.spec import ModelSpec

logger = logging.getLogger(__name__)


class _SessionRunner:
    """An :class:`~serve.triton.spec.EngineRunner` over one ONNX Runtime session."""

    def __init__(self, onnx_path: Path) -> None:
        self.session = make_session(onnx_path)

    async def infer(self, spec: ModelSpec, inputs: Mapping[str, np.ndarray], priority: int = 0) -> dict:
        return {"restored": self.session.run(None, dict(inputs))[0]}


def _median_s(call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(module: torch.nn.Module, onnx_path: Path, picture: np.ndarray, repeats: int, out: Path) -> str:
    """Time the engine (1 and 4 faces a call), PyTorch (1), and the finishing step on ``picture``; write JSON."""
    runner = _SessionRunner(onnx_path)
    rows = []
    for faces in (1, 4):
        crops = np.random.default_rng(faces).random((faces, 3, FACE_SIDE, FACE_SIDE), dtype=np.float32)
        peak_rss_reset()
        seconds = _median_s(lambda crops=crops: runner.session.run(None, {"image": crops}), repeats)
        rows.append(("ONNX Runtime engine", faces, 1000 * seconds / faces, rss_bytes(peak=True) / 2**30))
    face = torch.rand(1, 3, FACE_SIDE, FACE_SIDE) * 2 - 1
    peak_rss_reset()
    with torch.no_grad():
        seconds = _median_s(lambda: module(face), repeats)
    rows.append(("PyTorch module", 1, 1000 * seconds, rss_bytes(peak=True) / 2**30))
    entry = RestorerEntry("bench", str(onnx_path), architecture="GFPGANv1Clean")
    found = {}

    def finish() -> None:
        found.update(asyncio.run(restore_faces(picture, entry, 0.5, runner))[1])

    peak_rss_reset()
    seconds = _median_s(finish, repeats)
    side = f"{picture.shape[1]}x{picture.shape[0]}"
    rows.append((f"detect + restore + paste, {side}", found["found"], 1000 * seconds, rss_bytes(peak=True) / 2**30))
    faces = [dict(zip(_KEYS, row, strict=True)) for row in rows]
    loop.write_json(out, [], restorer="GFPGANv1Clean full size", repeats=repeats, faces=faces)
    columns = [("path", "<36"), ("faces", ">6"), ("ms per face", ">12.0f"), ("peak GiB", ">9.2f")]
    heading = f"GFPGAN v1 clean, v1.4's shape (random weights), {FACE_SIDE}x{FACE_SIDE} faces, median of {repeats}"
    return "\n".join([heading, text_table(columns, rows), f"written to {out}"])


_KEYS = ("path", "faces", "ms_per_face", "peak_gib")
