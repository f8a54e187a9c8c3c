"""A request's images, read and checked in one place for both pipelines (text-to-image and vectorize).

An image sent as base64 is decoded once per process (:func:`base64_bytes`: the schema's check, the key door's
pricing, a job's submission and the replica's decoding read the same bytes); :mod:`serve.images.raster` turns the
bytes into RGB pixels within the size limits. This module imports no image library: the request schemas, which Ray
Serve's HTTP proxy loads, use it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from functools import lru_cache
from typing import Annotated

from pydantic import Field

MAX_IMAGE_BYTES = 8 << 20
"""Each image of a request (an input image, its mask, a control image, an IP-Adapter reference), encoded."""
MAX_IMAGE_CHARS = -(-MAX_IMAGE_BYTES // 3) * 4  # its base64
BASE64_IMAGE = {"contentEncoding": "base64", "contentMediaType": "image/*"}
"""What the API's document says of a field that carries an image as base64 text (JSON Schema's content keywords)."""
Base64Image = Annotated[str, Field(min_length=1, max_length=MAX_IMAGE_CHARS, json_schema_extra=BASE64_IMAGE)]
"""One image of a request, as base64 text."""

BASE64_DECODED_KEPT = 16
"""Decoded base64 images a process keeps (the most recent requests' images; an older one is decoded again)."""


def content_digest(text: str) -> str:
    """An image as a cache key and an image's record name it: the SHA-256 of its base64 as sent."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@lru_cache(maxsize=BASE64_DECODED_KEPT)
def base64_bytes(text: str) -> bytes:
    """The bytes of base64 ``text`` (strict: a character outside the alphabet is ``binascii.Error``, a ValueError).

    Kept for the next reader of the same request in this process: a request's image is decoded once.
    """
    return base64.b64decode(text, validate=True)


def checked_base64(value: str, where: str = "") -> str:
    """``value`` if it is base64 of at most :data:`MAX_IMAGE_BYTES` (a ValueError naming what is wrong ``where``)."""
    at = f"{where}: " if where else ""
    try:
        data = base64_bytes(value)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"{at}not valid base64 ({error})") from error
    if not data:
        raise ValueError(f"{at}empty image")
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"{at}image is {len(data)} bytes; at most {MAX_IMAGE_BYTES} are accepted")
    return value
