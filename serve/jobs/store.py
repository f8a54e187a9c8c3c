"""The job store's contract: jobs, their events, idempotency keys and worker leases (:class:`JobStore`).

Two implementations keep it, tested against the same tests: :mod:`serve.jobs.sqlite` and :mod:`serve.jobs.redis`
(:func:`serve.jobs.open_job_store` picks one by URL). A job is claimed atomically by
one worker with a lease; the worker renews it while it runs (:meth:`JobStore.progress`, :meth:`JobStore.heartbeat`);
a worker that dies stops renewing, its lease expires and the job is claimed again (at most
:data:`~serve.jobs.model.MAX_ATTEMPTS` times). Jobs are claimed highest priority first, then oldest first. Every
change a client can watch appends an event with the next sequence number, which is how ``/events`` streams.
A job submitted with a key has that key as its :class:`~serve.jobs.model.Owner`: the cap on the key's unfinished
jobs is checked in the same transaction that adds one, so it holds across replicas. A job whose request names a
``webhook`` has its delivery (:func:`webhook_delivery`) written to the outbox (:mod:`serve.webhooks`) by the same
transaction that ends it, whichever way it ends.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable

from serve.errors import Conflict, NotFound
from serve.jobs.model import (
    DEFAULT_RETENTION_S,
    FINAL_EVENTS,
    MAX_ATTEMPTS,
    Event,
    EventType,
    Job,
    JobStatus,
    Owner,
    Progress,
    new_job_id,
)
from serve.priority import Priority
from serve.webhooks.store import Delivery, new_delivery


class LeaseLost(RuntimeError):
    """The worker no longer holds the job (its lease expired and another worker took it, or it was deleted)."""


class JobStore(ABC):
    """What the API, the job runner and the generation loop need from the store."""

    def __init__(self, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.retention_s = retention_s

    def submit(
        self,
        request: dict,
        priority: Priority,
        idempotency: tuple[str, str] | None = None,
        owner: Owner | None = None,
    ) -> tuple[Job, bool]:
        """Queue a job; with ``idempotency`` (key, body hash) the key's earlier job is returned instead.

        Returns the job and whether it was created. A key used before for another body is a :class:`Conflict`; an
        ``owner`` with as many unfinished jobs as it may have gets :class:`~serve.errors.Overloaded`. The checks and
        the new job are one transaction of the backend (:meth:`_atomically`), so they hold across replicas.
        """

        def add(tx) -> tuple[str, bool]:
            if idempotency is not None:
                earlier = self._idempotency_record(tx, idempotency[0])
                if earlier is not None:
                    body_hash, earlier_id = earlier
                    if body_hash != idempotency[1]:
                        raise idempotency_conflict(idempotency[0])
                    if self._exists(tx, earlier_id):
                        return earlier_id, False
            if owner is not None:
                owner.refuse_if_full(self._unfinished(tx, owner.key_id))
            job_id = new_job_id()
            self._add(tx, job_id, request, priority, owner)
            if idempotency is not None:
                self._record_idempotency(tx, idempotency, job_id)
            return job_id, True

        job_id, created = self._atomically(add, idempotency, owner)
        return self.get(job_id), created

    # -- what :meth:`submit` asks of a backend, inside its transaction ``tx`` ----------------------------------------

    @abstractmethod
    def _atomically(self, change: Callable, idempotency: tuple[str, str] | None, owner: Owner | None):
        """Run ``change(tx)`` as one transaction that the key's and the owner's concurrent submissions cannot split."""

    @abstractmethod
    def _idempotency_record(self, tx, key: str) -> tuple[str, str] | None:
        """The body hash and job id recorded for an idempotency key, or None."""

    @abstractmethod
    def _exists(self, tx, job_id: str) -> bool:
        """Whether the job is still kept."""

    @abstractmethod
    def _unfinished(self, tx, key_id: str) -> int:
        """How many queued or running jobs the API key ``key_id`` owns."""

    @abstractmethod
    def _add(self, tx, job_id: str, request: dict, priority: Priority, owner: Owner | None) -> None:
        """Store a new queued job."""

    @abstractmethod
    def _record_idempotency(self, tx, idempotency: tuple[str, str], job_id: str) -> None:
        """Record that the key (with its body hash) made ``job_id``, replacing an earlier record."""

    @abstractmethod
    def get(self, job_id: str) -> Job | None:
        """The job, or None."""

    @abstractmethod
    def list(
        self, status: JobStatus | None = None, limit: int = 20, after: str | None = None, owner: str | None = None
    ) -> list[Job]:
        """Jobs newest first, optionally of one status or one owner, after the job ``after`` (a page's last id)."""

    @abstractmethod
    def claim(self, worker: str, lease_s: float, priorities: tuple[Priority, ...] = tuple(Priority)) -> Job | None:
        """Take the most urgent, oldest job of ``priorities`` that is queued or whose worker's lease expired."""

    @abstractmethod
    def progress(self, job_id: str, worker: str, lease_s: float, progress: Progress) -> bool:
        """Record a step (an event) and renew the lease; return whether a cancel was asked. :class:`LeaseLost`."""

    @abstractmethod
    def heartbeat(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Renew the lease; return whether a cancel was asked. :class:`LeaseLost` if the job is no longer ours."""

    @abstractmethod
    def failed_attempt(self, job_id: str, worker: str, lease_s: float, record: dict) -> bool:
        """Record a failed attempt (:func:`attempt_record`, an event) and renew the lease; whether a cancel was asked.

        :class:`LeaseLost` if the job is no longer ``worker``'s.
        """

    @abstractmethod
    def finish(self, job_id: str, worker: str, status: JobStatus, result: dict | None, error: dict | None) -> None:
        """End the job (succeeded, failed or canceled) with its final event. :class:`LeaseLost`."""

    @abstractmethod
    def cancel(self, job_id: str) -> Job:
        """A queued job is canceled at once; a running one is asked to stop. :class:`NotFound`, :class:`Conflict`."""

    @abstractmethod
    def events(self, job_id: str, after: int = 0) -> list[Event]:
        """The job's events with a sequence number over ``after``."""

    @abstractmethod
    def purge(self, now: float | None = None) -> int:
        """Delete jobs finished longer than the retention ago (with their events); return how many."""

    @abstractmethod
    def counts(self) -> Counter[tuple[JobStatus, Priority]]:
        """Jobs by status and priority (for metrics)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def require(self, job_id: str) -> Job:
        """The job, or :class:`NotFound` naming the id."""
        job = self.get(job_id)
        if job is None:
            raise self.missing(job_id)
        return job

    def missing(self, job_id: str) -> NotFound:
        """The 404 of a job id that is not there (or not the caller's to see)."""
        return NotFound(f"job_id: no job {job_id!r} (finished jobs are kept {self.retention_s / 3600:g} h)", "id")


def idempotency_conflict(key: str) -> Conflict:
    """The 409 of an idempotency key used before with another body."""
    return Conflict(f"Idempotency-Key: {key!r} was used before with a different request body", field="Idempotency-Key")


def progress_data(progress: Progress) -> dict:
    """A ``progress`` event's data: the step of its stage, and the preview PNG (base64) when one was made."""
    step = {"step": progress.step, "total": progress.total, "stage": progress.stage.value}
    return step | ({"preview": progress.preview} if progress.preview else {})


def final_event(status: JobStatus, result: dict | None, error: dict | None) -> tuple[EventType, dict]:
    """The event that ends a job with ``status``, and its data."""
    data = {"status": status.value}
    if result is not None:
        data.update(result)
    if error is not None:
        data["error"] = error
    return FINAL_EVENTS[status], data


def attempt_record(error: dict, retry_in_s: float | None, at: float) -> dict:
    """A failed attempt as a job keeps it: when it failed, its error, and the pause before the next (None: none)."""
    return {"failed_at": at, "error": error, "retry_in_s": retry_in_s}


def webhook_delivery(job: Job) -> Delivery | None:
    """The webhook call that tells of ``job``'s end, if it named one, as its key's (its owner's).

    Its body: the job's object (as ``GET /v1/jobs/{id}`` answers) and ``webhook_url``, the URL it is for, signed with
    it (a receiver checks the call was meant for it).
    """
    url = job.request.get("webhook")
    return None if not url else new_delivery(url, json.dumps(job.to_api() | {"webhook_url": url}), job.id, job.owner)


def attempts_exhausted(job_id: str) -> dict:
    """The error of a job whose workers died too often."""
    return {
        "message": f"the worker running job {job_id} died {MAX_ATTEMPTS} times; not retried again",
        "type": "server_error",
        "param": None,
        "code": 500,
    }
