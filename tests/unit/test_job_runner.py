"""The job runner retries what can pass with a capped backoff, fails what the same input raises again, and records
each failed attempt in the job; each retry is logged and counted with its reason."""

import asyncio
import logging

import pytest

from serve import metrics
from serve.errors import InvalidInput, NotReady
from serve.jobs import runner as runner_module
from serve.jobs.model import EventType, JobStatus
from serve.jobs.retry import Failure, RetryPolicy, failure_of
from serve.jobs.runner import JobRunner
from serve.jobs.sqlite import SqliteJobStore
from serve.priority import Priority

FAST = RetryPolicy(first_s=0.001, factor=2.0, max_s=0.004, max_retries=4)


@pytest.fixture
def store(tmp_path):
    return SqliteJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")


def _run_all(store, run, jobs: int, **runner) -> None:
    async def main():
        job_runner = JobRunner(store, run, retry=FAST, **runner)
        for _ in range(jobs):
            await job_runner.work(store.claim(job_runner.worker, 30))

    asyncio.run(main())


def test_each_retry_is_logged_and_counted_with_its_reason_and_a_refusal_is_not_retried(store, monkeypatch, caplog):
    retried, refused = (store.submit({"prompt": prompt}, Priority.NORMAL)[0] for prompt in ("a", "b"))
    faults = [NotReady("Triton is restarting", retry_after_s=None), ConnectionResetError("replica died")]
    counted = []
    monkeypatch.setattr(metrics, "count", lambda spec, value=1.0, **tags: counted.append((spec.name, tags)))

    async def run(job, lease):
        if job.id == refused.id:
            raise InvalidInput("prompt is blank", "prompt")
        if faults:
            raise faults.pop(0)
        return {"data": []}

    with caplog.at_level(logging.WARNING, logger=runner_module.__name__):
        _run_all(store, run, 2)
    assert store.get(retried.id).status is JobStatus.SUCCEEDED
    assert [a["error"]["message"] for a in store.get(retried.id).failures] == [
        "Triton is restarting",
        "the generation failed: ConnectionResetError: replica died",
    ]
    failed = store.get(refused.id)
    assert failed.status is JobStatus.FAILED and failed.error["param"] == "prompt"
    assert [a["retry_in_s"] for a in failed.failures] == [None]  # one attempt: the same input is refused again
    assert counted == [
        ("easel_job_retries", {"reason": "503"}),
        ("easel_job_retries", {"reason": "ConnectionResetError"}),
    ]
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2 and "Triton is restarting" in retries[0] and "replica died" in retries[1]


def test_a_job_that_fails_the_same_way_twice_is_failed_with_its_reason(store):
    job = store.submit({"prompt": "a video"}, Priority.NORMAL)[0]
    calls = []

    async def run(job, lease):
        calls.append(job.id)
        raise ValueError("too many values to unpack (expected 4)")

    _run_all(store, run, 1)
    failed = store.get(job.id)
    assert len(calls) == 2 and failed.status is JobStatus.FAILED
    reason = "the generation failed: ValueError: too many values to unpack (expected 4)"
    assert failed.error == {"message": reason, "type": "server_error", "param": None, "code": 500}
    assert [a["retry_in_s"] is None for a in failed.to_api()["failed_attempts"]] == [False, True]
    types = [e.type for e in store.events(job.id)]
    assert types[-3:] == [EventType.ATTEMPT_FAILED, EventType.ATTEMPT_FAILED, EventType.FAILED]


def test_failures_that_can_pass_are_retried_with_a_growing_pause_up_to_the_cap(store):
    job = store.submit({"prompt": "a"}, Priority.NORMAL)[0]

    async def run(job, lease):
        raise NotReady("Triton is restarting", retry_after_s=None)

    _run_all(store, run, 1)
    failed = store.get(job.id)
    assert failed.status is JobStatus.FAILED and failed.error["message"] == "Triton is restarting"
    pauses = [a["retry_in_s"] for a in failed.failures]
    assert pauses == [0.001, 0.002, 0.004, 0.004, None]  # FAST's backoff, capped; its 4 retries, then failed


def test_a_ray_failure_passed_as_passing_is_retried_and_a_different_unknown_one_is_tried_again(store):
    job = store.submit({"prompt": "a"}, Priority.NORMAL)[0]
    faults = [KeyError("replica lost"), RuntimeError("engine A"), RuntimeError("engine B")]

    async def run(job, lease):
        if faults:
            raise faults.pop(0)
        return {"data": []}

    _run_all(store, run, 1, passing=(KeyError,))
    done = store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED and len(done.failures) == 3


def test_the_policy_s_pause_backs_off_honours_retry_after_and_stops():
    policy = RetryPolicy(first_s=2.0, factor=2.0, max_s=30.0, max_retries=8)
    passing = failure_of(NotReady("Triton is restarting", retry_after_s=5))
    assert passing.can_pass and not passing.refused
    earlier = []
    pauses = []
    while (pause := policy.pause(passing, earlier)) is not None:
        pauses.append(pause)
        earlier.append({"error": {"code": 503, "message": f"other {len(earlier)}"}})
    assert pauses == [5.0, 5.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    refused = failure_of(InvalidInput("size: too big", "size"))
    assert refused.refused and policy.pause(refused, []) is None
    unknown = failure_of(ValueError("no"))
    assert isinstance(unknown, Failure) and not unknown.can_pass and policy.pause(unknown, []) == 2.0
    assert policy.pause(unknown, [{"error": dict(unknown.error)}]) is None
    assert failure_of(TimeoutError("slow")).can_pass
