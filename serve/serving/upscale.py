"""Upscale requests (an image and an upscaler, JSON or multipart) and a generation's ``upscale``, by tile engines.

A generation's ``upscale`` is checked with the request (:meth:`Upscaling.check_generation`) and applied to its
images before they are answered (:meth:`Upscaling.finish`), whichever door it came by: HTTP, gRPC or a job.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Awaitable, Callable

import numpy as np
from fastapi import Request
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.errors import InvalidInput
from serve.finishing.schema import UpscaleJson, UpscaleOptions
from serve.finishing.upscalers import MAX_OUTPUT_PIXELS, Upscalers, output_size, upscale_pixels
from serve.images import base64_bytes
from serve.images.raster import ImageRejected, decode_image
from serve.text_to_image.deployment import encode_image
from serve.text_to_image.schema import MAX_SIDE, SIDE_MULTIPLE, GenerationRequest
from serve.triton.spec import EngineRunner
from serve.wire import read_json

Img2Img = Callable[[GenerationRequest], Awaitable[list[bytes]]]
"""A hires fix's second pass: the request (one upscaled input image) generated, its encoded images."""


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

    def check_generation(self, request: GenerationRequest, width: int, height: int) -> None:
        """Refuse (a 400 naming ``upscale.*``) a generation's ``upscale`` this stack cannot do on its images."""
        choice = request.upscale
        entry, scale = self.upscalers.choose(choice.upscaler, choice.scale, field="upscale.upscaler")
        out_width, out_height = output_size(width, height, scale, field="upscale.scale")
        if choice.denoise is not None and not all(
            side % SIDE_MULTIPLE == 0 and side <= MAX_SIDE for side in (out_width, out_height)
        ):
            raise InvalidInput(
                f"upscale.scale: a hires fix generates at the upscaled size, {out_width}x{out_height}: each side must "
                f"be a multiple of {SIDE_MULTIPLE} up to {MAX_SIDE}",
                "upscale.scale",
            )

    async def finish(self, request: GenerationRequest, images: list[bytes], seed: int, img2img: Img2Img) -> list[bytes]:
        """A generation's encoded ``images`` upscaled (then, with ``denoise``, redrawn by ``img2img`` at that size)."""
        choice = request.upscale
        entry, scale = self.upscalers.choose(choice.upscaler, choice.scale, field="upscale.upscaler")
        image_format = "png" if request.output_format == "svg" else request.output_format
        finished = []
        for image in images:
            pixels = await asyncio.to_thread(decode, image)
            upscaled = await upscale_pixels(pixels, entry, scale, self.runner)
            if choice.denoise is None:
                finished.append(await asyncio.to_thread(encode_image, upscaled, image_format))
                continue
            height, width = upscaled.shape[:2]
            second = request.model_copy(
                update={
                    "image": [await asyncio.to_thread(png_base64, upscaled)],
                    "strength": choice.denoise,
                    "size": f"{width}x{height}",
                    "n": 1,
                    "seed": seed,
                    "upscale": None,
                }
            )
            finished.extend(await img2img(second))
        return finished
