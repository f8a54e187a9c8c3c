"""The result cache: answers of earlier generations, content-addressed, bounded in bytes, least recently used out.

A request with an explicit seed whose model (the engine folder's content-addressed name) and generation as admission
typed it (:class:`serve.text_to_image.drawing.Drawing`: every parameter that shapes the images) match an earlier one
gets that answer again without touching Triton. Only raster answers are kept: an SVG answer may be a fallback of the
moment (vectorize models unavailable). The cache lives in the stack's store (``--store URL``: SQLite on one machine,
Redis across machines), so every Gateway replica shares it: one contract (:mod:`serve.cache.store`), one module per
store (:mod:`serve.cache.sqlite`, :mod:`serve.cache.redis`).

Each API key has its own entries (:func:`cache_scope`, part of the key): a key never gets, nor learns by a hit's
speed, what another key asked. ``easel up --share-caches`` (a single-tenant stack) shares them, and the approximate
cache's latents (:mod:`serve.text_to_image.approximate`), across keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
from collections.abc import Callable

from redis.exceptions import RedisError

from serve.cache.redis import RedisResultCache
from serve.cache.sqlite import SqliteResultCache
from serve.cache.store import ResultCache
from serve.stores import scheme

logger = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 1 << 30
"""Bytes of cached answers kept by default (``easel up --cache-bytes``)."""


def cache_scope(key_id: str | None, shared: bool) -> str:
    """Whose entries a request's answers and latents are: its key's (none: an open API's), or everyone's (shared)."""
    return "" if shared or key_id is None else key_id


def cache_key(engine: str, drawing: dict | None, scope: str) -> str | None:
    """The content address of a generation's answer in ``scope`` (:func:`cache_scope`); None: not to be cached.

    ``drawing``: what shapes its answer (:meth:`serve.text_to_image.drawing.Drawing.identity`; None: an answer not
    to be cached, without a seed or an SVG one); ``engine``: the model's and its LoRAs' files, its moderation policy.
    """
    if drawing is None:
        return None
    material = {"engine": engine, "drawing": drawing, "scope": scope}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


async def cache_call(call: Callable, *args):
    """A result-cache call in a worker thread; one the store fails (its disk full, Redis restarting) is a miss.

    The generation is answered without the cache, never refused for it.
    """
    try:
        return await asyncio.to_thread(call, *args)
    except (sqlite3.Error, RedisError) as error:
        logger.warning("result cache skipped: %s", error)
        return None


def open_cache(url: str, max_bytes: int = DEFAULT_CACHE_BYTES) -> ResultCache:
    """The result cache in the store at ``url``."""
    if scheme(url) == "sqlite":
        return SqliteResultCache(url, max_bytes)
    return RedisResultCache(url, max_bytes)
