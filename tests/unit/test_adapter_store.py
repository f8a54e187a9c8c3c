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
