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


def test_a_backup_of_a_redis_store_dumps_easel_s_keys_and_restores_them(store, redis_url, tmp_path):
    """``easel backup`` on a Redis store: each ``easel:*`` key DUMPed with its time to live, RESTOREd by a restore."""
    from serve.access.keys import KeyLimits
    from serve.routes import Scope
    from serve.stack.backup import REDIS_FILE, backup, restore

    made = [store.create(name, {Scope.ADMIN}, KeyLimits())[0] for name in ("ops", "painter")]
    client = redis.Redis.from_url(redis_url)
    client.set("not-easel", "kept out")
    client.set("easel:expiring", "x", ex=600)
    manifest = backup(tmp_path / "run", tmp_path / "backup", redis_url)
    assert manifest["store"]["kind"] == "redis" and manifest["store"]["keys"] >= 3
    assert b"not-easel" not in (tmp_path / "backup" / REDIS_FILE).read_bytes()
    client.flushdb()
    restore(tmp_path / "backup", tmp_path / "fresh", redis_url)
    assert {k.id for k in RedisKeyStore(redis_url).list()} == {k.id for k in made}
    assert client.get("not-easel") is None and 0 < client.ttl("easel:expiring") <= 600


def test_a_backup_of_a_redis_store_is_one_instant_of_it_while_writers_move_items_between_keys(redis_url, tmp_path):
    """A writer moves items from one ``easel:*`` list to another in transactions (their total is 200 at every
    instant); each of five backups taken meanwhile restores to lists holding 200 together."""
    import threading

    from serve.stack.backup import backup, restore

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.rpush("easel:from", *range(200))
    stop = threading.Event()

    def move() -> None:
        source, target = "easel:from", "easel:to"
        while not stop.is_set():
            with client.pipeline(transaction=True) as pipe:
                pipe.lmove(source, target)
                if pipe.execute()[0] is None:  # emptied: back the other way
                    source, target = target, source

    writer = threading.Thread(target=move)
    writer.start()
    try:
        totals = []
        for copy in range(5):
            backup(tmp_path / "run", tmp_path / f"backup{copy}", redis_url)
        stop.set()
        writer.join()
        for copy in range(5):
            client.flushdb()
            restore(tmp_path / f"backup{copy}", tmp_path / f"fresh{copy}", redis_url)
            totals.append(client.llen("easel:from") + client.llen("easel:to"))
    finally:
        stop.set()
        writer.join()
    assert totals == [200] * 5
