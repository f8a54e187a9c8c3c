"""The gRPC API's messages and the HTTP API's request models, both ways.

Messages become the HTTP API's own request models, so both APIs share one set of fields, limits, defaults and
validation; answers become messages; errors become gRPC status codes from the one error map
(``EaselError.grpc_code``).

A request message reaches the Gateway unparsed (:class:`serve.wire.Unparsed`: Ray Serve's gRPC proxy keeps its bytes,
see :func:`serve.wire.bound_grpc_messages`), so the key is checked before anything is parsed (:func:`parsed`), and a
message over its method's limit (its HTTP route's body limit) is refused without being parsed at all.
"""

from __future__ import annotations

import base64
import json
from typing import NoReturn

from google.protobuf.message import DecodeError, Message
from pydantic import ValidationError
from pydantic_core import from_json

from serve.errors import EaselError, InvalidInput, PayloadTooLarge, invalid_input
from serve.experiments.feedback import FeedbackRequest
from serve.grpc_api import easel_pb2
from serve.protocol.schema import GenerationRequest
from serve.serving.streaming import StreamedImages
from serve.text_to_image.generation import Progress
from serve.vectorize.schema import VectorizeOptions
from serve.wire import Unparsed

REQUESTS: dict[str, type[Message]] = {
    "Generate": easel_pb2.GenerateRequest,
    "Vectorize": easel_pb2.VectorizeRequest,
    "Analyze": easel_pb2.VectorizeRequest,
    "Feedback": easel_pb2.FeedbackRequest,
    "CreateVideo": easel_pb2.VideoRequest,
    "InterpolateVideo": easel_pb2.InterpolateVideoRequest,
    "GetVideo": easel_pb2.VideoId,
    "GetVideoContent": easel_pb2.VideoContentRequest,
    "CancelVideo": easel_pb2.VideoId,
}
"""Each method's request message."""


def parsed(message: Message | Unparsed, rpc: str) -> Message:
    """``rpc``'s request message from what the proxy forwarded (413 naming ``message`` when over its limit)."""
    if not isinstance(message, Unparsed):
        return message
    if message.size > message.limit:
        raise PayloadTooLarge(
            f"message: {message.size} bytes; {rpc} takes at most {message.limit} ({message.limit / 2**20:g} MiB, "
            "its HTTP route's body limit)",
            "message",
        )
    try:
        return REQUESTS[rpc].FromString(message.data)
    except DecodeError as error:
        raise InvalidInput(f"message: not a {rpc} request ({error})", "message") from None


def fields(message: Message) -> dict:
    """The fields a message sets (proto3 ``optional`` ones only when present), by name."""
    return {field.name: value for field, value in message.ListFields()}


def generation_request(message: easel_pb2.GenerateRequest | Unparsed) -> GenerationRequest:
    """The HTTP API's request for a ``GenerateRequest`` (:class:`~serve.errors.InvalidInput` naming the field).

    Images travel as bytes (the HTTP API's base64), an InstantStyle mapping as JSON text.
    """
    body = fields(parsed(message, "Generate"))
    body["loras"] = [fields(lora) for lora in body.get("loras", [])]
    if "prompts" in body:  # none sent: the one prompt
        body["prompts"] = [fields(choice) for choice in body["prompts"]]
    body["controlnets"] = [fields(control) for control in body.get("controlnets", [])]
    for control in body["controlnets"]:
        control["image"] = _base64(control.get("image", b""))
    body["image"] = [_base64(image) for image in body.get("image", [])]
    for name in ("ip_adapter_image", "mask"):
        if name in body:
            body[name] = _base64(body[name])
    for part in ("upscale", "character"):
        if part in body:
            body[part] = fields(body[part])
    if "outpaint" in body:
        body["outpaint"] = {side: getattr(body["outpaint"], side) for side in ("left", "top", "right", "bottom")}
    _scale_json(body, "ip_adapter_scale", "ip_adapter_scale_json", "ip_adapter_scale_json")
    references_read(body)
    try:
        return GenerationRequest.model_validate(body)
    except ValidationError as error:
        raise invalid_input(error) from None


def references_read(body: dict) -> None:
    """``body``'s ``ip_adapters`` and ``identity`` (a generation's, a video's) as the HTTP API's, in place.

    Images travel as bytes (the HTTP API's base64), an InstantStyle mapping as JSON text.
    """
    if "identity" in body:
        identity = body["identity"] = fields(body["identity"])
        identity |= {name: _base64(identity[name]) for name in ("image", "keypoints") if name in identity}
        if "embedding" in identity:
            identity["embedding"] = list(identity["embedding"])
    body["ip_adapters"] = [fields(choice) for choice in body.get("ip_adapters", [])]
    for index, choice in enumerate(body["ip_adapters"]):
        choice["images"] = [_base64(image) for image in choice.get("images", [])]
        choice["masks"] = [_base64(mask) for mask in choice.get("masks", [])]
        choice["references"] = list(choice.get("references", []))
        _scale_json(choice, "scale", "scale_json", f"ip_adapters.{index}.scale_json")


def _scale_json(body: dict, scale: str, mapping: str, field: str) -> None:
    """``body[mapping]`` (InstantStyle's mapping as JSON text) read into ``body[scale]``; a 400 naming ``field``."""
    if mapping not in body:
        return
    if scale in body:
        raise InvalidInput(f"{field}: give {scale} or the mapping, not both", field)
    try:  # the HTTP API's parser, with its bound on nesting
        body[scale] = from_json(body.pop(mapping))
    except ValueError as error:
        raise InvalidInput(f"{field}: not JSON ({error})", field) from None


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def vectorize_request(
    message: easel_pb2.VectorizeRequest | Unparsed, rpc: str = "Vectorize"
) -> tuple[bytes, VectorizeOptions]:
    """The image and the HTTP API's vectorize options of a ``VectorizeRequest`` (``rpc``: Vectorize or Analyze)."""
    request = parsed(message, rpc)
    return request.image, vectorize_options(request)


def vectorize_options(message: easel_pb2.VectorizeRequest) -> VectorizeOptions:
    """The HTTP API's vectorize options for a ``VectorizeRequest`` (its image aside)."""
    options = fields(message)
    options.pop("image", None)
    try:
        return VectorizeOptions.model_validate(options)
    except ValidationError as error:
        raise invalid_input(error) from None


def feedback_request(message: easel_pb2.FeedbackRequest | Unparsed) -> FeedbackRequest:
    """The HTTP API's feedback for a ``FeedbackRequest`` (:class:`~serve.errors.InvalidInput` naming the field)."""
    try:
        return FeedbackRequest.model_validate(fields(parsed(message, "Feedback")))
    except ValidationError as error:
        raise invalid_input(error) from None


def feedback_reply(answer: dict) -> easel_pb2.FeedbackReply:
    """The HTTP API's feedback answer as a ``FeedbackReply``."""
    return easel_pb2.FeedbackReply(
        id=answer["id"], reward=answer["reward"], model=answer["model"], experiment=answer["experiment"]
    )


def progress(step: int, total: int) -> easel_pb2.GenerateEvent:
    """A ``progress`` event."""
    return easel_pb2.GenerateEvent(progress=easel_pb2.Progress(step=step, total=total))


def result(
    seed: int,
    images: list[easel_pb2.Image],
    model: str,
    experiment: str | None = None,
    steps_skipped: int | None = None,
    prompt_tokens_truncated: int | None = None,
) -> easel_pb2.GenerateEvent:
    """The final ``result`` event: the images, the model (and experiment) that served them, the steps skipped.

    ``steps_skipped``: the HTTP API's ``Easel-Steps-Skipped``; ``prompt_tokens_truncated`` its
    ``Easel-Prompt-Truncated``.
    """
    return easel_pb2.GenerateEvent(
        result=easel_pb2.Images(
            seed=seed,
            images=images,
            model=model,
            experiment=experiment,
            steps_skipped=steps_skipped,
            prompt_tokens_truncated=prompt_tokens_truncated,
        )
    )


def moderation(mark: dict) -> easel_pb2.Moderation:
    """An image's ``moderation`` mark (the HTTP answer's, :meth:`serve.moderation.Verdict.to_api`) as a message."""
    return easel_pb2.Moderation(
        flagged=mark["flagged"], categories=mark["categories"], category_scores=mark["category_scores"]
    )


def event(item: Progress | StreamedImages) -> easel_pb2.GenerateEvent:
    """A streamed generation's item (:meth:`serve.serving.generations.Generations.events`) as a ``GenerateEvent``."""
    if isinstance(item, Progress):
        return progress(item.step, item.total)
    images = []
    for image in item.images:
        mark = image.get("moderation")
        images.append(easel_pb2.Image(**{k: v for k, v in image.items() if k != "moderation"}))
        if mark is not None:
            images[-1].moderation.CopyFrom(moderation(mark))
    return result(item.seed, images, item.model, item.experiment, item.steps_skipped, item.prompt_tokens_dropped)


VECTORIZE_REPLY = tuple(easel_pb2.VectorizeReply.DESCRIPTOR.fields_by_name)
"""A ``VectorizeReply``'s fields: a :class:`~serve.vectorize.deployment.VectorizeResult`'s of the same names."""


def vectorize_reply(result) -> easel_pb2.VectorizeReply:
    """A ``VectorizeReply`` from the Vectorizer's :class:`~serve.vectorize.deployment.VectorizeResult`.

    Through an experiment it names the experiment and the answer's id (for ``Feedback``).
    """
    return easel_pb2.VectorizeReply(**{name: getattr(result, name) for name in VECTORIZE_REPLY})


def analyze_reply(analysis: dict) -> easel_pb2.AnalyzeReply:
    """An ``AnalyzeReply`` from the Vectorizer's analysis (:func:`serve.vectorize.analysis.analysis`)."""
    fields = {key: value for key, value in analysis.items() if key not in ("predicted", "parameters")}
    predicted = {tier: easel_pb2.TierPrediction(**each) for tier, each in analysis["predicted"].items()}
    return easel_pb2.AnalyzeReply(**fields, predicted=predicted, parameters_json=json.dumps(analysis["parameters"]))


def fail(context, error: EaselError) -> NoReturn:
    """End the call with ``error``'s status code and message (``context``: Ray Serve's gRPC context).

    Set on the context, then raised: Ray Serve's proxy answers with the status a handler set before raising (a status
    merely set on a stream that yielded nothing would read OK).
    """
    context.set_code(error.grpc_code)
    context.set_details(error.message)
    raise error
