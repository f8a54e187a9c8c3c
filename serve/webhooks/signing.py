"""Signed webhook calls as Standard Webhooks specifies them (the ``standardwebhooks`` library signs them).

Each call carries ``webhook-id`` (the delivery's id: the same on every attempt, so a receiver drops a repeat),
``webhook-timestamp`` (Unix seconds, this attempt's) and ``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256
of ``{id}.{timestamp}.{body}`` with the stack's secret. A receiver verifies them with Standard Webhooks' libraries
(``Webhook(secret).verify(body, headers)``), given the secret as they spell it: ``whsec_`` and its base64.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from standardwebhooks import Webhook

SECRET_FILE = "webhook_secret"
"""The signing secret's file in the run folder (32 random bytes, made once, readable by its owner only)."""
SECRET_PREFIX = "whsec_"


def secret_text(secret: bytes) -> str:
    """The secret as receivers' libraries take it: ``whsec_`` and its base64."""
    return SECRET_PREFIX + base64.b64encode(secret).decode()


def signed_headers(secret: bytes, delivery_id: str, body: str, now: float) -> dict[str, str]:
    """The headers of one attempt of delivery ``delivery_id`` of ``body`` at ``now`` (epoch seconds)."""
    timestamp = datetime.fromtimestamp(int(now), tz=UTC)
    return {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(now)),
        "webhook-signature": Webhook(secret).sign(delivery_id, timestamp, body),
    }
