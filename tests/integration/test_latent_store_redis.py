"""The latent cache's contract on a real Redis server (a stack across nodes shares one cache)."""

import pytest
import redis

from serve.latent_cache.redis import RedisLatentStore
from tests.latent_store_contract import *  # noqa: F403 - the contract's tests
from tests.latent_store_contract import ENTRIES

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_url):
    redis.Redis.from_url(redis_url).flushdb()  # each test starts from an empty store
    return RedisLatentStore(redis_url, ENTRIES)
