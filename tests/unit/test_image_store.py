"""The image store's contract on SQLite rows and a folder (the default); Redis and an S3 bucket: integration tests."""

import pytest

from serve.results.blobs import FolderBlobs
from serve.results.sqlite import SqliteImageRecords
from tests.image_store_contract import *  # noqa: F403 - the contract's tests


@pytest.fixture
def records(tmp_path):
    return SqliteImageRecords(f"sqlite:///{tmp_path / 'easel.db'}")


@pytest.fixture
def blobs(tmp_path):
    return FolderBlobs(tmp_path / "images")
