"""The adapter store in the stack's SQLite file (one machine): LoRAs, references and characters."""

from __future__ import annotations

import sqlite3

from serve.adapters.registry import LoraEntry
from serve.adapters.store import (
    AdapterStore,
    Character,
    StoredReference,
    character_taken,
    name_taken,
    stored_name,
)
from serve.stores import serialized, sqlite_open

_SCHEMA = """
CREATE TABLE IF NOT EXISTS loras (name TEXT PRIMARY KEY, entry TEXT NOT NULL);  -- name: store.stored_name
CREATE TABLE IF NOT EXISTS adapter_references (id TEXT PRIMARY KEY, owner TEXT, model TEXT NOT NULL, name TEXT,
    created_at REAL NOT NULL, embeds BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS adapter_references_owner ON adapter_references (owner, created_at);
CREATE TABLE IF NOT EXISTS characters (name TEXT PRIMARY KEY, owner TEXT, entry TEXT NOT NULL);  -- stored_name
"""


class SqliteAdapterStore(AdapterStore):
    """Adapters in the stack's SQLite file: each change one statement (a transaction of its own)."""

    def __init__(self, url: str) -> None:
        self.db, self._lock = sqlite_open(url, _SCHEMA)
        columns = {row["name"] for row in self.db.execute("PRAGMA table_info(adapter_references)")}
        if "held_by" not in columns:  # a store made before characters held references
            self.db.execute("ALTER TABLE adapter_references ADD COLUMN held_by TEXT")

    @serialized
    def add_lora(self, entry: LoraEntry) -> None:
        """See :meth:`AdapterStore.add_lora`."""
        try:
            self.db.execute("INSERT INTO loras (name, entry) VALUES (?, ?)", (_name(entry), entry.to_json()))
        except sqlite3.IntegrityError:
            raise name_taken(entry.name) from None

    @serialized
    def replace_lora(self, entry: LoraEntry) -> LoraEntry | None:
        """See :meth:`AdapterStore.replace_lora`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            old = self._lora(_name(entry))
            if old is not None:
                self.db.execute("UPDATE loras SET entry = ? WHERE name = ?", (entry.to_json(), _name(entry)))
        return old

    @serialized
    def remove_lora(self, name: str, owner: str | None = None) -> LoraEntry | None:
        """See :meth:`AdapterStore.remove_lora`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            old = self._lora(stored_name(name, owner))
            self.db.execute("DELETE FROM loras WHERE name = ?", (stored_name(name, owner),))
        return old

    @serialized
    def lora(self, name: str, owner: str | None = None) -> LoraEntry | None:
        """See :meth:`AdapterStore.lora`."""
        return self._lora(stored_name(name, owner))

    def _lora(self, stored: str) -> LoraEntry | None:
        row = self.db.execute("SELECT entry FROM loras WHERE name = ?", (stored,)).fetchone()
        return None if row is None else LoraEntry.from_json(row["entry"])

    @serialized
    def loras(self) -> list[LoraEntry]:
        """See :meth:`AdapterStore.loras`."""
        return [LoraEntry.from_json(row["entry"]) for row in self.db.execute("SELECT entry FROM loras ORDER BY name")]

    @serialized
    def add_reference(self, reference: StoredReference) -> None:
        """See :meth:`AdapterStore.add_reference`."""
        self.db.execute(
            f"INSERT INTO adapter_references ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (*_fields(reference), reference.embeds_bytes(), reference.held_by),
        )

    @serialized
    def reference(self, reference_id: str) -> StoredReference | None:
        """See :meth:`AdapterStore.reference`."""
        row = self.db.execute(f"SELECT {_COLUMNS} FROM adapter_references WHERE id = ?", (reference_id,)).fetchone()
        return None if row is None else _reference(row)

    @serialized
    def references(self, owner: str | None) -> list[StoredReference]:
        """See :meth:`AdapterStore.references`."""
        query = f"SELECT {_COLUMNS} FROM adapter_references"
        rows = (
            self.db.execute(f"{query} ORDER BY created_at DESC")
            if owner is None
            else self.db.execute(f"{query} WHERE owner = ? ORDER BY created_at DESC", (owner,))
        )
        return [_reference(row) for row in rows]

    @serialized
    def remove_reference(self, reference_id: str) -> bool:
        """See :meth:`AdapterStore.remove_reference`."""
        return self.db.execute("DELETE FROM adapter_references WHERE id = ?", (reference_id,)).rowcount > 0

    @serialized
    def put_character(self, character: Character, replace: bool) -> Character | None:
        """See :meth:`AdapterStore.put_character`."""
        stored = stored_name(character.name, character.owner)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            old = self._character(stored)
            if replace and old is None:
                return None
            if not replace and old is not None:
                raise character_taken(character.name)
            self.db.execute(
                "INSERT OR REPLACE INTO characters (name, owner, entry) VALUES (?, ?, ?)",
                (stored, character.owner, character.to_json()),
            )
        return old

    @serialized
    def character(self, name: str, owner: str | None) -> Character | None:
        """See :meth:`AdapterStore.character`."""
        return self._character(stored_name(name, owner))

    def _character(self, stored: str) -> Character | None:
        row = self.db.execute("SELECT entry FROM characters WHERE name = ?", (stored,)).fetchone()
        return None if row is None else Character.from_json(row["entry"])

    @serialized
    def characters(self, owner: str | None) -> list[Character]:
        """See :meth:`AdapterStore.characters`."""
        rows = (
            self.db.execute("SELECT entry FROM characters ORDER BY name")
            if owner is None
            else self.db.execute("SELECT entry FROM characters WHERE owner = ? ORDER BY name", (owner,))
        )
        return [Character.from_json(row["entry"]) for row in rows]

    @serialized
    def remove_character(self, name: str, owner: str | None) -> Character | None:
        """See :meth:`AdapterStore.remove_character`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            old = self._character(stored_name(name, owner))
            self.db.execute("DELETE FROM characters WHERE name = ?", (stored_name(name, owner),))
        return old

    def close(self) -> None:
        """See :meth:`AdapterStore.close`."""
        self.db.close()


_COLUMNS = "id, owner, model, name, created_at, embeds, held_by"


def _name(entry: LoraEntry) -> str:
    return stored_name(entry.name, entry.owner)


def _fields(reference: StoredReference) -> tuple:
    return reference.id, reference.owner, reference.model, reference.name, reference.created_at


def _reference(row) -> StoredReference:
    embeds = StoredReference.embeds_from(row["embeds"])
    fields = row["id"], row["owner"], row["model"], embeds, row["name"], row["created_at"], row["held_by"]
    return StoredReference(*fields)
