"""The HTTP API's video routes: OpenAI's videos API (``client.videos``); gRPC's are the servicer's.

Each hands its call to the Gateway's :class:`serve.serving.videos.Videos`; the scope
and body limit are :mod:`serve.routes`', a video's admission (its body read, admitted, charged) is named in ``create``.
"""

from typing import Annotated

from fastapi import Header, Request
from fastapi.responses import JSONResponse, Response

from serve.access import caller
from serve.http.admission import Admit
from serve.http.operations import answers
from serve.serving.jobs import job_owner
from serve.serving.videos import Variant, Videos


def videos(http: Request) -> Videos:
    """The serving class of the Gateway replica that answers ``http`` (as :func:`serve.http.admission.serving`)."""
    return http.app.state.gateway.videos


@answers("POST", "/v1/videos")
async def create(
    http: Request, admitted: Admit, idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None
) -> JSONResponse:
    """OpenAI's videos API: a video (AnimateDiff: the model's motion adapter) made as a background job.

    JSON or a multipart form (as ``client.videos.create`` sends it): ``prompt``, ``model``, ``size``, ``seconds``, and
    Easel's ``frames``, ``fps``, ``seed``, ``steps``, ``scheduler``, ``guidance_scale``, ``negative_prompt``,
    ``motion_adapter``; ``input_reference`` (image-to-video: a file, or base64 in JSON) with Easel's ``strength``.
    Answers OpenAI's video object, ``queued``; its cost (frames x steps x megapixels) was taken.
    """
    return await videos(http).create(admitted, job_owner(caller(http)), idempotency_key)


@answers("POST", "/v1/videos/{video_id}/interpolate")
async def interpolate(
    http: Request,
    video_id: str,
    admitted: Admit,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    """A finished video's frames multiplied (RIFE, ``factor`` - 1 frames between each two): a new video, as a job.

    JSON ``{"factor": 2|4|8, "interpolator": NAME}``. Answers the new video object, ``queued``; its cost (the frames
    it draws) was taken. Nothing is drawn again: the frames are the finished video's.
    """
    return await videos(http).create(admitted, job_owner(caller(http)), idempotency_key)


@answers("GET", "/v1/videos/{video_id}")
async def show(http: Request, video_id: str) -> dict:
    """OpenAI's video object: ``status`` (queued, in_progress, completed, failed), progress, model, seconds, size."""
    return await videos(http).show(caller(http), video_id)


@answers("GET", "/v1/videos/{video_id}/content")
async def content(http: Request, video_id: str, variant: Variant = "video") -> Response:
    """The completed video: an MP4 (H.264), or with ``variant=frames`` Easel's lossless frames (PNGs in a zip)."""
    return await videos(http).content(caller(http), video_id, variant)


@answers("DELETE", "/v1/videos/{video_id}")
async def cancel(http: Request, video_id: str) -> dict:
    """Cancel a queued or running video (it stops at its next denoising step); 409 once it is over."""
    return await videos(http).cancel(caller(http), video_id)
