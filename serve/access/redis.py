"""API keys and their buckets in Redis (a stack across machines); a request is admitted by one Lua script."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping

from serve.access.keys import SLOT_LEASE_S, ApiKey, Bucket, Decision, KeyLimits, KeyStore, utc_day
from serve.stores import redis_client

_KEY = "easel:key:"  # hash per key
_KEYS = "easel:keys"  # zset: key id by creation time
_BUCKET = "easel:key-bucket:"  # hash per key and bucket: tokens, updated_at
_DAY = "easel:key-day:"  # counter per key and UTC day
_SLOTS = "easel:key-slots:"  # zset per key: slot by time taken or last renewed

# KEYS: requests bucket, cost bucket, day counter, slots. ARGV: now, rpm, cost/min, cost, per day, concurrent,
# slot, ttl, day seconds left (empty string: no such limit). Returns [allowed, refused_by, retry_after, req tokens,
# cost tokens] (as strings).
_ADMIT = """
local now = tonumber(ARGV[1])
local caps = {tonumber(ARGV[2]), tonumber(ARGV[3])}
local amounts = {1, tonumber(ARGV[4])}
local names = {'requests', 'cost'}
local tokens = {'', ''}
local refused, wait = '', 0
for i = 1, 2 do
  local cap = caps[i]
  if cap then
    local state = redis.call('HMGET', KEYS[i], 'tokens', 'updated_at')
    local t = tonumber(state[1]) or cap
    local updated = tonumber(state[2]) or now
    t = math.min(cap, t + (now - updated) * cap / 60)
    if amounts[i] <= t then
      t = t - amounts[i]
    elseif refused == '' then
      refused = names[i]
      wait = (amounts[i] - t) * 60 / cap
    end
    tokens[i] = t
  end
end
local per_day = tonumber(ARGV[5])
if refused == '' and per_day and (tonumber(redis.call('GET', KEYS[3])) or 0) >= per_day then
  refused = 'requests_per_day'
  wait = tonumber(ARGV[9])
end
local concurrent = tonumber(ARGV[6])
if refused == '' and concurrent then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[8]))
  if redis.call('ZCARD', KEYS[4]) >= concurrent then
    refused = 'concurrent'
    wait = 1
  end
end
if refused ~= '' then
  return {0, refused, tostring(wait), tostring(tokens[1]), tostring(tokens[2])}
end
for i = 1, 2 do
  if caps[i] then
    redis.call('HSET', KEYS[i], 'tokens', tostring(tokens[i]), 'updated_at', tostring(now))
    redis.call('EXPIRE', KEYS[i], 120)
  end
end
if per_day then
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], 172800)
end
if concurrent then
  redis.call('ZADD', KEYS[4], now, ARGV[7])
end
return {1, '', '0', tostring(tokens[1]), tostring(tokens[2])}
"""

# KEYS: each slot's zset; ARGV: now, the oldest live time, then the slots. A slot given back or expired stays so.
_RENEW = """
for i, zset in ipairs(KEYS) do
  local taken = tonumber(redis.call('ZSCORE', zset, ARGV[i + 2]))
  if taken and taken >= tonumber(ARGV[2]) then
    redis.call('ZADD', zset, ARGV[1], ARGV[i + 2])
  end
end
return 0
"""


class RedisKeyStore(KeyStore):
    """Keys in Redis (a stack across machines)."""

    def __init__(self, url: str) -> None:
        self.redis = redis_client(url)
        self._admit = self.redis.register_script(_ADMIT)
        self._renew = self.redis.register_script(_RENEW)

    def _insert(self, record: ApiKey, stored: str) -> None:
        fields = {
            "id": record.id,
            "name": record.name,
            "digest": stored,
            "scopes": json.dumps(sorted(record.scopes)),
            "limits": record.limits.model_dump_json(),
            "created_at": repr(record.created_at),
            "revoked_at": "",
        }
        with self.redis.pipeline() as pipe:
            pipe.hset(_KEY + record.id, mapping=fields).zadd(_KEYS, {record.id: record.created_at}).execute()

    def _find(self, key_id: str) -> tuple[ApiKey, str] | None:
        row = self.redis.hgetall(_KEY + key_id)
        return (ApiKey.from_stored(row), row["digest"]) if row else None

    def list(self) -> list[ApiKey]:
        """See :meth:`KeyStore.list`."""
        return [found[0] for key_id in self.redis.zrange(_KEYS, 0, -1) if (found := self._find(key_id))]

    def update(self, key_id: str, limits: KeyLimits) -> ApiKey | None:
        """See :meth:`KeyStore.update`."""
        if not self.redis.exists(_KEY + key_id):
            return None
        self.redis.hset(_KEY + key_id, "limits", limits.model_dump_json())
        found = self._find(key_id)
        return None if found is None else found[0]

    def revoke(self, key_id: str) -> bool:
        """See :meth:`KeyStore.revoke`."""
        found = self._find(key_id)
        if found is None:
            return False
        if found[0].revoked_at is None:
            self.redis.hset(_KEY + key_id, "revoked_at", repr(self.clock()))
        return True

    def active(self) -> int:
        """See :meth:`KeyStore.active`."""
        return sum(k.revoked_at is None for k in self.list())

    def admit(self, key: ApiKey, cost: float) -> Decision:
        """See :meth:`KeyStore.admit`."""
        now, limits = self.clock(), key.limits
        slot = secrets.token_hex(8)

        def arg(value) -> str:
            return "" if value is None else repr(value)

        allowed, refused, wait, req_tokens, cost_tokens = self._admit(
            keys=[
                _BUCKET + key.id + ":requests",
                _BUCKET + key.id + ":cost",
                _DAY + key.id + ":" + utc_day(now),
                _SLOTS + key.id,
            ],
            args=[
                repr(now),
                arg(limits.requests_per_minute),
                arg(limits.cost_per_minute),
                repr(float(cost)),
                arg(limits.requests_per_day),
                arg(limits.concurrent),
                slot,
                repr(SLOT_LEASE_S),
                repr(86400 - now % 86400),
            ],
        )
        decision = Decision(bool(int(allowed)), refused_by=refused or None, retry_after_s=float(wait))
        for name, capacity, tokens in (
            ("requests", limits.requests_per_minute, req_tokens),
            ("cost", limits.cost_per_minute, cost_tokens),
        ):
            if capacity is not None:
                left = float(tokens)
                decision.buckets[name] = Bucket.holding(capacity, left)
        if decision.allowed and limits.concurrent is not None:
            decision.slot = slot
        return decision

    def release(self, key: ApiKey, slot: str) -> None:
        """See :meth:`KeyStore.release`."""
        self.redis.zrem(_SLOTS + key.id, slot)

    def renew(self, slots: Mapping[str, str]) -> None:
        """See :meth:`KeyStore.renew`."""
        now = self.clock()
        keys = [_SLOTS + key_id for key_id in slots.values()]
        self._renew(keys=keys, args=[repr(now), repr(now - SLOT_LEASE_S), *slots])

    def in_flight(self, key_id: str) -> int:
        """See :meth:`KeyStore.in_flight`."""
        return self.redis.zcount(_SLOTS + key_id, self.clock() - SLOT_LEASE_S, "+inf")
