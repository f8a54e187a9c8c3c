"""The adapter store in Redis (a stack across machines): one hash, name -> the entry's JSON."""

from __future__ import annotations

from serve.adapters.registry import LoraEntry
from serve.adapters.store import AdapterStore, name_taken
from serve.stores import redis_client

_LORAS = "easel:loras"


class RedisAdapterStore(AdapterStore):
    """Adapters in Redis; a replace is one optimistic transaction (WATCH the hash, MULTI the write)."""

    def __init__(self, url: str) -> None:
        self.redis = redis_client(url)

    def add_lora(self, entry: LoraEntry) -> None:
        """See :meth:`AdapterStore.add_lora`."""
        if not self.redis.hsetnx(_LORAS, entry.name, entry.to_json()):
            raise name_taken(entry.name)

    def replace_lora(self, entry: LoraEntry) -> LoraEntry | None:
        """See :meth:`AdapterStore.replace_lora`."""

        def change(pipe) -> LoraEntry | None:
            old = pipe.hget(_LORAS, entry.name)
            pipe.multi()
            if old is not None:
                pipe.hset(_LORAS, entry.name, entry.to_json())
            return None if old is None else LoraEntry.from_json(old)

        return self.redis.transaction(change, _LORAS, value_from_callable=True)

    def remove_lora(self, name: str) -> LoraEntry | None:
        """See :meth:`AdapterStore.remove_lora`."""

        def change(pipe) -> LoraEntry | None:
            old = pipe.hget(_LORAS, name)
            pipe.multi()
            pipe.hdel(_LORAS, name)
            return None if old is None else LoraEntry.from_json(old)

        return self.redis.transaction(change, _LORAS, value_from_callable=True)

    def lora(self, name: str) -> LoraEntry | None:
        """See :meth:`AdapterStore.lora`."""
        raw = self.redis.hget(_LORAS, name)
        return None if raw is None else LoraEntry.from_json(raw)

    def loras(self) -> list[LoraEntry]:
        """See :meth:`AdapterStore.loras`."""
        raw = self.redis.hgetall(_LORAS)
        return [LoraEntry.from_json(raw[name]) for name in sorted(raw)]

    def close(self) -> None:
        """See :meth:`AdapterStore.close`."""
        self.redis.close()
