"""Tiled VAE decoding, exactly as diffusers' ``AutoencoderKL.tiled_decode`` (``enable_vae_tiling``) does it.

A latent too large for the VAE decoder in the activation memory is decoded in overlapping tiles: of the VAE's own
sample size (diffusers' default), or of a half or a quarter of it when a default tile does not fit either (diffusers
takes the same smaller tiles when its ``tile_sample_min_size`` is set so). Each tile's top and left edges are blended
linearly with the tiles above and to its left (which were blended themselves), and the tiles are cropped and joined.
Every tile is one engine call, so memory follows the tile, not the image.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

OVERLAP = 0.25
"""diffusers' ``tile_overlap_factor``."""
MIN_LATENT_TILE = 16
"""The smallest tile side tried, in latent positions (128 pixels for an 8x VAE)."""


@dataclass(frozen=True)
class VaeTiling:
    """Tile sizes of one VAE: ``sample_tile`` pixels (its config's sample size), ``latent_tile`` latent positions."""

    sample_tile: int
    vae_scale_factor: int

    @property
    def latent_tile(self) -> int:
        """Tile side in latent positions (diffusers' ``tile_latent_min_size``)."""
        return int(self.sample_tile / self.vae_scale_factor)

    def halved(self) -> VaeTiling | None:
        """Tiles of half this side, or None below :data:`MIN_LATENT_TILE`."""
        half = VaeTiling(self.sample_tile // 2, self.vae_scale_factor)
        return half if half.latent_tile >= MIN_LATENT_TILE else None

    def tile_positions(self, latent_height: int, latent_width: int) -> int:
        """Latent positions of the largest tile of a latent of this size."""
        return min(latent_height, self.latent_tile) * min(latent_width, self.latent_tile)

    def applies(self, latent_height: int, latent_width: int) -> bool:
        """Whether diffusers would tile this latent (it does when a side exceeds the tile)."""
        return latent_height > self.latent_tile or latent_width > self.latent_tile

    async def decode(
        self, latents: np.ndarray, decode_tile: Callable[[np.ndarray], Awaitable[np.ndarray]]
    ) -> np.ndarray:
        """Decode NCHW ``latents`` tile by tile with ``decode_tile`` and blend the tiles into NCHW images."""
        overlap = int(self.latent_tile * (1 - OVERLAP))
        blend = int(self.sample_tile * OVERLAP)
        limit = self.sample_tile - blend
        rows = []
        for i in range(0, latents.shape[2], overlap):
            row = []
            for j in range(0, latents.shape[3], overlap):
                tile = latents[:, :, i : i + self.latent_tile, j : j + self.latent_tile]
                row.append(np.array(await decode_tile(np.ascontiguousarray(tile)), dtype=np.float32))
            rows.append(row)
        joined = []
        for i, row in enumerate(rows):
            parts = []
            for j, tile in enumerate(row):
                if i > 0:
                    _blend_rows(rows[i - 1][j], tile, blend)
                if j > 0:
                    _blend_columns(row[j - 1], tile, blend)
                parts.append(tile[:, :, :limit, :limit])
            joined.append(np.concatenate(parts, axis=3))
        return np.concatenate(joined, axis=2)


def _blend_rows(above: np.ndarray, tile: np.ndarray, extent: int) -> None:
    """The vertical blend of diffusers' ``blend_v``, in place on ``tile``."""
    extent = min(above.shape[2], tile.shape[2], extent)
    for y in range(extent):
        tile[:, :, y, :] = above[:, :, -extent + y, :] * (1 - y / extent) + tile[:, :, y, :] * (y / extent)


def _blend_columns(left: np.ndarray, tile: np.ndarray, extent: int) -> None:
    """The horizontal blend of diffusers' ``blend_h``, in place on ``tile``."""
    extent = min(left.shape[3], tile.shape[3], extent)
    for x in range(extent):
        tile[:, :, :, x] = left[:, :, :, -extent + x] * (1 - x / extent) + tile[:, :, :, x] * (x / extent)
