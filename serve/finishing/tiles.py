"""An upscale run tile by tile: fixed-size tiles with overlap, feathered into one image.

Every tile has the engine's one input side (:attr:`Tiling.tile`), so the tiles of any image, and of concurrent
requests, batch together in Triton, and memory follows the tile, not the image. Tiles overlap by
:attr:`Tiling.overlap` input pixels; in the overlap each tile's weight ramps from nothing at its inner edge (where a
convolution saw padding, not the image) up to full, and the weighted tiles are summed and normalised. The last tile
of a row or column is moved back inside the image rather than padded; an image smaller than a tile is padded by
reflection and cropped after.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

TileRunner = Callable[[np.ndarray], Awaitable[np.ndarray]]
"""Upscales a batch of NCHW float32 tiles in ``[0, 1]`` (``n x 3 x tile x tile``) to ``n x 3 x tile*s x tile*s``."""


@dataclass(frozen=True)
class Tiling:
    """How an engine's upscale is cut: ``tile`` input pixels a side, ``overlap`` shared by neighbours, ``scale``."""

    tile: int
    overlap: int
    scale: int
    rows_per_call: int = 4

    def starts(self, size: int) -> list[int]:
        """Where the tiles along a side of ``size`` input pixels start (the last one ends at the side's end)."""
        if size <= self.tile:
            return [0]
        step = self.tile - self.overlap
        return [*range(0, size - self.tile, step), size - self.tile]

    def count(self, height: int, width: int) -> int:
        """The tiles of an image of this size."""
        return len(self.starts(height)) * len(self.starts(width))

    def _ramp(self, length: int, inner_start: bool, inner_end: bool) -> np.ndarray:
        """Weights along one side of an output tile: ramps where it overlaps a neighbour, 1 elsewhere."""
        weights = np.ones(length, np.float32)
        feather = self.overlap * self.scale
        if feather == 0:
            return weights
        ramp = (np.arange(feather, dtype=np.float32) + 0.5) / feather
        ramp = np.clip(2 * ramp - 0.5, 1e-3, 1.0)  # the outer quarter: almost nothing; the middle half ramps up
        if inner_start:
            weights[:feather] = ramp
        if inner_end:
            weights[-feather:] = np.minimum(weights[-feather:], ramp[::-1])
        return weights

    async def upscale(self, image: np.ndarray, run: TileRunner) -> np.ndarray:
        """``image`` (3 x H x W float32 in ``[0, 1]``) upscaled ``scale`` times through ``run``, tile by tile."""
        _, height, width = image.shape
        padded = np.pad(
            image,
            ((0, 0), (0, max(0, self.tile - height)), (0, max(0, self.tile - width))),
            mode="reflect" if min(height, width) > 1 else "edge",
        )
        rows, columns = self.starts(padded.shape[1]), self.starts(padded.shape[2])
        places = [(top, left) for top in rows for left in columns]
        side = self.tile * self.scale
        total = np.zeros((3, padded.shape[1] * self.scale, padded.shape[2] * self.scale), np.float32)
        weight = np.zeros(total.shape[1:], np.float32)
        for first in range(0, len(places), self.rows_per_call):
            batch = places[first : first + self.rows_per_call]
            tiles = np.stack([padded[:, top : top + self.tile, left : left + self.tile] for top, left in batch])
            outputs = await run(np.ascontiguousarray(tiles, dtype=np.float32))
            for (top, left), output in zip(batch, outputs, strict=True):
                along_y = self._ramp(side, top > 0, top < rows[-1])
                along_x = self._ramp(side, left > 0, left < columns[-1])
                mask = along_y[:, None] * along_x[None, :]
                y, x = top * self.scale, left * self.scale
                total[:, y : y + side, x : x + side] += output * mask
                weight[y : y + side, x : x + side] += mask
        upscaled = total / weight
        return upscaled[:, : height * self.scale, : width * self.scale]
