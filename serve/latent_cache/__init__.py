"""The latent cache: intermediate latents of recent generations, found by their prompt's text embedding.

Approximate caching across requests (NIRVANA, NSDI'24): a generation whose prompt is near an earlier one's, with
everything else that shapes the image equal (its *shape*: model, size, sampler, steps, guidance, adapters...),
starts from that generation's latents after its first K steps and skips them
(:mod:`serve.text_to_image.approximate` decides what a job's shape, embedding and K are).

It lives in the stack's store (``--store URL``: SQLite on one machine, Redis across machines), as the result cache
does, rather than in a Ray actor: every ``TextToImage`` replica (on any node) shares one cache with no actor to
place, restart or route to, it outlives a replica's restart, and one flag moves it with the rest of the stack's
state. A lookup reads the embeddings of one shape's entries (unit vectors, a few hundred floats each) and the
latents of the nearest; the cache is bounded in entries, least recently used out. One contract
(:mod:`serve.latent_cache.store`), one module per store (:mod:`serve.latent_cache.sqlite`,
:mod:`serve.latent_cache.redis`).
"""

from __future__ import annotations

from serve.latent_cache.redis import RedisLatentStore
from serve.latent_cache.sqlite import SqliteLatentStore
from serve.latent_cache.store import LatentStore, Match
from serve.stores import scheme

DEFAULT_ENTRIES = 1024
"""Generations whose latents are kept (each: n x 4 x h/8 x w/8 floats, 1 KiB for one 64x64 image)."""

DEFAULT_SIMILARITY = 0.98
"""The cosine similarity of two prompts' embeddings at which the earlier one's latents are reused (measured:
:mod:`serve.text_to_image.approximate`)."""

__all__ = ["DEFAULT_ENTRIES", "DEFAULT_SIMILARITY", "LatentStore", "Match", "open_latent_store"]


def open_latent_store(url: str, max_entries: int = DEFAULT_ENTRIES) -> LatentStore:
    """The latent cache in the store at ``url``."""
    if scheme(url) == "sqlite":
        return SqliteLatentStore(url, max_entries)
    return RedisLatentStore(url, max_entries)
