"""What a background generation job is, as stored and as the API shows it."""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass

from serve.errors import InvalidInput, Overloaded
from serve.priority import Priority

JOB_OBJECT = "image.generation.job"
DEFAULT_LEASE_S = 15.0
"""A worker holds a running job this long after its last heartbeat; then another may run it again."""
DEFAULT_RETENTION_S = 24 * 3600.0
"""Finished jobs (and their images) are kept this long, then deleted."""
MAX_ATTEMPTS = 3
"""A job whose worker died this many times fails instead of running again."""
MAX_IDEMPOTENCY_KEY = 255
OPEN_JOBS_RETRY_S = 5
"""Retry-After of a job refused because its key has as many unfinished jobs as it may."""


class JobStatus(enum.StrEnum):
    """A job's state; the last three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        """Whether the job is over."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class EventType(enum.StrEnum):
    """What a job's event stream says: one ``progress`` per step of its stage, then exactly one final event.

    ``attempt_failed``: an attempt failed (its error, and ``retry_in_s``: when the next starts, or null: no retry).
    """

    RUNNING = "running"
    PROGRESS = "progress"
    ATTEMPT_FAILED = "attempt_failed"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


class Stage(enum.StrEnum):
    """What a job's progress counts: its denoising steps, then (a video that asks for it) its interpolated pairs."""

    DENOISE = "denoise"
    INTERPOLATE = "interpolate"


@dataclass(frozen=True)
class Progress:
    """One step of a stage done (a stream's event).

    A denoising step (with a preview PNG, base64, every few steps when asked), or a video's pair of frames interpolated.
    """

    step: int
    total: int
    preview: str | None = None
    stage: Stage = Stage.DENOISE


FINAL_EVENTS = {
    JobStatus.SUCCEEDED: EventType.COMPLETED,
    JobStatus.FAILED: EventType.FAILED,
    JobStatus.CANCELED: EventType.CANCELED,
}


@dataclass(frozen=True)
class Job:
    """One background generation: its request (seed filled in), where it stands, and its answer when done."""

    id: str
    status: JobStatus
    priority: Priority
    request: dict
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total: int = 0
    stage: Stage = Stage.DENOISE  # what step and total count
    attempts: int = 0
    cancel_requested: bool = False
    result: dict | None = None
    error: dict | None = None
    owner: str | None = None  # the id of the API key that submitted it (None: the API was open)
    failures: tuple[dict, ...] = ()  # each failed attempt: when, its error, and when it was retried (None: not)
    seq: int = 0  # the sequence number of its latest event when read: this state is as of that event

    def to_api(self) -> dict:
        """The body of ``GET /v1/jobs/{id}``."""
        body = {
            "id": self.id,
            "object": JOB_OBJECT,
            "status": self.status.value,
            "priority": self.priority.value,
            "progress": {"step": self.step, "total": self.total, "stage": self.stage.value},
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "cancel_requested": self.cancel_requested,
            "failed_attempts": list(self.failures),
        }
        if self.status is JobStatus.SUCCEEDED and self.result is not None:
            body.update(self.result)
        if self.status is JobStatus.FAILED and self.error is not None:
            body["error"] = self.error
        return body


@dataclass(frozen=True)
class Owner:
    """Who submits a job: an API key's id, and how many unfinished (queued or running) jobs it may have."""

    key_id: str
    max_open: int | None = None  # None: no cap

    def refuse_if_full(self, open_jobs: int) -> None:
        """Raise 429 if the key already has ``max_open`` unfinished jobs."""
        if self.max_open is not None and open_jobs >= self.max_open:
            raise Overloaded(
                f"key {self.key_id} is over its limit of {self.max_open} unfinished jobs at once",
                field="concurrent_jobs",
                retry_after_s=OPEN_JOBS_RETRY_S,
            )


@dataclass(frozen=True)
class Event:
    """One entry of a job's event stream; ``seq`` grows by one per event of that job."""

    seq: int
    type: EventType
    data: dict


def new_job_id() -> str:
    """A fresh job id (``job_`` and 24 hex digits)."""
    return f"job_{secrets.token_hex(12)}"


def check_idempotency_key(key: str | None) -> str | None:
    """The ``Idempotency-Key`` header's value if well formed (1-255 visible ASCII characters); else a 400."""
    if key is None:
        return None
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY or not all(33 <= ord(c) <= 126 for c in key):
        raise InvalidInput(
            f"Idempotency-Key: must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters (no spaces)",
            field="Idempotency-Key",
        )
    return key
