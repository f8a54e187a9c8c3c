"""The result cache in the stack's SQLite file (one machine)."""

from __future__ import annotations

import threading
import time

from serve.cache.store import ResultCache
from serve.stores import serialized, sqlite_connect


class SqliteResultCache(ResultCache):
    """The cache in the stack's SQLite file, its entries' total size kept beside them.

    The total is a row updated in the same transaction as the entries: summing ``size`` over the table on every put
    read every entry's overflow pages (``size`` is stored after the value), 25-35 ms a put once 64 MiB were cached,
    with the file's write lock held, which the job store shares (the 18-minute soak's throughput fell by half).
    """

    def __init__(self, url: str, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.db = sqlite_connect(url)
        self._lock = threading.RLock()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS result_cache (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
                "size INTEGER NOT NULL, used_at REAL NOT NULL)"
            )
            self.db.execute("CREATE INDEX IF NOT EXISTS result_cache_used ON result_cache (used_at)")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS result_cache_bytes (id INTEGER PRIMARY KEY CHECK (id = 0), "
                "total INTEGER NOT NULL)"
            )
            self.db.execute(  # a file from before the total was kept: summed once
                "INSERT OR IGNORE INTO result_cache_bytes VALUES (0, (SELECT COALESCE(SUM(size), 0) FROM result_cache))"
            )

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
            replaced = self.db.execute("SELECT size FROM result_cache WHERE key = ?", (key,)).fetchone()
            self.db.execute(
                "INSERT OR REPLACE INTO result_cache (key, value, size, used_at) VALUES (?, ?, ?, ?)",
                (key, value, len(value), time.time()),
            )
            total = self._add(len(value) - (replaced[0] if replaced else 0))
            while total > self.max_bytes:
                key_out, size = self.db.execute(
                    "SELECT key, size FROM result_cache ORDER BY used_at LIMIT 1"
                ).fetchone()
                self.db.execute("DELETE FROM result_cache WHERE key = ?", (key_out,))
                total = self._add(-size)

    def _add(self, change: int) -> int:
        return self.db.execute(
            "UPDATE result_cache_bytes SET total = total + ? WHERE id = 0 RETURNING total", (change,)
        ).fetchone()[0]

    @serialized
    def size(self) -> int:
        """See :meth:`ResultCache.size`."""
        return self.db.execute("SELECT total FROM result_cache_bytes WHERE id = 0").fetchone()[0]
