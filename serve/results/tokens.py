"""Signed, expiring image URLs: an HMAC-SHA256 over an image's id and expiry, with the stack's secret.

A URL so signed needs no API key (a browser shows it); a wrong signature, or one past its expiry, is a 403. The
secret is a file in the run folder (made once, readable by its owner only), so URLs outlive a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from serve.errors import Forbidden

SECRET_FILE = "url_secret"
"""The secret's file in the run folder (:func:`serve.files.stack_secret` makes it)."""
DEFAULT_URL_TTL_S = 3600
"""How long an image's URL works (OpenAI's last an hour too)."""


class UrlSigner:
    """Signs an image id until an expiry (epoch seconds) and checks such a signature."""

    def __init__(self, secret: bytes, ttl_s: float = DEFAULT_URL_TTL_S) -> None:
        self.secret, self.ttl_s = secret, ttl_s

    def signature(self, image_id: str, expires: int) -> str:
        """The signature of ``image_id`` until ``expires``."""
        return hmac.new(self.secret, f"{image_id}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def query(self, image_id: str, now: float | None = None) -> str:
        """The query string of ``image_id``'s URL, valid from ``now`` for the signer's time to live."""
        expires = int((time.time() if now is None else now) + self.ttl_s)
        return f"expires={expires}&signature={self.signature(image_id, expires)}"

    def check(self, image_id: str, expires: int, signature: str, now: float | None = None) -> None:
        """Raise a 403 unless ``signature`` signs ``image_id`` until ``expires`` and that is not past."""
        if not hmac.compare_digest(signature.encode(), self.signature(image_id, expires).encode()):  # any text
            raise Forbidden("signature: not a valid signature of this image's URL", "signature")
        if expires < (time.time() if now is None else now):
            raise Forbidden("expires: this image's URL has expired; ask GET /v1/images/{id} with a key", "expires")
