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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from serve.listing import FileEntry, Kind, Listing
from serve.triton.spec import DynamicBatching, EngineRunner, ModelSpec, TensorSpec

INTERPOLATOR_PREFIX = "interpolator_"
SIDE_MULTIPLE = 128
"""Frames are padded (zeros, right and bottom) to sides of this multiple, as Practical-RIFE pads them at scale 1."""
MAX_ROWS_PER_CALL = 8


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
        canary_side=SIDE_MULTIPLE,  # RIFE's pyramid has nothing left of an 8-pixel frame
    )


@dataclass(frozen=True)
class InterpolatorEntry(FileEntry):
    """One ``--interpolator NAME=FILE``: ready with its architecture, or the error that keeps it out."""

    @property
    def spec(self) -> ModelSpec:
        """Its engine's Triton model (ready entries only)."""
        return interpolator_spec(self.name)


@dataclass(frozen=True)
class Interpolators(Listing):
    """The frame interpolators a stack was started with (ready or refused with why): listed, chosen, their engines."""

    KIND = Kind("interpolators.json", InterpolatorEntry, "interpolator", "--interpolator")

    def choose(self, name: str | None, field: str = "interpolate.interpolator") -> InterpolatorEntry:
        """The ready interpolator ``name`` (None: the first ready); a 400 naming ``field`` otherwise."""
        return self.chosen(name, field)


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
    frames: list[np.ndarray],
    factor: int,
    entry: InterpolatorEntry,
    runner: EngineRunner,
    pair_done: Callable[[int, int], Awaitable[None]] | None = None,
) -> list[np.ndarray]:
    """RGB ``uint8`` ``frames`` with ``factor - 1`` frames drawn by ``entry``'s engine between each two, in order.

    ``pair_done(done, total)`` is awaited after each pair of frames (what it raises stops the interpolation).
    """
    height, width = frames[0].shape[:2]
    moments = timesteps(factor)
    out = [frames[0]]
    for done, (first, second) in enumerate(zip(frames, frames[1:], strict=False), start=1):
        pairs, times = await asyncio.to_thread(pair_rows, first, second, moments)
        middles = []
        for start in range(0, len(moments), MAX_ROWS_PER_CALL):
            rows = slice(start, start + MAX_ROWS_PER_CALL)
            answer = await runner.infer(entry.spec, {"pair": pairs[rows], "timestep": times[rows]})
            middles.extend(answer["middle"])
        out.extend(await asyncio.to_thread(lambda m=middles: [frame_pixels(x, height, width) for x in m]))
        out.append(second)
        if pair_done is not None:
            await pair_done(done, len(frames) - 1)
    return out
