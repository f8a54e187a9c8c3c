"""The webhook outbox's contract on SQLite (the embedded default); the integration tests run it on Redis."""

import pytest

from serve.stores import sqlite_open
from serve.webhooks.sqlite import SCHEMA, SqliteKeySecrets, SqliteOutbox
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


@pytest.fixture
def key_secrets(tmp_path):
    opened = SqliteKeySecrets(f"sqlite:///{tmp_path / 'easel.db'}")
    yield opened
    opened.close()


def test_an_older_stack_s_outbox_gains_its_deliveries_keys_and_keeps_them_due(tmp_path):
    url = f"sqlite:///{tmp_path / 'easel.db'}"
    old_schema = SCHEMA.replace(",\n    key_id TEXT NOT NULL DEFAULT ''", "")
    assert "key_id TEXT" in SCHEMA and "key_id TEXT NOT" not in old_schema
    old, _ = sqlite_open(url, old_schema)
    old.execute(
        "INSERT INTO webhook_deliveries (id, url, body, source, created_at, status, due_at) "
        "VALUES ('msg_old', 'http://127.0.0.1/hook', '{}', 'job_old', 1.0, 'pending', 1.0)"
    )
    old.close()
    outbox = SqliteOutbox(url)
    claimed = outbox.claim("w1", 30, 3)
    assert claimed.id == "msg_old" and claimed.key_id is None
    outbox.close()
