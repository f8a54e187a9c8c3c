"""What production teaches the vectorize models: answers recorded with their predicted and measured SSIM.

The Vectorizer records a share of its answers (``--vectorize-record-rate``): the version, tier, class, features,
parameters, predicted and measured SSIM and bytes, and the uploaded image only where the operator opts in
(``--vectorize-record-images``). The store keeps the newest ``max_rows`` (SQLite or Redis, at the stack's store URL).
``easel vectorize export-feedback`` writes them out (:func:`export`): ``records.jsonl``, and the images as PNG files
in ``images/``, the folder ``easel train vectorize`` trains from.
"""

from __future__ import annotations

import base64
import json
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

from serve.stores import redis_client, scheme, serialized, sqlite_connect

DEFAULT_MAX_ROWS = 10_000
RECORDS_FILE = "records.jsonl"
IMAGES_FOLDER = "images"


@dataclass(frozen=True)
class Record:
    """One recorded answer."""

    at: float
    model_version: int
    tier: str
    image_class: str | None
    features: dict[str, float]
    parameters: dict
    predicted_ssim: float | None
    ssim: float
    bytes: int
    image_png: bytes | None = None  # the upload as PNG, only where the operator opts in

    @property
    def error(self) -> float | None:
        """The predictor's error: measured SSIM minus predicted (None without a prediction: the defaults)."""
        return None if self.predicted_ssim is None else self.ssim - self.predicted_ssim

    def to_json(self) -> dict:
        """The row as stored and exported (the image aside)."""
        return {key: value for key, value in asdict(self).items() if key != "image_png"}


class RecordStore(ABC):
    """The newest ``max_rows`` recorded answers."""

    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.max_rows = max_rows

    @abstractmethod
    def add(self, record: Record) -> None:
        """Keep ``record``, dropping the oldest past ``max_rows``."""

    @abstractmethod
    def rows(self) -> list[Record]:
        """Every record kept, oldest first."""


class SqliteRecordStore(RecordStore):
    """Records in the stack's SQLite database (table ``vectorize_records``)."""

    def __init__(self, url: str, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        super().__init__(max_rows)
        self._lock = threading.Lock()
        self._db = sqlite_connect(url)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS vectorize_records (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT, image BLOB)"
        )

    @serialized
    def add(self, record: Record) -> None:
        """Insert, then drop what falls past the bound."""
        row = (json.dumps(record.to_json()), record.image_png)
        cursor = self._db.execute("INSERT INTO vectorize_records (body, image) VALUES (?, ?)", row)
        self._db.execute("DELETE FROM vectorize_records WHERE id <= ?", (cursor.lastrowid - self.max_rows,))

    @serialized
    def rows(self) -> list[Record]:
        """Oldest first."""
        found = self._db.execute("SELECT body, image FROM vectorize_records ORDER BY id").fetchall()
        return [Record(**json.loads(row["body"]), image_png=row["image"]) for row in found]


class RedisRecordStore(RecordStore):
    """Records in a capped Redis list (``easel:vectorize:records``, newest first)."""

    KEY = "easel:vectorize:records"

    def __init__(self, url: str, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        super().__init__(max_rows)
        self._redis = redis_client(url)

    def add(self, record: Record) -> None:
        """Push, then trim to the bound (one round trip)."""
        image = base64.b64encode(record.image_png).decode() if record.image_png else None
        body = json.dumps({**record.to_json(), "image_png": image})
        self._redis.pipeline().lpush(self.KEY, body).ltrim(self.KEY, 0, self.max_rows - 1).execute()

    def rows(self) -> list[Record]:
        """Oldest first."""
        rows = []
        for body in reversed(self._redis.lrange(self.KEY, 0, -1)):
            data = json.loads(body)
            image = data.pop("image_png")
            rows.append(Record(**data, image_png=base64.b64decode(image) if image else None))
        return rows


def open_record_store(url: str, max_rows: int = DEFAULT_MAX_ROWS) -> RecordStore:
    """The record store at the stack's store ``url``."""
    return (SqliteRecordStore if scheme(url) == "sqlite" else RedisRecordStore)(url, max_rows)


def export(store: RecordStore, out: Path) -> dict:
    """Write every record to ``out``: ``records.jsonl`` and, for those with an image, ``images/NNNNNN.png``.

    ``images/`` is what ``easel train vectorize`` trains from; ``records.jsonl`` says, per row, what the served
    version predicted and what was measured. Returns the counts.
    """
    images = out / IMAGES_FOLDER
    images.mkdir(parents=True, exist_ok=True)
    rows = store.rows()
    with (out / RECORDS_FILE).open("w") as file:
        for number, record in enumerate(rows):
            name = f"{number:06d}.png" if record.image_png else None
            if name:
                (images / name).write_bytes(record.image_png)
            file.write(json.dumps({**record.to_json(), "image": name and f"{IMAGES_FOLDER}/{name}"}) + "\n")
    return {"rows": len(rows), "images": sum(1 for r in rows if r.image_png), "out": str(out)}
