"""The result cache in Redis (a stack across machines).

Every change of the bookkeeping is one Lua script, atomic in Redis: a put writes the value, its size, its last use and
the total, then evicts the least recently used until the total fits, with no other writer in between. So the total
(``easel:cache:bytes``) is always the sum of the values held, however many replicas write at once.
"""

from __future__ import annotations

import time

from serve.cache.store import ResultCache
from serve.stores import redis_client

_VALUE = "easel:cache:value:"
_USED = "easel:cache:used"  # zset: key by last use
_SIZES = "easel:cache:sizes"  # hash: key -> bytes
_TOTAL = "easel:cache:bytes"  # the sizes' sum

_TOTAL_NOW = """
if redis.call('EXISTS', KEYS[3]) == 0 then  -- a store from before the total was kept: summed once
  local total = 0
  for _, size in ipairs(redis.call('HVALS', KEYS[2])) do total = total + tonumber(size) end
  redis.call('SET', KEYS[3], total)
end
"""
_PUT = (
    _TOTAL_NOW
    + """
local key, value = ARGV[2], ARGV[3]
local before = tonumber(redis.call('HGET', KEYS[2], key)) or 0
redis.call('SET', ARGV[1] .. key, value)
redis.call('ZADD', KEYS[1], ARGV[4], key)
redis.call('HSET', KEYS[2], key, #value)
local total = redis.call('INCRBY', KEYS[3], #value - before)
while total > tonumber(ARGV[5]) do
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if not oldest then break end
  local size = tonumber(redis.call('HGET', KEYS[2], oldest)) or 0
  redis.call('DEL', ARGV[1] .. oldest)
  redis.call('ZREM', KEYS[1], oldest)
  redis.call('HDEL', KEYS[2], oldest)
  total = redis.call('DECRBY', KEYS[3], size)
end
return total
"""
)
_SIZE = _TOTAL_NOW + "return tonumber(redis.call('GET', KEYS[3]))"


class RedisResultCache(ResultCache):
    """The cache in Redis (a stack across machines)."""

    def __init__(self, url: str, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.redis = redis_client(url, decode=False)
        self._put = self.redis.register_script(_PUT)
        self._size = self.redis.register_script(_SIZE)

    def get(self, key: str) -> bytes | None:
        """See :meth:`ResultCache.get`."""
        value = self.redis.get(_VALUE + key)
        if value is not None:
            self.redis.zadd(_USED, {key: time.time()}, xx=True)  # one evicted meanwhile stays out
        return value

    def put(self, key: str, value: bytes) -> None:
        """See :meth:`ResultCache.put`."""
        if len(value) > self.max_bytes:
            return
        self._put(keys=[_USED, _SIZES, _TOTAL], args=[_VALUE, key, value, time.time(), self.max_bytes])

    def size(self) -> int:
        """See :meth:`ResultCache.size`."""
        return int(self._size(keys=[_USED, _SIZES, _TOTAL]))
