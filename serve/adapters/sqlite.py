"""The adapter store in the stack's SQLite file (one machine)."""

from __future__ import annotations

import sqlite3
import threading

from serve.adapters.registry import LoraEntry
from serve.adapters.store import AdapterStore, name_taken
from serve.stores import serialized, sqlite_connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS loras (name TEXT PRIMARY KEY, entry TEXT NOT NULL);
"""


class SqliteAdapterStore(AdapterStore):
    """Adapters in the stack's SQLite file: each change one statement (a transaction of its own)."""

    def __init__(self, url: str) -> None:
        self.db = sqlite_connect(url)
        self._lock = threading.RLock()
        self.db.executescript(_SCHEMA)

    @serialized
    def add_lora(self, entry: LoraEntry) -> None:
        """See :meth:`AdapterStore.add_lora`."""
        try:
            self.db.execute("INSERT INTO loras (name, entry) VALUES (?, ?)", (entry.name, entry.to_json()))
        except sqlite3.IntegrityError:
            raise name_taken(entry.name) from None

    @serialized
    def replace_lora(self, entry: LoraEntry) -> LoraEntry | None:
        """See :meth:`AdapterStore.replace_lora`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            old = self._lora(entry.name)
            if old is not None:
                self.db.execute("UPDATE loras SET entry = ? WHERE name = ?", (entry.to_json(), entry.name))
        return old

    @serialized
    def remove_lora(self, name: str) -> LoraEntry | None:
        """See :meth:`AdapterStore.remove_lora`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            old = self._lora(name)
            self.db.execute("DELETE FROM loras WHERE name = ?", (name,))
        return old

    @serialized
    def lora(self, name: str) -> LoraEntry | None:
        """See :meth:`AdapterStore.lora`."""
        return self._lora(name)

    def _lora(self, name: str) -> LoraEntry | None:
        row = self.db.execute("SELECT entry FROM loras WHERE name = ?", (name,)).fetchone()
        return None if row is None else LoraEntry.from_json(row["entry"])

    @serialized
    def loras(self) -> list[LoraEntry]:
        """See :meth:`AdapterStore.loras`."""
        return [LoraEntry.from_json(row["entry"]) for row in self.db.execute("SELECT entry FROM loras ORDER BY name")]

    def close(self) -> None:
        """See :meth:`AdapterStore.close`."""
        self.db.close()
