"""The latent cache in the stack's SQLite file (one machine)."""

from __future__ import annotations

import time

import numpy as np

from serve.latent_cache.store import LatentStore, Match, entry_key, from_bytes, nearest_of, to_bytes
from serve.stores import serialized, sqlite_open

_SCHEMA = """
CREATE TABLE IF NOT EXISTS latent_cache (key TEXT PRIMARY KEY, shape TEXT NOT NULL, embedding BLOB NOT NULL,
    latents BLOB NOT NULL, used_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS latent_cache_shape ON latent_cache (shape);
CREATE INDEX IF NOT EXISTS latent_cache_used ON latent_cache (used_at);
"""


class SqliteLatentStore(LatentStore):
    """The latent cache in the stack's SQLite file."""

    def __init__(self, url: str, max_entries: int) -> None:
        super().__init__(max_entries)
        self.db, self._lock = sqlite_open(url, _SCHEMA)

    @serialized
    def nearest(self, shape: str, embedding: np.ndarray) -> Match | None:
        """See :meth:`LatentStore.nearest`."""
        rows = self.db.execute("SELECT key, embedding FROM latent_cache WHERE shape = ?", (shape,)).fetchall()
        found = nearest_of({row[0]: from_bytes(row[1]) for row in rows}, embedding)
        if found is None:
            return None
        key, similarity = found
        row = self.db.execute(
            "UPDATE latent_cache SET used_at = ? WHERE key = ? RETURNING latents", (time.time(), key)
        ).fetchone()
        return Match(similarity, from_bytes(row[0]))

    @serialized
    def put(self, shape: str, embedding: np.ndarray, latents: np.ndarray) -> None:
        """See :meth:`LatentStore.put`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT OR REPLACE INTO latent_cache (key, shape, embedding, latents, used_at) VALUES (?, ?, ?, ?, ?)",
                (entry_key(shape, embedding), shape, to_bytes(embedding), to_bytes(latents), time.time()),
            )
            self.db.execute(
                "DELETE FROM latent_cache WHERE key IN (SELECT key FROM latent_cache ORDER BY used_at DESC, key "
                "LIMIT -1 OFFSET ?)",
                (self.max_entries,),
            )

    @serialized
    def count(self) -> int:
        """See :meth:`LatentStore.count`."""
        return self.db.execute("SELECT COUNT(*) FROM latent_cache").fetchone()[0]
