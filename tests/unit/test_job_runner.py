"""The job runner retries what is not the job's fault, logging and counting each retry with its reason."""

import asyncio
import logging

from serve import metrics
from serve.errors import InvalidInput, NotReady
from serve.jobs import runner as runner_module
from serve.jobs.model import JobStatus
from serve.jobs.runner import JobRunner
from serve.jobs.sqlite import SqliteJobStore
from serve.priority import Priority


def test_each_retry_is_logged_and_counted_with_its_reason_and_a_refusal_is_not_retried(tmp_path, monkeypatch, caplog):
    store = SqliteJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    retried, failed = (store.submit({"prompt": prompt}, Priority.NORMAL)[0] for prompt in ("a", "b"))
    faults = [NotReady("Triton is restarting", retry_after_s=None), ConnectionResetError("replica died")]
    counted = []
    monkeypatch.setattr(runner_module, "RETRY_S", 0.01)
    monkeypatch.setattr(metrics, "count", lambda spec, value=1.0, **tags: counted.append((spec.name, tags)))

    async def run(job, lease):
        if job.id == failed.id:
            raise InvalidInput("prompt is blank", "prompt")
        if faults:
            raise faults.pop(0)
        return {"data": []}

    async def main():
        runner = JobRunner(store, run)
        for _ in range(2):
            await runner._run(store.claim(runner.worker, 30))

    with caplog.at_level(logging.WARNING, logger=runner_module.__name__):
        asyncio.run(main())
    assert store.get(retried.id).status is JobStatus.SUCCEEDED and store.get(failed.id).status is JobStatus.FAILED
    assert counted == [
        ("easel_job_retries", {"reason": "503"}),
        ("easel_job_retries", {"reason": "ConnectionResetError"}),
    ]
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2 and "Triton is restarting" in retries[0] and "replica died" in retries[1]
