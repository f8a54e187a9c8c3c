"""Who did what: every admin action and every refusal for a missing scope, as JSON lines in the run folder.

An entry names the key (its id and name, never its secret; none: an open API, or ``easel keys`` on the stack's
machine, ``via: cli``), the action (``POST /v1/models``: the route as :mod:`serve.routes` declares it; a
:attr:`~serve.routes.Route.audited` one, or any route a key was refused for its scope), the path, when, the status
and the outcome (``ok``; ``refused``: 401 or 403; ``failed``: any other error). Each is counted in
``easel_audit_events_total{action,outcome}``. The log is ``audit.jsonl`` in the run folder (every Gateway replica of
the machine appends to it, one line a write, under a lock); past :data:`MAX_AUDIT_BYTES` / 2 it becomes
``audit.1.jsonl`` (the one before is dropped), so the two hold at most :data:`MAX_AUDIT_BYTES`. A restart keeps
both. ``GET /v1/audit`` reads them back, newest first (:meth:`AuditLog.page`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from serve import metrics
from serve.routes import operation
from serve.wire import Message, Send
from serve.wire import Scope as AsgiScope

logger = logging.getLogger(__name__)

AUDIT_FILE = "audit.jsonl"
"""The log in the run folder; the older half beside it is :data:`OLDER_FILE`."""
OLDER_FILE = "audit.1.jsonl"
MAX_AUDIT_BYTES = 16 << 20
"""What the two files hold at most together."""
MAX_AUDIT_PAGE = 200
"""Entries one ``GET /v1/audit`` answers at most."""


def outcome(status: int) -> str:
    """An answer's status as an entry's outcome: ``ok``, ``refused`` (401, 403) or ``failed``."""
    if status < 400:
        return "ok"
    return "refused" if status in (401, 403) else "failed"


@dataclass(frozen=True)
class AuditEntry:
    """One line of the log."""

    id: str
    created_at: float  # Unix seconds
    key_id: str | None  # None: no key (an open API, or the CLI on the stack's machine)
    key_name: str | None
    action: str  # "METHOD /route/{template}"
    path: str
    status: int
    outcome: str
    via: str = "http"  # http, grpc or cli
    detail: str | None = None  # a refusal's reason, or what the CLI changed

    @classmethod
    def now(cls, key, action: str, path: str, status: int, via: str = "http", detail: str | None = None) -> AuditEntry:
        """An entry made now for ``key`` (an :class:`~serve.access.keys.ApiKey`, or None)."""
        stamp = time.time_ns()
        return cls(
            f"audit_{stamp:x}{secrets.token_hex(3)}",
            round(stamp / 1e9, 3),
            key and key.id,
            key and key.name,
            action,
            path,
            status,
            outcome(status),
            via,
            detail,
        )


class AuditLog:
    """The log's files in ``folder`` (a run folder), bounded by ``max_bytes`` together."""

    def __init__(self, folder: Path, max_bytes: int = MAX_AUDIT_BYTES) -> None:
        self.path, self.older, self.max_bytes = Path(folder) / AUDIT_FILE, Path(folder) / OLDER_FILE, max_bytes

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the log's lock (every process of the machine that writes it takes it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def write(self, entry: AuditEntry) -> None:
        """Append ``entry``; the file first becomes the older one if the line would take it past half the bound.

        The one before it is dropped: the two files never hold more than the bound.
        """
        line = (json.dumps(asdict(entry), separators=(",", ":")) + "\n").encode()
        with self._locked():
            if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes // 2:
                os.replace(self.path, self.older)
            with open(self.path, "ab") as file:
                file.write(line)

    def entries(self) -> list[dict]:
        """Every entry kept, oldest first (a line cut short by a crash is skipped)."""
        found = []
        with self._locked():
            texts = [p.read_text() for p in (self.older, self.path) if p.exists()]
        for text in texts:
            for line in text.splitlines():
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:
                    logger.warning("audit log: a line that is not JSON skipped")
        return found

    def page(self, after: str | None, limit: int) -> dict:
        """Entries newest first, after the entry ``after`` (the previous page's last id): a list object."""
        newest = self.entries()[::-1]
        start = next((i + 1 for i, e in enumerate(newest) if e["id"] == after), 0 if after is None else len(newest))
        data = newest[start : start + limit]
        return {"object": "list", "data": data, "has_more": start + limit < len(newest)}


class Audit:
    """This process's audit log (None until :meth:`open`: nothing is written, nothing counted)."""

    def __init__(self) -> None:
        self.log: AuditLog | None = None

    def open(self, folder: str | Path | None) -> None:
        """Write the log in ``folder`` (None: keep none)."""
        self.log = None if folder is None else AuditLog(Path(folder))

    def record(self, key, action: str, path: str, status: int, via: str = "http", detail: str | None = None) -> None:
        """Write an entry and count it; a log that cannot be written is logged, never the request's failure."""
        if self.log is None:
            return
        entry = AuditEntry.now(key, action, path, status, via, detail)
        metrics.count(metrics.AUDIT_EVENTS, action=action, outcome=entry.outcome)
        try:
            self.log.write(entry)
        except OSError as error:
            logger.error(
                "audit log %s not written: %s (%s %s by %s)", self.log.path, error, action, status, entry.key_id
            )


AUDIT = Audit()
"""This process's (one Gateway replica's) audit log."""


def audited(send: Send, scope: AsgiScope, key) -> Send:
    """``send``, the answer's status written to the audit log when the request is an admin action.

    An admin action: a route that is :attr:`~serve.routes.Route.audited`. ``key``: the caller's (None: an open API).
    """
    found = operation(scope["method"], scope["path"])
    if found is None or not found.audited or AUDIT.log is None:
        return send
    action = f"{found.method.upper()} {found.path}"

    async def recording(message: Message) -> None:
        if message["type"] == "http.response.start":
            AUDIT.record(key, action, scope["path"], message["status"])
        await send(message)

    return recording


def refused(key, method: str, path: str, reason: str, via: str) -> None:
    """A key refused for a missing scope (a 403), written to the audit log."""
    found = operation(method, path)
    action = f"{method.upper()} {found.path if found else path}"
    AUDIT.record(key, action, path, 403, via, reason)
