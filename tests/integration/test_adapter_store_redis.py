"""The adapter store's contract on a real Redis server (uploaded LoRAs shared by every node of a stack)."""

import pytest
import redis

from serve.adapters.redis import RedisAdapterStore
from tests.adapter_store_contract import *  # noqa: F403 - the contract's tests

pytestmark = pytest.mark.integration


@pytest.fixture
def store_factory(redis_url):
    redis.Redis.from_url(redis_url).flushdb()  # each test starts from an empty store
    return lambda: RedisAdapterStore(redis_url)


@pytest.fixture
def store(store_factory):
    opened = store_factory()
    yield opened
    opened.close()
