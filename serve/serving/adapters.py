"""Adapters while the stack runs: LoRAs uploaded, replaced, removed and listed; IP-Adapter references stored.

The LoRA routes go to :class:`serve.adapters.catalog.LoraCatalog`, the reference routes to
:class:`serve.serving.references.References` (a reference is encoded once by a ``TextToImage`` replica's image
encoder); each caller sees only its own key's references (an admin key, or an open API, sees all), and its own
LoRAs with the shared set (an admin key sees every key's). A key's quotas (:data:`serve.stores.QUOTA_KINDS`: its own,
else the stack's) bound what it keeps: ``references``, ``loras``, and both together (``stored_items``,
``stored_bytes``); one more past one is refused before any work is charged (:meth:`Adapters.check_quota`: a 429
naming the quota, without ``Retry-After``: waiting does not free one, deleting one does).
"""

from __future__ import annotations

import asyncio
import functools
from typing import BinaryIO

import numpy as np
from ray.serve.handle import DeploymentHandle

from serve.access import may_see, owner_filter
from serve.access.keys import ApiKey
from serve.adapters.catalog import Caller, LoraCatalog
from serve.errors import QuotaExceeded
from serve.models.served import ServedModel
from serve.protocol.reference_request import NewReference
from serve.serving.current_models import CurrentModels
from serve.serving.references import References
from serve.stores import QUOTAS, quota


def lora_caller(key: ApiKey | None) -> Caller:
    """Who ``key`` is to the LoRA catalog: its id, and whether it is an admin's (None: an open API)."""
    return Caller() if key is None else Caller(key.id, owner_filter(key) is None)


class Adapters:
    """What the LoRA and reference routes answer; its :attr:`references` also check a generation that names one."""

    def __init__(self, models: CurrentModels, text_to_image: DeploymentHandle, quotas=None) -> None:
        self.text_to_image = text_to_image
        self.quotas = quotas  # the stack's quotas per key (a serve.stores.Quotas; None: their defaults)
        self.loras = LoraCatalog(
            lambda name: models.now().resolve(name).lora_target(),
            lambda: [model.adapters for model in models.now().values()],
        )
        self.loras.refresh()  # uploads kept by the store, for engines built anew since
        self.references = References(models.now, self.encoded_reference)

    async def encoded_reference(self, model: ServedModel, image: str) -> np.ndarray:
        """A reference image's embeddings, by ``model``'s image encoder (in a ``TextToImage`` replica)."""
        return await self.text_to_image.options(multiplexed_model_id=model.version_id).encode_reference.remote(image)

    async def loras_listed(self, key: ApiKey | None) -> dict:
        """The LoRA adapters ``key`` may use (the ``--loras`` folder's, then uploaded ones): ready, or why not."""
        return await asyncio.to_thread(self.loras.listing, lora_caller(key))

    async def loras_refreshed(self) -> None:
        """Uploaded LoRAs prepared again for each model whose engines changed (a model replaced)."""
        await asyncio.to_thread(self.loras.refresh)

    async def lora_added(
        self, name: str, model: str | None, upload: BinaryIO, key: ApiKey | None, visibility: str
    ) -> dict:
        """A new LoRA adapter of ``key``, served once diffusers has read it for ``model`` (None: the default)."""
        size = upload.seek(0, 2)  # the file's bytes: its end
        upload.seek(0)
        await self.check_quota(key, size, "loras")
        return await self.loras.add(name, model, upload, lora_caller(key), visibility)

    async def lora_replaced(
        self, name: str, upload: BinaryIO | None, key: ApiKey | None, visibility: str | None, owner: str | None
    ) -> dict:
        """An uploaded LoRA adapter's new weights or visibility; requests in flight finish on the old ones."""
        return await self.loras.replace(name, upload, lora_caller(key), visibility, owner)

    async def lora_removed(self, name: str, key: ApiKey | None, owner: str | None) -> dict:
        """An uploaded LoRA adapter removed (new requests naming it are 400s)."""
        return await self.loras.remove(name, lora_caller(key), owner)

    async def reference_added(self, body: NewReference, key: ApiKey | None) -> dict:
        """``body``'s image encoded once, its embeddings kept as ``key``'s.

        Its model and ``key``'s quota were checked at admission (:meth:`check_new_reference`), before its cost was
        taken; the quota is checked again with the embeddings' size.
        """
        return await self.references.add(body, key and key.id, lambda size: self.check_quota(key, size, "references"))

    async def check_new_reference(self, body: NewReference, key: ApiKey | None) -> None:
        """What can refuse a reference before it is encoded, checked at admission (before its cost is taken).

        Its model (a 400 naming ``model``: unknown, or without an IP-Adapter) and ``key``'s quotas (a 429).
        """
        self.references.model_of(body)
        await self.check_quota(key, 0, "references")

    async def check_quota(self, key: ApiKey | None, adding_bytes: int, kind: str) -> None:
        """Refuse (:class:`QuotaExceeded`) one more ``kind`` (references, loras, characters) of ``adding_bytes``.

        ``key``'s quotas hold: the kind's, ``stored_items`` and ``stored_bytes`` (no key: an open API, no quota).
        """
        if key is None:
            return
        bounds = {name: quota(key.limits, self.quotas, name) for name in (kind, "stored_items", "stored_bytes")}
        if all(bound is None for bound in bounds.values()):
            return
        counts, size = await asyncio.to_thread(self.stored_by, key.id)
        after = {kind: counts[kind] + 1, "stored_items": sum(counts.values()) + 1, "stored_bytes": size + adding_bytes}
        for name, bound in bounds.items():
            if bound is not None and after[name] > bound:
                kept = f"{size} bytes, {adding_bytes} more" if name == "stored_bytes" else after[name] - 1
                message = (
                    f"quota: {name} {bound} per key ({QUOTAS[name].unit}); key {key.id} keeps {kept}; delete one, "
                    f"or ask for a larger quota (easel keys update --quota-{name.replace('_', '-')})"
                )
                raise QuotaExceeded(message, name)

    def stored_by(self, owner: str) -> tuple[dict[str, int], int]:
        """How many references, LoRA uploads and characters ``owner`` keeps (by kind), and their bytes together."""
        store = self.references.store()
        references = store.references(owner)
        loras = [entry for entry in store.loras() if entry.owner == owner]
        size = sum(r.embeds.nbytes for r in references) + sum(entry.bytes or 0 for entry in loras)
        counts = {"references": len(references), "loras": len(loras), "characters": len(store.characters(owner))}
        return counts, size

    async def references_listed(self, key: ApiKey | None) -> dict:
        """The references ``key`` may see, newest first."""
        return await self.references.listing(owner_filter(key))

    async def reference(self, key: ApiKey | None, reference_id: str) -> dict:
        """One stored reference (404 for an unknown id or another key's)."""
        return await self.references.get(reference_id, functools.partial(may_see, key))

    async def reference_removed(self, key: ApiKey | None, reference_id: str) -> dict:
        """A stored reference forgotten (404 for an unknown id or another key's)."""
        return await self.references.remove(reference_id, functools.partial(may_see, key))
