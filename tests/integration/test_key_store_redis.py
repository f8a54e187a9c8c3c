"""The API key store's contract on a real Redis server (limits shared by every node of a stack)."""

import pytest
import redis

from serve.access.redis import RedisKeyStore
from tests.key_store_contract import *  # noqa: F403 - the contract's tests

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_url):
    redis.Redis.from_url(redis_url).flushdb()  # each test starts from an empty store
    return RedisKeyStore(redis_url)
