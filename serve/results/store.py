"""The image store's contract: each kept image's row (who owns it, when, its bytes' size and what made it).

The rows live in the stack's store (:mod:`serve.stores`: SQLite or Redis), one module each (:mod:`.sqlite`,
:mod:`.redis`); the bytes live in a blob store (:mod:`serve.results.blobs`). Rows are numbered as they are added
(``seq``): the oldest goes first under retention (the whole store's, or one key's over its quota), and a key's
history is listed newest first.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class StoredImage:
    """One kept image: its id, owner (an API key's id; "" while the API is open), size and generation record."""

    id: str
    owner: str
    media_type: str  # image/png, image/jpeg, image/webp, image/svg+xml
    size: int  # bytes
    created_at: float
    record: dict = field(default_factory=dict)  # what made it (serve.results.record); {} with metadata "none"
    seq: int = 0  # its place in the store's order (set by the store)

    def to_json(self) -> str:
        """The row as JSON (what the stores keep)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> StoredImage:
        """A row read back."""
        return cls(**json.loads(text))

    def to_api(self) -> dict:
        """The image as ``GET /v1/images`` lists it (its bytes at ``GET /v1/images/{id}``)."""
        return {
            "id": self.id,
            "object": "image",
            "created_at": self.created_at,
            "media_type": self.media_type,
            "bytes": self.size,
            "record": self.record,
        }


class ImageRecords(ABC):
    """The kept images' rows, in the order they were added; their sizes' total kept beside them."""

    clock: Callable[[], float] = staticmethod(time.time)

    @abstractmethod
    def add(self, image: StoredImage) -> StoredImage:
        """Keep ``image``'s row (an id already kept: replaced); the row with its ``seq``."""

    @abstractmethod
    def get(self, image_id: str) -> StoredImage | None:
        """The row of ``image_id``, or None."""

    @abstractmethod
    def remove(self, image_id: str) -> StoredImage | None:
        """Drop ``image_id``'s row; the row dropped, or None if there was none (another replica's already)."""

    @abstractmethod
    def page(self, owner: str | None, after: str | None, limit: int) -> list[StoredImage]:
        """Up to ``limit`` rows of ``owner`` (None: everyone's), newest first, after the row ``after`` (an id)."""

    @abstractmethod
    def oldest(self, owner: str | None = None) -> StoredImage | None:
        """The row added first of those kept (of ``owner``'s; None: everyone's), or None."""

    @abstractmethod
    def total(self) -> int:
        """The bytes of every kept image."""

    @abstractmethod
    def held(self, owner: str) -> tuple[int, int]:
        """How many images ``owner`` keeps, and their bytes."""

    def over_retention(self, max_age_s: float, max_bytes: int) -> tuple[StoredImage, str] | None:
        """The oldest row and why it must go, or None.

        ``age``: older than ``max_age_s``; ``global``: the total is over ``max_bytes`` (0: no limit).
        """
        oldest = self.oldest()
        if oldest is None:
            return None
        if max_age_s > 0 and oldest.created_at < self.clock() - max_age_s:
            return oldest, "age"
        return (oldest, "global") if max_bytes > 0 and self.total() > max_bytes else None

    def over_quota(self, owner: str, max_images: int | None, max_bytes: int | None) -> StoredImage | None:
        """``owner``'s oldest row if it keeps more than ``max_images`` or ``max_bytes`` (None: no bound), or None."""
        count, size = self.held(owner)
        over = (max_images is not None and count > max_images) or (max_bytes is not None and size > max_bytes)
        return self.oldest(owner) if over else None
