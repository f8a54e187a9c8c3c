"""Job webhooks: a finished job POSTed, signed, to the URL it named, from an outbox in the stack's store.

A job's delivery is recorded in the transaction that ends it (:mod:`serve.webhooks.store`'s contract, one module per
store: :mod:`.sqlite`, :mod:`.redis`), so none is lost when a process dies; each Gateway replica's sender
(:mod:`.sender`) delivers it, signed as Standard Webhooks specifies (:mod:`.signing`), retried with backoff up to its
attempts (:mod:`.settings`: the hosts a webhook may name, its attempts and timeout).
"""

from __future__ import annotations

from pathlib import Path

from serve.files import stack_secret
from serve.stores import scheme
from serve.webhooks.redis import RedisOutbox
from serve.webhooks.sender import WebhookSender
from serve.webhooks.settings import WebhookSettings
from serve.webhooks.signing import SECRET_FILE, secret_text
from serve.webhooks.sqlite import SqliteOutbox
from serve.webhooks.store import Outbox

__all__ = ["SECRET_FILE", "WebhookSender", "WebhookSettings", "open_outbox", "secret_text", "sender_of"]


def open_outbox(url: str) -> Outbox:
    """The outbox at ``url`` (``sqlite:///PATH`` or ``redis://HOST:PORT/DB``)."""
    if scheme(url) == "sqlite":
        return SqliteOutbox(url)
    return RedisOutbox(url)


def sender_of(settings: WebhookSettings, store_url: str, secret_path: str | None) -> WebhookSender | None:
    """A replica's sender of the stack's outbox, its secret from ``secret_path``; None if no host is allowed."""
    if not settings.webhook_hosts or secret_path is None:
        return None
    secret = stack_secret(Path(secret_path))
    return WebhookSender(open_outbox(store_url), secret, settings, settings.retries, settings.webhook_timeout_s)
