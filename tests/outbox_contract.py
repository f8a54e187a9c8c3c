"""The webhook outbox's contract and the keys' webhook secrets', run against SQLite (unit tests) and a real Redis
server (integration tests).

A test module imports these and defines an ``outbox`` fixture (a fresh, empty outbox), ``outbox_factory``, and
``key_secrets`` (a fresh store of the keys' webhook secrets, whose clock tests may set).
"""

import json
import threading
import time

from serve.webhooks.store import DeliveryStatus, new_delivery


def _added(outbox, source: str = "job_a", url: str = "http://127.0.0.1:9/hook", key_id: str | None = None):
    delivery = new_delivery(url, json.dumps({"id": source}), source, key_id)
    outbox.add(delivery)
    return delivery


def test_a_delivery_is_kept_and_listed_by_its_source(outbox):
    first, second = _added(outbox, "job_a"), _added(outbox, "job_a")
    _added(outbox, "job_b")
    kept = outbox.get(first.id)
    assert kept.url == first.url and kept.body == first.body and kept.status is DeliveryStatus.PENDING
    assert kept.id.startswith("msg_") and kept.attempts == 0 and kept.key_id is None
    assert outbox.get(_added(outbox, "job_c", key_id="k1").id).key_id == "k1"
    assert [d.id for d in outbox.of_source("job_a")] == [first.id, second.id]
    assert outbox.get("msg_missing") is None and outbox.of_source("job_missing") == []


def test_a_claim_leases_the_delivery_due_first_and_counts_its_attempt(outbox):
    first, second = _added(outbox), _added(outbox)
    now = time.time()
    claimed = outbox.claim("w1", 30, 3, now)
    assert claimed.id == first.id and claimed.attempts == 1 and claimed.body == first.body
    assert outbox.claim("w2", 30, 3, now).id == second.id
    assert outbox.claim("w3", 30, 3, now) is None  # both leased


def test_a_delivered_one_is_never_claimed_again(outbox):
    delivery = _added(outbox)
    now = time.time()
    outbox.claim("w1", 30, 3, now)
    assert outbox.record(delivery.id, "w1", "HTTP 204", True, None)
    done = outbox.get(delivery.id)
    assert done.status is DeliveryStatus.DELIVERED and done.outcome == "HTTP 204" and done.finished_at is not None
    assert outbox.claim("w1", 30, 3, now + 3600) is None


def test_a_failed_attempt_is_due_again_at_its_retry_time_under_the_same_id(outbox):
    delivery = _added(outbox)
    now = time.time()
    outbox.claim("w1", 30, 3, now)
    assert outbox.record(delivery.id, "w1", "HTTP 500", False, now + 60)
    assert outbox.get(delivery.id).outcome == "HTTP 500"
    assert outbox.claim("w1", 30, 3, now + 59) is None
    again = outbox.claim("w2", 30, 3, now + 61)
    assert again.id == delivery.id and again.attempts == 2


def test_a_last_failed_attempt_fails_the_delivery(outbox):
    delivery = _added(outbox)
    outbox.claim("w1", 30, 1)
    assert outbox.record(delivery.id, "w1", "HTTP 500", False, None)
    assert outbox.get(delivery.id).status is DeliveryStatus.FAILED
    assert outbox.claim("w1", 30, 5, time.time() + 3600) is None


def test_a_lease_that_runs_out_makes_it_due_again_and_the_old_sender_records_nothing(outbox):
    delivery = _added(outbox)
    now = time.time()
    outbox.claim("dead", 10, 3, now)  # its sender dies mid-delivery
    assert outbox.claim("w2", 10, 3, now + 5) is None  # still leased
    again = outbox.claim("w2", 10, 3, now + 11)
    assert again.id == delivery.id and again.attempts == 2
    assert not outbox.record(delivery.id, "dead", "HTTP 200", True, None)  # not its delivery any more
    assert outbox.record(delivery.id, "w2", "HTTP 200", True, None)
    assert outbox.get(delivery.id).status is DeliveryStatus.DELIVERED


def test_a_lease_run_out_on_the_last_attempt_fails_it(outbox):
    delivery = _added(outbox)
    now = time.time()
    outbox.claim("dead", 10, 1, now)
    assert outbox.claim("w2", 10, 1, now + 11) is None
    failed = outbox.get(delivery.id)
    assert failed.status is DeliveryStatus.FAILED and "last attempt" in failed.outcome


def test_concurrent_claims_never_hand_one_delivery_to_two_senders(outbox, outbox_factory):
    added = {_added(outbox, f"job_{i}").id for i in range(20)}
    taken: list[str] = []
    lock = threading.Lock()

    def sender(name: str) -> None:
        mine = outbox_factory()
        while (delivery := mine.claim(name, 60, 3)) is not None:
            with lock:
                taken.append(delivery.id)
        mine.close()

    threads = [threading.Thread(target=sender, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(taken) == sorted(added)


def test_purge_drops_only_deliveries_done_longer_than_the_retention_ago(outbox):
    done, pending = _added(outbox, "job_a"), _added(outbox, "job_b")
    outbox.claim("w1", 30, 3)
    outbox.record(done.id, "w1", "HTTP 200", True, None)
    assert outbox.purge() == 0
    assert outbox.purge(now=time.time() + outbox.retention_s + 1) == 1
    assert outbox.get(done.id) is None and outbox.of_source("job_a") == []
    assert outbox.get(pending.id).status is DeliveryStatus.PENDING


def test_claims_serve_keys_in_turn_whatever_order_their_deliveries_came_in(outbox):
    many = [_added(outbox, f"job_a{i}", key_id="a") for i in range(6)]  # issue 76: a key's many jobs came first
    late_b, late_open = _added(outbox, "job_b", key_id="b"), _added(outbox, "job_o")
    now = time.time() + 1
    claimed = [outbox.claim(f"w{i}", 30, 3, now) for i in range(5)]
    assert [d.id for d in claimed[:3]] == [many[0].id, late_b.id, late_open.id]  # each key's first, in turn
    assert [d.id for d in claimed[3:]] == [many[1].id, many[2].id]  # then a's, oldest first
    again = _added(outbox, "job_b2", key_id="b")  # b's next one comes before a's older ones: b waited longer
    assert outbox.claim("w9", 30, 3, now).id == again.id


def test_a_claim_skips_the_keys_whose_share_of_slots_is_taken(outbox):
    first_a, _ = _added(outbox, "job_a1", key_id="a"), _added(outbox, "job_a2", key_id="a")
    open_one, b = _added(outbox, "job_o"), _added(outbox, "job_b", key_id="b")
    now = time.time() + 1
    assert outbox.claim("w1", 30, 3, now, skip=frozenset({"b", None})).id == first_a.id
    assert outbox.claim("w1", 30, 3, now, skip=frozenset({"a", None})).id == b.id
    assert outbox.claim("w1", 30, 3, now, skip=frozenset({"a", "b"})).id == open_one.id
    assert outbox.claim("w1", 30, 3, now, skip=frozenset({"a", "b", None})) is None
    assert outbox.claim("w1", 30, 3, now).key_id == "a"


def test_a_key_s_secret_rotates_and_the_one_it_replaced_signs_beside_it_for_the_grace(key_secrets):
    now = [1_800_000_000.0]
    key_secrets.clock = lambda: now[0]
    assert key_secrets.signing("k1") == []
    first = key_secrets.rotate("k1")
    assert key_secrets.signing("k1") == [first] and len(first) == 32
    second = key_secrets.rotate("k1", grace_s=60)
    assert key_secrets.signing("k1") == [second, first] and second != first
    assert key_secrets.signing("k2") == []  # another key's: none
    now[0] += 61
    assert key_secrets.signing("k1") == [second]  # the grace is over
    third = key_secrets.rotate("k1", grace_s=0)
    assert key_secrets.signing("k1") == [third]
