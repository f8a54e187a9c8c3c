"""The API key store's contract, run against SQLite (unit tests) and a real Redis server (integration tests).

A test module imports these and defines a ``store`` fixture (a fresh, empty store) whose clock tests may set.
"""

import pytest

from serve.access.keys import SLOT_LEASE_S, KeyLimits, digest, key_id_of
from serve.routes import Scope

GEN = {Scope.GENERATE}


def _clocked(store, start: float = 1_800_000_000.0) -> list[float]:
    now = [start]
    store.clock = lambda: now[0]
    return now


def test_a_key_is_shown_once_stored_as_a_hash_and_verified(store):
    record, key = store.create("ci", {Scope.GENERATE, Scope.JOBS}, KeyLimits(requests_per_minute=5))
    assert key_id_of(key) == record.id and key.startswith(f"easel-{record.id}-") and len(key) > 40
    assert store.verify(key) == record and record.scopes == {Scope.GENERATE, Scope.JOBS}
    assert store.get(record.id).limits.requests_per_minute == 5
    assert store.verify(key + "x") is None and store.verify(f"easel-{record.id}-wrong") is None
    assert store.verify("not-a-key") is None and store.verify("easel-nobody-secret") is None
    assert digest(key) != key and key not in repr(store.list())


def test_revoke_ends_a_key_at_once_and_active_counts_live_keys(store):
    assert store.active() == 0
    first, key = store.create("a", GEN, KeyLimits())
    second, _ = store.create("b", GEN, KeyLimits())
    assert store.active() == 2 and [k.id for k in store.list()] == [first.id, second.id]
    assert store.revoke(first.id) and store.verify(key) is None and store.active() == 1
    assert store.revoke(first.id)  # already revoked: still a known key
    assert not store.revoke("missing")
    assert store.get(first.id).revoked_at is not None


def test_requests_per_minute_is_a_bucket_that_refills(store):
    now = _clocked(store)
    record, _ = store.create("a", GEN, KeyLimits(requests_per_minute=3))
    decisions = [store.admit(record, 0.0) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [round(d.buckets["requests"].remaining) for d in decisions[:3]] == [2, 1, 0]
    refused = decisions[3]
    assert refused.refused_by == "requests" and refused.retry_after_s == pytest.approx(20.0)
    now[0] += 20.0  # a third of a minute: one request back
    assert store.admit(record, 0.0).allowed and not store.admit(record, 0.0).allowed
    now[0] += 600.0  # never more than the limit
    assert [store.admit(record, 0.0).allowed for _ in range(4)] == [True, True, True, False]


def test_cost_per_minute_takes_each_request_s_cost_and_a_refusal_takes_nothing(store):
    _clocked(store)
    record, _ = store.create("a", GEN, KeyLimits(requests_per_minute=10, cost_per_minute=10.0))
    assert store.admit(record, 6.0).allowed
    refused = store.admit(record, 6.0)
    assert not refused.allowed and refused.refused_by == "cost" and refused.retry_after_s == pytest.approx(12.0)
    assert refused.buckets["requests"].remaining == pytest.approx(8.0)  # what it would have left: nothing taken
    after = store.admit(record, 4.0)
    assert after.allowed and after.buckets["requests"].remaining == pytest.approx(8.0)
    assert after.buckets["cost"].remaining == pytest.approx(0.0)


def test_concurrent_slots_are_held_until_released(store):
    _clocked(store)
    record, _ = store.create("a", GEN, KeyLimits(concurrent=2))
    first, second = store.admit(record, 0.0), store.admit(record, 0.0)
    third = store.admit(record, 0.0)
    assert first.allowed and second.allowed and not third.allowed and third.refused_by == "concurrent"
    store.release(record, first.slot)
    assert store.admit(record, 0.0).allowed


def test_a_slot_never_given_back_expires(store):
    now = _clocked(store)
    record, _ = store.create("a", GEN, KeyLimits(concurrent=1))
    assert store.admit(record, 0.0).allowed and not store.admit(record, 0.0).allowed
    now[0] += 901.0  # its replica died holding it
    assert store.admit(record, 0.0).allowed


def test_a_slot_lives_while_its_holder_renews_it_and_expires_seconds_after_it_stops(store):
    now = _clocked(store)
    record, _ = store.create("a", GEN, KeyLimits(concurrent=2))
    renewed, abandoned = store.admit(record, 0.0), store.admit(record, 0.0)
    assert store.in_flight(record.id) == 2 and not store.admit(record, 0.0).allowed
    for _ in range(3):  # the holder of the first renews it; the holder of the second died
        now[0] += SLOT_LEASE_S * 0.6
        store.renew({renewed.slot: record.id})
    assert store.in_flight(record.id) == 1
    replacement = store.admit(record, 0.0)
    assert replacement.allowed and not store.admit(record, 0.0).allowed
    store.release(record, renewed.slot)
    store.renew({renewed.slot: record.id, abandoned.slot: record.id})  # given back or expired: not taken again
    assert store.in_flight(record.id) == 1
    now[0] += SLOT_LEASE_S + 1  # the replacement's holder stalled past the lease: it is not brought back
    store.renew({replacement.slot: record.id})
    assert store.in_flight(record.id) == 0


def test_requests_per_day_reset_at_utc_midnight(store):
    now = _clocked(store, 1_800_000_000.0 - 1_800_000_000.0 % 86400 + 86390.0)  # 10 s before midnight UTC
    record, _ = store.create("a", GEN, KeyLimits(requests_per_day=2))
    assert [store.admit(record, 0.0).allowed for _ in range(3)] == [True, True, False]
    refused = store.admit(record, 0.0)
    assert refused.refused_by == "requests_per_day" and refused.retry_after_s == pytest.approx(10.0)
    now[0] += 10.0
    assert store.admit(record, 0.0).allowed


def test_keys_do_not_share_buckets(store):
    _clocked(store)
    one, _ = store.create("a", GEN, KeyLimits(requests_per_minute=1))
    two, _ = store.create("b", GEN, KeyLimits(requests_per_minute=1))
    assert store.admit(one, 0.0).allowed and not store.admit(one, 0.0).allowed
    assert store.admit(two, 0.0).allowed


def test_a_key_without_limits_is_always_admitted(store):
    record, _ = store.create("a", GEN, KeyLimits())
    decisions = [store.admit(record, 100.0) for _ in range(50)]
    assert all(d.allowed and not d.buckets and d.slot is None for d in decisions)


def test_update_gives_a_key_new_limits_and_quotas_and_keeps_the_rest(store):
    record, key = store.create("a", GEN, KeyLimits(requests_per_minute=5, concurrent_jobs=2))
    updated = store.update(record.id, KeyLimits(requests_per_minute=5, images=10, image_bytes=1 << 20))
    assert updated.limits == KeyLimits(requests_per_minute=5, images=10, image_bytes=1 << 20)
    assert store.verify(key).limits.images == 10 and store.get(record.id).scopes == record.scopes
    assert updated.name == "a" and updated.created_at == record.created_at
    assert store.update("missing", KeyLimits()) is None and [k.id for k in store.list()] == [record.id]


def test_a_key_stored_with_the_old_quota_fields_still_reads(store):
    record, _ = store.create("a", GEN, KeyLimits(concurrent_jobs=1, stored_items=3, stored_bytes=100))
    limits = store.get(record.id).limits
    assert (limits.concurrent_jobs, limits.stored_items, limits.stored_bytes, limits.loras) == (1, 3, 100, None)
