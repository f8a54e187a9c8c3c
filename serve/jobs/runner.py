"""The job runner: claims background jobs from the store and runs each like a synchronous request, holding its lease.

Each Gateway replica runs one (:class:`JobRunner`). It claims every quarter second, and at once when a job is
submitted to its replica or one of its jobs ends, while it has room (``per_priority`` jobs of each
priority at a time, so an urgent job never waits for a slot held by less urgent ones), renews each job's lease
every third of it, and ends the job with the answer, the error, or ``canceled``. A failed attempt is recorded in the
job and retried by :class:`~serve.jobs.retry.RetryPolicy`, the lease held meanwhile: a failure that can pass (Triton
restarting, a replica that died) after a backoff, up to a cap; a refusal (4xx) never; any other failure once (a job
that fails the same way twice fails with that reason). A runner that dies stops renewing; its jobs' leases expire and
another runner runs them again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from serve import metrics
from serve.jobs.model import DEFAULT_LEASE_S, Job, JobStatus
from serve.jobs.retry import ALWAYS_PASSING, Failure, RetryPolicy, failure_of
from serve.jobs.store import JobStore, LeaseLost, attempt_record
from serve.lease_worker import LeaseWorker
from serve.priority import Priority

logger = logging.getLogger(__name__)

POLL_S = 0.25
HOUSEKEEPING_S = 10.0


@dataclass(frozen=True)
class JobLease:
    """What the generation loop needs to report a job's progress: the job, who holds it, for how long."""

    job_id: str
    worker: str
    lease_s: float


class JobCanceled(Exception):
    """The job was canceled while it ran (its loop stops at the next step)."""


Run = Callable[[Job, JobLease], Awaitable[dict]]


class JobRunner(LeaseWorker[Job]):
    """Claims and runs jobs with ``run`` (the job and its lease -> the answer's body) while its replica lives.

    ``passing``: the exceptions ``run`` may raise that can pass (:func:`~serve.jobs.retry.failure_of`).
    """

    poll_s = POLL_S
    housekeeping_s = HOUSEKEEPING_S

    def __init__(
        self,
        store: JobStore,
        run: Run,
        per_priority: int = 4,
        lease_s: float = DEFAULT_LEASE_S,
        passing: tuple[type[BaseException], ...] = ALWAYS_PASSING,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen
    ) -> None:
        super().__init__("runner")
        self.store, self.run, self.per_priority, self.lease_s = store, run, per_priority, lease_s
        self.passing, self.retry = passing, retry
        self.running: Counter[Priority] = Counter()

    async def claim(self) -> Job | None:
        """The most urgent job of a priority with a free slot, leased to this runner (None: none, or no slot)."""
        free = tuple(p for p in Priority if self.running[p] < self.per_priority)
        if not free:
            return None
        job = await asyncio.to_thread(self.store.claim, self.worker, self.lease_s, free)
        if job is not None:
            self.running[job.priority] += 1
            if job.attempts == 1:
                metrics.observe(metrics.JOB_QUEUE_TIME, job.started_at - job.created_at, priority=job.priority.value)
            logger.info("job %s claimed (%s, attempt %d)", job.id, job.priority.value, job.attempts)
        return job

    async def housekeeping(self) -> None:
        """Delete jobs past their retention, and publish the jobs by state and priority."""
        await asyncio.to_thread(self.store.purge)
        counts = await asyncio.to_thread(self.store.counts)
        for status in JobStatus:
            for priority in Priority:
                metrics.set_gauge(metrics.JOBS, counts[(status, priority)], state=status.value, priority=priority.value)

    async def work(self, job: Job) -> None:
        """Run ``job`` to its end (succeeded, failed or canceled), its lease renewed meanwhile."""
        lease = JobLease(job.id, self.worker, self.lease_s)
        heartbeat = asyncio.create_task(self._heartbeat(lease))
        try:
            status, result, error = await self._attempt(job, lease)
            await asyncio.to_thread(self.store.finish, job.id, self.worker, status, result, error)
            logger.info("job %s %s", job.id, status.value)
        except LeaseLost:
            logger.warning("job %s: lease lost; another runner has it", job.id)
        finally:
            heartbeat.cancel()

    def finished(self, job: Job) -> None:
        """``job``'s slot is free again: claim at once."""
        self.running[job.priority] -= 1
        self.wake()

    async def _attempt(self, job: Job, lease: JobLease) -> tuple[JobStatus, dict | None, dict | None]:
        """Run until the job succeeds, is canceled or fails; each failed attempt recorded, retried by the policy."""
        earlier = list(job.failures)  # a job claimed again keeps its earlier runs' failures
        while True:
            try:
                return JobStatus.SUCCEEDED, await self.run(job, lease), None
            except JobCanceled:
                return JobStatus.CANCELED, None, None
            except LeaseLost:
                raise
            except Exception as error:  # noqa: BLE001 - every failure is judged by the retry policy
                failure = failure_of(error, self.passing)
            pause = self.retry.pause(failure, earlier)
            record = attempt_record(failure.error, pause, time.time())
            earlier.append(record)
            canceled = await asyncio.to_thread(self.store.failed_attempt, job.id, self.worker, self.lease_s, record)
            if pause is None:
                logger.warning("job %s failed: %s", job.id, failure.error["message"])
                return JobStatus.FAILED, None, failure.error
            if canceled:
                return JobStatus.CANCELED, None, None
            _retrying(job, failure, len(earlier), pause)
            await asyncio.sleep(pause)

    async def _heartbeat(self, lease: JobLease) -> None:
        """Renew the lease every third of it while the job runs (a step may take longer than the lease)."""
        while True:
            await asyncio.sleep(lease.lease_s / 3)
            try:
                await asyncio.to_thread(self.store.heartbeat, lease.job_id, lease.worker, lease.lease_s)
            except LeaseLost:
                return
            except Exception as error:  # noqa: BLE001 - the store may be briefly unreachable
                logger.warning("job %s heartbeat: %s", lease.job_id, error)


def _retrying(job: Job, failure: Failure, failed: int, pause: float) -> None:
    """Log and count a retry of ``job`` after its ``failed``-th failed attempt, by the failure's reason."""
    logger.warning("job %s failed attempt %d: %s; retrying in %.1f s", job.id, failed, failure.error["message"], pause)
    metrics.count(metrics.JOB_RETRIES, reason=failure.reason)
