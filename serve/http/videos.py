"""The video job's doors: OpenAI's videos API (``client.videos``) over HTTP, and its gRPC twin.

:data:`ROUTES`: the routes :mod:`serve.http.app` adds where they stand in the OpenAPI document (as
:mod:`serve.http.moderation`'); :class:`VideoCalls`: the gRPC methods the Gateway takes on. Each hands its call to
the Gateway's :class:`serve.serving.videos.Videos`; the scope, body limit and the body's reading and pricing are
:mod:`serve.routes`' and the key check's.
"""

from collections.abc import Callable
from functools import cached_property, partial
from typing import Annotated

from fastapi import Header, Request
from fastapi.responses import JSONResponse, Response

from serve import grpc_api
from serve.access import call_admitted, caller, job_owner, request_priced
from serve.grpc_api import easel_pb2
from serve.grpc_api.videos import content_request, video_id, video_reply, video_request
from serve.serving.jobs import BackgroundJobs
from serve.serving.ray_errors import as_easel_error
from serve.serving.videos import VARIANTS, Variant, Videos


def videos(http: Request) -> Videos:
    """The serving class of the Gateway replica that answers ``http`` (as :func:`serve.http.app.serving`)."""
    return http.app.state.gateway.videos


async def create(
    http: Request, idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None
) -> JSONResponse:
    """OpenAI's videos API: a video (AnimateDiff: the model's motion adapter) made as a background job.

    JSON or a multipart form (as ``client.videos.create`` sends it): ``prompt``, ``model``, ``size``, ``seconds``, and
    Easel's ``frames``, ``fps``, ``seed``, ``steps``, ``scheduler``, ``guidance_scale``, ``negative_prompt``,
    ``motion_adapter``; ``input_reference`` (image-to-video: a file, or base64 in JSON) with Easel's ``strength``.
    Answers OpenAI's video object, ``queued``; its cost (frames x steps x megapixels) was taken.
    """
    return await videos(http).create(request_priced(http).admitted, job_owner(caller(http)), idempotency_key)


async def show(http: Request, video_id: str) -> dict:
    """OpenAI's video object: ``status`` (queued, in_progress, completed, failed), progress, model, seconds, size."""
    return await videos(http).show(caller(http), video_id)


async def content(http: Request, video_id: str, variant: Variant = "video") -> Response:
    """The completed video: an MP4 (H.264), or with ``variant=frames`` Easel's lossless frames (PNGs in a zip)."""
    return await videos(http).content(caller(http), video_id, variant)


async def cancel(http: Request, video_id: str) -> dict:
    """Cancel a queued or running video (it stops at its next denoising step); 409 once it is over."""
    return await videos(http).cancel(caller(http), video_id)


ROUTES: tuple[tuple[str, str, Callable], ...] = (
    ("POST", "/v1/videos", create),
    ("GET", "/v1/videos/{video_id}", show),
    ("GET", "/v1/videos/{video_id}/content", content),
    ("DELETE", "/v1/videos/{video_id}", cancel),
)
"""Method, path and handler of each route, in the OpenAPI document's order."""


class VideoCalls:
    """The video job on gRPC (``easel.v1.Easel``): the Gateway's methods, answered by its :attr:`videos`.

    The message, its limits, its key check and its errors are the HTTP route's (INVALID_ARGUMENT naming the field).
    """

    jobs: BackgroundJobs  # the Gateway's

    @cached_property
    def videos(self) -> Videos:
        """The video job's serving class, over the Gateway's jobs: the HTTP routes' (:func:`videos`) and these."""
        return Videos(self.jobs)

    async def CreateVideo(self, message: easel_pb2.VideoRequest, grpc_context) -> easel_pb2.Video:  # noqa: N802
        """``POST /v1/videos``: the video, queued (metadata ``idempotency-key``: the HTTP header)."""
        try:
            parse = partial(video_request, message)  # once the key is known good
            async with call_admitted(grpc_context, "CreateVideo", parse) as (key, _, priced):
                idempotency_key = dict(grpc_context.invocation_metadata()).get("idempotency-key")
                video, _ = await self.videos.queued(priced.admitted, job_owner(key), idempotency_key)
            return video_reply(video)
        except Exception as error:  # every failure ends the call with its status code
            grpc_api.fail(grpc_context, as_easel_error(error))

    async def GetVideo(self, message: easel_pb2.VideoId, grpc_context) -> easel_pb2.Video:  # noqa: N802
        """``GET /v1/videos/{id}``: status, progress, model, seconds, size."""
        try:
            async with call_admitted(grpc_context, "GetVideo", partial(video_id, message, "GetVideo")) as (key, id_, _):
                return video_reply(await self.videos.show(key, id_))
        except Exception as error:
            grpc_api.fail(grpc_context, as_easel_error(error))

    async def GetVideoContent(self, message: easel_pb2.VideoContentRequest, grpc_context) -> easel_pb2.VideoContent:  # noqa: N802
        """``GET /v1/videos/{id}/content``: the MP4, or ``variant: frames`` the PNGs in a zip (409 before then)."""
        try:
            parse = partial(content_request, message, tuple(VARIANTS))
            async with call_admitted(grpc_context, "GetVideoContent", parse) as (key, (id_, variant), _):
                data = await self.videos.encoded(key, id_, variant)
            return easel_pb2.VideoContent(data=data, content_type=VARIANTS[variant])
        except Exception as error:
            grpc_api.fail(grpc_context, as_easel_error(error))

    async def CancelVideo(self, message: easel_pb2.VideoId, grpc_context) -> easel_pb2.Video:  # noqa: N802
        """``DELETE /v1/videos/{id}``: it stops at its next step (409 once it is over)."""
        try:
            parse = partial(video_id, message, "CancelVideo")
            async with call_admitted(grpc_context, "CancelVideo", parse) as (key, id_, _):
                return video_reply(await self.videos.cancel(key, id_))
        except Exception as error:
            grpc_api.fail(grpc_context, as_easel_error(error))
