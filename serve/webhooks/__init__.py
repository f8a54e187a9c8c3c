"""Job webhooks: a finished job POSTed, signed, to the URL it named, from an outbox in the stack's store.

A job's delivery is recorded in the transaction that ends it (:mod:`serve.webhooks.store`'s contract, one module per
store: :mod:`.sqlite`, :mod:`.redis`), so none is lost when a process dies; each Gateway replica's sender
(:mod:`.sender`) delivers it, keys in turn, signed as Standard Webhooks specifies (:mod:`.signing`) with the secret of
the key that submitted the job (:mod:`.key_secrets`), retried with backoff up to its attempts (:mod:`.settings`: the
hosts and ports a webhook may name, its attempts and timeout).
"""

from __future__ import annotations

from pathlib import Path

from serve.files import stack_secret
from serve.stores import scheme
from serve.webhooks.key_secrets import KeySecrets
from serve.webhooks.redis import RedisKeySecrets, RedisOutbox
from serve.webhooks.sender import WebhookSender
from serve.webhooks.settings import WebhookSettings
from serve.webhooks.signing import SECRET_FILE, Signer, secret_text
from serve.webhooks.sqlite import SqliteKeySecrets, SqliteOutbox
from serve.webhooks.store import Outbox

__all__ = [
    "SECRET_FILE",
    "WebhookSender",
    "WebhookSettings",
    "open_key_secrets",
    "open_outbox",
    "secret_text",
    "sender_of",
]


def open_outbox(url: str) -> Outbox:
    """The outbox at ``url`` (``sqlite:///PATH`` or ``redis://HOST:PORT/DB``)."""
    if scheme(url) == "sqlite":
        return SqliteOutbox(url)
    return RedisOutbox(url)


def open_key_secrets(url: str) -> KeySecrets:
    """The keys' webhook secrets at ``url`` (``sqlite:///PATH`` or ``redis://HOST:PORT/DB``)."""
    if scheme(url) == "sqlite":
        return SqliteKeySecrets(url)
    return RedisKeySecrets(url)


def sender_of(settings: WebhookSettings, store_url: str, secret_path: str | None) -> WebhookSender | None:
    """A replica's sender of the stack's outbox; None if no host is allowed.

    An open API's jobs are signed with the secret in ``secret_path``, a key's with its own.
    """
    if not settings.webhook_hosts or secret_path is None:
        return None
    signer = Signer(stack_secret(Path(secret_path)), open_key_secrets(store_url))
    return WebhookSender(open_outbox(store_url), signer, settings, settings.retries, settings.webhook_timeout_s)
