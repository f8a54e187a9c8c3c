"""The adapter store's contract: the LoRA adapters uploaded while the stack runs, the references and characters.

Two implementations keep it, tested against the same tests: :mod:`serve.adapters.sqlite` and
:mod:`serve.adapters.redis` (:func:`serve.adapters.open_adapter_store` picks one by URL), so every replica (and,
with Redis, every node) sees the same adapters, and a restart keeps them. The prepared tensors an entry names lie in
the stack's registry folder; the store holds what names them.

LoRA names are per owner: an entry is kept under :func:`stored_name` (``<owner>:<name>``; the shared set's, and every
entry kept before uploads had owners, under ``<name>`` alone), so two keys may each have a ``style``; so are
characters' (:class:`Character`).
"""

from __future__ import annotations

import dataclasses
import io
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from serve.adapters.registry import LoraEntry
from serve.errors import InvalidInput


def stored_name(name: str, owner: str | None) -> str:
    """What a store keeps the LoRA ``name`` of ``owner`` under (None: the shared set's; names have no ``:``)."""
    return name if owner is None else f"{owner}:{name}"


def character_taken(name: str) -> InvalidInput:
    """The 400 for a ``POST`` of a character name its key has."""
    return InvalidInput(f"name: a character is named {name!r} already (PUT /v1/characters/{name} replaces it)", "name")


def name_taken(name: str) -> InvalidInput:
    """The 400 for a ``POST`` of a name that is taken."""
    return InvalidInput(f"name: a LoRA adapter is named {name!r} already (PUT /v1/loras/{name} replaces it)", "name")


@dataclass(frozen=True)
class StoredReference:
    """An IP-Adapter reference encoded once (``POST /v1/references``): its image embeddings, owned by a key."""

    id: str
    owner: str | None  # the id of the key that stored it (None: the API was open)
    model: str
    embeds: np.ndarray  # the image encoder's output for the reference, [1, *embeds_shape], float32
    name: str | None = None
    created_at: float = 0.0
    held_by: str | None = None  # the character whose picture it encodes (kept and deleted with it), if any

    def public(self) -> dict:
        """What the API shows of it."""
        shown = {"id": self.id, "object": "reference", "model": self.model, "created_at": int(self.created_at)}
        held = {"character": self.held_by} if self.held_by else {}
        return shown | ({"name": self.name} if self.name else {}) | held

    def embeds_bytes(self) -> bytes:
        """Its embeddings as ``.npy`` bytes (what a store keeps)."""
        buffer = io.BytesIO()
        np.save(buffer, self.embeds, allow_pickle=False)
        return buffer.getvalue()

    @staticmethod
    def embeds_from(data: bytes) -> np.ndarray:
        """Embeddings from :meth:`embeds_bytes`."""
        return np.load(io.BytesIO(data), allow_pickle=False)


@dataclass(frozen=True)
class Character:
    """A character made once (``POST /v1/characters``), owned by a key: what a generation naming it draws with.

    ``references``: the stored references of its pictures (its model's IP-Adapter embeddings; none without one);
    ``face``: its pictures' faces' mean embedding, unit length (None: no face models served when it was made);
    ``first_face``: its first picture's face as the adapters that read more than an embedding read it (its
    ``landmarks`` on a picture ``width`` x ``height``: an InstantID's; ``aligned_face``, base64 PNG: a FaceID Plus's).
    """

    name: str
    owner: str | None
    model: str
    references: tuple[str, ...] = ()
    lora: dict | None = None  # {"name", "scale"}
    trigger_words: str = ""
    note: str = ""
    face: tuple[float, ...] | None = None
    images: int = 0
    created_at: float = 0.0
    first_face: dict | None = None

    def public(self) -> dict:
        """What the API shows of it."""
        shown = {"object": "character", "name": self.name, "model": self.model, "images": self.images}
        shown |= {"references": list(self.references), "lora": self.lora, "trigger_words": self.trigger_words}
        shown |= {"visibility": "private" if self.owner else "shared"}
        return shown | {"note": self.note, "face": self.face is not None, "created_at": int(self.created_at)}

    def to_json(self) -> str:
        """What a store keeps."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Character:
        """A character from :meth:`to_json`."""
        fields = json.loads(text)
        face = fields.pop("face")
        return cls(**fields | {"references": tuple(fields["references"]), "face": face and tuple(face)})


class AdapterStore(ABC):
    """LoRA entries by owner and name (each of one model), and stored references by id (each of one key)."""

    @abstractmethod
    def add_lora(self, entry: LoraEntry) -> None:
        """Keep a new entry; :func:`name_taken` if its owner has one of its name."""

    @abstractmethod
    def replace_lora(self, entry: LoraEntry) -> LoraEntry | None:
        """Put ``entry`` in the place of its owner's of its name; returns that one (None, and nothing kept: none)."""

    @abstractmethod
    def remove_lora(self, name: str, owner: str | None = None) -> LoraEntry | None:
        """Forget ``owner``'s entry called ``name`` (None: the shared set's); returns it (None: there was none)."""

    @abstractmethod
    def lora(self, name: str, owner: str | None = None) -> LoraEntry | None:
        """``owner``'s entry called ``name`` (None: the shared set's), or None."""

    @abstractmethod
    def loras(self) -> list[LoraEntry]:
        """Every entry, every owner's, by stored name."""

    @abstractmethod
    def add_reference(self, reference: StoredReference) -> None:
        """Keep a stored reference."""

    @abstractmethod
    def reference(self, reference_id: str) -> StoredReference | None:
        """The stored reference ``reference_id`` (whoever owns it), or None."""

    @abstractmethod
    def references(self, owner: str | None) -> list[StoredReference]:
        """The stored references of ``owner`` (None: everyone's), newest first."""

    @abstractmethod
    def remove_reference(self, reference_id: str) -> bool:
        """Forget a stored reference; False if there was none."""

    @abstractmethod
    def put_character(self, character: Character, replace: bool) -> Character | None:
        """Keep ``character``; ``replace``: in the place of its owner's of its name, which is returned.

        A replacement of none keeps nothing (None); a new one whose name its owner has is :func:`character_taken`.
        """

    @abstractmethod
    def character(self, name: str, owner: str | None) -> Character | None:
        """``owner``'s character called ``name``, or None."""

    @abstractmethod
    def characters(self, owner: str | None) -> list[Character]:
        """``owner``'s characters (None: everyone's), by name."""

    @abstractmethod
    def remove_character(self, name: str, owner: str | None) -> Character | None:
        """Forget ``owner``'s character ``name``; returns it (None: there was none). Its references are the caller's."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's connections."""
