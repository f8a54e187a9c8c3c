"""The HTTP API's background-job routes: a job's state, a page of jobs, a cancel, and its progress as SSE.

Each hands its call to the Gateway's :class:`serve.serving.jobs.BackgroundJobs`, for the key that may see the job.
"""

from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import StreamingResponse

from serve.access import caller
from serve.http.admission import serving
from serve.http.operations import answers
from serve.jobs.model import JobStatus
from serve.serving.jobs import MAX_PAGE


@answers("GET", "/v1/jobs/{job_id}")
async def job(http: Request, job_id: str) -> dict:
    """A background job: status, progress, timestamps, priority; the images once succeeded, the error if failed."""
    return (await serving(http).jobs.visible(caller(http), job_id)).to_api()


@answers("GET", "/v1/jobs")
async def jobs(
    http: Request,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    after: str | None = None,
) -> dict:
    """A page of the caller's jobs (every job for an admin key), newest first (``after``: the previous last id)."""
    return await serving(http).jobs.page(caller(http), status, limit, after)


@answers("POST", "/v1/jobs/{job_id}/cancel")
async def cancel(http: Request, job_id: str) -> dict:
    """Cancel a job: a queued one never runs; a running one stops at its next denoising step (409 if over)."""
    return await serving(http).jobs.cancel(caller(http), job_id)


@answers("GET", "/v1/jobs/{job_id}/events")
async def events(http: Request, job_id: str, preview: bool = False) -> StreamingResponse:
    """Server-Sent Events: the job's state first, then one ``progress`` per step, then its final event."""
    return await serving(http).jobs.events(caller(http), job_id, preview)
