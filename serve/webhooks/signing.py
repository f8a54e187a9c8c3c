"""Signed webhook calls as Standard Webhooks specifies them (the ``standardwebhooks`` library signs them).

Each call carries ``webhook-id`` (the delivery's id: the same on every attempt, so a receiver drops a repeat),
``webhook-timestamp`` (Unix seconds, this attempt's) and ``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256
of ``{id}.{timestamp}.{body}`` with each secret that signs it, space-separated (a receiver's library accepts any one
that matches). A receiver verifies them with Standard Webhooks' libraries (``Webhook(secret).verify(body, headers)``),
given the secret as they spell it: ``whsec_`` and its base64. Whose secrets sign: :class:`Signer`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

from serve.errors import InvalidInput
from serve.webhooks.key_secrets import KeySecrets

SECRET_FILE = "webhook_secret"
"""The signing secret's file in the run folder (32 random bytes, made once, readable by its owner only)."""
SECRET_PREFIX = "whsec_"


def secret_text(secret: bytes) -> str:
    """The secret as receivers' libraries take it: ``whsec_`` and its base64."""
    return SECRET_PREFIX + base64.b64encode(secret).decode()


def signed_headers(secrets: Sequence[bytes], delivery_id: str, body: str, now: float) -> dict[str, str]:
    """The headers of one attempt of delivery ``delivery_id`` of ``body`` at ``now`` (epoch seconds), signed so.

    ``webhook-signature`` holds one signature per secret of ``secrets``.
    """
    timestamp = datetime.fromtimestamp(int(now), tz=UTC)
    return {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(now)),
        "webhook-signature": " ".join(Webhook(secret).sign(delivery_id, timestamp, body) for secret in secrets),
    }


class Signer:
    """Whose secrets sign a delivery: its key's, or the stack's ``stack_secret`` for a job of an open API (no key).

    A key's (:mod:`serve.webhooks.key_secrets`): the current one and, during a rotation's grace, the one it replaced.
    """

    def __init__(self, stack_secret: bytes, keys: KeySecrets) -> None:
        self.stack_secret, self.keys = stack_secret, keys

    def secrets_of(self, key_id: str | None) -> list[bytes]:
        """The secrets that sign ``key_id``'s deliveries now; a 400 naming ``webhook`` if the key has none."""
        if key_id is None:
            return [self.stack_secret]
        found = self.keys.signing(key_id)
        if not found:
            raise InvalidInput(
                f"webhook: key {key_id} has no webhook secret to sign its deliveries; an admin makes one with "
                f"`easel keys webhook-secret {key_id}`",
                "webhook",
            )
        return found
