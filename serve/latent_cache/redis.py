"""The latent cache in Redis (a stack across machines).

A put is one Lua script, atomic in Redis: the entry, its shape's index and its last use are written and the least
recently used entries evicted until the bound holds, with no other writer in between, so the index and the
last-use set always name exactly the entries held.
"""

from __future__ import annotations

import time

import numpy as np

from serve.latent_cache.store import LatentStore, Match, entry_key, from_bytes, nearest_of, to_bytes
from serve.stores import redis_client

_ENTRY = "easel:latents:entry:"  # hash: shape, embedding, latents
_SHAPE = "easel:latents:shape:"  # set: the keys of one shape's entries
_USED = "easel:latents:used"  # zset: key by last use

_PUT = """
local entry, shapes, key, shape = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('HSET', entry .. key, 'shape', shape, 'embedding', ARGV[5], 'latents', ARGV[6])
redis.call('SADD', shapes .. shape, key)
redis.call('ZADD', KEYS[1], ARGV[7], key)
while redis.call('ZCARD', KEYS[1]) > tonumber(ARGV[8]) do
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  local shape_of = redis.call('HGET', entry .. oldest, 'shape') or ''
  redis.call('DEL', entry .. oldest)
  redis.call('SREM', shapes .. shape_of, oldest)
  redis.call('ZREM', KEYS[1], oldest)
end
"""


class RedisLatentStore(LatentStore):
    """The latent cache in Redis (a stack across machines)."""

    def __init__(self, url: str, max_entries: int) -> None:
        super().__init__(max_entries)
        self.redis = redis_client(url, decode=False)
        self._put = self.redis.register_script(_PUT)

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
        self.redis.zadd(_USED, {key: time.time()}, xx=True)  # one evicted meanwhile stays out
        return Match(similarity, from_bytes(latents))

    def put(self, shape: str, embedding: np.ndarray, latents: np.ndarray) -> None:
        """See :meth:`LatentStore.put`."""
        key = entry_key(shape, embedding)
        args = [_ENTRY, _SHAPE, key, shape, to_bytes(embedding), to_bytes(latents), time.time(), self.max_entries]
        self._put(keys=[_USED], args=args)

    def count(self) -> int:
        """See :meth:`LatentStore.count`."""
        return int(self.redis.zcard(_USED))
