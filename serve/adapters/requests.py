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

from serve.adapters import open_adapter_store
from serve.adapters.ip_adapter import (
    IMAGE_EMBEDS,
    IMAGE_ENCODER,
    IP_CLIP,
    IP_EMBEDS,
    IP_MASK,
    IP_MASKED,
    IP_REFERENCES,
    IP_SCALE,
    IpScales,
    face_lora,
    image_processor,
    level_sides,
    region_masks,
)
from serve.adapters.limits import LoraLimits
from serve.adapters.lora import ADAPTERS_INPUT, is_motion_unet, row_text
from serve.adapters.registry import READY, REGISTRY_FILE, LoraEntry, LoraRegistry
from serve.adapters.store import AdapterStore
from serve.adapters.support import AdapterSupport
from serve.errors import InvalidInput
from serve.stores import default_url
from serve.triton.spec import ModelSpec


@dataclass(frozen=True)
class StackAdapters:
    """What a served model offers: its LoRA registry folder, the store that lists uploaded LoRAs, its IP-Adapter.

    ``loras_dir``: the registry folder (``registry.json``, the prepared adapters); None: the engines are not
    LoRA-ready. ``store_url``: the stack's store, where uploaded LoRAs are listed (:mod:`serve.adapters.store`;
    None: the default store, :func:`serve.stores.default_url`). ``limits``: what an uploaded LoRA may be.

    Uploads are owned: each key sees and uses the shared set (the ``--loras`` folder's, an open API's uploads, those
    an admin shared) and its own, which may take a shared name (its own is the one it gets); another key's are as
    unknown as a name never uploaded.
    """

    loras_dir: str | None = None
    ip_adapter: bool = False
    store_url: str | None = None
    model: str | None = None  # the served model they are of (None: every model's uploads are listed)
    limits: LoraLimits = LoraLimits()

    def folder_registry(self) -> LoraRegistry:
        """The ``--loras`` folder's adapters, as written at start-up (read again when the file changes)."""
        if self.loras_dir is None:
            return LoraRegistry({})
        path = Path(self.loras_dir) / REGISTRY_FILE
        stamp = path.stat().st_mtime_ns if path.exists() else 0
        cached = _REGISTRIES.get(self.loras_dir)
        if cached is None or cached[0] != stamp:
            cached = (stamp, LoraRegistry.load(Path(self.loras_dir)))
            _REGISTRIES[self.loras_dir] = cached
        return cached[1]

    def uploads(self) -> list[LoraEntry]:
        """Every upload of the model, whoever owns it."""
        if self.loras_dir is None:
            return []
        return [e for e in self.store().loras() if self.model is None or e.model == self.model]

    def registry(self, owner: str | None = None) -> LoraRegistry:
        """Every adapter ``owner`` (a key's id; None: an open API) may use now: the shared set, then its own."""
        folder = self.folder_registry()
        uploads = self.uploads()
        shared = {e.name: e for e in uploads if e.owner is None}
        own = {e.name: e for e in uploads if owner is not None and e.owner == owner}
        return LoraRegistry({**shared, **folder.entries, **own}, folder.resident)

    def store(self) -> AdapterStore:
        """The stack's adapter store (opened once per process)."""
        url = self.store_url or default_url()
        if url not in _STORES:
            _STORES[url] = open_adapter_store(url)
        return _STORES[url]

    def listing(self, owner: str | None = None, everyone: bool = False) -> list[dict]:
        """``GET /v1/loras``: the adapters ``owner`` may use (``everyone``'s, with their owners: an admin's view)."""
        if everyone:
            entries = [*self.folder_registry().entries.values(), *self.uploads()]
        else:
            entries = list(self.registry(owner).entries.values())
        return [entry.public(everyone) | {"model": entry.model or self.model} for entry in entries]

    def check(self, request, owner: str | None = None) -> tuple[LoraEntry, ...]:
        """Refuse (400 naming the field) adapters this stack cannot apply to ``request``; its LoRAs' entries."""
        chosen = self.chosen(request, owner)
        field = next(iter(_ip_fields(request)), None)
        if field is not None and not self.ip_adapter:
            why = f"model {self.model} has no IP-Adapter (start the stack with --ip-adapter {self.model}:NAME=DIR)"
            raise InvalidInput(f"{field}: {why}", field)
        return chosen

    def resolve(self, request, owner: str | None = None) -> tuple[tuple[str, float], ...]:
        """``request``'s LoRAs as the engines take them: (content key, weight), the weights of this moment.

        A request resolved before a ``PUT`` keeps the old weights to its end; one after it gets the new ones.
        """
        return lora_rows(self.chosen(request, owner), request)

    def shipped(self, request) -> tuple[LoraEntry, ...]:
        """The LoRA ``request``'s identity is drawn with at 1: its FaceID's (as ``load_ip_adapter`` loads it)."""
        identity = getattr(request, "identity", None)
        entry = identity and identity.adapter and self.folder_registry().get(face_lora(identity.adapter))
        return (entry,) if entry and entry.status == READY else ()

    def chosen(self, request, owner: str | None = None) -> tuple[LoraEntry, ...]:
        """The entries of ``request``'s LoRAs as ``owner`` sees them (a 400 naming the field for one it cannot use)."""
        if not request.loras:
            return ()
        registry = self.registry(owner)
        chosen = []
        for index, lora in enumerate(request.loras):
            field = f"loras.{index}.name"
            if self.loras_dir is None:
                why = f"model {self.model} takes no LoRA adapters (start the stack with --loras {self.model}=DIR)"
                raise InvalidInput(f"{field}: {why}", field)
            entry = registry.get(lora.name)
            if entry is None:
                known = ", ".join(sorted(n for n, e in registry.entries.items() if e.status == READY)) or "none"
                why = f"unknown LoRA adapter {lora.name!r} for model {self.model} (ready: {known})"
                raise InvalidInput(f"{field}: {why}", field)
            if entry.status != READY:
                raise InvalidInput(f"{field}: LoRA adapter {lora.name!r} cannot be served: {entry.error}", field)
            motion_only = entry.layers and all(map(is_motion_unet, entry.layers))
            if motion_only and not getattr(request, "motion_adapter", None):
                raise InvalidInput(
                    f"{field}: {lora.name!r} is a motion LoRA (its layers are AnimateDiff's motion "
                    "modules'): only videos (POST /v1/videos) take it",
                    field,
                )
            chosen.append(entry)
        return tuple(chosen)

    def stored_embeds(self, reference_id: str, field: str) -> np.ndarray:
        """The embeddings of stored reference ``reference_id``; a 400 naming ``field`` if it is gone."""
        stored = self.store().reference(reference_id)
        if stored is None:
            raise unknown_reference(reference_id, field)
        return stored.embeds


def lora_rows(chosen: tuple[LoraEntry, ...], request) -> tuple[tuple[str, float], ...]:
    """The engines' rows of ``request``'s LoRAs (``chosen``: their entries): (content key, weight)."""
    return tuple((entry.key, lora.scale) for entry, lora in zip(chosen, request.loras, strict=True))


def _ip_fields(request) -> list[str]:
    """The fields that bring ``request``'s IP-Adapter references (either spelling)."""
    shorthand = [name for name in ("ip_adapter_image", "ip_adapter_reference") if getattr(request, name) is not None]
    return shorthand + [f"ip_adapters.{index}.name" for index in range(len(request.ip_adapters))]


def unknown_reference(reference_id: str, field: str = "ip_adapter_reference") -> InvalidInput:
    """The 400 for a stored reference that does not exist, or is another key's (the same answer for both)."""
    return InvalidInput(f"{field}: no stored reference {reference_id!r} (POST /v1/references stores one)", field)


_REGISTRIES: dict[str, tuple[int, LoraRegistry]] = {}
_STORES: dict[str, AdapterStore] = {}


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

    def scales(self, scale, field: str = "ip_adapter_scale") -> np.ndarray:
        """The per-layer IP scales of ``scale`` (a number or InstantStyle's mapping; a 400 naming ``field``)."""
        try:
            return self.ip_scales(scale)
        except ValueError as error:
            raise InvalidInput(f"{field}: {error}", field) from error

    async def ip_rows(self, engines, job, guided: bool, latent: tuple[int, int]) -> dict[str, np.ndarray]:
        """The UNet's IP inputs for ``job`` ([negative, prompt] rows when guided; ``latent``: its latent's sides).

        Each adapter's references fill its ``ip_embeds_i`` rows from the first (the rest padding, weighed out by
        ``ip_references``); an adapter the job does not use has scale 0. As diffusers: the negative row's
        embeddings are zeros (for encoders read by their hidden states, the encoding of an all-zero image), and its
        scales and masks are the prompt row's.
        """
        info = self.support.ip_adapter
        if info is None:
            return {}
        rows, adapters, count = 2 if guided else 1, len(info.names), info.references
        embeds = [np.zeros((rows, count, *shape), np.float32) for shape in info.embeds_shapes]
        states = {a: np.zeros((rows, count, *info.encoder_output), np.float32) for a in info.face_states}
        scale = np.zeros((adapters, len(info.layers)), np.float32)
        present, masked = np.zeros((adapters, count), np.float32), np.zeros(adapters, np.float32)
        sides = level_sides(*latent, info.mask_levels)
        masks = {level: np.zeros((adapters, count, h, w), np.float32) for level, (h, w) in sides.items()}
        for ip in job.adapters.ip:
            a = ip.adapter
            encoded = [await self.encode(engines, image) for image in ip.images]
            if a in states:  # a FaceID Plus: its images are the aligned faces, read by the encoder's states
                faces = np.concatenate([np.reshape(e, (-1, *info.encoder_output)) for e in encoded])
                states[a][-1, : len(faces)] = faces
                if guided:
                    states[a][0, : len(faces)] = (await self._negative_embeds(engines)).reshape(info.encoder_output)
                encoded = []
            given = np.concatenate([np.reshape(e, (-1, *info.embeds_shapes[a])) for e in (*encoded, *ip.embeds)])
            embeds[a][-1, : len(given)] = given
            if guided and info.hidden_states and not info.reads_faces(a):  # a FaceID's negative: zeros
                embeds[a][0, : len(given)] = (await self._negative_embeds(engines)).reshape(info.embeds_shapes[a])
            scale[a], present[a, : len(given)] = self.scales(ip.scale), 1.0
            if ip.masks is not None:
                masked[a] = 1.0
                for level, grid in region_masks(ip.masks, sides).items():
                    masks[level][a, : len(grid)] = grid
        feeds = {IP_EMBEDS.format(a): rows_of for a, rows_of in enumerate(embeds)}
        feeds |= {IP_CLIP.format(a): rows_of for a, rows_of in states.items()}
        per_row = {IP_SCALE: scale, IP_REFERENCES: present, IP_MASKED: masked}
        per_row |= {IP_MASK.format(level): grid for level, grid in masks.items()}
        return feeds | {name: np.repeat(value[None], rows, axis=0) for name, value in per_row.items()}

    async def encode(self, engines, image: np.ndarray) -> np.ndarray:
        """A reference's image embeddings ``[1, 1, *embeds_shape]``: preprocessed as the pipeline does, then encoded."""
        if self.support.ip_adapter is None or self.support.ip_adapter.encoder_shape is None:
            raise InvalidInput("image: this model has no IP-Adapter that reads images (--ip-adapter DIR)", "image")
        pixels = await asyncio.to_thread(self._pixels, image)
        return (await engines.infer(self.specs[IMAGE_ENCODER], {"pixel_values": pixels}))[IMAGE_EMBEDS][:, None]

    def _pixels(self, image: np.ndarray) -> np.ndarray:
        from PIL import Image

        return self.processor(Image.fromarray(image), return_tensors="np").pixel_values.astype(np.float32)

    async def _negative_embeds(self, engines) -> np.ndarray:
        """The encoding of an all-zero image (encoders read by their hidden states), once per pipeline."""
        if self._negative is None:
            size = self.support.ip_adapter.image_size
            zeros = np.zeros((1, 3, size, size), np.float32)
            self._negative = (await engines.infer(self.specs[IMAGE_ENCODER], {"pixel_values": zeros}))[IMAGE_EMBEDS][
                :, None
            ]
        return self._negative
