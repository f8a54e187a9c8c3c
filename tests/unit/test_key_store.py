"""The API key store's contract on SQLite (the embedded default); the integration tests run it on Redis."""

import pytest

from serve.access.sqlite import SqliteKeyStore
from tests.key_store_contract import *  # noqa: F403 - the contract's tests


@pytest.fixture
def store(tmp_path):
    return SqliteKeyStore(f"sqlite:///{tmp_path / 'easel.db'}")
