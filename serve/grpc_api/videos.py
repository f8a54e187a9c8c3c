"""The video job's messages: a ``VideoRequest`` as the HTTP API's, OpenAI's video object as a ``Video``.

The calls themselves are :class:`serve.grpc_api.servicer.Servicer`'s (they hand them to the same serving class as HTTP).
"""

from __future__ import annotations

import base64

from pydantic import ValidationError

from serve.errors import InvalidInput, invalid_input
from serve.finishing.schema import Interpolate
from serve.grpc_api.easel_pb2 import InterpolateVideoRequest, Video, VideoContentRequest, VideoError, VideoId
from serve.grpc_api.easel_pb2 import VideoRequest as VideoMessage
from serve.grpc_api.messages import Unparsed, fields, parsed, references_read
from serve.protocol.video import INPUT_REFERENCE, InterpolateBody, VideoRequest


def video_request(message: VideoMessage | Unparsed) -> VideoRequest:
    """The HTTP API's request for a ``VideoRequest`` (:class:`~serve.errors.InvalidInput` naming the field).

    ``input_reference`` (image-to-video) travels as the image's bytes, the HTTP API's base64.
    """
    body = fields(parsed(message, "CreateVideo"))
    body["loras"] = [fields(lora) for lora in body.get("loras", [])]
    for part in ("interpolate", "upscale", "character"):
        if part in body:
            body[part] = fields(body[part])
    references_read(body)  # ip_adapters and identity, as a generation's
    if INPUT_REFERENCE in body:  # bytes here, the HTTP API's base64 there
        body[INPUT_REFERENCE] = base64.b64encode(body[INPUT_REFERENCE]).decode()
    try:
        return VideoRequest.model_validate(body)
    except ValidationError as error:
        raise invalid_input(error) from None


def interpolate_request(message: InterpolateVideoRequest | Unparsed) -> InterpolateBody:
    """The HTTP route's body for an ``InterpolateVideoRequest``: the video named, the interpolation asked."""
    request = parsed(message, "InterpolateVideo")
    try:
        return InterpolateBody(request.video_id, Interpolate.model_validate(fields(request.interpolate)))
    except ValidationError as error:
        raise invalid_input(error) from None


def video_id(message: VideoId | Unparsed, rpc: str) -> str:
    """The video a ``VideoId`` names (``rpc``: GetVideo or CancelVideo)."""
    return parsed(message, rpc).video_id


def content_request(message: VideoContentRequest | Unparsed, variants: tuple[str, ...]) -> tuple[str, str]:
    """The video and the content variant (one of ``variants``; default: the first) a ``VideoContentRequest`` asks."""
    request = parsed(message, "GetVideoContent")
    variant = request.variant if request.HasField("variant") else variants[0]
    if variant not in variants:
        raise InvalidInput(f"variant: {variant!r} is none of {', '.join(variants)}", "variant")
    return request.video_id, variant


def video_reply(video: dict) -> Video:
    """OpenAI's video object (:func:`serve.serving.videos.video_object`) as a ``Video``."""
    known = {name: value for name, value in video.items() if name in Video.DESCRIPTOR.fields_by_name}
    error = known.pop("error", None)
    reply = Video(**{name: value for name, value in known.items() if value is not None})
    if error is not None:
        reply.error.CopyFrom(VideoError(code=error["code"], message=error["message"]))
    return reply
