"""The job store's contract, run against SQLite (unit tests) and a real Redis server (integration tests).

A test module imports these and defines a ``store`` fixture (a fresh, empty store), and ``outbox``: the webhook
outbox in the same store.
"""

import json
import threading
import time

import pytest

from serve.errors import Conflict, NotFound, Overloaded
from serve.jobs.model import MAX_ATTEMPTS, EventType, JobStatus, Owner, Progress, Stage
from serve.jobs.store import LeaseLost, attempt_record
from serve.priority import Priority

REQUEST = {"prompt": "a red heart icon", "seed": 1}
HOOK = "http://127.0.0.1:9/hook"


def test_submit_get_and_list_newest_first_with_pages_and_status(store):
    jobs = [store.submit({**REQUEST, "seed": i}, Priority.NORMAL)[0] for i in range(5)]
    assert store.get(jobs[0].id).request == {**REQUEST, "seed": 0} and store.get(jobs[0].id).status is JobStatus.QUEUED
    assert store.get("job_missing") is None
    first = store.list(limit=2)
    assert [j.id for j in first] == [jobs[4].id, jobs[3].id]
    assert [j.id for j in store.list(limit=10, after=first[-1].id)] == [jobs[2].id, jobs[1].id, jobs[0].id]
    store.cancel(jobs[1].id)
    assert [j.id for j in store.list(status=JobStatus.CANCELED)] == [jobs[1].id]
    with pytest.raises(NotFound):
        store.list(after="job_missing")


def test_claims_go_most_urgent_first_then_oldest_and_each_job_to_one_worker(store):
    low = store.submit(REQUEST, Priority.LOW)[0]
    normal = store.submit(REQUEST, Priority.NORMAL)[0]
    high = store.submit(REQUEST, Priority.HIGH)[0]
    normal_2 = store.submit(REQUEST, Priority.NORMAL)[0]
    assert store.claim("w1", 30, (Priority.NORMAL, Priority.LOW)).id == normal.id  # high is not this worker's
    order = [store.claim("w1", 30).id for _ in range(3)]
    assert order == [high.id, normal_2.id, low.id] and store.claim("w1", 30) is None
    claimed = store.get(high.id)
    assert claimed.status is JobStatus.RUNNING and claimed.attempts == 1 and claimed.started_at is not None


def test_concurrent_claims_never_hand_one_job_to_two_workers(store, store_factory):
    for _ in range(20):
        store.submit(REQUEST, Priority.NORMAL)
    taken: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        mine = store_factory()
        while (job := mine.claim(name, 30)) is not None:
            with lock:
                taken.append(job.id)
        mine.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(taken) == 20 == len(set(taken))


def test_progress_events_then_exactly_one_final_event(store):
    job = store.submit(REQUEST, Priority.NORMAL)[0]
    store.claim("w", 30)
    for step in (1, 2, 3):
        assert store.progress(job.id, "w", 30, Progress(step, 3, "cHJldmlldw==" if step == 2 else None)) is False
    store.finish(job.id, "w", JobStatus.SUCCEEDED, {"seed": 1, "data": [{"b64_json": "eA=="}]}, None)
    events = store.events(job.id)
    assert [e.type for e in events] == [EventType.RUNNING, *[EventType.PROGRESS] * 3, EventType.COMPLETED]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5] and events[2].data["preview"] == "cHJldmlldw=="
    assert events[-1].data["data"] == [{"b64_json": "eA=="}]
    assert [e.seq for e in store.events(job.id, after=3)] == [4, 5]
    assert store.get(job.id).seq == 5  # a job read says which event its state is as of
    done = store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.step == 3 and done.finished_at is not None
    assert done.to_api()["data"] == [{"b64_json": "eA=="}]
    with pytest.raises(LeaseLost):  # over: nobody holds it
        store.progress(job.id, "w", 30, Progress(4, 3))


def test_a_job_s_progress_says_its_stage_and_a_retried_attempt_starts_denoising_again(store):
    """A video's interpolation is a stage of its own: the state and each event say what step and total count."""
    job = store.submit(REQUEST, Priority.NORMAL)[0]
    store.claim("w", 30)
    store.progress(job.id, "w", 30, Progress(3, 3))
    assert store.get(job.id).to_api()["progress"] == {"step": 3, "total": 3, "stage": "denoise"}
    store.progress(job.id, "w", 30, Progress(1, 7, stage=Stage.INTERPOLATE))
    assert store.get(job.id).to_api()["progress"] == {"step": 1, "total": 7, "stage": "interpolate"}
    assert [e.data.get("stage") for e in store.events(job.id)] == [None, "denoise", "interpolate"]
    store.progress(job.id, "w", 0.01, Progress(2, 7, stage=Stage.INTERPOLATE))  # its worker dies: the lease runs out
    time.sleep(0.05)
    again = store.claim("w2", 30)
    assert again.id == job.id and (again.step, again.stage) == (0, Stage.DENOISE)


def test_cancel_a_queued_job_at_once_a_running_one_at_its_next_step_a_finished_one_never(store):
    queued = store.submit(REQUEST, Priority.NORMAL)[0]
    assert store.cancel(queued.id).status is JobStatus.CANCELED
    assert [e.type for e in store.events(queued.id)] == [EventType.CANCELED]
    assert store.claim("w", 30) is None  # a canceled job never runs
    running = store.submit(REQUEST, Priority.NORMAL)[0]
    store.claim("w", 30)
    assert store.cancel(running.id).cancel_requested
    assert store.progress(running.id, "w", 30, Progress(1, 10)) is True
    assert store.heartbeat(running.id, "w", 30) is True
    store.finish(running.id, "w", JobStatus.CANCELED, None, None)
    assert store.get(running.id).status is JobStatus.CANCELED
    with pytest.raises(Conflict):
        store.cancel(running.id)
    with pytest.raises(NotFound):
        store.cancel("job_missing")


def test_an_expired_lease_lets_another_worker_run_the_job_again_and_the_first_one_lose_it(store):
    job = store.submit(REQUEST, Priority.NORMAL)[0]
    store.claim("dead", 0.2)
    store.progress(job.id, "dead", 0.2, Progress(3, 10))
    assert store.claim("alive", 30) is None  # the lease still holds
    time.sleep(0.3)
    again = store.claim("alive", 30)
    assert again.id == job.id and again.attempts == 2 and again.step == 0
    with pytest.raises(LeaseLost):
        store.progress(job.id, "dead", 30, Progress(4, 10))
    with pytest.raises(LeaseLost):
        store.finish(job.id, "dead", JobStatus.SUCCEEDED, {}, None)
    store.finish(job.id, "alive", JobStatus.SUCCEEDED, {"data": []}, None)
    assert [e.type for e in store.events(job.id)].count(EventType.RUNNING) == 2


def test_a_job_whose_workers_keep_dying_fails_and_a_cancel_asked_meanwhile_ends_it(store):
    doomed = store.submit(REQUEST, Priority.NORMAL)[0]
    for _ in range(MAX_ATTEMPTS):
        assert store.claim("w", 0.05).id == doomed.id
        time.sleep(0.1)
    assert store.claim("w", 30) is None
    failed = store.get(doomed.id)
    assert failed.status is JobStatus.FAILED and str(MAX_ATTEMPTS) in failed.error["message"]
    orphan = store.submit(REQUEST, Priority.NORMAL)[0]
    store.claim("w", 0.05)
    store.cancel(orphan.id)
    time.sleep(0.1)
    assert store.claim("w", 30) is None and store.get(orphan.id).status is JobStatus.CANCELED


def test_failed_attempts_are_kept_in_the_job_and_its_events_by_the_worker_that_holds_it(store):
    job = store.submit(REQUEST, Priority.NORMAL)[0]
    store.claim("w", 30)
    first = attempt_record({"message": "Triton is restarting", "code": 503}, 2.0, 1.0)
    second = attempt_record({"message": "ValueError: no", "code": 500}, None, 2.0)
    assert store.failed_attempt(job.id, "w", 30, first) is False
    with pytest.raises(LeaseLost):
        store.failed_attempt(job.id, "another", 30, second)
    store.cancel(job.id)
    assert store.failed_attempt(job.id, "w", 30, second) is True  # the cancel asked meanwhile
    store.finish(job.id, "w", JobStatus.FAILED, None, second["error"])
    failed = store.get(job.id)
    assert failed.failures == (first, second) and failed.to_api()["failed_attempts"] == [first, second]
    events = [(e.type, e.data) for e in store.events(job.id) if e.type is EventType.ATTEMPT_FAILED]
    assert events == [(EventType.ATTEMPT_FAILED, first), (EventType.ATTEMPT_FAILED, second)]
    assert store.get(store.submit(REQUEST, Priority.LOW)[0].id).to_api()["failed_attempts"] == []


def test_idempotency_key_returns_the_same_job_for_the_same_body_and_conflicts_for_another(store):
    first, created = store.submit(REQUEST, Priority.NORMAL, ("key-1", "hash-a"))
    again, created_again = store.submit(REQUEST, Priority.NORMAL, ("key-1", "hash-a"))
    assert created and not created_again and again.id == first.id
    with pytest.raises(Conflict):
        store.submit(REQUEST, Priority.NORMAL, ("key-1", "hash-b"))
    assert store.submit(REQUEST, Priority.NORMAL, ("key-2", "hash-b"))[0].id != first.id


def test_an_owner_has_at_most_its_cap_of_unfinished_jobs_and_sees_only_its_own(store):
    capped = Owner("key_a", max_open=2)
    first, second = (store.submit(REQUEST, Priority.NORMAL, owner=capped)[0] for _ in range(2))
    assert first.owner == "key_a" and store.get(first.id).owner == "key_a"
    with pytest.raises(Overloaded) as refused:
        store.submit(REQUEST, Priority.NORMAL, owner=capped)
    assert refused.value.field == "concurrent_jobs" and refused.value.retry_after_s > 0
    other = store.submit(REQUEST, Priority.NORMAL, owner=Owner("key_b", max_open=1))[0]  # another key's own cap
    unowned = store.submit(REQUEST, Priority.NORMAL)[0]
    # A replayed submission is not a new job; a running one still counts; a finished or canceled one frees a place.
    store.claim("w", 30, (Priority.NORMAL,))
    with pytest.raises(Overloaded):
        store.submit(REQUEST, Priority.NORMAL, owner=capped)
    store.finish(first.id, "w", JobStatus.SUCCEEDED, {"data": []}, None)
    third = store.submit(REQUEST, Priority.NORMAL, ("idem", "hash"), owner=capped)[0]
    assert store.submit(REQUEST, Priority.NORMAL, ("idem", "hash"), owner=capped)[0].id == third.id
    store.cancel(second.id)
    store.submit(REQUEST, Priority.NORMAL, owner=capped)
    assert {j.id for j in store.list(owner="key_b")} == {other.id}
    assert len(store.list(owner="key_a")) == 4 and unowned.id in {j.id for j in store.list()}
    # Paging after another owner's job is as after a job that does not exist: the same refusal, whatever the id.
    refusals = []
    for after in (first.id, "job_" + "0" * 24):
        with pytest.raises(NotFound) as refused:
            store.list(owner="key_b", after=after)
        refusals.append((refused.value.field, refused.value.message.replace(after, "ID")))
    assert refusals[0] == refusals[1]
    assert [j.id for j in store.list(owner="key_b", after=other.id)] == []  # its own


def test_concurrent_submissions_never_pass_the_cap(store, store_factory):
    capped = Owner("key_a", max_open=3)
    made: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        mine = store_factory()
        for _ in range(5):
            try:
                job = mine.submit(REQUEST, Priority.NORMAL, owner=capped)[0]
            except Overloaded:
                continue
            with lock:
                made.append(job.id)
        mine.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 3 and len(store.list(owner="key_a")) == 3


def test_finished_jobs_are_purged_after_the_retention_and_counted_by_status_and_priority(store):
    old = store.submit(REQUEST, Priority.HIGH)[0]
    store.cancel(old.id)
    kept = store.submit(REQUEST, Priority.LOW)[0]
    counts = store.counts()
    assert counts[(JobStatus.CANCELED, Priority.HIGH)] == 1 and counts[(JobStatus.QUEUED, Priority.LOW)] == 1
    assert store.purge(now=time.time() + store.retention_s + 1) == 1
    assert store.get(old.id) is None and store.events(old.id) == [] and store.get(kept.id) is not None


def test_a_job_naming_a_webhook_ends_with_one_delivery_of_its_final_object_whichever_way_it_ends(store, outbox):
    hooked = {**REQUEST, "webhook": HOOK}
    done, canceled = (store.submit(hooked, Priority.NORMAL, owner=Owner("key_a"))[0] for _ in range(2))
    dying = store.submit(hooked, Priority.NORMAL)[0]  # an open API's: no key
    quiet = store.submit(REQUEST, Priority.NORMAL)[0]
    store.cancel(canceled.id)  # queued: canceled at once
    assert store.claim("w", 30).id == done.id
    assert outbox.of_source(done.id) == []  # not before it ends
    store.finish(done.id, "w", JobStatus.SUCCEEDED, {"data": [{"b64_json": "AA=="}]}, None)
    for _ in range(MAX_ATTEMPTS):  # its workers keep dying: it fails as the next claim finds it
        assert store.claim("w", 0.05).id == dying.id
        time.sleep(0.1)
    store.claim("w", 30)  # the quiet one: no webhook
    store.finish(quiet.id, "w", JobStatus.SUCCEEDED, {"data": []}, None)
    for job in (done, canceled, dying):
        [delivery] = outbox.of_source(job.id)
        assert delivery.url == HOOK and delivery.key_id == job.owner  # signed with its key's secret
        assert json.loads(delivery.body) == store.get(job.id).to_api() | {"webhook_url": HOOK}  # the URL signed too
    assert [json.loads(outbox.of_source(j.id)[0].body)["status"] for j in (done, canceled, dying)] == [
        "succeeded",
        "canceled",
        "failed",
    ]
    assert outbox.of_source(quiet.id) == []
