"""The adapter store's contract on SQLite (the embedded default); the same tests run on Redis in integration."""

import json

import pytest

from serve.adapters.sqlite import SqliteAdapterStore
from tests.adapter_store_contract import *  # noqa: F403 - the contract's tests


@pytest.fixture
def store_factory(tmp_path):
    url = f"sqlite:///{tmp_path / 'easel.db'}"
    return lambda: SqliteAdapterStore(url)


@pytest.fixture
def store(store_factory):
    opened = store_factory()
    yield opened
    opened.close()


def test_a_row_kept_before_loras_had_owners_reads_as_the_shared_set_s(store):
    row = {"name": "old", "status": "ready", "rank": 4, "prepared": "/run/loras/" + "0" * 24 + ".safetensors"}
    store.db.execute("INSERT INTO loras (name, entry) VALUES (?, ?)", ("old", json.dumps(row)))
    entry = store.lora("old")
    assert entry.owner is None and entry.visibility == "shared" and entry.key == "0" * 24
    assert store.lora("old", "ann") is None and [e.name for e in store.loras()] == ["old"]


def test_a_file_made_before_characters_held_references_reads_on(tmp_path):
    import sqlite3

    import numpy as np

    from serve.adapters.store import StoredReference

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE adapter_references (id TEXT PRIMARY KEY, owner TEXT, model TEXT NOT NULL, name TEXT, "
            "created_at REAL NOT NULL, embeds BLOB NOT NULL)"
        )
        embeds = StoredReference("ref_o", "ann", "m", np.ones((1, 1, 4), np.float32)).embeds_bytes()
        db.execute("INSERT INTO adapter_references VALUES ('ref_o', 'ann', 'm', NULL, 1.0, ?)", (embeds,))
    store = SqliteAdapterStore(f"sqlite:///{path}")
    try:
        kept = store.reference("ref_o")
        assert kept.held_by is None and kept.embeds.shape == (1, 1, 4) and store.characters("ann") == []
    finally:
        store.close()
