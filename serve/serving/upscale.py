"""Upscale requests: an image and an upscaler, from JSON or a multipart form, upscaled by its tile engine."""

from __future__ import annotations

import asyncio
import base64
import io
import time

import numpy as np
from fastapi import Request
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.errors import InvalidInput
from serve.finishing.schema import UpscaleJson, UpscaleOptions
from serve.finishing.upscalers import MAX_OUTPUT_PIXELS, Upscalers, upscale_pixels
from serve.images import base64_bytes
from serve.images.raster import ImageRejected, decode_image
from serve.triton.spec import EngineRunner
from serve.wire import read_json


async def read_upscale_request(request: Request) -> tuple[bytes, UpscaleOptions]:
    """The image bytes and options of an upscale request (multipart: an ``image`` file part; else JSON)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=4)
        except StarletteHTTPException as error:  # the multipart parser's refusal (too many parts, malformed)
            raise InvalidInput(f"body: {error.detail} (one file part, 'image', and the options)", "body") from None
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("image: a multipart request needs a file part named 'image'", "image")
        fields = {key: value for key, value in form.items() if key != "image"}
        return await upload.read(), UpscaleOptions.model_validate(fields)
    body = read_json(UpscaleJson, await request.body(), content_type or None)
    try:
        return base64_bytes(body.image), body
    except ValueError as error:  # binascii.Error, or characters outside ASCII
        raise InvalidInput(f"image: not valid base64 ({error})", "image") from error


def decode(data: bytes) -> np.ndarray:
    """The RGB pixels of ``data``; a 400 naming ``image`` when it is not an image."""
    try:
        return decode_image(data, "image", max_pixels=MAX_OUTPUT_PIXELS)
    except ImageRejected as error:
        raise InvalidInput(str(error), error.field) from error


def png_base64(pixels: np.ndarray) -> str:
    """``pixels`` as a base64 PNG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Upscaling:
    """``GET /v1/upscalers`` and ``POST /v1/images/upscale``: the upscalers, run through ``runner`` (None: none)."""

    def __init__(self, upscalers: Upscalers, runner: EngineRunner | None) -> None:
        self.upscalers, self.runner = upscalers, runner

    def listing(self) -> dict:
        """Every upscaler the stack was started with: ready, or with why not."""
        return {"object": "list", "data": self.upscalers.listing()}

    async def upscale(self, data: bytes, options: UpscaleOptions) -> dict:
        """The image upscaled, in the images API's shape, with the upscaler, scale and size used."""
        entry, scale = self.upscalers.choose(options.upscaler, options.scale)
        pixels = await asyncio.to_thread(decode, data)
        upscaled = await upscale_pixels(pixels, entry, scale, self.runner)
        height, width = upscaled.shape[:2]
        return {
            "created": int(time.time()),
            "data": [{"b64_json": await asyncio.to_thread(png_base64, upscaled)}],
            "upscaler": entry.name,
            "scale": scale,
            "size": f"{width}x{height}",
        }

    async def answer(self, request: Request) -> dict:
        """The HTTP answer."""
        return await self.upscale(*await read_upscale_request(request))
