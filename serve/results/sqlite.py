"""The image store's rows in the stack's SQLite file (one machine)."""

from __future__ import annotations

import dataclasses

from serve.results.store import ImageRecords, StoredImage
from serve.stores import serialized, sqlite_open

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_owner ON images (owner, seq);
CREATE INDEX IF NOT EXISTS images_owner_size ON images (owner, size);
CREATE TABLE IF NOT EXISTS images_bytes (id INTEGER PRIMARY KEY CHECK (id = 0), total INTEGER NOT NULL);
INSERT OR IGNORE INTO images_bytes VALUES (0, 0);
"""


class SqliteImageRecords(ImageRecords):
    """Rows in the ``images`` table, their total in ``images_bytes`` (changed in the same transaction)."""

    def __init__(self, url: str) -> None:
        self.db, self._lock = sqlite_open(url, _SCHEMA)

    @serialized
    def add(self, image: StoredImage) -> StoredImage:
        """See :meth:`ImageRecords.add`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self._drop(image.id)
            seq = self.db.execute(
                "INSERT INTO images (id, owner, size, created_at, body) VALUES (?, ?, ?, ?, '') RETURNING seq",
                (image.id, image.owner, image.size, image.created_at),
            ).fetchone()[0]
            image = dataclasses.replace(image, seq=seq)
            self.db.execute("UPDATE images SET body = ? WHERE seq = ?", (image.to_json(), seq))
            self.db.execute("UPDATE images_bytes SET total = total + ? WHERE id = 0", (image.size,))
        return image

    @serialized
    def get(self, image_id: str) -> StoredImage | None:
        """See :meth:`ImageRecords.get`."""
        row = self.db.execute("SELECT body FROM images WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else StoredImage.from_json(row[0])

    @serialized
    def remove(self, image_id: str) -> StoredImage | None:
        """See :meth:`ImageRecords.remove`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            return self._drop(image_id)

    def _drop(self, image_id: str) -> StoredImage | None:
        row = self.db.execute("DELETE FROM images WHERE id = ? RETURNING body", (image_id,)).fetchone()
        if row is None:
            return None
        image = StoredImage.from_json(row[0])
        self.db.execute("UPDATE images_bytes SET total = total - ? WHERE id = 0", (image.size,))
        return image

    @serialized
    def page(self, owner: str | None, after: str | None, limit: int) -> list[StoredImage]:
        """See :meth:`ImageRecords.page`."""
        where, args = [], []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if after is not None:
            where.append("seq < COALESCE((SELECT seq FROM images WHERE id = ?), -1)")
            args.append(after)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.execute(f"SELECT body FROM images {clause} ORDER BY seq DESC LIMIT ?", (*args, limit))
        return [StoredImage.from_json(row[0]) for row in rows]

    @serialized
    def oldest(self, owner: str | None = None) -> StoredImage | None:
        """See :meth:`ImageRecords.oldest`."""
        if owner is None:
            row = self.db.execute("SELECT body FROM images ORDER BY seq LIMIT 1").fetchone()
        else:
            row = self.db.execute("SELECT body FROM images WHERE owner = ? ORDER BY seq LIMIT 1", (owner,)).fetchone()
        return None if row is None else StoredImage.from_json(row[0])

    @serialized
    def held(self, owner: str) -> tuple[int, int]:
        """See :meth:`ImageRecords.held`."""
        query = "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM images WHERE owner = ?"
        count, size = self.db.execute(query, (owner,)).fetchone()
        return count, size

    @serialized
    def total(self) -> int:
        """See :meth:`ImageRecords.total`."""
        return self.db.execute("SELECT total FROM images_bytes WHERE id = 0").fetchone()[0]
