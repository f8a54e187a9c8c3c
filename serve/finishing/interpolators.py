"""The stack's frame interpolators (``--interpolator NAME=FILE``, RIFE), and a video's frames multiplied by one.

Each is ready (its engine built) or listed with why not.

An interpolator's engine ``interpolator_<NAME>`` takes a pair of frames side by side in channels (6 x H x W, RGB in
``[0, 1]``, each side a multiple of :data:`SIDE_MULTIPLE`) and a timestep in (0, 1), and gives the frame at that
moment; rows of any requests batch together. A video interpolated by ``factor`` gets ``factor - 1`` frames between
each two (at timesteps ``k / factor``, as Practical-RIFE's ``--multi`` does), so ``n`` frames become
``(n - 1) x factor + 1``, shown at ``factor`` times the fps. ``interpolators.json`` in the finishing engines' folder
is what the build recognised; a request naming one that is not ready is a 400.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.errors import InvalidInput
from serve.triton.spec import DynamicBatching, EngineRunner, ModelSpec, TensorSpec

INTERPOLATOR_PREFIX = "interpolator_"
SIDE_MULTIPLE = 128
"""Frames are padded (zeros, right and bottom) to sides of this multiple, as Practical-RIFE pads them at scale 1."""
MAX_ROWS_PER_CALL = 8
FACTORS = (2, 4, 8)
LISTING = "interpolators.json"
READY = "ready"
ERROR = "error"


def interpolator_spec(name: str) -> ModelSpec:
    """The Triton model of interpolator ``name``: pairs and timesteps in, middle frames out, batched."""
    return ModelSpec(
        name=f"{INTERPOLATOR_PREFIX}{name}",
        inputs=(
            TensorSpec("pair", "float32", (6, -1, -1), axis_names=("height", "width")),
            TensorSpec("timestep", "float32", (1,)),
        ),
        outputs=(TensorSpec("middle", "float32", (3, -1, -1), axis_names=("height", "width")),),
        max_batch_size=MAX_ROWS_PER_CALL,
        dynamic_batching=DynamicBatching(max_queue_delay_us=2000),
    )


@dataclass(frozen=True)
class InterpolatorEntry:
    """One ``--interpolator NAME=FILE``: ready with its architecture, or the error that keeps it out."""

    name: str
    source: str
    status: str = READY
    architecture: str | None = None
    error: str | None = None

    def public(self) -> dict:
        """Its ``GET /v1/upscalers`` entry (under ``interpolators``)."""
        entry = {"name": self.name, "status": self.status, "architecture": self.architecture}
        return entry | ({"error": self.error} if self.error else {})

    @property
    def spec(self) -> ModelSpec:
        """Its engine's Triton model (ready entries only)."""
        return interpolator_spec(self.name)


@dataclass(frozen=True)
class Interpolators:
    """The frame interpolators a stack was started with (ready or refused with why): listed, chosen, their engines."""

    entries: tuple[InterpolatorEntry, ...] = ()

    @classmethod
    def read(cls, folder: Path | str | None) -> Interpolators:
        """The interpolators built into ``folder`` (None or a folder without a listing: none)."""
        path = Path(folder) / LISTING if folder else None
        if path is None or not path.is_file():
            return cls()
        return cls(tuple(InterpolatorEntry(**entry) for entry in json.loads(path.read_text())))

    def write(self, folder: Path) -> None:
        """Save the listing in ``folder`` (the build does, beside the engines)."""
        (folder / LISTING).write_text(json.dumps([dataclasses.asdict(e) for e in self.entries], indent=2))

    @property
    def ready(self) -> tuple[InterpolatorEntry, ...]:
        """The entries whose engines were built."""
        return tuple(entry for entry in self.entries if entry.status == READY)

    def listing(self) -> list[dict]:
        """Every interpolator the stack was started with, ready or with its error."""
        return [entry.public() for entry in self.entries]

    def choose(self, name: str | None, field: str = "interpolate.interpolator") -> InterpolatorEntry:
        """The ready interpolator ``name`` (None: the first ready); a 400 naming ``field`` otherwise."""
        ready = ", ".join(e.name for e in self.ready) or "none: start the stack with --interpolator NAME=FILE"
        entry = next((e for e in self.entries if e.name == name), None) if name else next(iter(self.ready), None)
        if entry is None:
            asked = f"unknown interpolator {name!r}" if name else "no interpolator is served"
            raise InvalidInput(f"{field}: {asked} (ready: {ready})", field)
        if entry.status != READY:
            raise InvalidInput(f"{field}: interpolator {name!r} cannot be served: {entry.error}", field)
        return entry


def timesteps(factor: int) -> list[float]:
    """The moments between two frames that ``factor`` draws: ``1/factor, ..., (factor-1)/factor``."""
    return [k / factor for k in range(1, factor)]


def padded_side(side: int) -> int:
    """A frame side padded up to a multiple of :data:`SIDE_MULTIPLE`."""
    return -(-side // SIDE_MULTIPLE) * SIDE_MULTIPLE


def pair_rows(first: np.ndarray, second: np.ndarray, moments: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The engine's rows for two RGB ``uint8`` frames (H x W x 3): each moment's padded pair and its timestep."""
    height, width = first.shape[:2]
    pair = np.zeros((6, padded_side(height), padded_side(width)), np.float32)
    pair[:3, :height, :width] = first.transpose(2, 0, 1) / np.float32(255)
    pair[3:, :height, :width] = second.transpose(2, 0, 1) / np.float32(255)
    return np.repeat(pair[None], len(moments), axis=0), np.asarray(moments, np.float32).reshape(-1, 1)


def frame_pixels(middle: np.ndarray, height: int, width: int) -> np.ndarray:
    """An engine's middle frame (3 x H' x W', padded) as RGB ``uint8`` (H x W x 3)."""
    return (np.clip(middle[:, :height, :width], 0.0, 1.0) * 255.0).round().astype(np.uint8).transpose(1, 2, 0)


async def interpolate_frames(
    frames: list[np.ndarray], factor: int, entry: InterpolatorEntry, runner: EngineRunner
) -> list[np.ndarray]:
    """RGB ``uint8`` ``frames`` with ``factor - 1`` frames drawn by ``entry``'s engine between each two, in order."""
    height, width = frames[0].shape[:2]
    moments = timesteps(factor)
    out = [frames[0]]
    for first, second in zip(frames, frames[1:], strict=False):
        pairs, times = await asyncio.to_thread(pair_rows, first, second, moments)
        middles = []
        for start in range(0, len(moments), MAX_ROWS_PER_CALL):
            rows = slice(start, start + MAX_ROWS_PER_CALL)
            answer = await runner.infer(entry.spec, {"pair": pairs[rows], "timestep": times[rows]})
            middles.extend(answer["middle"])
        out.extend(await asyncio.to_thread(lambda m=middles: [frame_pixels(x, height, width) for x in m]))
        out.append(second)
    return out
