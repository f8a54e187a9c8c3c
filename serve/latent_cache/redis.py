"""The latent cache in Redis (a stack across machines)."""

from __future__ import annotations

import time

import numpy as np

from serve.latent_cache.store import LatentStore, Match, entry_key, from_bytes, nearest_of, to_bytes
from serve.stores import redis_client

_ENTRY = "easel:latents:entry:"  # hash: shape, embedding, latents
_SHAPE = "easel:latents:shape:"  # set: the keys of one shape's entries
_USED = "easel:latents:used"  # zset: key by last use


class RedisLatentStore(LatentStore):
    """The latent cache in Redis (a stack across machines)."""

    def __init__(self, url: str, max_entries: int) -> None:
        super().__init__(max_entries)
        self.redis = redis_client(url, decode=False)

    def nearest(self, shape: str, embedding: np.ndarray) -> Match | None:
        """See :meth:`LatentStore.nearest`."""
        keys = sorted(key.decode() for key in self.redis.smembers(_SHAPE + shape))
        with self.redis.pipeline() as pipe:
            for key in keys:
                pipe.hget(_ENTRY + key, "embedding")
            stored = pipe.execute()
        found = nearest_of({k: from_bytes(e) for k, e in zip(keys, stored, strict=True) if e is not None}, embedding)
        if found is None:
            return None
        key, similarity = found
        latents = self.redis.hget(_ENTRY + key, "latents")
        if latents is None:  # dropped since it was read
            return None
        self.redis.zadd(_USED, {key: time.time()})
        return Match(similarity, from_bytes(latents))

    def put(self, shape: str, embedding: np.ndarray, latents: np.ndarray) -> None:
        """See :meth:`LatentStore.put`."""
        key = entry_key(shape, embedding)
        entry = {"shape": shape, "embedding": to_bytes(embedding), "latents": to_bytes(latents)}
        with self.redis.pipeline() as pipe:
            pipe.hset(_ENTRY + key, mapping=entry).sadd(_SHAPE + shape, key).zadd(_USED, {key: time.time()}).execute()
        while self.count() > self.max_entries:
            oldest = self.redis.zrange(_USED, 0, 0)
            if not oldest:
                return
            key = oldest[0].decode()
            shape_of = self.redis.hget(_ENTRY + key, "shape") or b""
            with self.redis.pipeline() as pipe:
                pipe.delete(_ENTRY + key).srem(_SHAPE + shape_of.decode(), key).zrem(_USED, key).execute()

    def count(self) -> int:
        """See :meth:`LatentStore.count`."""
        return int(self.redis.zcard(_USED))
