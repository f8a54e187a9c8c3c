"""A request's images, read and checked in one place for both pipelines (text-to-image and vectorize).

An image sent as base64 is decoded once per process (:func:`base64_bytes`: the schema's check, the key door's
pricing, a job's submission and the replica's decoding read the same bytes); :mod:`serve.images.raster` turns the
bytes into RGB pixels within the size limits. This module imports no image library: the request schemas, which Ray
Serve's HTTP proxy loads, use it.
"""

from __future__ import annotations

import base64
from functools import lru_cache

BASE64_DECODED_KEPT = 16
"""Decoded base64 images a process keeps (the most recent requests' images; an older one is decoded again)."""


@lru_cache(maxsize=BASE64_DECODED_KEPT)
def base64_bytes(text: str) -> bytes:
    """The bytes of base64 ``text`` (strict: a character outside the alphabet is ``binascii.Error``, a ValueError).

    Kept for the next reader of the same request in this process: a request's image is decoded once.
    """
    return base64.b64decode(text, validate=True)
