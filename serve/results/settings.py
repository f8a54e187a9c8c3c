"""The image store's settings, a part of the stack's (:class:`serve.settings.AppSettings` is made of them too)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from serve.results.tokens import DEFAULT_URL_TTL_S
from serve.spelling import Cli

DEFAULT_IMAGE_STORE_BYTES = 4 << 30
DEFAULT_IMAGE_RETENTION_S = 7 * 24 * 3600.0


class ResultSettings(BaseModel):
    """Where generated images are kept, for how long, and how their URLs are made."""

    image_store: Annotated[str | None, Cli(metavar="PATH|s3://BUCKET/PREFIX")] = Field(
        None,
        description="Where generated images are kept: a folder (a shared volume on a cluster) or an S3-compatible "
        "bucket, s3://BUCKET/PREFIX[?endpoint=URL] (boto3's credentials). Default: images/ in the run folder.",
    )
    image_store_bytes: Annotated[
        int, Cli(type="SIZE", off="--no-image-store", off_help="Keep no images: no URLs, no history.")
    ] = Field(DEFAULT_IMAGE_STORE_BYTES, ge=0, description="The kept images' bound; the oldest go first (0: none).")
    image_retention_s: float = Field(
        DEFAULT_IMAGE_RETENTION_S, ge=0, description="How long an image is kept, in seconds (0: until its bytes' turn)."
    )
    image_url_ttl_s: int = Field(
        DEFAULT_URL_TTL_S, ge=1, le=7 * 24 * 3600, description="How long an image's signed URL works, in seconds."
    )
    public_url: Annotated[str | None, Cli(metavar="URL")] = Field(
        None,
        description="The API's address as clients reach it, which image URLs start with (default: http://HOST:PORT "
        "of the API; set it behind a proxy or on 0.0.0.0).",
    )
