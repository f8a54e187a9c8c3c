"""The job store's contract on SQLite (the embedded default); the same tests run on Redis in the integration tests."""

import sqlite3

import pytest

from serve.jobs.model import Owner
from serve.jobs.sqlite import SqliteJobStore
from serve.priority import Priority
from serve.webhooks.sqlite import SqliteOutbox
from tests.job_store_contract import *  # noqa: F403 - the contract's tests
from tests.job_store_contract import REQUEST


@pytest.fixture
def store_factory(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    return lambda: SqliteJobStore(url)


@pytest.fixture
def outbox(tmp_path):
    opened = SqliteOutbox(f"sqlite:///{tmp_path / 'jobs.db'}")  # the job store's file
    yield opened
    opened.close()


@pytest.fixture
def store(store_factory):
    opened = store_factory()
    yield opened
    opened.close()


def test_a_store_made_before_jobs_had_owners_opens_and_keeps_its_jobs(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:  # the jobs table as stores before owners made it
        old.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, priority INTEGER NOT NULL, request TEXT "
            "NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL, step INTEGER NOT NULL DEFAULT 0, "
            "total INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL "
            "DEFAULT 0, worker TEXT, lease_until REAL, result TEXT, error TEXT, seq INTEGER NOT NULL DEFAULT 0)"
        )
        old.execute(
            "INSERT INTO jobs (id, status, priority, request, created_at) VALUES ('job_old', 'queued', 1, '{}', 1)"
        )
    store = SqliteJobStore(f"sqlite:///{path}")
    try:
        assert store.get("job_old").owner is None
        assert store.submit(REQUEST, Priority.NORMAL, owner=Owner("key_a", 1))[0].owner == "key_a"
    finally:
        store.close()
