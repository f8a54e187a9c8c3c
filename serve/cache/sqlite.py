"""The result cache in the stack's SQLite file (one machine)."""

from __future__ import annotations

import threading
import time

from serve.cache.store import ResultCache
from serve.stores import serialized, sqlite_connect


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
