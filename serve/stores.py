"""Where state that must survive a restart lives, picked by one URL: SQLite (default, embedded) or Redis.

``sqlite:///ABSOLUTE/PATH.db`` for one machine (the default: ``easel.db`` in the stack's run folder,
``$EASEL_HOME/run``); ``redis://HOST:PORT/DB`` when the stack spans nodes. Background jobs, API keys and the result
cache open their stores from the same URL (:func:`serve.jobs.open_job_store`, :func:`serve.access.open_key_store`,
:func:`serve.cache.open_cache`), so one flag (``easel up --store URL``) moves all of them. Each has one contract
(``store.py``; keys: ``keys.py``) and one module per store (``sqlite.py``, ``redis.py``), which share what is here:
the URL's scheme, SQLite connections, the Redis client.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from pathlib import Path
from urllib.parse import urlparse

from serve.paths import run_dir

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
