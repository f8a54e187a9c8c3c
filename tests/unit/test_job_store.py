"""The job store's contract on SQLite (the embedded default); the same tests run on Redis in the integration tests."""

import pytest

from serve.jobs.store import SqliteJobStore
from tests.job_store_contract import *  # noqa: F403 - the contract's tests


@pytest.fixture
def store_factory(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    return lambda: SqliteJobStore(url)


@pytest.fixture
def store(store_factory):
    opened = store_factory()
    yield opened
    opened.close()
