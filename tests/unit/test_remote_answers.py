"""A remote model's answer checked as an input image is (serve/remote/answer_images.py), its service httpx's recorded
answers (no server): each image decodes, within the size asked (else the remote's native size) and the stack's input
bound, else a 502 naming the model, with no Retry-After."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import time
import zlib

import httpx
import pytest
from PIL import Image

from serve.errors import BadGateway
from serve.images.raster import decoded_size
from serve.protocol.schema import GenerationRequest
from serve.remote.answer_images import PIXEL_TOLERANCE, pixel_bound
from serve.remote.models import RemoteModel
from serve.remote.settings import RemoteBackend
from serve.serving.ray_errors import cannot_serve
from serve.text_to_image.images import MAX_INPUT_PIXELS


def png(width: int, height: int) -> bytes:
    """A red PNG of ``width`` x ``height``."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(out, "PNG")
    return out.getvalue()


def giant_png(side: int = 12_000) -> bytes:
    """A real ``side`` x ``side`` PNG (1 bit a pixel, all black: about 20 kB for 12000 x 12000), made without PIL."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + -(-side // 8))  # filter byte, then the row's bits
    pixels = zlib.compress(row * side, 9)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def answer_of(*images: bytes) -> dict:
    """OpenAI's images answer with ``images``."""
    return {"created": 1_700_000_000, "data": [{"b64_json": base64.b64encode(i).decode()} for i in images]}


def drawn(images: list[bytes], request: GenerationRequest, **options):
    """What ``RemoteModel("far", ...)`` gives for ``request`` when its service answers ``images``."""
    transport = httpx.MockTransport(lambda _: httpx.Response(200, json=answer_of(*images)))
    model = RemoteModel("far", RemoteBackend(url="http://127.0.0.1:9", **options), transport=transport)
    return asyncio.run(model.generate(request, 7))


def refused(images: list[bytes], request: GenerationRequest, **options) -> BadGateway:
    with pytest.raises(BadGateway) as raised:
        drawn(images, request, **options)
    return raised.value


def test_images_within_what_was_asked_pass_as_they_came():
    asked = GenerationRequest(prompt="a fox", size="64x64", n=2)
    images = [png(64, 64), png(90, 64)]  # 90x64: 1.4 times the pixels asked, within the tolerance
    assert drawn(images, asked).images == images
    unsized = GenerationRequest(prompt="a fox")  # its native 256x256
    assert drawn([png(256, 256)], unsized, native_size=256).images == [png(256, 256)]
    assert drawn([png(8, 8)], unsized).images == [png(8, 8)]  # smaller than asked: nothing to bound


def test_bytes_that_are_no_image_or_a_truncated_one_are_a_502_naming_the_model_without_retry_after():
    asked = GenerationRequest(prompt="a fox", size="64x64")
    for images, said in (
        ([b"these bytes are no image"], "data.0: not a readable image"),
        ([png(64, 64), png(64, 64)[:60]], "data.1: "),
    ):
        error = refused(images, asked)
        assert error.status == 502 and error.field == "model" and error.headers() == {}, error.message
        assert error.message.startswith("model: far's service answered an image") and said in error.message
        assert cannot_serve(error) == "bad_gateway"  # a fallback chain may take it


def test_an_image_with_more_pixels_than_asked_is_a_502_and_the_bound_is_the_native_size_without_a_size():
    error = refused([png(128, 128)], GenerationRequest(prompt="a fox", size="64x64"))  # 4 times the pixels
    assert "16384 pixels" in error.message and "asked 64x64, at most 8192 pixels" in error.message
    unsized = refused([png(256, 256)], GenerationRequest(prompt="a fox"), native_size=128)
    assert "asked 128x128" in unsized.message
    assert pixel_bound(64, 64) == 64 * 64 * PIXEL_TOLERANCE and pixel_bound(4096, 4096) == MAX_INPUT_PIXELS


def test_a_12000_pixel_png_is_refused_from_its_header_before_any_pixel_is_decoded():
    giant = giant_png()
    assert len(giant) < 100_000
    started = time.perf_counter()
    error = refused([giant], GenerationRequest(prompt="a fox", size="1024x1024"))
    assert time.perf_counter() - started < 1.0  # 144 megapixels decoded would take far longer
    assert "12000x12000" in error.message and "at most 4096 pixels" in error.message
    with pytest.raises(Exception, match="4096"):
        decoded_size(giant, "data.0", MAX_INPUT_PIXELS)  # the stack's input bound refuses it too, whatever was asked
