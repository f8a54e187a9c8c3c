"""LoRA adapters added, replaced and removed while the stack runs: ``POST``, ``PUT``, ``DELETE`` and ``GET /v1/loras``.

:class:`LoraCatalog` answers the routes (through the Gateway's :class:`serve.serving.adapters.Adapters`). An upload
is kept by its content in the registry folder (``files/<sha256>.safetensors``), read by diffusers against the model
it names (:func:`serve.adapters.lora_files.prepare_into`: a file that is not a LoRA for that model is a 400 naming
``file`` with diffusers' reason), prepared into the folder under its content key, and only then listed in the
stack's store, which the Gateway reads when a request names it (:meth:`serve.adapters.requests.StackAdapters.chosen`,
as the request's key sees them). A request takes the weights of the moment it is admitted: a ``PUT`` gives the name
a new key, so requests in flight finish on the old weights, whose files stay ``--lora-files-kept-s`` once no entry
names them, then go (:meth:`LoraCatalog.sweep`): upload and replace cycles do not grow the disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from serve.adapters.lora import Slot
from serve.adapters.lora_files import AdapterError, prepare_into
from serve.adapters.registry import (
    ERROR,
    KEY,
    MAX_LORA_BYTES,
    MODEL_CONFIGS,
    NAME,
    PRIVATE,
    READY,
    REGISTRY_FILE,
    SHARED,
    UPLOAD,
    LoraEntry,
)
from serve.adapters.requests import StackAdapters
from serve.adapters.store import name_taken
from serve.errors import Conflict, Forbidden, InvalidInput, NotFound

logger = logging.getLogger(__name__)

UPLOADS = "files"  # <registry folder>/files/<sha256>.safetensors: the uploaded files, by content
_SHA256 = re.compile(r"[0-9a-f]{64}")
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


@dataclass(frozen=True)
class Caller:
    """Who calls the LoRA routes: its key's id (None: the API is open), and whether that key is an admin's."""

    key: str | None = None
    admin: bool = False

    def owner_for(self, visibility: str) -> str | None:
        """The owner of what it uploads as ``visibility``: its key's (``private``), the shared set's (None).

        An open API's uploads are the shared set's; only an admin key puts one there (403 naming ``visibility``).
        """
        if self.key is None:
            return None
        if visibility == SHARED and not self.admin:
            raise Forbidden("visibility: only an admin key shares a LoRA (or uploads to the shared set)", "visibility")
        return None if visibility == SHARED else self.key


class LoraCatalog:
    """The LoRA routes over the served models, each upload its key's (:class:`Caller`).

    ``targets(model)``: the served model an upload names (None: the default), or its 400; ``adapters()``: every
    served model's adapters (what is listed, changed and removed), the default first. Another key's private LoRA
    is, for every verb, as unknown as a name never uploaded (the same 404 or 400).
    """

    def __init__(
        self, targets: Callable[[str | None], LoraTarget], adapters: Callable[[], list[StackAdapters]]
    ) -> None:
        self.targets, self.adapters = targets, adapters

    def listing(self, caller: Caller = Caller()) -> dict:
        """``GET /v1/loras``: the adapters ``caller`` may use (an admin: every key's, with their owners)."""
        data = [entry for adapters in self.adapters() for entry in adapters.listing(caller.key, caller.admin)]
        return {"object": "list", "data": data}

    async def add(
        self, name: str, model: str | None, upload: BinaryIO, caller: Caller = Caller(), visibility: str = PRIVATE
    ) -> dict:
        """``POST /v1/loras``: a new adapter of ``caller`` (or the shared set's), once diffusers has read it."""
        owner = caller.owner_for(visibility)
        target = self.targets(model)
        if not NAME.fullmatch(name):
            raise InvalidInput(f"name: {name!r} must match {NAME.pattern}", "name")
        if self._taken(target, name, owner):
            raise name_taken(name)
        entry = await self._prepared(name, target, upload, owner)
        await asyncio.to_thread(target.adapters.store().add_lora, entry)
        logger.info("LoRA %r added for model %s (key %s, owner %s)", name, target.model, entry.key, owner)
        return self._answer(entry)

    async def replace(
        self,
        name: str,
        upload: BinaryIO | None,
        caller: Caller = Caller(),
        visibility: str | None = None,
        owner: str | None = None,
    ) -> dict:
        """``PUT /v1/loras/{name}``: new weights, or another visibility (``shared``: an admin's to give).

        Requests in flight finish on the old weights. ``owner``: the key whose LoRA an admin changes.
        """
        if upload is None and visibility is None:
            raise InvalidInput("file: a PUT gives new weights (file), a visibility, or both", "file")
        old = await asyncio.to_thread(self._changeable, name, caller, owner)
        target = self.targets(old.model)
        new_owner = old.owner if visibility is None else caller.owner_for(visibility)
        if upload is not None:
            entry = await self._prepared(name, target, upload, new_owner)
        else:
            entry = dataclasses.replace(old, owner=new_owner)
        store = target.adapters.store()
        if new_owner == old.owner:
            if await asyncio.to_thread(store.replace_lora, entry) is None:
                raise NotFound(f"name: no LoRA adapter {name!r} (removed meanwhile)", "name")
        else:  # shared or made private: kept under its new owner's name
            if self._taken(target, name, new_owner):
                raise name_taken(name)
            await asyncio.to_thread(store.add_lora, entry)
            await asyncio.to_thread(store.remove_lora, name, old.owner)
        logger.info("LoRA %r replaced for model %s (key %s -> %s)", name, target.model, old.key, entry.key)
        await asyncio.to_thread(self._retired, target, old)
        return self._answer(entry)

    async def remove(self, name: str, caller: Caller = Caller(), owner: str | None = None) -> dict:
        """``DELETE /v1/loras/{name}``: new requests naming it are 400s; those in flight finish."""
        old = await asyncio.to_thread(self._changeable, name, caller, owner)
        target = self.targets(old.model)
        if await asyncio.to_thread(target.adapters.store().remove_lora, name, old.owner) is None:
            raise NotFound(f"name: no LoRA adapter {name!r}", "name")
        logger.info("LoRA %r removed (owner %s)", name, old.owner)
        await asyncio.to_thread(self._retired, target, old)
        return {"id": name, "object": "lora", "deleted": True}

    def refresh(self) -> None:
        """Prepare again, from their kept files, the uploaded LoRAs of each model whose engines were built anew.

        A restart keeps the store's entries; an entry prepared for another engine folder (the model rebuilt, or
        built with other adapters) would not fit the engines' slots. Idempotent: every Gateway replica may run it.
        Files no entry names any more are swept (:meth:`sweep`).
        """
        for adapters in self.adapters():
            if adapters.loras_dir is not None:
                target = self.targets(adapters.model)
                self._refresh(target)
                self.sweep(target)

    def _refresh(self, target: LoraTarget) -> None:
        store = target.adapters.store()
        for entry in store.loras():
            if entry.model != target.model or entry.engines in (None, target.engines_key):
                continue
            kept = target.folder / UPLOADS / f"{entry.sha256}.safetensors"
            try:
                fresh = self._entry(entry.name, target, kept, entry.sha256, entry.owner)
            except (AdapterError, OSError) as error:
                fresh = dataclasses.replace(entry, status=ERROR, error=f"cannot be read for the engines now: {error}")
            store.replace_lora(dataclasses.replace(fresh, created_at=entry.created_at))
            logger.info("LoRA %r prepared again for engines %s: %s", entry.name, target.engines_key, fresh.status)

    def sweep(self, target: LoraTarget) -> list[Path]:
        """Remove the files of ``target``'s folder no entry names, untouched for ``files_kept_s``; the paths removed.

        Prepared adapters (``<key>.safetensors`` and their ``.json``) and uploaded files (``files/<sha256>``) alike;
        a file is touched when prepared, reused or retired (:meth:`_retired`), so requests that resolved a replaced
        or removed LoRA finish on its files.
        """
        entries = [*target.adapters.store().loras(), *target.adapters.folder_registry().entries.values()]
        named = {entry.key for entry in entries} | {entry.sha256 for entry in entries}
        cutoff = time.time() - target.adapters.limits.files_kept_s
        removed = []
        for path in [*target.folder.glob("*.safetensors"), *(target.folder / UPLOADS).glob("*.safetensors")]:
            if path.stem in named or not (KEY.fullmatch(path.stem) or _SHA256.fullmatch(path.stem)):
                continue
            try:
                if path.stat().st_mtime > cutoff:
                    continue
                path.unlink()
            except FileNotFoundError:  # another replica's sweep took it
                continue
            path.with_suffix(".json").unlink(missing_ok=True)
            removed.append(path)
        if removed:
            logger.info("LoRA files no entry names removed from %s: %d", target.folder, len(removed))
        return removed

    def _retired(self, target: LoraTarget, old: LoraEntry) -> None:
        """``old``'s files touched (their wait starts now: requests that resolved it finish on them), then a sweep."""
        for path in (Path(old.prepared or ""), target.folder / UPLOADS / f"{old.sha256}.safetensors"):
            if path.is_file():
                os.utime(path)
        self.sweep(target)

    def _taken(self, target: LoraTarget, name: str, owner: str | None) -> bool:
        """Whether ``owner`` (None: the shared set, with the ``--loras`` folder's) has a LoRA called ``name``."""
        if owner is None and target.adapters.folder_registry().get(name) is not None:
            return True
        return target.adapters.store().lora(name, owner) is not None

    def _changeable(self, name: str, caller: Caller, owner: str | None) -> LoraEntry:
        """The upload ``caller`` changes by ``name``: its own, else (an admin, an open API) the shared set's.

        ``owner``: an admin naming another key's. Another key's private LoRA is a 404 as for a name never uploaded;
        a ``--loras`` folder's is a 409; a shared upload, for a key that is not an admin's, a 403.
        """
        if owner is not None and not caller.admin:
            raise Forbidden("owner: only an admin key names another key's LoRA", "owner")
        served = [adapters for adapters in self.adapters() if adapters.loras_dir is not None]
        models = {adapters.model for adapters in served}

        def found(who: str | None) -> LoraEntry | None:
            entry = served[0].store().lora(name, who) if served else None
            return entry if entry is not None and entry.model in models else None

        mine = owner or caller.key
        if mine is not None and (entry := found(mine)) is not None:
            return entry
        if owner is None:
            shared = found(None)
            if shared is not None and (caller.key is None or caller.admin):
                return shared
            if shared is not None:
                raise Forbidden(f"name: {name!r} is the shared set's: only an admin key changes it", "name")
            if any(adapters.folder_registry().get(name) is not None for adapters in served):
                why = "is a file of a --loras folder (change the folder, then restart)"
                raise Conflict(f"name: {name!r} {why}", "name")
        raise NotFound(f"name: no LoRA adapter {name!r}", "name")

    async def _prepared(self, name: str, target: LoraTarget, upload: BinaryIO, owner: str | None) -> LoraEntry:
        """``upload`` kept and read by diffusers for ``target`` (400 naming ``file`` with the reason if it cannot)."""
        path, sha256, _ = await asyncio.to_thread(_keep_upload, upload, target.folder / UPLOADS)
        try:
            return await asyncio.to_thread(self._entry, name, target, path, sha256, owner)
        except AdapterError as error:
            if not any(entry.sha256 == sha256 for entry in target.adapters.uploads()):
                path.unlink(missing_ok=True)  # no entry keeps a file diffusers cannot read
            raise InvalidInput(f"file: not a LoRA adapter model {target.model} can serve: {error}", "file") from None

    @staticmethod
    def _entry(name: str, target: LoraTarget, path: Path, sha256: str, owner: str | None) -> LoraEntry:
        """The entry of the file at ``path``, prepared for ``target``'s engines (:class:`AdapterError` if it cannot)."""
        folder = target.folder
        prepared = prepare_into(
            path,
            folder,
            folder / MODEL_CONFIGS,
            target.pipeline_class,
            target.slots,
            target.engines_key,
            target.adapters.limits,
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
            owner,
        )

    @staticmethod
    def _answer(entry: LoraEntry) -> dict:
        return {"id": entry.name, "object": "lora", **entry.public()}
