"""Adapters at serving time: LoRA and IP-Adapter (see docs/DECISIONS.md, "Adapters")."""

from __future__ import annotations

from serve.adapters.redis import RedisAdapterStore
from serve.adapters.sqlite import SqliteAdapterStore
from serve.adapters.store import AdapterStore
from serve.stores import scheme


def open_adapter_store(url: str) -> AdapterStore:
    """The adapter store at ``url`` (``sqlite:///PATH`` or ``redis://HOST:PORT/DB``)."""
    if scheme(url) == "sqlite":
        return SqliteAdapterStore(url)
    return RedisAdapterStore(url)
