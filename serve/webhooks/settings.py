"""The webhooks' settings, a part of the stack's (:class:`serve.settings.AppSettings` is made of them too)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from serve.errors import InvalidInput
from serve.spelling import Cli

DEFAULT_ATTEMPTS = 8
DEFAULT_TIMEOUT_S = 10.0
HOST_ALONE_PORTS = (80, 443)
"""The ports a ``--webhook-hosts`` entry without one allows (http's and https' own)."""


def host_and_port(entry: str) -> tuple[str, int | None]:
    """An allowlist entry's host (lower case) and port (None: the host alone): ``host``, ``host:port``, ``[::1]:80``."""
    parts = urlsplit(f"http://{entry.strip()}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port == -1 or not parts.hostname or parts.path or parts.query or parts.username or parts.password:
        raise ValueError(f"{entry!r} is not a host or host:port (an IPv6 address in brackets: [::1]:8080)")
    return parts.hostname.lower(), port


@dataclass(frozen=True)
class RetryTimes:
    """When a failed attempt goes again: ``first_s`` after it, each pause ``factor`` times the last (``max_s`` at most).

    ``attempts``: how many in all.
    """

    attempts: int = DEFAULT_ATTEMPTS
    first_s: float = 5.0
    factor: float = 4.0
    max_s: float = 3600.0

    def retry_at(self, attempts: int, now: float) -> float | None:
        """When the next attempt goes after ``attempts`` failed ones (the last at ``now``); None: no more."""
        if attempts >= self.attempts:
            return None
        return now + min(self.first_s * self.factor ** (attempts - 1), self.max_s)


class WebhookSettings(BaseModel):
    """Which hosts a job's webhook may name, and how its deliveries are attempted."""

    webhook_hosts: Annotated[tuple[str, ...], Cli(type="HOST_LIST", metavar="HOST[:PORT],...")] = Field(
        (),
        description="Hosts and ports a background job's webhook URL may name (comma-separated, e.g. "
        "hooks.example.org,127.0.0.1:9000): a host alone allows ports 80 and 443 only. Default: none, and a job "
        "naming a webhook is a 400.",
    )
    webhook_attempts: int = Field(
        DEFAULT_ATTEMPTS,
        ge=1,
        le=20,
        description="Attempts of one webhook delivery before it fails: 5 s after the first, each pause 4 times the "
        "last, at most an hour (8: over about 2.5 hours).",
    )
    webhook_timeout_s: float = Field(
        DEFAULT_TIMEOUT_S, gt=0, le=120, description="How long one webhook attempt may take, in seconds, all told."
    )

    @field_validator("webhook_hosts")
    @classmethod
    def _hosts_and_ports(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        for entry in hosts:
            host_and_port(entry)  # a ValueError names the entry
        return hosts

    @property
    def retries(self) -> RetryTimes:
        """When a failed delivery is attempted again."""
        return RetryTimes(attempts=self.webhook_attempts)

    def check(self, url: str) -> None:
        """A 400 naming ``webhook`` unless ``url`` is http(s) on an allowed host and port (its scheme's by default)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput(f"webhook: {url!r} is not an http:// or https:// URL", "webhook")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise InvalidInput(f"webhook: {url!r} has no valid port", "webhook") from None
        host, allowed = parts.hostname.lower(), {host_and_port(entry) for entry in self.webhook_hosts}
        if (host, port) not in allowed and not ((host, None) in allowed and port in HOST_ALONE_PORTS):
            shown = ", ".join(self.webhook_hosts) or "none (easel up --webhook-hosts)"
            raise InvalidInput(
                f"webhook: {host}:{port} is not allowed (a host alone allows ports 80 and 443); allowed: {shown}",
                "webhook",
            )
