"""The stack's upscalers: each ``--upscaler NAME=FILE`` ready (its engine built) or listed with why not.

An upscaler's engine ``upscaler_<NAME>`` takes fixed tiles (:data:`TILE` input pixels a side, batched) and gives
them ``scale`` times larger; :mod:`serve.finishing.tiles` cuts an image into them. ``upscalers.json`` in the
upscalers' engine folder is what the build recognised; a request naming one that is not ready is a 400.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from serve.errors import InvalidInput
from serve.faces.pack import Faces
from serve.finishing.interpolators import Interpolators
from serve.finishing.restorers import Restorers
from serve.finishing.tiles import Tiling
from serve.listing import READY, FileEntry, Kind, Listing
from serve.triton.spec import DynamicBatching, EngineRunner, ModelSpec, TensorSpec

UPSCALER_PREFIX = "upscaler_"
TILE = 128
"""Input pixels a side of every tile (the engine's one input shape: tiles of any request batch together)."""
OVERLAP = 16
"""Input pixels neighbouring tiles share (tiled against whole-image: > 60 dB PSNR on random RRDBNet weights)."""
MAX_TILES_PER_CALL = 8


def upscaler_spec(name: str, scale: int, tile: int = TILE) -> ModelSpec:
    """The Triton model of upscaler ``name``: ``image`` tiles in, ``upscaled`` tiles out, batched across requests."""
    return ModelSpec(
        name=f"{UPSCALER_PREFIX}{name}",
        inputs=(TensorSpec("image", "float32", (3, tile, tile)),),
        outputs=(TensorSpec("upscaled", "float32", (3, tile * scale, tile * scale)),),
        max_batch_size=MAX_TILES_PER_CALL,
        dynamic_batching=DynamicBatching(max_queue_delay_us=2000),
    )


@dataclass(frozen=True)
class UpscalerEntry(FileEntry):
    """One ``--upscaler NAME=FILE``: ready with its architecture and scale, or the error that keeps it out."""

    scale: int | None = None
    tile: int = TILE

    def public(self) -> dict:
        """Its ``GET /v1/upscalers`` entry."""
        return super().public() | {"scale": self.scale}

    @property
    def spec(self) -> ModelSpec:
        """Its engine's Triton model (ready entries only)."""
        return upscaler_spec(self.name, self.scale, self.tile)

    @property
    def tiling(self) -> Tiling:
        """How an image is cut for its engine."""
        return Tiling(self.tile, OVERLAP, self.scale, MAX_TILES_PER_CALL)


@dataclass(frozen=True)
class Upscalers(Listing):
    """The finishing engines a stack was started with (ready or refused with why): listed, checked, their engines.

    Its upscalers, and the face restorers, frame interpolators and face models built into the same folder.
    """

    KIND = Kind("upscalers.json", UpscalerEntry, "upscaler", "--upscaler")

    entries: tuple[UpscalerEntry, ...] = ()
    restorers: Restorers = field(default_factory=Restorers)
    interpolators: Interpolators = field(default_factory=Interpolators)
    faces: Faces = field(default_factory=Faces)

    @classmethod
    def read(cls, folder: Path | str | None) -> Upscalers:
        """The finishing engines built into ``folder`` (None or a folder without the upscalers' listing: none)."""
        upscalers = super().read(folder)
        if not folder or not (Path(folder) / cls.KIND.file).is_file():  # written last: the build's end
            return upscalers
        others = {"restorers": Restorers, "interpolators": Interpolators, "faces": Faces}
        return replace(upscalers, **{name: listing.read(folder) for name, listing in others.items()})

    def write(self, folder: Path) -> None:
        """Save the listings in ``folder`` (the build does, beside the engines; the upscalers' last)."""
        self.restorers.write(folder)
        self.interpolators.write(folder)
        self.faces.write(folder)
        super().write(folder)

    @property
    def specs(self) -> list[ModelSpec]:
        """The Triton models of every ready upscaler, face restorer, frame interpolator and face model."""
        finishing = [entry.spec for entry in (*self.ready, *self.restorers.ready, *self.interpolators.ready)]
        return finishing + self.faces.specs

    @property
    def any_ready(self) -> bool:
        """Whether any of its engines is ready (else nothing here runs on Triton)."""
        return bool(self.specs)

    def choose(self, name: str, scale: float | None, field: str = "upscaler") -> tuple[UpscalerEntry, float]:
        """The ready upscaler ``name`` and the scale asked (its own when None); a 400 naming the field otherwise."""
        entry = next((e for e in self.entries if e.name == name), None)
        if entry is None:
            ready = ", ".join(e.name for e in self.ready) or "none: start the stack with --upscaler NAME=FILE"
            raise InvalidInput(f"{field}: unknown upscaler {name!r} (ready: {ready})", field)
        if entry.status != READY:
            raise InvalidInput(f"{field}: upscaler {name!r} cannot be served: {entry.error}", field)
        scale_field = field.rpartition(".")[0] + ".scale" if "." in field else "scale"
        scale = float(entry.scale if scale is None else scale)
        if not 1 <= scale <= entry.scale:
            raise InvalidInput(f"{scale_field}: {scale:g} is outside [1, {entry.scale}] for {name!r}", scale_field)
        return entry, scale


MAX_OUTPUT_PIXELS = 4096 * 4096
"""The most pixels an upscale may give (a 1024x1024 image at x4); over it is a 400 naming ``scale``."""


def output_size(width: int, height: int, scale: float, field: str = "scale", why: str = "") -> tuple[int, int]:
    """The size ``scale`` makes of ``width`` x ``height``; a 400 naming ``field`` (and ``why``) past the bound."""
    size = (round(width * scale), round(height * scale))
    if size[0] * size[1] > MAX_OUTPUT_PIXELS:
        raise InvalidInput(
            f"{field}: {width}x{height} at x{scale:g}{why} is {size[0]}x{size[1]}, over {MAX_OUTPUT_PIXELS} pixels "
            f"({MAX_OUTPUT_PIXELS / 1e6:.1f} megapixels)",
            field,
        )
    return size


def engine_size(width: int, height: int, engine_scale: int, field: str) -> tuple[int, int]:
    """The size an engine of ``engine_scale`` makes: what it runs, whatever the scale asked (:func:`output_size`)."""
    return output_size(width, height, engine_scale, field, " (the engine's own scale; a lower one is resized after)")


async def upscale_pixels(pixels: np.ndarray, entry: UpscalerEntry, scale: float, runner: EngineRunner) -> np.ndarray:
    """RGB ``uint8`` ``pixels`` (H x W x 3) upscaled by ``entry``'s engine through ``runner``, to ``scale``.

    The engine upscales by its own scale, tile by tile; a lower ``scale`` resizes its output down (Lanczos).
    """
    height, width = pixels.shape[:2]
    target = output_size(width, height, scale)
    spec = entry.spec

    async def run(tiles: np.ndarray) -> np.ndarray:
        return (await runner.infer(spec, {"image": tiles}))["upscaled"]

    def to_pixels(upscaled: np.ndarray) -> np.ndarray:  # whole-image array work: in a thread, off the event loop
        out = (np.clip(upscaled, 0.0, 1.0) * 255.0).round().astype(np.uint8).transpose(1, 2, 0)
        if (out.shape[1], out.shape[0]) == target:
            return out
        return np.asarray(Image.fromarray(out).resize(target, Image.Resampling.LANCZOS), dtype=np.uint8)

    image = await asyncio.to_thread(lambda: np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32) / 255)
    return await asyncio.to_thread(to_pixels, await entry.tiling.upscale(image, run))
