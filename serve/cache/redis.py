"""The result cache in Redis (a stack across machines)."""

from __future__ import annotations

import time

from serve.cache.store import ResultCache
from serve.stores import redis_client

_VALUE = "easel:cache:value:"
_USED = "easel:cache:used"  # zset: key by last use
_SIZES = "easel:cache:sizes"  # hash: key -> bytes


class RedisResultCache(ResultCache):
    """The cache in Redis (a stack across machines)."""

    def __init__(self, url: str, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.redis = redis_client(url, decode=False)

    def get(self, key: str) -> bytes | None:
        """See :meth:`ResultCache.get`."""
        value = self.redis.get(_VALUE + key)
        if value is not None:
            self.redis.zadd(_USED, {key: time.time()})
        return value

    def put(self, key: str, value: bytes) -> None:
        """See :meth:`ResultCache.put`."""
        if len(value) > self.max_bytes:
            return
        with self.redis.pipeline() as pipe:
            pipe.set(_VALUE + key, value).zadd(_USED, {key: time.time()}).hset(_SIZES, key, len(value)).execute()
        while self.size() > self.max_bytes:
            oldest = self.redis.zrange(_USED, 0, 0)
            if not oldest:
                return
            with self.redis.pipeline() as pipe:
                pipe.delete(_VALUE + oldest[0].decode()).zrem(_USED, oldest[0]).hdel(_SIZES, oldest[0]).execute()

    def size(self) -> int:
        """See :meth:`ResultCache.size`."""
        return sum(int(v) for v in self.redis.hvals(_SIZES))
