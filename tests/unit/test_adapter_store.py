"""The adapter store's contract on SQLite (the embedded default); the same tests run on Redis in integration."""

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
