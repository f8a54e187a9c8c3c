"""Every RPC of ``easel.v1.Easel``, each handed to the same plain serving classes as its HTTP route.

:class:`Servicer` is built once by the Gateway, which exposes each method under its RPC's name (Ray Serve's gRPC
proxy calls the deployment's method of that name). A call takes the HTTP route's steps in the same order: the key
checked and the limits that need no body taken (:func:`serve.access.rpc_caller`), then its message parsed
(:mod:`serve.grpc_api`), then, for one that runs work, its admission (:meth:`serve.serving.admission.Admission.admit`:
admitted and charged); errors end the call with their status code (:func:`serve.grpc_api.messages.fail`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from serve.access import rpc_caller
from serve.grpc_api import easel_pb2, messages
from serve.grpc_api.videos import content_request, interpolate_request, video_id, video_reply, video_request
from serve.serving.admission import Admission
from serve.serving.experiments import ExperimentsAndFeedback
from serve.serving.generations import Generations
from serve.serving.jobs import job_owner
from serve.serving.ray_errors import as_easel_error
from serve.serving.streaming import StreamedImages
from serve.serving.vectorize import VectorizeBody, Vectorizing
from serve.serving.videos import VARIANTS, Videos


class Servicer:
    """The gRPC API over the Gateway's serving classes (the message, limits, key check and errors: HTTP's)."""

    def __init__(
        self,
        admission: Admission,
        generations: Generations,
        experiments: ExperimentsAndFeedback,
        vectorizing: Vectorizing,
        videos: Videos,
    ) -> None:
        self.admission, self.generations, self.experiments = admission, generations, experiments
        self.vectorizing, self.videos = vectorizing, videos

    async def Generate(self, message, grpc_context) -> AsyncIterator[easel_pb2.GenerateEvent]:  # noqa: N802
        """``Generate``: one ``progress`` event per denoising step, then the images.

        The request, its limits, its key check and its errors are the HTTP route's; the result cache is not used (a
        cached answer has no steps to report).
        """
        try:
            async with rpc_caller(grpc_context, "Generate") as caller:
                admitted = await self.admission.admit(messages.generation_request(message), caller)
                async with aclosing(self.generations.events(admitted, caller.key)) as items:
                    async for item in items:
                        if isinstance(item, StreamedImages) and item.fallback:  # as the HTTP answer's header
                            grpc_context.set_trailing_metadata(item.fallback.metadata())
                        yield messages.event(item)
        except Exception as error:  # every failure ends the stream with its status code
            messages.fail(grpc_context, as_easel_error(error))

    async def Feedback(self, message, grpc_context) -> easel_pb2.FeedbackReply:  # noqa: N802
        """``Feedback``: the HTTP route's (``POST /v1/feedback``)."""
        try:
            async with rpc_caller(grpc_context, "Feedback") as caller:
                feedback = messages.feedback_request(message)
                return messages.feedback_reply(await self.experiments.rate(feedback, caller.key))
        except Exception as error:
            messages.fail(grpc_context, as_easel_error(error))

    async def Vectorize(self, message, grpc_context) -> easel_pb2.VectorizeReply:  # noqa: N802
        """``Vectorize``: the HTTP route's answer (uploads up to its body limit, 32 MiB), admitted and priced alike."""
        try:
            async with rpc_caller(grpc_context, "Vectorize") as caller:
                admitted = await self.admission.admit(VectorizeBody(*messages.vectorize_request(message)), caller)
                result = await self.vectorizing.served(admitted, caller.key and caller.key.id)
            return messages.vectorize_reply(result)
        except Exception as error:
            messages.fail(grpc_context, as_easel_error(error))

    async def Analyze(self, message, grpc_context) -> easel_pb2.AnalyzeReply:  # noqa: N802
        """``Analyze``: the HTTP route's answer (``POST /v1/vectorize/analyze``), admitted and priced as it is."""
        try:
            async with rpc_caller(grpc_context, "Analyze") as caller:
                body = VectorizeBody(*messages.vectorize_request(message, "Analyze"), analysis=True)
                analysis = await self.vectorizing.analysis(await self.admission.admit(body, caller))
            return messages.analyze_reply(analysis)
        except Exception as error:
            messages.fail(grpc_context, as_easel_error(error))

    async def CreateVideo(self, message, grpc_context) -> easel_pb2.Video:  # noqa: N802
        """``POST /v1/videos``: the video, queued (metadata ``idempotency-key``: the HTTP header)."""
        return await self._queued_video(grpc_context, "CreateVideo", lambda: video_request(message))

    async def InterpolateVideo(self, message, grpc_context) -> easel_pb2.Video:  # noqa: N802
        """``POST /v1/videos/{id}/interpolate``: a finished video's frames multiplied, queued as a new video."""
        return await self._queued_video(grpc_context, "InterpolateVideo", lambda: interpolate_request(message))

    async def _queued_video(self, grpc_context, rpc: str, body) -> easel_pb2.Video:
        """A video's body (read by ``body()``) admitted and queued as ``rpc``'s (``idempotency-key``: the header's)."""
        try:
            async with rpc_caller(grpc_context, rpc) as caller:
                admitted = await self.admission.admit(body(), caller)
                idempotency_key = dict(grpc_context.invocation_metadata()).get("idempotency-key")
                video, _ = await self.videos.queued(admitted, job_owner(caller.key), idempotency_key)
            return video_reply(video)
        except Exception as error:  # every failure ends the call with its status code
            messages.fail(grpc_context, as_easel_error(error))

    async def GetVideo(self, message, grpc_context) -> easel_pb2.Video:  # noqa: N802
        """``GET /v1/videos/{id}``: status, progress, model, seconds, size."""
        try:
            async with rpc_caller(grpc_context, "GetVideo") as caller:
                return video_reply(await self.videos.show(caller.key, video_id(message, "GetVideo")))
        except Exception as error:
            messages.fail(grpc_context, as_easel_error(error))

    async def GetVideoContent(self, message, grpc_context) -> easel_pb2.VideoContent:  # noqa: N802
        """``GET /v1/videos/{id}/content``: the MP4, or ``variant: frames`` the PNGs in a zip (409 before then)."""
        try:
            async with rpc_caller(grpc_context, "GetVideoContent") as caller:
                id_, variant = content_request(message, tuple(VARIANTS))
                data = await self.videos.encoded(caller.key, id_, variant)
            return easel_pb2.VideoContent(data=data, content_type=VARIANTS[variant])
        except Exception as error:
            messages.fail(grpc_context, as_easel_error(error))

    async def CancelVideo(self, message, grpc_context) -> easel_pb2.Video:  # noqa: N802
        """``DELETE /v1/videos/{id}``: it stops at its next step (409 once it is over)."""
        try:
            async with rpc_caller(grpc_context, "CancelVideo") as caller:
                return video_reply(await self.videos.cancel(caller.key, video_id(message, "CancelVideo")))
        except Exception as error:
            messages.fail(grpc_context, as_easel_error(error))
