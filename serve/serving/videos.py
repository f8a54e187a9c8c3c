"""Videos (OpenAI's videos API): a video is a background job of the job store (:class:`BackgroundJobs`).

Created as a job (the generation a :class:`~serve.protocol.video.VideoRequest` runs as, admitted and priced
by the key check), shown as OpenAI's video object, its content the MP4 or the frames, canceled as a job is.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi.responses import JSONResponse, Response

from serve.access.keys import ApiKey
from serve.errors import Conflict, NotFound
from serve.images.video import frames_of, frames_zip, mp4
from serve.jobs.model import Job, JobStatus, Owner, Stage
from serve.protocol.video import InterpolateBody, VideoGeneration, interpolation_of
from serve.serving.admitted import Admitted
from serve.serving.jobs import BackgroundJobs, JobRequest

Variant = Literal["video", "frames"]
VARIANTS: dict[Variant, str] = {"video": "video/mp4", "frames": "application/zip"}
"""``GET /v1/videos/{id}/content``'s variants: OpenAI's MP4, and Easel's frames as PNGs in a zip (lossless)."""
VIDEO_OBJECT = "video"
STATUSES = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "in_progress",
    JobStatus.SUCCEEDED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELED: "failed",  # OpenAI's video has no canceled state: failed, its error's code says canceled
}


def video_request(job: Job) -> VideoGeneration:
    """The video a job was submitted for (as stored: its seed drawn)."""
    return JobRequest.read(job.request).request


def percent_done(job: Job, request: VideoGeneration) -> int:
    """OpenAI's ``progress``: the share of the video's stages done, each an equal part.

    Its denoising, then its interpolation if it asks for one (a finished video's interpolation: that stage alone).
    """
    if job.status is JobStatus.SUCCEEDED:
        return 100
    stages = [Stage.DENOISE] if request.source_video is None else []
    stages += [Stage.INTERPOLATE] if request.interpolate is not None else []
    before = stages.index(job.stage) if job.stage in stages else 0
    return int(100 * (before + job.step / max(job.total, 1)) / max(len(stages), 1))


def video_object(job: Job) -> dict:
    """OpenAI's video object for a video job (``GET /v1/videos/{id}``)."""
    request = video_request(job)
    body = {
        "id": job.id,
        "object": VIDEO_OBJECT,
        "status": STATUSES[job.status],
        "progress": percent_done(job, request),
        "model": request.model,
        "seconds": request.seconds,
        "size": request.shown_size,  # upscaled, as its frames are
        "prompt": request.prompt,
        "created_at": int(job.created_at),
        "completed_at": int(job.finished_at) if job.status is JobStatus.SUCCEEDED and job.finished_at else None,
        "frames": request.shown_frames,  # with an interpolation's, as the MP4 has them
        "fps": request.shown_fps,
        "seed": request.seed,
    }
    if job.status is JobStatus.CANCELED:
        body["error"] = {"code": "canceled", "message": "the video's job was canceled"}
    elif job.status is JobStatus.FAILED and job.error is not None:
        body["error"] = {"code": job.error.get("code", "failed"), "message": job.error.get("message", "")}
    return body


class Videos:
    """Videos created, shown, downloaded and canceled, each for the key that may see its job."""

    def __init__(self, jobs: BackgroundJobs) -> None:
        self.jobs = jobs

    async def create(self, admitted: Admitted, owner: Owner | None, idempotency_key: str | None) -> JSONResponse:
        """Queue the video's job; OpenAI's video object (``queued``)."""
        video, created = await self.queued(admitted, owner, idempotency_key)
        headers = {"Location": f"/v1/videos/{video['id']}"} | ({} if created else {"Idempotent-Replayed": "true"})
        return JSONResponse(video, headers=headers | admitted.assignment.headers())

    async def queued(self, admitted: Admitted, owner: Owner | None, idempotency_key: str | None) -> tuple[dict, bool]:
        """Queue the video's job: OpenAI's video object, and whether it is new (not an idempotent replay).

        Its image was decoded and checked by its admission (:meth:`BackgroundJobs.check`), before its cost was taken.
        """
        job, created = await self.jobs.queued(admitted, owner, idempotency_key)
        return video_object(job), created

    async def _video(self, key: ApiKey | None, video_id: str) -> Job:
        """The video job ``key`` may see (a still's job, another key's or none: 404 naming ``video_id``)."""
        try:
            job = await self.jobs.visible(key, video_id)
        except NotFound:  # the job's 404 names ``id``, the jobs routes' field
            raise NotFound(f"video_id: no video {video_id!r}", "video_id") from None
        if "frames" not in job.request:
            raise NotFound(f"no video {video_id!r} (it is a job of images: GET /v1/jobs/{video_id})", "video_id")
        return job

    async def show(self, key: ApiKey | None, video_id: str) -> dict:
        """OpenAI's video object: status, progress, model, seconds, size."""
        return video_object(await self._video(key, video_id))

    async def content(self, key: ApiKey | None, video_id: str, variant: Variant) -> Response:
        """A completed video's MP4 (H.264) or, ``variant=frames``, its frames as PNGs in a zip; 409 before then."""
        return Response(await self.encoded(key, video_id, variant), media_type=VARIANTS[variant])

    async def encoded(self, key: ApiKey | None, video_id: str, variant: Variant) -> bytes:
        """:meth:`content`'s bytes."""
        job = await self._video(key, video_id)
        if job.status is not JobStatus.SUCCEEDED:
            raise Conflict(f"video {video_id} is {video_object(job)['status']}, not completed: no content", "video_id")
        pngs = frames_of(job.result)
        if variant == "frames":
            return await asyncio.to_thread(frames_zip, pngs)
        return await asyncio.to_thread(mp4, pngs, video_request(job).shown_fps)

    async def interpolation(self, body: InterpolateBody, key: ApiKey | None) -> VideoGeneration:
        """The video ``body`` asks for: the finished video it names (``key``'s), its frames interpolated.

        404 for a video ``key`` may not see, 409 for one not completed, 400 for one interpolated already.
        """
        job = await self._video(key, body.video_id)
        if job.status is not JobStatus.SUCCEEDED:
            status = video_object(job)["status"]
            raise Conflict(f"video_id: video {body.video_id} is {status}, not completed: no frames yet", "video_id")
        return interpolation_of(video_request(job), job.id, body.options)

    async def cancel(self, key: ApiKey | None, video_id: str) -> dict:
        """Cancel a queued or running video (its job's cancel: it stops at its next step); 409 once it is over."""
        await self._video(key, video_id)
        await self.jobs.cancel(key, video_id)
        return await self.show(key, video_id)
