"""Gauges that stay exported while they hold.

Ray stops exporting a gauge not set within two of its report intervals (20 s by default): a value set once (a circuit
that opened, the kept images' bytes) would vanish from Prometheus, and an alert waiting on it never fire. Each process
sets its gauges again every :data:`REFRESH_S`, on one daemon thread started by the first gauge it sets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable

logger = logging.getLogger(__name__)

REFRESH_S = 5.0

_latest: dict[Hashable, Callable[[], None]] = {}
_lock = threading.Lock()
_thread: threading.Thread | None = None


def hold(key: Hashable, set_again: Callable[[], None]) -> None:
    """Call ``set_again`` every :data:`REFRESH_S` for the life of the process, until another is held under ``key``."""
    global _thread
    with _lock:
        _latest[key] = set_again
        if _thread is None:
            _thread = threading.Thread(target=_refresh, name="easel-gauge-refresh", daemon=True)
            _thread.start()


def _refresh() -> None:
    while True:
        time.sleep(REFRESH_S)
        with _lock:
            pending = list(_latest.values())
        for set_again in pending:
            try:
                set_again()
            except Exception:
                logger.exception("a gauge could not be set again")
