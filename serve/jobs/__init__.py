"""Background generation jobs: their model, the store (one contract, SQLite and Redis), the runner that runs them."""

from __future__ import annotations

from serve.jobs.model import DEFAULT_RETENTION_S
from serve.jobs.redis import RedisJobStore
from serve.jobs.sqlite import SqliteJobStore
from serve.jobs.store import JobStore
from serve.stores import scheme


def open_job_store(url: str, retention_s: float = DEFAULT_RETENTION_S) -> JobStore:
    """The job store at ``url`` (``sqlite:///PATH`` or ``redis://HOST:PORT/DB``)."""
    if scheme(url) == "sqlite":
        return SqliteJobStore(url, retention_s)
    return RedisJobStore(url, retention_s)
