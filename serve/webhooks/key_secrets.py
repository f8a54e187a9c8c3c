"""Each API key's webhook secret: its jobs' deliveries are signed with it, so one tenant cannot sign another's.

``easel keys webhook-secret KEY`` makes a key's secret, or rotates it: the new one signs from then on, and the one it
replaces signs beside it for a grace period (each delivery carries both signatures, and a receiver holding either
verifies it), so a receiver can change its secret without dropping a delivery. The secrets are kept in the stack's
store (they sign, so they are kept as they are; the store holds the keys' hashes already); two implementations keep
the contract, tested against the same tests: :class:`serve.webhooks.sqlite.SqliteKeySecrets` and
:class:`serve.webhooks.redis.RedisKeySecrets`. A stack without keys signs with the run folder's secret instead
(:class:`serve.webhooks.signing.Signer`).
"""

from __future__ import annotations

import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

DEFAULT_GRACE_S = 24 * 3600.0
"""How long a replaced secret still signs after ``easel keys webhook-secret`` rotates it."""


@dataclass(frozen=True)
class KeySecret:
    """A key's secret, and the one it replaced while that still signs (until ``previous_until``)."""

    current: bytes
    previous: bytes | None = None
    previous_until: float = 0.0

    def signing(self, now: float) -> list[bytes]:
        """The secrets that sign at ``now``: the current one, then the replaced one during its grace."""
        return [self.current] + ([self.previous] if self.previous and now < self.previous_until else [])


class KeySecrets(ABC):
    """The keys' webhook secrets in the stack's store. ``clock`` is injectable for tests."""

    clock = staticmethod(time.time)

    def rotate(self, key_id: str, grace_s: float = DEFAULT_GRACE_S) -> bytes:
        """A new secret for ``key_id`` (to show once); the one it replaces, if any, signs beside it for ``grace_s``."""
        secret = secrets.token_bytes(32)
        self._rotate(key_id, secret, self.clock() + grace_s)
        return secret

    def signing(self, key_id: str) -> list[bytes]:
        """The secrets that sign ``key_id``'s deliveries now, newest first; none if it has no secret."""
        found = self._get(key_id)
        return [] if found is None else found.signing(self.clock())

    @abstractmethod
    def _rotate(self, key_id: str, secret: bytes, previous_until: float) -> None:
        """Make ``secret`` the key's, its current one (if any) the previous until ``previous_until``, at once."""

    @abstractmethod
    def _get(self, key_id: str) -> KeySecret | None:
        """The key's secrets as kept, or None."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""
