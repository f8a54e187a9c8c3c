"""The webhook outbox's contract on SQLite (the embedded default); the integration tests run it on Redis."""

import pytest

from serve.webhooks.sqlite import SqliteOutbox
from tests.outbox_contract import *  # noqa: F403 - the contract's tests


@pytest.fixture
def outbox_factory(tmp_path):
    url = f"sqlite:///{tmp_path / 'easel.db'}"
    return lambda: SqliteOutbox(url)


@pytest.fixture
def outbox(outbox_factory):
    opened = outbox_factory()
    yield opened
    opened.close()
