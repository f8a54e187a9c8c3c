"""Where state that must survive a restart lives, picked by one URL: SQLite (default, embedded) or Redis.

``sqlite:///ABSOLUTE/PATH.db`` for one machine (the default: ``easel.db`` in the stack's run folder,
``$EASEL_HOME/run``); ``redis://HOST:PORT/DB`` when the stack spans nodes. Background jobs, API keys and the result
cache open their stores from the same URL (:func:`serve.jobs.open_job_store`, :func:`serve.access.open_key_store`,
:func:`serve.cache.open_cache`), so one flag (``easel up --store URL``) moves all of them. Each has one contract
(``store.py``; keys: ``keys.py``) and one module per store (``sqlite.py``, ``redis.py``), which share what is here:
the URL's scheme, SQLite connections, the Redis client; and what each key may keep in them, its quotas
(:data:`QUOTA_KINDS`, declared once: a key's own in its limits, the stack's defaults in its settings).
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, create_model

from serve.paths import run_dir
from serve.spelling import Cli

SQLITE_BUSY_TIMEOUT_MS = 10_000


class StoreURLError(ValueError):
    """A store URL that names no supported store."""


def default_url(folder: Path | None = None) -> str:
    """The embedded default: ``easel.db`` in ``folder`` (a stack's run folder; default ``$EASEL_HOME/run``)."""
    return f"sqlite:///{(folder or run_dir()) / 'easel.db'}"


def scheme(url: str) -> str:
    """``sqlite`` or ``redis``; raises :class:`StoreURLError` for anything else."""
    kind = urlparse(url).scheme
    if kind not in ("sqlite", "redis"):
        raise StoreURLError(f"store URL {url!r}: use sqlite:///PATH or redis://HOST:PORT/DB")
    return kind


def sqlite_path(url: str) -> Path:
    """The database file of a ``sqlite:///PATH`` URL."""
    if scheme(url) != "sqlite":
        raise StoreURLError(f"{url!r} is not a sqlite:/// URL")
    path = urlparse(url).path
    if not path:
        raise StoreURLError(f"store URL {url!r} names no file")
    return Path(path)


def sqlite_connect(url: str) -> sqlite3.Connection:
    """A connection in WAL mode (readers never block the writer) that waits for locks instead of failing.

    It may be used from any thread (callers run store calls in worker threads), one call at a time: see
    :func:`serialized`.
    """
    path = sqlite_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(
        path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.row_factory = sqlite3.Row
    return connection


def sqlite_open(url: str, schema: str) -> tuple[sqlite3.Connection, threading.RLock]:
    """A store's connection (:func:`sqlite_connect`) with ``schema``'s tables made, and the lock it is used under."""
    connection = sqlite_connect(url)
    connection.executescript(schema)
    return connection, threading.RLock()


def serialized(method):
    """Run a method of an object holding one SQLite connection under the object's ``_lock``, one call at a time."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


def redis_client(url: str, decode: bool = True):
    """A Redis client for a ``redis://HOST:PORT/DB`` URL (responses decoded as str unless ``decode`` is False)."""
    import redis

    if scheme(url) != "redis":
        raise StoreURLError(f"{url!r} is not a redis:// URL")
    return redis.Redis.from_url(url, decode_responses=decode, socket_timeout=10, socket_connect_timeout=5)


class StoreUnreachable(ConnectionError):
    """The store a stack is told to use does not answer."""


def check_store(url: str) -> None:
    """Raise :class:`StoreUnreachable` with the fix when a Redis store does not answer a ping (SQLite: nothing)."""
    if scheme(url) != "redis":
        return
    import redis

    try:
        redis_client(url).ping()
    except redis.RedisError as error:
        raise StoreUnreachable(
            f"the store {url} does not answer ({error}): start Redis there (Debian: `apt-get install redis-server`), "
            "or leave --store out for the embedded SQLite file"
        ) from None


@dataclass(frozen=True)
class QuotaKind:
    """One kind of thing a key keeps in the stores, bounded per key (a new kind joins :data:`QUOTA_KINDS`)."""

    name: str  # the key's limit (`easel keys create --quota-NAME`), `easel up --quota-NAME`, the 429's param
    unit: str  # what it counts
    default: int  # the stack's default per key (0: no bound)
    evicts: bool = False  # over it, the key's own oldest go (images: results); else one more is refused (a 429)
    size: bool = False  # bytes (a SIZE on the command line)


QUOTA_KINDS = (
    QuotaKind("images", "kept images", 5_000, evicts=True),
    QuotaKind("image_bytes", "bytes of kept images", 1 << 30, evicts=True, size=True),
    QuotaKind("references", "stored references", 1_000),
    QuotaKind("loras", "uploaded LoRAs", 32),
    QuotaKind("characters", "characters", 100),
    QuotaKind("stored_items", "references, LoRA uploads and characters together", 0),
    QuotaKind("stored_bytes", "bytes of references (characters' too) and LoRA uploads", 2 << 30, size=True),
    QuotaKind("concurrent_jobs", "unfinished (queued or running) background jobs", 100),
)
"""What a key may keep at once, by kind: each stack's default (`easel up --quota-NAME`), each key's own over it."""
QUOTAS = {kind.name: kind for kind in QUOTA_KINDS}


def _quota_type(kind: QuotaKind, base):
    """``base`` (``int`` or ``int | None``), a SIZE on the command line for a kind counted in bytes."""
    return Annotated[base, Cli(type="SIZE")] if kind.size else base


Quotas: type[BaseModel] = create_model(
    "Quotas",
    __config__=ConfigDict(extra="forbid", frozen=True),
    __doc__="A key's own quotas (None: the stack's; 0: no bound), one field per :data:`QUOTA_KINDS` kind.",
    **{
        kind.name: (_quota_type(kind, int | None), Field(None, ge=0, description=f"Its {kind.unit} at once."))
        for kind in QUOTA_KINDS
    },
)
QuotaSettings: type[BaseModel] = create_model(
    "QuotaSettings",
    __doc__="The stack's quota per key of each kind (a base of :class:`serve.settings.AppSettings`).",
    **{
        f"quota_{kind.name}": (
            _quota_type(kind, int),
            Field(
                kind.default,
                ge=0,
                description=f"Each key's quota of {kind.unit} at once"
                + (", its own oldest dropped past it" if kind.evicts else ", one more refused past it (429)")
                + " (0: no bound; a key's own: easel keys create --quota-"
                + kind.name.replace("_", "-")
                + ").",
            ),
        )
        for kind in QUOTA_KINDS
    },
)


def stack_quotas(settings: BaseModel) -> BaseModel:
    """The stack's quotas (a :class:`Quotas` with every kind set) from settings holding :class:`QuotaSettings`."""
    return Quotas(**{kind.name: getattr(settings, f"quota_{kind.name}") for kind in QUOTA_KINDS})


def quota(own: BaseModel | None, defaults: BaseModel | None, name: str) -> int | None:
    """The bound on kind ``name`` for a key of ``own`` quotas over the stack's ``defaults`` (None: no bound).

    ``own`` None: no key (an open API), which only the stack's own bounds hold.
    """
    return None if own is None else quota_bound(getattr(own, name), defaults, name)


def quota_bound(value: int | None, defaults: BaseModel | None, name: str) -> int | None:
    """A key's own ``value`` for kind ``name`` (None: ``defaults``'; 0: no bound) as a bound (None: none)."""
    if value is None:
        value = getattr(defaults, name) if defaults is not None else QUOTAS[name].default
    return value or None
