"""Stored IP-Adapter references: ``POST``, ``GET`` and ``DELETE /v1/references``, and requests that name one.

:class:`References` answers the routes (through the Gateway's :class:`serve.serving.adapters.Adapters`). A reference
is encoded once by its model's image encoder (a ``TextToImage`` replica's Triton ``image_encoder`` call) and its
embeddings are kept in the stack's store (:class:`serve.adapters.store.StoredReference`), owned by the key that
stored it. A generation naming it (``ip_adapter_reference``) takes those embeddings instead of encoding an image: no
image-encoder work. Another key's reference is as unknown as a missing one: 404 on its routes, a 400 naming
``ip_adapter_reference`` in a generation. ``visible(owner)`` says whether the caller may see what ``owner`` stored.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable

import numpy as np

from serve.adapters.requests import unknown_reference
from serve.adapters.store import AdapterStore, StoredReference
from serve.errors import Conflict, InvalidInput, NotFound
from serve.models.served import ServedModel, ServedModels
from serve.protocol.ip_scale import ip_choices
from serve.protocol.reference_request import NewReference

Visible = Callable[[str | None], bool]


def new_reference_id() -> str:
    """A fresh id: ``ref_`` and 24 hex digits."""
    return f"ref_{secrets.token_hex(12)}"


class References:
    """The stored references' routes, and the check of a generation that names one."""

    def __init__(
        self, models: Callable[[], ServedModels], encode: Callable[[ServedModel, str], Awaitable[np.ndarray]]
    ) -> None:
        self.models, self.encode = models, encode

    def store(self) -> AdapterStore:
        """The stack's adapter store (references and LoRA uploads)."""
        return self.models().default.adapters.store()

    async def add(
        self, body: NewReference, owner: str | None, fits: Callable[[int], Awaitable[None]] | None = None
    ) -> dict:
        """Encode ``body``'s image once with its model's image encoder and keep the embeddings as ``owner``'s.

        ``fits``: awaited with the embeddings' bytes before they are kept (a quota's check, raising to refuse).
        """
        model = self.model_of(body)
        embeds = np.asarray(await self.encode(model, body.image), np.float32)
        if fits is not None:
            await fits(embeds.nbytes)
        stored = StoredReference(new_reference_id(), owner, model.name, embeds, body.name, time.time())
        await asyncio.to_thread(self.store().add_reference, stored)
        return stored.public()

    def model_of(self, body: NewReference) -> ServedModel:
        """The model whose image encoder encodes ``body`` (a 400 naming ``model``: unknown, or no IP-Adapter)."""
        model = self.models().resolve(body.model)
        if not model.adapters.ip_adapter:
            raise InvalidInput(f"model: {model.name} has no IP-Adapter (start a stack with --ip-adapter DIR)", "model")
        return model

    async def listing(self, owner: str | None) -> dict:
        """``owner``'s stored references (None: everyone's), newest first."""
        found = await asyncio.to_thread(self.store().references, owner)
        return {"object": "list", "data": [reference.public() for reference in found]}

    async def get(self, reference_id: str, visible: Visible) -> dict:
        """One stored reference (404 for an unknown id or another key's)."""
        return (await self._visible(reference_id, visible)).public()

    async def remove(self, reference_id: str, visible: Visible) -> dict:
        """Forget a stored reference (404 for an unknown id or another key's; 409 for a character's)."""
        stored = await self._visible(reference_id, visible)
        if stored.held_by is not None:
            message = f"{reference_id} is a picture of character {stored.held_by!r} (DELETE /v1/characters/NAME)"
            raise Conflict(message, "reference_id")
        await asyncio.to_thread(self.store().remove_reference, reference_id)
        return {"id": reference_id, "object": "reference", "deleted": True}

    async def check(self, request, model: ServedModel, visible: Visible) -> None:
        """A generation's stored references: the caller's, stored for ``model`` (a 400 naming the field if not)."""
        for ip in ip_choices(request):
            for index, reference_id in enumerate(ip.choice.references):
                field = ip.name_of("references", index)
                stored = await asyncio.to_thread(self.store().reference, reference_id)
                shared = (
                    stored is not None and stored.owner is None and stored.held_by is not None
                )  # a shared character's
                if stored is None or not (visible(stored.owner) or shared):
                    raise unknown_reference(reference_id, field)
                if stored.model != model.name:
                    message = f"{field}: {reference_id} was stored for model {stored.model}, not {model.name}"
                    raise InvalidInput(message, field)

    async def _visible(self, reference_id: str, visible: Visible) -> StoredReference:
        stored = await asyncio.to_thread(self.store().reference, reference_id)
        if stored is None or not visible(stored.owner):
            raise NotFound(f"no stored reference {reference_id!r}", "reference_id")
        return stored
