"""Cheap previews of a generation in progress: latents mapped to colours by a linear fit, no VAE call per preview.

The map (latent channels -> RGB, plus an offset) is fitted once per replica from the model's own VAE decoder: random
latents are decoded through the engine, the images averaged down to the latent grid, and the colours regressed on
the latent values (least squares). Each preview is then one small matrix product and a PNG of the latent's size
(e.g. 16x16 for the embedded default, 128x128 for SDXL at 1024x1024): what is forming, not what it will look like.
"""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
from PIL import Image

FIT_SAMPLES = 8  # within the VAE decoder engine's largest batch
FIT_SIDE = 8  # latent side of the fitting samples
PREVIEW_EVERY = 5
"""Steps between previews (the last step always has one)."""


class LatentPreview:
    """Latents -> a small PNG (base64), with the colour map fitted on first use."""

    def __init__(self, decode, latent_channels: int, scale_factor: int) -> None:
        self._decode, self.channels, self.scale = decode, latent_channels, scale_factor
        self._map: np.ndarray | None = None
        self._lock = asyncio.Lock()

    async def _fit(self) -> np.ndarray:
        async with self._lock:
            if self._map is None:
                latents = np.random.default_rng(0).standard_normal(
                    (FIT_SAMPLES, self.channels, FIT_SIDE, FIT_SIDE), dtype=np.float32
                )
                images = np.clip(await self._decode(latents), 0.0, 1.0)  # N, 3, H, W
                n, c, h, w = images.shape
                pooled = images.reshape(n, c, FIT_SIDE, h // FIT_SIDE, FIT_SIDE, w // FIT_SIDE).mean(axis=(3, 5))
                x = np.concatenate([latents, np.ones((n, 1, FIT_SIDE, FIT_SIDE), np.float32)], axis=1)
                x = x.transpose(0, 2, 3, 1).reshape(-1, self.channels + 1)
                y = pooled.transpose(0, 2, 3, 1).reshape(-1, 3)
                self._map = np.linalg.lstsq(x, y, rcond=None)[0].astype(np.float32)
            return self._map

    async def png(self, latents: np.ndarray) -> str:
        """The first image's preview as base64 PNG (``latents``: N, C, h, w; a video's N, C, F, h, w: frame 0's)."""
        colour_map = await self._fit()
        first = (latents[0] if latents.ndim == 4 else latents[0, :, 0]).transpose(1, 2, 0)
        rgb = np.concatenate([first, np.ones((*first.shape[:2], 1), np.float32)], axis=2) @ colour_map
        buffer = io.BytesIO()
        Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()


def wants_preview(step: int, total: int) -> bool:
    """Whether step ``step`` of ``total`` carries a preview."""
    return step == total or step % PREVIEW_EVERY == 0
