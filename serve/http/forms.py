"""The multipart forms the ``openai`` client sends, each read into its request model.

``POST /v1/images/edits``' body, as OpenAI's edits route takes it, becomes the one images request model.

Files: ``image`` (one, or several as ``image`` or ``image[]`` parts, as the ``openai`` client sends a list), ``mask``,
and ``ip_adapter_image``; each becomes the model's base64 field. Every other part is a field of
:class:`~serve.protocol.schema.GenerationRequest`: text fields as sent, the others (numbers, booleans, lists,
mappings) as JSON text (``n=2``, ``strength=0.6``, ``background=true``,
``controlnets=[{"name": "edges", "image": "<base64>"}]``). OpenAI's ``background`` values ``auto`` and ``opaque``
are taken as Easel's ``false`` (its images are opaque); ``transparent`` is a 400.

It reads as the JSON route does, each refusal a 400 naming the part: a text part must be UTF-8 (as JSON is), a JSON
part is parsed by the JSON route's parser (nested at most as deep as it takes), and each field comes once (only
``image`` may repeat).
"""

from __future__ import annotations

import base64
from functools import cache

import pydantic_core
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import ClientDisconnect, Request

from serve.errors import InvalidInput, invalid_input
from serve.images import MAX_IMAGE_BYTES
from serve.protocol.adapter_choices import MAX_CONTROLNETS
from serve.protocol.schema import MAX_IMAGES, MAX_REQUEST_BYTES, GenerationRequest
from serve.protocol.video import INPUT_REFERENCE, MAX_VIDEO_FORM_FIELDS, VideoRequest

FILE_FIELDS = ("image", "mask", "ip_adapter_image")
"""The request's image fields a multipart body sends as files (``ip_adapter_image`` may be base64 text too)."""
LIST_SUFFIX = "[]"
OPAQUE_BACKGROUNDS = ("auto", "opaque")


@cache
def _text_fields() -> frozenset[str]:
    """Fields whose values are strings (sent as they are); every other field's part is JSON."""
    schema = GenerationRequest.model_json_schema()
    definitions = schema.get("$defs", {})

    def types(node: dict) -> set[str]:
        if "$ref" in node:
            return types(definitions[node["$ref"].rsplit("/", 1)[-1]])
        if "anyOf" in node:
            return set().union(*(types(option) for option in node["anyOf"]))
        return {node.get("type", "object")}

    return frozenset(name for name, node in schema["properties"].items() if types(node) <= {"string", "null"})


def _value(name: str, text: str):
    """A form part's value for field ``name``: the text, or the JSON it holds (read as the JSON route reads it)."""
    if name in _text_fields() or name not in GenerationRequest.model_fields:
        return text
    try:
        return pydantic_core.from_json(text)
    except ValueError as error:
        raise InvalidInput(f"{name}: not a JSON value ({error}): send numbers, true/false or JSON text", name) from None


class Utf8Parts(MultiPartParser):
    """Starlette's multipart parser, but a text part that is not UTF-8 is a 400 naming it (not read as latin-1)."""

    def on_part_end(self) -> None:
        """Keep the part; a text part's bytes must decode as UTF-8."""
        part = self._current_part
        if part.file is None:
            try:
                part.data.decode("utf-8")
            except UnicodeDecodeError as error:
                name, where = part.field_name, f"{error.reason} at byte {error.start}"
                raise InvalidInput(f"{name}: a form's text must be UTF-8 ({where})", name) from None
        super().on_part_end()


async def _form(request: Request) -> FormData:
    """The body's parts (text in UTF-8), within the form's limits."""
    fields = len(GenerationRequest.model_fields)  # each comes once: a form of every field is within it
    limits = {"max_files": MAX_IMAGES + 2, "max_fields": fields + MAX_CONTROLNETS, "max_part_size": MAX_REQUEST_BYTES}
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return await request.form(**limits)
    return await Utf8Parts(request.headers, request.stream(), **limits).parse()


async def read_edit_form(request: Request) -> GenerationRequest:
    """The request model of an edits body (its size already bounded on the wire); 400s naming the field."""
    form = await _form(request)
    try:
        return await _request(form)
    finally:
        await form.close()


async def _request(form: FormData) -> GenerationRequest:
    body: dict = {}
    images: list[str] = []
    for key, part in form.multi_items():
        name = key.removesuffix(LIST_SUFFIX)
        if name in body:
            raise InvalidInput(f"{name}: sent more than once (only image may be)", name)
        if isinstance(part, UploadFile):
            if name not in FILE_FIELDS:
                raise InvalidInput(f"{name}: a file where a value was expected (files: {', '.join(FILE_FIELDS)})", name)
            encoded = base64.b64encode(await part.read()).decode()
            if name == "image":
                images.append(encoded)
            else:
                body[name] = encoded
        elif name == "image":
            raise InvalidInput("image: send the image as a file part (multipart), not as text", "image")
        elif name == "background" and part in OPAQUE_BACKGROUNDS:
            continue
        elif name == "background" and part == "transparent":
            raise InvalidInput(
                "background: Easel's images are opaque; 'true' runs the edit as a background job", "background"
            )
        else:
            body[name] = _value(name, part)
    if not images:
        raise InvalidInput("image: the image to edit is required (a file part named 'image')", "image")
    body["image"] = images
    try:
        return GenerationRequest.model_validate(body)
    except ValidationError as error:
        raise invalid_input(error) from None


async def read_video_form(request: Request) -> VideoRequest:
    """A multipart body as the ``openai`` client sends ``videos.create``: each part a field, ``loras`` as JSON text."""
    try:
        form = await request.form(max_files=1, max_fields=MAX_VIDEO_FORM_FIELDS)
    except ClientDisconnect:  # gone, or cut off by the wire's limits, whose answer replaces this one
        raise InvalidInput("body: the request ended before its body did", "body") from None
    try:
        body = {}
        for name, part in form.multi_items():
            if isinstance(part, UploadFile):
                body[name] = await _reference_file(name, part)
            else:
                body[name] = pydantic_core.from_json(part) if name == "loras" else part
        return VideoRequest.model_validate(body)
    except ValueError as error:  # a ValidationError, or loras that are not JSON: 400 naming the field
        raise (
            invalid_input(error) if isinstance(error, ValidationError) else InvalidInput(f"loras: {error}", "loras")
        ) from None
    finally:
        await form.close()
        await request.close()


async def _reference_file(name: str, part: UploadFile) -> str:
    """The form's ``input_reference`` file as the JSON body's base64 (the one file a video takes)."""
    if name != INPUT_REFERENCE:
        raise InvalidInput(f"{name}: a file is taken only as {INPUT_REFERENCE} (image-to-video)", name)
    data = await part.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidInput(f"{name}: the image is over {MAX_IMAGE_BYTES} bytes, the most accepted", name)
    return base64.b64encode(data).decode("ascii")
