"""The webhook outbox's contract on a real Redis server (the store for a stack that spans machines)."""

import pytest
import redis

from serve.webhooks.redis import RedisKeySecrets, RedisOutbox
from tests.outbox_contract import *  # noqa: F403 - the contract's tests

pytestmark = pytest.mark.integration


@pytest.fixture
def outbox_factory(redis_url):
    redis.Redis.from_url(redis_url).flushdb()  # each test starts from an empty store
    return lambda: RedisOutbox(redis_url)


@pytest.fixture
def outbox(outbox_factory):
    opened = outbox_factory()
    yield opened
    opened.close()


@pytest.fixture
def key_secrets(outbox_factory, redis_url):  # the store emptied by outbox_factory
    opened = RedisKeySecrets(redis_url)
    yield opened
    opened.close()
