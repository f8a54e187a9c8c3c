"""The SQLite result cache: its byte bound and least-recently-used eviction, its kept total (no servers)."""

import asyncio
import sqlite3

import pytest

from serve.cache.sqlite import SqliteResultCache


def _summed(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COALESCE(SUM(size), 0) FROM result_cache").fetchone()[0]


def test_the_total_is_the_entries_sum_through_replaces_and_evictions_from_two_processes_caches(tmp_path):
    url = f"sqlite:///{tmp_path / 'easel.db'}"
    first, second = SqliteResultCache(url, 10_000), SqliteResultCache(url, 10_000)  # two replicas, one file
    for i in range(30):
        (first if i % 2 else second).put(f"k{i % 12}", bytes(100 * (i % 7 + 1)))  # replaces from k12 on
    assert first.size() == second.size() == _summed(tmp_path / "easel.db") <= 10_000
    first.put("big", bytes(9_500))  # evicts the least recently used until it fits
    assert first.size() == _summed(tmp_path / "easel.db") <= 10_000
    assert first.get("big") == bytes(9_500)
    first.put("too-big", bytes(10_001))  # larger than the whole cache: not kept
    assert first.get("too-big") is None


def test_the_least_recently_used_entry_goes_first(tmp_path):
    cache = SqliteResultCache(f"sqlite:///{tmp_path / 'easel.db'}", 300)
    for key in ("a", "b", "c"):
        cache.put(key, bytes(100))
    assert cache.get("a") is not None  # a used after b
    cache.put("d", bytes(100))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("d") is not None


def test_a_file_from_before_the_total_was_kept_is_summed_once(tmp_path):
    path = tmp_path / "easel.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE result_cache (key TEXT PRIMARY KEY, value BLOB NOT NULL, size INTEGER NOT NULL, "
            "used_at REAL NOT NULL)"
        )
        db.execute("INSERT INTO result_cache VALUES ('old', ?, 40, 0)", (bytes(40),))
    cache = SqliteResultCache(f"sqlite:///{path}", 1000)
    assert cache.size() == 40
    cache.put("new", bytes(60))
    assert cache.size() == 100 == _summed(path)


def test_a_cache_call_its_store_fails_is_a_miss_and_any_other_error_still_raises():
    from serve.cache import cache_call as cached  # how a generation calls its cache

    def full(key):
        raise sqlite3.OperationalError("database or disk is full")

    def broken(key):
        raise KeyError(key)

    assert asyncio.run(cached(full, "k")) is None  # answered without the cache
    with pytest.raises(KeyError):
        asyncio.run(cached(broken, "k"))


def test_the_key_is_each_caller_s_own_unless_the_stack_shares_its_caches():
    from serve.cache import cache_key, cache_scope
    from serve.protocol.schema import GenerationRequest
    from serve.text_to_image.drawing import Drawing

    def drawing(**fields) -> dict | None:
        request = GenerationRequest.model_validate({"prompt": "a fox", "seed": 3, "user": "u1"} | fields)
        return Drawing.of(request, 64, 64, request.seed if request.seed is not None else 11).identity()

    assert cache_scope("key-a", shared=False) == "key-a" and cache_scope(None, shared=False) == ""
    assert cache_scope("key-a", shared=True) == cache_scope("key-b", shared=True) == ""
    mine, theirs = cache_key("unet", drawing(), "key-a"), cache_key("unet", drawing(), "key-b")
    assert mine != theirs and mine == cache_key("unet", drawing(user="u2", priority="high"), "key-a")  # no image's
    assert cache_key("unet", drawing(), "") == cache_key("unet", drawing(), "")
    assert cache_key("unet", drawing(seed=4), "") != cache_key("unet", drawing(), "")
    assert drawing(seed=None) is None and drawing(output_format="svg") is None  # a drawn seed, an SVG: not cached
