"""The result cache: answers of earlier generations, content-addressed, bounded in bytes, least recently used out.

A request with an explicit seed whose model (the engine folder's content-addressed name) and every parameter that
shapes the images match an earlier one gets that answer again without touching Triton. Only raster answers are kept:
an SVG answer may be a fallback of the moment (vectorize models unavailable). The cache lives in the stack's store
(``--store URL``: SQLite on one machine, Redis across machines), so every Gateway replica shares it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from abc import ABC, abstractmethod

from serve.stores import redis_client, scheme, serialized, sqlite_connect

DEFAULT_CACHE_BYTES = 1 << 30
"""Bytes of cached answers kept by default (``easel up --cache-bytes``)."""
IGNORED_FIELDS = ("background", "priority", "user", "model", "quality", "style")
"""Request fields that do not change the images: not part of the key."""


def cache_key(engine: str, request: dict) -> str | None:
    """The content address of a generation's answer; None when it must not be cached (no seed, or SVG output)."""
    if request.get("seed") is None or request.get("output_format") == "svg":
        return None
    shaping = {k: v for k, v in sorted(request.items()) if k not in IGNORED_FIELDS}
    return hashlib.sha256(json.dumps({"engine": engine, "request": shaping}, sort_keys=True).encode()).hexdigest()


class ResultCache(ABC):
    """Answers by key, at most ``max_bytes`` of them."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The answer cached under ``key`` (now the most recently used), or None."""

    @abstractmethod
    def put(self, key: str, value: bytes) -> None:
        """Keep ``value`` under ``key``, dropping the least recently used answers beyond the bound."""

    @abstractmethod
    def size(self) -> int:
        """Bytes held."""


class SqliteResultCache(ResultCache):
    """The cache in the stack's SQLite file."""

    def __init__(self, url: str, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.db = sqlite_connect(url)
        self._lock = threading.RLock()
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS result_cache (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
            "size INTEGER NOT NULL, used_at REAL NOT NULL)"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS result_cache_used ON result_cache (used_at)")

    @serialized
    def get(self, key: str) -> bytes | None:
        """See :meth:`ResultCache.get`."""
        row = self.db.execute(
            "UPDATE result_cache SET used_at = ? WHERE key = ? RETURNING value", (time.time(), key)
        ).fetchone()
        return None if row is None else bytes(row[0])

    @serialized
    def put(self, key: str, value: bytes) -> None:
        """See :meth:`ResultCache.put`."""
        if len(value) > self.max_bytes:
            return
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT OR REPLACE INTO result_cache (key, value, size, used_at) VALUES (?, ?, ?, ?)",
                (key, value, len(value), time.time()),
            )
            total = self.db.execute("SELECT COALESCE(SUM(size), 0) FROM result_cache").fetchone()[0]
            while total > self.max_bytes:
                key_out, size = self.db.execute(
                    "SELECT key, size FROM result_cache ORDER BY used_at LIMIT 1"
                ).fetchone()
                self.db.execute("DELETE FROM result_cache WHERE key = ?", (key_out,))
                total -= size

    @serialized
    def size(self) -> int:
        """See :meth:`ResultCache.size`."""
        return self.db.execute("SELECT COALESCE(SUM(size), 0) FROM result_cache").fetchone()[0]


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


def open_cache(url: str, max_bytes: int = DEFAULT_CACHE_BYTES) -> ResultCache:
    """The result cache in the store at ``url``."""
    if scheme(url) == "sqlite":
        return SqliteResultCache(url, max_bytes)
    return RedisResultCache(url, max_bytes)
