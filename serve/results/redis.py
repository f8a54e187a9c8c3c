"""The image store's rows in Redis (a stack across machines).

A row is a string under ``easel:images:row:ID``; the order they were added is a sorted set (``easel:images:order``,
scored by a counter) and each owner's its own (``easel:images:owner:KEY``); the total is ``easel:images:bytes``.
Adding and removing are each one Lua script, so the total is the sum of the rows held whatever replicas do at once.
"""

from __future__ import annotations

import dataclasses

from serve.results.store import ImageRecords, StoredImage
from serve.stores import redis_client

_ROW = "easel:images:row:"
_ORDER = "easel:images:order"
_OWNER = "easel:images:owner:"
_BYTES = "easel:images:bytes"
_SEQ = "easel:images:seq"

_REMOVE = """
local row = redis.call('GET', KEYS[1])
if not row then return false end
local image = cjson.decode(row)
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', ARGV[2] .. image['owner'], ARGV[1])
redis.call('DECRBY', KEYS[3], image['size'])
return row
"""
_ADD = """
local old = redis.call('GET', KEYS[1])
if old then
  local image = cjson.decode(old)
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', ARGV[2] .. image['owner'], ARGV[1])
  redis.call('DECRBY', KEYS[3], image['size'])
end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('ZADD', ARGV[2] .. ARGV[5], ARGV[4], ARGV[1])
redis.call('INCRBY', KEYS[3], ARGV[6])
"""


class RedisImageRecords(ImageRecords):
    """The rows in Redis; adding and removing are atomic there."""

    def __init__(self, url: str) -> None:
        self.redis = redis_client(url)
        self._add = self.redis.register_script(_ADD)
        self._remove = self.redis.register_script(_REMOVE)

    def add(self, image: StoredImage) -> StoredImage:
        """See :meth:`ImageRecords.add`."""
        image = dataclasses.replace(image, seq=int(self.redis.incr(_SEQ)))
        keys = [_ROW + image.id, _ORDER, _BYTES]
        self._add(keys=keys, args=[image.id, _OWNER, image.to_json(), image.seq, image.owner, image.size])
        return image

    def get(self, image_id: str) -> StoredImage | None:
        """See :meth:`ImageRecords.get`."""
        row = self.redis.get(_ROW + image_id)
        return None if row is None else StoredImage.from_json(row)

    def remove(self, image_id: str) -> StoredImage | None:
        """See :meth:`ImageRecords.remove`."""
        row = self._remove(keys=[_ROW + image_id, _ORDER, _BYTES], args=[image_id, _OWNER])
        return None if row is None else StoredImage.from_json(row)

    def page(self, owner: str | None, after: str | None, limit: int) -> list[StoredImage]:
        """See :meth:`ImageRecords.page`."""
        order = _ORDER if owner is None else _OWNER + owner
        top = "+inf"
        if after is not None:
            score = self.redis.zscore(order, after)
            if score is None:
                return []
            top = f"({int(score)}"
        ids = self.redis.zrevrangebyscore(order, top, "-inf", start=0, num=limit)
        rows = self.redis.mget([_ROW + image_id for image_id in ids]) if ids else []
        return [StoredImage.from_json(row) for row in rows if row is not None]

    def oldest(self) -> StoredImage | None:
        """See :meth:`ImageRecords.oldest`."""
        for image_id in self.redis.zrange(_ORDER, 0, 0):
            return self.get(image_id)
        return None

    def total(self) -> int:
        """See :meth:`ImageRecords.total`."""
        return int(self.redis.get(_BYTES) or 0)
