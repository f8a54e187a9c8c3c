"""The request side of adapters: what a stack offers and checks, and what a generation's adapters add to its calls.

:class:`StackAdapters` (the Gateway and the ``TextToImage`` replicas): the LoRA registry, the IP-Adapter, the 400s.
:class:`GenerationAdapters` (the loop): each job's LoRA rows and IP-Adapter rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.adapters.ip_adapter import IMAGE_EMBEDS, IMAGE_ENCODER, IP_SCALE, IpScales, image_processor
from serve.adapters.lora import ADAPTERS_INPUT, row_text
from serve.adapters.registry import READY, REGISTRY_FILE, LoraRegistry
from serve.adapters.support import AdapterSupport
from serve.errors import InvalidInput
from serve.triton.spec import ModelSpec


@dataclass(frozen=True)
class StackAdapters:
    """What a stack offers: its LoRA registry (the folder ``registry.json`` is in) and whether it has an IP-Adapter."""

    loras_dir: str | None = None
    ip_adapter: bool = False

    def registry(self) -> LoraRegistry:
        """The registry as written at start-up (re-read when the file changes)."""
        if self.loras_dir is None:
            return LoraRegistry({})
        path = Path(self.loras_dir) / REGISTRY_FILE
        stamp = path.stat().st_mtime_ns if path.exists() else 0
        cached = _REGISTRIES.get(self.loras_dir)
        if cached is None or cached[0] != stamp:
            cached = (stamp, LoraRegistry.load(Path(self.loras_dir)))
            _REGISTRIES[self.loras_dir] = cached
        return cached[1]

    def listing(self) -> list[dict]:
        """``GET /v1/loras``: every adapter of the folder, ready or with its error."""
        return [entry.public() for entry in self.registry().entries.values()]

    def check(self, request) -> None:
        """Refuse (400 naming the field) adapters this stack cannot apply to ``request``."""
        registry = self.registry()
        for index, lora in enumerate(request.loras):
            field = f"loras.{index}.name"
            if self.loras_dir is None:
                raise InvalidInput(f"{field}: this stack serves no LoRA adapters (start it with --loras DIR)", field)
            entry = registry.get(lora.name)
            if entry is None:
                known = ", ".join(sorted(n for n, e in registry.entries.items() if e.status == READY)) or "none"
                raise InvalidInput(f"{field}: unknown LoRA adapter {lora.name!r} (ready: {known})", field)
            if entry.status != READY:
                raise InvalidInput(f"{field}: LoRA adapter {lora.name!r} cannot be served: {entry.error}", field)
        if request.ip_adapter_image is not None and not self.ip_adapter:
            field = "ip_adapter_image"
            raise InvalidInput(f"{field}: this stack has no IP-Adapter (start it with --ip-adapter DIR)", field)

    def cache_tag(self, request) -> str:
        """What of the adapters' files shapes ``request``'s images (for the result cache's key)."""
        registry = self.registry()
        entries = [registry.get(lora.name) for lora in request.loras]
        return ",".join(f"{entry.name}={entry.prepared}" for entry in entries if entry is not None)


_REGISTRIES: dict[str, tuple[int, LoraRegistry]] = {}


class GenerationAdapters:
    """A pipeline's adapter inputs: a job's LoRA rows for the LoRA-ready engines, its IP-Adapter rows for the UNet."""

    def __init__(
        self,
        support: AdapterSupport,
        specs: Mapping[str, ModelSpec],
        unet_config: dict | None = None,
        feature_extractor: Path | None = None,
    ) -> None:
        """``unet_config`` and ``feature_extractor`` (folder): what an IP-Adapter's scales and references need."""
        self.support, self.specs = support, specs
        ip = support.ip_adapter
        self.ip_scales = IpScales(unet_config, ip.layers) if ip else None
        self.processor = image_processor(feature_extractor, ip.image_size) if ip else None
        self._negative: np.ndarray | None = None

    def row(self, job) -> tuple[str, str] | None:
        """The per-row input ``job``'s LoRAs add to the engines that take it (None: this model takes no LoRA)."""
        return (ADAPTERS_INPUT, row_text(job.adapters.loras)) if self.support.lora else None

    def scales(self, scale) -> np.ndarray:
        """The per-layer IP scales of ``scale`` (a number or InstantStyle's mapping; 400 if it does not fit)."""
        try:
            return self.ip_scales(scale)
        except ValueError as error:
            raise InvalidInput(f"ip_adapter_scale: {error}", "ip_adapter_scale") from error

    async def ip_rows(self, engines, job, guided: bool) -> dict[str, np.ndarray]:
        """``image_embeds`` and ``ip_scale`` rows ([negative, prompt] when guided), zeros for a job without a reference.

        As diffusers: the negative row's embeddings are zeros (for encoders read by their hidden states, the
        encoding of an all-zero image).
        """
        info = self.support.ip_adapter
        if info is None:
            return {}
        rows = 2 if guided else 1
        if job.adapters.ip_image is None:
            return {
                IMAGE_EMBEDS: np.zeros((rows, *info.embeds_shape), np.float32),
                IP_SCALE: np.zeros((rows, len(info.layers)), np.float32),
            }
        scales = self.scales(job.adapters.ip_scale)
        pixels = await asyncio.to_thread(self._pixels, job.adapters.ip_image)
        spec = self.specs[IMAGE_ENCODER]
        embeds = (await engines.infer(spec, {"pixel_values": pixels}))[IMAGE_EMBEDS][:, None]
        if guided:
            negative = (
                await self._negative_embeds(engines, spec, pixels) if info.hidden_states else np.zeros_like(embeds)
            )
            embeds = np.concatenate([negative, embeds])
        return {IMAGE_EMBEDS: embeds.astype(np.float32), IP_SCALE: np.repeat(scales[None], rows, axis=0)}

    def _pixels(self, image: np.ndarray) -> np.ndarray:
        from PIL import Image

        return self.processor(Image.fromarray(image), return_tensors="np").pixel_values.astype(np.float32)

    async def _negative_embeds(self, engines, spec: ModelSpec, pixels: np.ndarray) -> np.ndarray:
        if self._negative is None:
            zeros = np.zeros_like(pixels)
            self._negative = (await engines.infer(spec, {"pixel_values": zeros}))[IMAGE_EMBEDS][:, None]
        return self._negative
