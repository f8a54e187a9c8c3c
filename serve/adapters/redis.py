"""The adapter store in Redis (a stack across machines).

LoRAs: one hash, stored name (:func:`serve.adapters.store.stored_name`) -> the entry's JSON. References: a hash
per reference (its fields, the embeddings as bytes) and a sorted set per owner (and one of all), by creation time.
Characters: one hash, stored name -> the character's JSON.
"""

from __future__ import annotations

import json

from serve.adapters.registry import LoraEntry
from serve.adapters.store import (
    AdapterStore,
    Character,
    StoredReference,
    character_taken,
    name_taken,
    stored_name,
)
from serve.stores import redis_client

_LORAS = "easel:loras"
_ALL_REFERENCES = "easel:references"
_CHARACTERS = "easel:characters"


def _reference_key(reference_id: str) -> str:
    return f"easel:reference:{reference_id}"


def _owned_key(owner: str) -> str:
    return f"easel:references:owner:{owner}"


class RedisAdapterStore(AdapterStore):
    """Adapters in Redis; a replace is one optimistic transaction (WATCH the hash, MULTI the write)."""

    def __init__(self, url: str) -> None:
        self.redis = redis_client(url)
        self.binary = redis_client(url, decode=False)  # embeddings are bytes

    def add_lora(self, entry: LoraEntry) -> None:
        """See :meth:`AdapterStore.add_lora`."""
        if not self.redis.hsetnx(_LORAS, stored_name(entry.name, entry.owner), entry.to_json()):
            raise name_taken(entry.name)

    def replace_lora(self, entry: LoraEntry) -> LoraEntry | None:
        """See :meth:`AdapterStore.replace_lora`."""
        stored = stored_name(entry.name, entry.owner)

        def change(pipe) -> LoraEntry | None:
            old = pipe.hget(_LORAS, stored)
            pipe.multi()
            if old is not None:
                pipe.hset(_LORAS, stored, entry.to_json())
            return None if old is None else LoraEntry.from_json(old)

        return self.redis.transaction(change, _LORAS, value_from_callable=True)

    def remove_lora(self, name: str, owner: str | None = None) -> LoraEntry | None:
        """See :meth:`AdapterStore.remove_lora`."""
        old = self._popped(_LORAS, stored_name(name, owner))
        return None if old is None else LoraEntry.from_json(old)

    def lora(self, name: str, owner: str | None = None) -> LoraEntry | None:
        """See :meth:`AdapterStore.lora`."""
        raw = self.redis.hget(_LORAS, stored_name(name, owner))
        return None if raw is None else LoraEntry.from_json(raw)

    def loras(self) -> list[LoraEntry]:
        """See :meth:`AdapterStore.loras`."""
        raw = self.redis.hgetall(_LORAS)
        return [LoraEntry.from_json(raw[name]) for name in sorted(raw)]

    def add_reference(self, reference: StoredReference) -> None:
        """See :meth:`AdapterStore.add_reference`."""
        meta = {"owner": reference.owner, "model": reference.model, "name": reference.name}
        meta["held_by"] = reference.held_by
        fields = {"meta": json.dumps(meta), "created_at": reference.created_at, "embeds": reference.embeds_bytes()}
        with self.binary.pipeline() as pipe:
            pipe.hset(_reference_key(reference.id), mapping=fields)
            pipe.zadd(_ALL_REFERENCES, {reference.id: reference.created_at})
            if reference.owner is not None:
                pipe.zadd(_owned_key(reference.owner), {reference.id: reference.created_at})
            pipe.execute()

    def reference(self, reference_id: str) -> StoredReference | None:
        """See :meth:`AdapterStore.reference`."""
        raw = self.binary.hgetall(_reference_key(reference_id))
        if not raw:
            return None
        meta = json.loads(raw[b"meta"])
        embeds = StoredReference.embeds_from(raw[b"embeds"])
        created = float(raw[b"created_at"])
        held_by = meta.get("held_by")  # kept before characters held references: none
        return StoredReference(reference_id, meta["owner"], meta["model"], embeds, meta["name"], created, held_by)

    def references(self, owner: str | None) -> list[StoredReference]:
        """See :meth:`AdapterStore.references`."""
        ids = self.redis.zrevrange(_ALL_REFERENCES if owner is None else _owned_key(owner), 0, -1)
        return [found for found in (self.reference(i) for i in ids) if found is not None]

    def remove_reference(self, reference_id: str) -> bool:
        """See :meth:`AdapterStore.remove_reference`."""
        found = self.reference(reference_id)
        if found is None:
            return False
        with self.redis.pipeline() as pipe:
            pipe.delete(_reference_key(reference_id))
            pipe.zrem(_ALL_REFERENCES, reference_id)
            if found.owner is not None:
                pipe.zrem(_owned_key(found.owner), reference_id)
            removed, *_ = pipe.execute()
        return bool(removed)

    def put_character(self, character: Character, replace: bool) -> Character | None:
        """See :meth:`AdapterStore.put_character`."""
        stored = stored_name(character.name, character.owner)

        def change(pipe) -> str | None:
            old = pipe.hget(_CHARACTERS, stored)
            pipe.multi()
            if (old is not None) == replace:  # a replacement of one kept, or a new name
                pipe.hset(_CHARACTERS, stored, character.to_json())
            return old

        old = self.redis.transaction(change, _CHARACTERS, value_from_callable=True)
        if old is not None and not replace:
            raise character_taken(character.name)
        return None if old is None else Character.from_json(old)

    def character(self, name: str, owner: str | None) -> Character | None:
        """See :meth:`AdapterStore.character`."""
        raw = self.redis.hget(_CHARACTERS, stored_name(name, owner))
        return None if raw is None else Character.from_json(raw)

    def characters(self, owner: str | None) -> list[Character]:
        """See :meth:`AdapterStore.characters`."""
        raw = self.redis.hgetall(_CHARACTERS)
        found = [Character.from_json(raw[name]) for name in sorted(raw)]
        return [c for c in found if owner is None or c.owner == owner]

    def remove_character(self, name: str, owner: str | None) -> Character | None:
        """See :meth:`AdapterStore.remove_character`."""
        old = self._popped(_CHARACTERS, stored_name(name, owner))
        return None if old is None else Character.from_json(old)

    def _popped(self, table: str, field: str) -> str | None:
        """``field`` of hash ``table`` removed in one optimistic transaction; what it held (None: nothing)."""

        def change(pipe) -> str | None:
            old = pipe.hget(table, field)
            pipe.multi()
            pipe.hdel(table, field)
            return old

        return self.redis.transaction(change, table, value_from_callable=True)

    def close(self) -> None:
        """See :meth:`AdapterStore.close`."""
        self.redis.close()
        self.binary.close()
