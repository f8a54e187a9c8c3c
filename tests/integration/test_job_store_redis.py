"""The job store's contract on a real Redis server (the store for a stack that spans machines)."""

import pytest
import redis

from serve.jobs.redis import RedisJobStore
from serve.webhooks.redis import RedisOutbox
from tests.job_store_contract import *  # noqa: F403 - the contract's tests

pytestmark = pytest.mark.integration


@pytest.fixture
def store_factory(redis_url):
    redis.Redis.from_url(redis_url).flushdb()  # each test starts from an empty store
    return lambda: RedisJobStore(redis_url)


@pytest.fixture
def outbox(store_factory, redis_url):
    opened = RedisOutbox(redis_url)
    yield opened
    opened.close()


@pytest.fixture
def store(store_factory):
    opened = store_factory()
    yield opened
    opened.close()
