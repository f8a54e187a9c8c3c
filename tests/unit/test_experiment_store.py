"""The experiment store's contract on SQLite (the embedded default); the same tests run on Redis in integration."""

import pytest

from serve.experiments.sqlite import SqliteExperimentStore
from tests.experiment_store_contract import *  # noqa: F403 - the contract's tests


@pytest.fixture
def store_factory(tmp_path):
    url = f"sqlite:///{tmp_path / 'easel.db'}"
    return lambda: SqliteExperimentStore(url)


@pytest.fixture
def store(store_factory):
    opened = store_factory()
    yield opened
    opened.close()
