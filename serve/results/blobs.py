"""Where kept images' bytes live: a folder (the run folder's, or a shared volume's) or an S3-compatible bucket.

One location string picks it (``easel up --image-store``): a path, or ``s3://BUCKET/PREFIX`` (boto3, credentials
and region as boto3 reads them; ``?endpoint=URL`` names an S3-compatible server other than AWS).
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from serve.errors import InvalidInput


class ImageBlobs(ABC):
    """Bytes by name (an image's id)."""

    @abstractmethod
    def put(self, name: str, data: bytes, media_type: str) -> None:
        """Keep ``data`` under ``name`` (replacing what was there)."""

    @abstractmethod
    def get(self, name: str) -> bytes | None:
        """The bytes kept under ``name``, or None."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Drop ``name`` (none kept: nothing happens)."""


class FolderBlobs(ImageBlobs):
    """Files in a folder, each written whole (a temporary file renamed), so a reader never sees half of one."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"not an image name: {name!r}")
        return self.folder / name

    def put(self, name: str, data: bytes, media_type: str) -> None:
        """See :meth:`ImageBlobs.put`."""
        path = self._path(name)
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".incoming-")
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)

    def get(self, name: str) -> bytes | None:
        """See :meth:`ImageBlobs.get`."""
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        """See :meth:`ImageBlobs.delete`."""
        self._path(name).unlink(missing_ok=True)


class BucketBlobs(ImageBlobs):
    """Objects in an S3-compatible bucket (boto3), under a prefix."""

    def __init__(self, bucket: str, prefix: str = "", endpoint: str | None = None) -> None:
        import boto3  # here: a stack on a folder never loads it
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
        self.client = boto3.client("s3", endpoint_url=endpoint, config=config)
        self._missing = self.client.exceptions.NoSuchKey

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, name: str, data: bytes, media_type: str) -> None:
        """See :meth:`ImageBlobs.put`."""
        self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data, ContentType=media_type)

    def get(self, name: str) -> bytes | None:
        """See :meth:`ImageBlobs.get`."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except self._missing:
            return None

    def delete(self, name: str) -> None:
        """See :meth:`ImageBlobs.delete`."""
        self.client.delete_object(Bucket=self.bucket, Key=self._key(name))


def open_blobs(location: str | Path) -> ImageBlobs:
    """The blob store a location names: ``s3://BUCKET/PREFIX[?endpoint=URL]``, else a folder's path."""
    text = str(location)
    if not text.startswith("s3://"):
        return FolderBlobs(Path(text))
    parsed = urlparse(text)
    if not parsed.netloc:
        raise InvalidInput(f"image store {text!r}: use s3://BUCKET/PREFIX", "image_store")
    endpoint = parse_qs(parsed.query).get("endpoint", [None])[0]
    return BucketBlobs(parsed.netloc, parsed.path, endpoint)
