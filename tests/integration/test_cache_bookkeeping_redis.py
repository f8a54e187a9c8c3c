"""The Redis caches' bookkeeping under eight concurrent writers (replicas): what is recorded is what is held."""

import random
import threading

import numpy as np
import pytest
import redis

from serve.cache.redis import RedisResultCache
from serve.latent_cache.redis import RedisLatentStore

pytestmark = pytest.mark.integration

WRITERS = 8
PUTS = 200


def _concurrently(write) -> None:
    """``write(rng)`` in :data:`WRITERS` threads at once, each with its own random stream; raises what one raised."""
    start, failures = threading.Barrier(WRITERS), []

    def writer(seed: int) -> None:
        start.wait()
        try:
            write(random.Random(seed))
        except Exception as error:  # noqa: BLE001 - raised below, in the test's thread
            failures.append(error)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []


def _names(client: redis.Redis, pattern: str, prefix: str) -> set[str]:
    return {key.decode().removeprefix(prefix) for key in client.scan_iter(pattern)}


def test_the_result_caches_recorded_size_is_the_bytes_it_holds_after_eight_writers(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    bound = 20_000

    def write(rng: random.Random) -> None:
        cache = RedisResultCache(redis_url, bound)  # one per writer, as each replica has its own
        for _ in range(PUTS):
            key = f"k{rng.randrange(30)}"
            if rng.random() < 0.5:
                cache.get(key)
            else:
                cache.put(key, bytes(rng.randrange(100, 4000)))

    _concurrently(write)
    values = _names(client, "easel:cache:value:*", "easel:cache:value:")
    held = sum(client.strlen(f"easel:cache:value:{key}") for key in values)
    sizes = {key.decode(): int(size) for key, size in client.hgetall("easel:cache:sizes").items()}
    used = {key.decode() for key in client.zrange("easel:cache:used", 0, -1)}
    assert RedisResultCache(redis_url, bound).size() == held == sum(sizes.values()) <= bound
    assert values == set(sizes) == used and len(values) > 5


def test_the_latent_caches_index_names_exactly_the_entries_it_holds_after_eight_writers(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    bound, shapes = 12, ("64x64", "128x128", "64x128")
    embeddings = [v / np.linalg.norm(v) for v in np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)]

    def write(rng: random.Random) -> None:
        store = RedisLatentStore(redis_url, bound)
        for _ in range(PUTS):
            shape, embedding = rng.choice(shapes), embeddings[rng.randrange(len(embeddings))]
            if rng.random() < 0.25:
                store.nearest(shape, embedding)
            else:
                store.put(shape, embedding, np.full((1, 4, 8, 8), rng.random(), np.float32))

    _concurrently(write)
    entries = _names(client, "easel:latents:entry:*", "easel:latents:entry:")
    indexed = {key.decode(): shape for shape in shapes for key in client.smembers(f"easel:latents:shape:{shape}")}
    used = {key.decode() for key in client.zrange("easel:latents:used", 0, -1)}
    assert RedisLatentStore(redis_url, bound).count() == len(entries) == bound
    assert entries == set(indexed) == used
    assert all(client.hget(f"easel:latents:entry:{key}", "shape").decode() == indexed[key] for key in entries)


def test_a_result_cache_from_before_the_total_was_kept_is_summed_once(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.set("easel:cache:value:old", bytes(40))
    client.hset("easel:cache:sizes", "old", 40)
    client.zadd("easel:cache:used", {"old": 0})
    cache = RedisResultCache(redis_url, 1000)
    assert cache.size() == 40
    cache.put("new", bytes(60))
    assert cache.size() == 100 and cache.get("old") == bytes(40)
