"""LoRA adapters added, replaced and removed while the stack runs: ``POST``, ``PUT``, ``DELETE`` and ``GET /v1/loras``.

:class:`LoraCatalog` answers the routes (through the Gateway's :class:`serve.serving.adapters.Adapters`). An upload
is kept by its content in the registry folder (``files/<sha256>.safetensors``), read by diffusers against the model
it names (:func:`serve.adapters.lora_files.prepare_into`: a file that is not a LoRA for that model is a 400 naming
``file`` with diffusers' reason), prepared into the folder under its content key, and only then listed in the
stack's store, which every replica reads when a request names it
(:meth:`serve.adapters.requests.StackAdapters.resolve`). A request takes the weights of the moment it is resolved: a
``PUT`` gives the name a new key, so requests in flight finish on the old weights, whose prepared file stays.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from serve.adapters.lora import Slot
from serve.adapters.lora_files import AdapterError, prepare_into
from serve.adapters.registry import (
    ERROR,
    FOLDER,
    MAX_LORA_BYTES,
    MODEL_CONFIGS,
    NAME,
    READY,
    REGISTRY_FILE,
    UPLOAD,
    LoraEntry,
)
from serve.adapters.requests import StackAdapters
from serve.adapters.store import name_taken
from serve.errors import Conflict, InvalidInput, NotFound

logger = logging.getLogger(__name__)

UPLOADS = "files"  # <registry folder>/files/<sha256>.safetensors: the uploaded files, by content
_CHUNK = 1 << 20


@dataclass(frozen=True)
class LoraTarget:
    """A served model as an upload is read against: its name, its adapters and its LoRA-ready engines."""

    model: str
    adapters: StackAdapters
    engines_key: str
    pipeline_class: str
    slots: dict[str, list[Slot]]

    @property
    def folder(self) -> Path:
        """Its registry folder (where prepared adapters lie and engines load them)."""
        return Path(self.adapters.loras_dir)


def registry_folder(loras_dir: str, lora_ready: bool) -> Path:
    """``loras_dir`` as a model's LoRA registry folder, or a 400 naming ``loras_dir`` saying why it cannot be."""
    path = Path(loras_dir)
    if not lora_ready:
        why = "the engines are not LoRA-ready (`easel models add --loras DIR` builds them)"
        raise InvalidInput(f"loras_dir: {why}", "loras_dir")
    if not (path.is_absolute() and (path / REGISTRY_FILE).is_file()):
        raise InvalidInput(f"loras_dir: {loras_dir!r} is not an absolute path to a LoRA registry folder", "loras_dir")
    return path


def _keep_upload(upload: BinaryIO, folder: Path) -> tuple[Path, str, int]:
    """Copy ``upload`` into ``folder`` under its SHA-256: (path, hash, bytes); 400 naming ``file`` past the limit."""
    folder.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    partial = folder / f"upload-{time.time_ns()}.partial"
    try:
        with partial.open("wb") as out:
            while chunk := upload.read(_CHUNK):
                size += len(chunk)
                if size > MAX_LORA_BYTES:
                    raise InvalidInput(f"file: over the {MAX_LORA_BYTES >> 20} MiB a LoRA file may have", "file")
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise InvalidInput("file: empty (a .safetensors LoRA file is expected)", "file")
        kept = folder / f"{digest.hexdigest()}.safetensors"
        partial.replace(kept)
        return kept, digest.hexdigest(), size
    finally:
        partial.unlink(missing_ok=True)


class LoraCatalog:
    """The LoRA routes over the served models.

    ``targets(model)``: the served model an upload names (None: the default), or its 400; ``adapters()``: every
    served model's adapters (what is listed, changed and removed), the default first.
    """

    def __init__(
        self, targets: Callable[[str | None], LoraTarget], adapters: Callable[[], list[StackAdapters]]
    ) -> None:
        self.targets, self.adapters = targets, adapters

    def listing(self) -> dict:
        """``GET /v1/loras``: every model's adapters with their model, size, rank and status (or why not ready)."""
        return {"object": "list", "data": [entry for adapters in self.adapters() for entry in adapters.listing()]}

    async def add(self, name: str, model: str | None, upload: BinaryIO) -> dict:
        """``POST /v1/loras``: a new adapter, listed once diffusers has read it for ``model``."""
        target = self.targets(model)
        if not NAME.fullmatch(name):
            raise InvalidInput(f"name: {name!r} must match {NAME.pattern}", "name")
        if target.adapters.registry().get(name) is not None:
            raise name_taken(name)
        entry = await self._prepared(name, target, upload)
        await asyncio.to_thread(target.adapters.store().add_lora, entry)
        logger.info("LoRA %r added for model %s (key %s)", name, target.model, entry.key)
        return self._answer(entry)

    async def replace(self, name: str, upload: BinaryIO) -> dict:
        """``PUT /v1/loras/{name}``: new weights under the name; requests in flight finish on the old ones."""
        old = self._uploaded(name)
        target = self.targets(old.model)
        entry = await self._prepared(name, target, upload)
        if await asyncio.to_thread(target.adapters.store().replace_lora, entry) is None:
            raise NotFound(f"name: no LoRA adapter {name!r} (removed meanwhile)", "name")
        logger.info("LoRA %r replaced for model %s (key %s -> %s)", name, target.model, old.key, entry.key)
        return self._answer(entry)

    async def remove(self, name: str) -> dict:
        """``DELETE /v1/loras/{name}``: new requests naming it are 400s; those in flight finish."""
        old = self._uploaded(name)
        if await asyncio.to_thread(self.targets(old.model).adapters.store().remove_lora, name) is None:
            raise NotFound(f"name: no LoRA adapter {name!r}", "name")
        logger.info("LoRA %r removed", name)
        return {"id": name, "object": "lora", "deleted": True}

    def refresh(self) -> None:
        """Prepare again, from their kept files, the uploaded LoRAs of each model whose engines were built anew.

        A restart keeps the store's entries; an entry prepared for another engine folder (the model rebuilt, or
        built with other adapters) would not fit the engines' slots. Idempotent: every Gateway replica may run it.
        """
        for adapters in self.adapters():
            if adapters.loras_dir is not None:
                self._refresh(self.targets(adapters.model))

    def _refresh(self, target: LoraTarget) -> None:
        store = target.adapters.store()
        for entry in store.loras():
            if entry.model != target.model or entry.engines in (None, target.engines_key):
                continue
            kept = target.folder / UPLOADS / f"{entry.sha256}.safetensors"
            try:
                fresh = self._entry(entry.name, target, kept, entry.sha256)
            except (AdapterError, OSError) as error:
                fresh = dataclasses.replace(entry, status=ERROR, error=f"cannot be read for the engines now: {error}")
            store.replace_lora(dataclasses.replace(fresh, created_at=entry.created_at))
            logger.info("LoRA %r prepared again for engines %s: %s", entry.name, target.engines_key, fresh.status)

    def _uploaded(self, name: str) -> LoraEntry:
        """The uploaded adapter called ``name``: 404 for none, 409 for one of a ``--loras`` folder only."""
        entries = [entry for adapters in self.adapters() if (entry := adapters.registry().get(name)) is not None]
        uploaded = [entry for entry in entries if entry.source != FOLDER]
        if uploaded:
            return uploaded[0]
        if entries:
            raise Conflict(f"name: {name!r} is a file of a --loras folder (change the folder, then restart)", "name")
        raise NotFound(f"name: no LoRA adapter {name!r}", "name")

    async def _prepared(self, name: str, target: LoraTarget, upload: BinaryIO) -> LoraEntry:
        """``upload`` kept and read by diffusers for ``target`` (400 naming ``file`` with the reason if it cannot)."""
        path, sha256, _ = await asyncio.to_thread(_keep_upload, upload, target.folder / UPLOADS)
        try:
            return await asyncio.to_thread(self._entry, name, target, path, sha256)
        except AdapterError as error:
            path.unlink(missing_ok=True)  # no entry keeps a file diffusers cannot read
            raise InvalidInput(f"file: not a LoRA adapter for model {target.model}: {error}", "file") from None

    @staticmethod
    def _entry(name: str, target: LoraTarget, path: Path, sha256: str) -> LoraEntry:
        """The entry of the file at ``path``, prepared for ``target``'s engines (:class:`AdapterError` if it cannot)."""
        folder = target.folder
        prepared = prepare_into(
            path, folder, folder / MODEL_CONFIGS, target.pipeline_class, target.slots, target.engines_key
        )
        return LoraEntry(
            name,
            READY,
            None,
            prepared.rank,
            prepared.nbytes,
            prepared.layers,
            str(prepared.path),
            target.model,
            UPLOAD,
            sha256,
            time.time(),
            target.engines_key,
        )

    @staticmethod
    def _answer(entry: LoraEntry) -> dict:
        return {"id": entry.name, "object": "lora", **entry.public()}
