"""Results as data: generated images kept under an id, owned by the key that asked, with what made them.

An image's bytes live in a blob store (:mod:`serve.results.blobs`: the run folder's ``images/`` by default, a shared
volume, or an S3-compatible bucket), its row in the stack's store (:mod:`serve.results.store`, one module per store:
:mod:`.sqlite`, :mod:`.redis`). Retention drops the oldest first as each image is kept: first its key's own while
the key is over its quota (images and bytes: :data:`serve.stores.QUOTA_KINDS`), then by age and by the store's total
bytes, the last resort, which logs and counts (``easel_image_store_evictions``) each other key's image it drops.
Its URL is signed (:mod:`serve.results.tokens`); its PNG carries its record (:mod:`serve.results.record`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from serve import metrics
from serve.errors import NotFound
from serve.results.blobs import ImageBlobs, open_blobs
from serve.results.redis import RedisImageRecords
from serve.results.sqlite import SqliteImageRecords
from serve.results.store import ImageRecords, StoredImage
from serve.stores import scheme

logger = logging.getLogger(__name__)

MAX_DROPS_AT_ONCE = 1000
"""The most images one keep drops for retention (the rest go with the next ones)."""
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "svg": "image/svg+xml"}


def unknown_image(image_id: str) -> NotFound:
    """The 404 of an image that is not kept, or is another key's (the same answer for both)."""
    return NotFound(f"image_id: no image {image_id!r} is kept for this key", "image_id")


@dataclass(frozen=True)
class ImageQuota:
    """What one key may keep (None: no bound): its images, their bytes."""

    images: int | None = None
    bytes: int | None = None


class ImageStore:
    """Images kept: bytes in ``blobs``, rows in ``records``, the oldest dropped past ``max_age_s`` or ``max_bytes``."""

    def __init__(self, records: ImageRecords, blobs: ImageBlobs, max_age_s: float = 0, max_bytes: int = 0) -> None:
        self.records, self.blobs = records, blobs
        self.max_age_s, self.max_bytes = max_age_s, max_bytes

    def keep(self, image: StoredImage, data: bytes, quota: ImageQuota | None = None) -> StoredImage:
        """Keep ``data`` as ``image`` (its bytes first: a row never names missing bytes), then apply retention.

        ``quota``: its owner's; while the owner is over it, its own oldest go (never ``image`` itself).
        """
        self.blobs.put(image.id, data, image.media_type)
        kept = self.records.add(image)
        dropped = []
        while quota is not None and len(dropped) < MAX_DROPS_AT_ONCE:
            oldest = self.records.over_quota(image.owner, quota.images, quota.bytes)
            if oldest is None or oldest.id == image.id:
                break
            dropped += self._drop(oldest, "key_quota", image.owner)
        if dropped:
            logger.info("image store: key %s over its quota: its %d oldest images dropped", image.owner, len(dropped))
        self.retain(image.owner)
        return kept

    def retain(self, keeper: str | None = None) -> list[StoredImage]:
        """Drop the oldest images while one is past the age limit or the total is over the bytes' (those dropped).

        ``keeper``: the owner whose image is being kept; the bytes' bound dropping another's is logged.
        """
        dropped, others = [], set()
        while len(dropped) < MAX_DROPS_AT_ONCE:
            over = self.records.over_retention(self.max_age_s, self.max_bytes)
            if over is None:
                break
            gone = self._drop(*over, keeper)
            dropped += gone
            others |= {image.owner for image in gone if over[1] == "global" and image.owner != keeper}
        if others:
            logger.warning(
                "image store over its bound of %d bytes (--image-store-bytes): images of keys %s dropped to keep "
                "key %s's; lower the keys' quotas (--quota-image-bytes) or raise the bound",
                self.max_bytes,
                ", ".join(sorted(repr(owner) for owner in others)),
                repr(keeper),
            )
        if dropped:
            logger.info("image store: %d images dropped by retention", len(dropped))
        return dropped

    def _drop(self, image: StoredImage, reason: str, keeper: str | None) -> list[StoredImage]:
        """Drop ``image`` (for ``reason``), counted; [] when another replica dropped it first."""
        gone = self.records.remove(image.id)
        if gone is None:
            return []
        self.blobs.delete(gone.id)
        whose = "own" if keeper is not None and gone.owner == keeper else "other"
        metrics.count(metrics.IMAGE_EVICTIONS, reason=reason, whose=whose)
        return [gone]

    def find(self, image_id: str, owner: str | None) -> StoredImage:
        """``image_id``'s row if ``owner`` may see it (None: anyone); else the 404 an unknown id gets."""
        image = self.records.get(image_id)
        if image is None or (owner is not None and image.owner != owner):
            raise unknown_image(image_id)
        return image

    def read(self, image: StoredImage) -> bytes:
        """``image``'s bytes (a 404 if retention dropped them meanwhile)."""
        data = self.blobs.get(image.id)
        if data is None:
            raise unknown_image(image.id)
        return data

    def delete(self, image_id: str, owner: str | None) -> StoredImage:
        """Drop ``image_id`` if ``owner`` may see it (None: anyone); the row dropped (404 as :meth:`find`)."""
        self.find(image_id, owner)
        image = self.records.remove(image_id)
        if image is None:
            raise unknown_image(image_id)
        self.blobs.delete(image_id)
        return image

    def page(self, owner: str | None, after: str | None, limit: int) -> list[StoredImage]:
        """Up to ``limit`` of ``owner``'s images (None: everyone's), newest first, after ``after`` (an id)."""
        return self.records.page(owner, after, limit)


def open_image_records(url: str) -> ImageRecords:
    """The image rows in the store at ``url`` (``sqlite:///PATH`` or ``redis://HOST:PORT/DB``)."""
    if scheme(url) == "sqlite":
        return SqliteImageRecords(url)
    return RedisImageRecords(url)


def open_image_store(url: str, location: str | Path, max_age_s: float = 0, max_bytes: int = 0) -> ImageStore:
    """The image store: rows in the stack's store at ``url``, bytes at ``location`` (:func:`open_blobs`)."""
    return ImageStore(open_image_records(url), open_blobs(location), max_age_s, max_bytes)
