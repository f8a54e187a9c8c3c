"""The image store's rows in Redis (a stack across machines).

A row is a string under ``easel:images:row:ID``; the order they were added is a sorted set (``easel:images:order``,
scored by a counter) and each owner's its own (``easel:images:owner:KEY``); the total is ``easel:images:bytes``, each
owner's ``easel:images:owner-bytes:KEY`` (made from its rows the first time a script meets it missing). Adding and
removing are each one Lua script, so the totals are the sums of the rows held whatever replicas do at once.
"""

from __future__ import annotations

import dataclasses

from serve.results.store import ImageRecords, StoredImage
from serve.stores import redis_client

_ROW = "easel:images:row:"
_ORDER = "easel:images:order"
_OWNER = "easel:images:owner:"
_BYTES = "easel:images:bytes"
_OWNER_BYTES = "easel:images:owner-bytes:"
_SEQ = "easel:images:seq"

# Both scripts: ARGV[1] the image's id, ARGV[2] the owners' zset prefix, ARGV[3] the owners' bytes prefix, ARGV[4]
# the rows' prefix. counted(owner): the owner's bytes key, made from its rows if missing (rows kept before it was).
_COUNTED = """
local function counted(owner)
  local key = ARGV[3] .. owner
  if redis.call('EXISTS', key) == 0 then
    local total = 0
    for _, id in ipairs(redis.call('ZRANGE', ARGV[2] .. owner, 0, -1)) do
      local row = redis.call('GET', ARGV[4] .. id)
      if row then total = total + cjson.decode(row)['size'] end
    end
    redis.call('SET', key, total)
  end
  return key
end
local function forget(row)
  local image = cjson.decode(row)
  local owned = counted(image['owner'])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', ARGV[2] .. image['owner'], ARGV[1])
  redis.call('DECRBY', KEYS[3], image['size'])
  redis.call('DECRBY', owned, image['size'])
end
"""
_REMOVE = (
    _COUNTED
    + """
local row = redis.call('GET', KEYS[1])
if not row then return false end
forget(row)
redis.call('DEL', KEYS[1])
return row
"""
)
# ARGV[5] the row, ARGV[6] its seq, ARGV[7] its owner, ARGV[8] its size.
_ADD = (
    _COUNTED
    + """
local old = redis.call('GET', KEYS[1])
if old then forget(old) end
local owned = counted(ARGV[7])
redis.call('SET', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
redis.call('ZADD', ARGV[2] .. ARGV[7], ARGV[6], ARGV[1])
redis.call('INCRBY', KEYS[3], ARGV[8])
redis.call('INCRBY', owned, ARGV[8])
"""
)
_PREFIXES = [_OWNER, _OWNER_BYTES, _ROW]


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
        row = [image.to_json(), image.seq, image.owner, image.size]
        self._add(keys=keys, args=[image.id, *_PREFIXES, *row])
        return image

    def get(self, image_id: str) -> StoredImage | None:
        """See :meth:`ImageRecords.get`."""
        row = self.redis.get(_ROW + image_id)
        return None if row is None else StoredImage.from_json(row)

    def remove(self, image_id: str) -> StoredImage | None:
        """See :meth:`ImageRecords.remove`."""
        row = self._remove(keys=[_ROW + image_id, _ORDER, _BYTES], args=[image_id, *_PREFIXES])
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

    def oldest(self, owner: str | None = None) -> StoredImage | None:
        """See :meth:`ImageRecords.oldest`."""
        for image_id in self.redis.zrange(_ORDER if owner is None else _OWNER + owner, 0, 0):
            return self.get(image_id)
        return None

    def held(self, owner: str) -> tuple[int, int]:
        """See :meth:`ImageRecords.held` (an owner no script has met since its bytes' key began: counted here)."""
        count, size = self.redis.zcard(_OWNER + owner), self.redis.get(_OWNER_BYTES + owner)
        if size is None and count:
            rows = self.redis.mget([_ROW + image_id for image_id in self.redis.zrange(_OWNER + owner, 0, -1)])
            size = sum(StoredImage.from_json(row).size for row in rows if row is not None)
        return count, int(size or 0)

    def total(self) -> int:
        """See :meth:`ImageRecords.total`."""
        return int(self.redis.get(_BYTES) or 0)
