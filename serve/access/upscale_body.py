"""The upscale route's request as the door reads it, once (:func:`serve.access.read_body`): its image and options.

JSON (``image`` base64) or a multipart form (``image`` a file part). The door prices it from the image's header
(:meth:`serve.serving.upscale.Upscaling.work`); the route answers from what it read (:func:`serve.access.request_body`).
"""

from __future__ import annotations

import io
from typing import NamedTuple

from PIL import Image
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from serve.errors import InvalidInput, invalid_input
from serve.finishing.schema import UpscaleJson, UpscaleOptions
from serve.finishing.upscalers import MAX_OUTPUT_PIXELS
from serve.images import base64_bytes
from serve.wire import read_json


class UpscaleBody(NamedTuple):
    """An upscale request as read: the image's bytes (still encoded) and the options."""

    data: bytes
    options: UpscaleOptions


async def read_upscale_request(request: Request) -> UpscaleBody:
    """The image bytes and options of an upscale request (multipart: an ``image`` file part; else JSON)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=len(UpscaleOptions.model_fields))
        except StarletteHTTPException as error:  # the multipart parser's refusal (too many parts, malformed)
            raise InvalidInput(f"body: {error.detail} (one file part, 'image', and the options)", "body") from None
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("image: a multipart request needs a file part named 'image'", "image")
        fields = {key: value for key, value in form.items() if key != "image"}
        try:
            return UpscaleBody(await upload.read(), UpscaleOptions.model_validate(fields))
        except ValidationError as error:
            raise invalid_input(error) from None
    body = read_json(UpscaleJson, await request.body(), content_type or None)
    try:
        return UpscaleBody(base64_bytes(body.image), body)
    except ValueError as error:  # binascii.Error, or characters outside ASCII
        raise InvalidInput(f"image: not valid base64 ({error})", "image") from error


def image_size(data: bytes) -> tuple[int, int]:
    """The (width, height) an upscale's image header says (no pixel decoded); a 400 naming ``image`` if none."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception as error:  # noqa: BLE001 - whatever PIL raises for bytes that are no image
        raise InvalidInput(f"image: not a readable image ({error})", "image") from error
    if width * height > MAX_OUTPUT_PIXELS:
        raise InvalidInput(f"image: {width}x{height} is over {MAX_OUTPUT_PIXELS} pixels", "image")
    return width, height
