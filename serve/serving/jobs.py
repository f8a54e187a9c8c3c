"""Background jobs: a generation queued (202) and run by this replica's job runner, shown to its owner.

A job's state, a page of jobs, a cancel and the Server-Sent Events of its progress, each for the key that may see it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from dataclasses import dataclass, replace

from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from serve import metrics
from serve.access import may_see, owner_filter
from serve.access.keys import ApiKey
from serve.errors import invalid_input
from serve.experiments.traffic import Experiments
from serve.images.video import frames_of
from serve.jobs.model import FINAL_EVENTS, Job, JobStatus, Owner, Progress, check_idempotency_key
from serve.jobs.runner import JobCanceled, JobLease, JobRunner
from serve.jobs.store import JobStore
from serve.moderation import Policy
from serve.protocol.schema import GenerationRequest
from serve.protocol.video import VideoGeneration, stored_request
from serve.serving.admitted import Admitted
from serve.serving.generations import Generations
from serve.serving.ray_errors import PASSING, unwrap
from serve.stores import quota_bound
from serve.text_to_image.generation import OnStep
from serve.text_to_image.images import decode_images
from serve.webhooks import WebhookSender, WebhookSettings

SSE_POLL_S = 0.25
SSE_KEEPALIVE_S = 15.0
MAX_PAGE = 100
SUBMITTED_POLICY = "moderation_policy"
"""The stored request's entry of the moderation policy it was submitted under (its key's, else the stack's)."""


@dataclass(frozen=True)
class JobRequest:
    """A job's row: its request as its model serves it, the door's seed in it, and its moderation policy.

    The row keeps the API's request, not the admitted drawing: the request's schema is the API's contract, which the
    releases after it read alike, and a queued job is admitted again as it runs, by the model its name serves then
    (replaced or removed meanwhile), which types it afresh (:meth:`Generations.readmitted`).
    """

    request: GenerationRequest  # a still's or a video's
    policy: Policy | None = None  # None: a job stored before jobs kept their policy (the stack's)

    @classmethod
    def of(cls, admitted: Admitted) -> JobRequest:
        """``admitted``'s row: the door's seed in it, so a re-run draws the same image (a remote's may take none)."""
        seeded = {"seed": admitted.drawing.seed} if admitted.model.takes_seed else {}
        return cls(admitted.request.model_copy(update=seeded), admitted.screening.policy)

    @classmethod
    def read(cls, row: dict) -> JobRequest:
        """A stored row read back (a ``ValidationError`` where this version refuses it)."""
        stored = dict(row)
        policy = stored.pop(SUBMITTED_POLICY, None)
        return cls(stored_request(stored), policy and Policy(policy))

    def row(self) -> dict:
        """What the job store keeps (JSON)."""
        policy = {SUBMITTED_POLICY: self.policy.value} if self.policy is not None else {}
        return self.request.model_dump(mode="json") | policy


def job_owner(key: ApiKey | None) -> Owner | None:
    """Who a job submitted with ``key`` belongs to, with the key's own cap on unfinished jobs.

    None: the stack's quota, which :meth:`BackgroundJobs.queued` applies.
    """
    return None if key is None else Owner(key.id, key.limits.concurrent_jobs)


def _sse(event: str, data: dict, seq: int | None = None) -> bytes:
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _body_hash(request: GenerationRequest) -> str:
    return hashlib.sha256(request.model_dump_json().encode()).hexdigest()


class BackgroundJobs:
    """Jobs submitted, run (only this class writes the job store, as their runner) and shown to their owners."""

    def __init__(
        self,
        store: JobStore,
        generations: Generations,
        experiments: Experiments,
        webhooks: WebhookSettings | None = None,
        sender: WebhookSender | None = None,
        quotas=None,
    ) -> None:
        self.store = store
        self.quotas = quotas  # the stack's quotas per key (a serve.stores.Quotas; None: their defaults)
        self.generations = generations
        self.experiments = experiments
        self.webhooks = webhooks or WebhookSettings()  # the hosts a job's webhook may name
        self.runner = JobRunner(self.store, self.run, passing=PASSING).start()
        self.sender = sender and sender.start()  # this replica's deliveries of the jobs' webhooks

    async def submit(self, admitted: Admitted, owner: Owner | None, idempotency_key: str | None) -> JSONResponse:
        """Queue ``admitted`` as ``owner``'s job (:meth:`queued`): 202 and the job."""
        job, created = await self.queued(admitted, owner, idempotency_key)
        headers = {"Location": f"/v1/jobs/{job.id}"} | ({} if created else {"Idempotent-Replayed": "true"})
        return JSONResponse(job.to_api(), status_code=202, headers=headers | admitted.assignment.headers())

    async def check(self, admitted: Admitted) -> None:
        """What a job's submission refuses, checked by admission before its cost is taken (400s naming the field).

        Its ``webhook``, if it names one, on a host and port the stack allows, and its key holding a webhook secret;
        its images decoded, so one that does not decode is a 400 now rather than a failed job (the only pixels
        decoded before a request's cost is taken: its key's request limits bound them).
        """
        if admitted.request.webhook is not None:
            self.webhooks.check(admitted.request.webhook)  # a host the stack allows, or a 400 naming webhook
            if self.sender is not None:  # a key with no secret to sign its deliveries: a 400 naming webhook
                await asyncio.to_thread(self.sender.signer.secrets_of, admitted.owner)
        drawing = admitted.drawing
        size = (drawing.sampling.width, drawing.sampling.height)
        await asyncio.to_thread(decode_images, drawing.sources, *size)  # an image that does not decode: a 400 now

    def _capped(self, owner: Owner) -> Owner:
        """``owner`` with its cap on unfinished jobs: its key's own, else the stack's quota (0: none)."""
        return replace(owner, max_open=quota_bound(owner.max_open, self.quotas, "concurrent_jobs"))

    async def queued(self, admitted: Admitted, owner: Owner | None, idempotency_key: str | None) -> tuple[Job, bool]:
        """Queue ``admitted`` as ``owner``'s job; the job and whether it is new.

        It was admitted as a synchronous request is (:meth:`Generations.admitted`), and checked as a job
        (:meth:`check`), before its cost was taken: what a synchronous request is refused for is a 400 then, never a
        202 that fails later. Its seed is drawn now, so a re-run draws the same image (unless its model is a remote
        one whose service takes no seed). An ``Idempotency-Key`` (the owner's own) returns the same job for the same
        body. An experiment's variant is chosen now (the job's request names it) and recorded under the job's id, so
        feedback can name the job.
        """
        drawing, assignment = admitted.drawing, admitted.assignment
        owner = owner and self._capped(owner)
        key = check_idempotency_key(idempotency_key)
        # the body as sent, not as assigned: a replay is the same job whichever variant a draw would pick now
        idempotency = (f"{owner.key_id}/{key}" if owner else key, _body_hash(admitted.asked)) if key else None
        row = JobRequest.of(admitted).row()
        job, created = await asyncio.to_thread(self.store.submit, row, drawing.priority, idempotency, owner)
        if created:
            made = (owner and owner.key_id, *drawing.made_with)
            await asyncio.to_thread(self.experiments.record, [job.id], assignment, *made)
        self.runner.wake()
        return job, created

    async def run(self, job: Job, lease: JobLease) -> dict:
        """The job runner's work: the job's request answered as a synchronous one, each step written to the store.

        A step's progress (and preview) is written as it streams in; a cancel asked meanwhile, or the lease lost,
        stops reading the stream, which stops the generation. A failure is raised as the deployment raised it (Ray's
        wrapper taken off), for the runner's retry policy to judge (:data:`~serve.serving.ray_errors.PASSING`).
        """
        try:
            stored = JobRequest.read(job.request)
        except ValidationError as error:  # a stored request this version refuses: the job's fault, not retried
            raise invalid_input(error) from None

        async def report(progress: Progress) -> None:
            if await asyncio.to_thread(self.store.progress, lease.job_id, lease.worker, lease.lease_s, progress):
                raise JobCanceled(lease.job_id)

        if isinstance(stored.request, VideoGeneration) and stored.request.source_video is not None:
            return await self._interpolated(stored.request, report)
        chosen = await asyncio.to_thread(self.experiments.served_by, job.id)  # at submission
        try:
            # its model now (replaced, or removed: a 400); its moderation policy as submitted
            admitted = await self.generations.readmitted(stored.request, chosen, stored.policy, job.owner)
            body, _ = await self.generations.served_answer(admitted, job.owner, on_step=report)
        except Exception as error:
            cause = unwrap(error)
            if cause is error:
                raise
            raise cause from None
        return body

    async def _interpolated(self, request: VideoGeneration, report: OnStep) -> dict:
        """A video made from a finished one's frames (``source_video``), interpolated: its answer (nothing drawn)."""
        source = await asyncio.to_thread(self.store.require, request.source_video)
        frames = await self.generations.upscaling.interpolated(request, frames_of(source.result), report)
        items = [{"b64_json": base64.b64encode(frame).decode()} for frame in frames]
        return {"created": int(time.time()), "data": items, "model": request.model, "seed": request.seed}

    async def visible(self, key: ApiKey | None, job_id: str) -> Job:
        """The job, if ``key`` may see it; another key's job is as unknown as a missing one (404)."""
        job = await asyncio.to_thread(self.store.require, job_id)
        if not may_see(key, job.owner):
            raise self.store.missing(job_id)
        return job

    async def page(self, key: ApiKey | None, status: JobStatus | None, limit: int, after: str | None) -> dict:
        """A page of ``key``'s jobs (every job for an admin key), newest first (``after``: the previous last id)."""
        page = await asyncio.to_thread(self.store.list, status, limit + 1, after, owner_filter(key))
        data = [job.to_api() for job in page[:limit]]
        return {
            "object": "list",
            "data": data,
            "has_more": len(page) > limit,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    async def cancel(self, key: ApiKey | None, job_id: str) -> dict:
        """Cancel a job: a queued one never runs; a running one stops at its next denoising step (409 if over)."""
        before = await self.visible(key, job_id)
        job = await asyncio.to_thread(self.store.cancel, job_id)
        metrics.count(metrics.JOB_CANCELS, state=before.status.value)
        return job.to_api()

    async def events(self, key: ApiKey | None, job_id: str, preview: bool) -> StreamingResponse:
        """Server-Sent Events: the job's state first, then one ``progress`` per step, then its final event."""
        job = await self.visible(key, job_id)
        return StreamingResponse(
            self._event_stream(job, preview),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _event_stream(self, job: Job, preview: bool):
        """The state as read, then every event after it (``job.seq``: the last event that state includes)."""
        yield _sse("state", job.to_api())
        after, quiet_since = (job.seq - 1 if job.status.final else job.seq), time.monotonic()
        while True:
            for event in await asyncio.to_thread(self.store.events, job.id, after):
                after, quiet_since = event.seq, time.monotonic()
                data = event.data if preview else {k: v for k, v in event.data.items() if k != "preview"}
                yield _sse(event.type.value, data, event.seq)
                if event.type in FINAL_EVENTS.values():
                    return
            if time.monotonic() - quiet_since > SSE_KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"
            await asyncio.sleep(SSE_POLL_S)
