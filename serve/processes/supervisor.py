"""Watch every process Easel starts and bring back the ones that fail.

A dead one is reaped, its orphans killed, and it is restarted with backoff; a live one gets its own health check
(Triton: stub processes, model readiness, a canary inference).

One thread per watched process, so a slow restart of one never delays noticing another's death. Every event is kept
(``events``) for ``easel chaos`` and the logs.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from serve.processes.managed import ProcessStartError

logger = logging.getLogger(__name__)

POLL_S = 0.25
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
"""Waits before successive restarts; the sequence starts again after ``HEALTHY_RESET_S`` without trouble."""
HEALTHY_RESET_S = 60.0


@dataclass(frozen=True)
class Event:
    """Something the supervisor saw or did."""

    at: float
    process: str
    what: str


class Supervised(Protocol):
    """What the supervisor watches and restarts through its own ``start``.

    A :class:`~serve.processes.ManagedProcess`, or a server owning one whose start does more than spawn it (Triton's
    reads what failed from this start's log lines only).
    """

    name: str

    @property
    def process(self) -> subprocess.Popen | None:
        """The current run (None before the first start)."""

    @property
    def pid(self) -> int | None:
        """Its process id, if started."""

    def running(self) -> bool:
        """Whether it lives."""

    def start(self, timeout_s: float) -> object:
        """Start it and wait until it is ready; :class:`ProcessStartError` if it does not become ready."""

    def kill(self) -> None:
        """SIGKILL it and whatever it spawned."""

    def stop(self, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``."""


class Watch:
    """One process under supervision: restarted when dead, ``check`` run while it lives.

    ``check`` returns None when healthy, or a short reason why it is not; it may repair what it can (reload a model)
    before returning. A process whose check fails ``restart_after`` times in a row is restarted.
    """

    def __init__(
        self,
        process: Supervised,
        supervisor: Supervisor,
        check: Callable[[], str | None] | None,
        restart_after: int,
        start_timeout_s: float,
    ) -> None:
        self.process, self.supervisor, self.check = process, supervisor, check
        self.restart_after, self.start_timeout_s = restart_after, start_timeout_s
        self.restarts = 0
        self._failed_checks = 0
        self._backoff = 0
        self._quiet_since = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"watch-{process.name}", daemon=True)

    def _run(self) -> None:
        stop = self.supervisor.stopping
        while not stop.wait(POLL_S):
            epoch = self.supervisor.pause_epoch
            if epoch % 2:  # paused
                continue
            problem = self._tick()
            if self.supervisor.pause_epoch != epoch:
                continue  # paused meanwhile: what it saw of stopped processes says nothing
            if problem is None:
                self._failed_checks = 0
                if time.monotonic() - self._quiet_since > HEALTHY_RESET_S:
                    self._backoff = 0
                continue
            self._failed_checks += 1
            self.supervisor.record(self.process.name, problem)
            if self._failed_checks >= self.restart_after:
                self._restart()

    def _tick(self) -> str | None:
        """What is wrong with the process now, if anything (a dead process is restarted here)."""
        if not self.process.running():
            code = self.process.process.returncode if self.process.process else None
            self.supervisor.record(self.process.name, f"exited with {code}")
            self._restart()
            return None
        return None if self.check is None else self.check()

    def _restart(self) -> None:
        stop = self.supervisor.stopping
        self.process.kill()  # whatever is left of it: orphans, a hung server
        while not stop.is_set():
            wait = BACKOFF_S[min(self._backoff, len(BACKOFF_S) - 1)]
            self._backoff += 1
            if stop.wait(wait):
                return
            try:
                self.process.start(self.start_timeout_s)
            except ProcessStartError as error:
                self.supervisor.record(self.process.name, f"restart failed: {str(error).splitlines()[0]}")
                continue
            self.restarts += 1
            self._failed_checks = 0
            self._quiet_since = time.monotonic()
            self.supervisor.record(self.process.name, f"restarted (pid {self.process.pid})")
            return


class Supervisor:
    """Watches processes until :meth:`stop`; :meth:`stop` also stops every watched process."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.watches: list[Watch] = []
        self.events: list[Event] = []
        self.pause_epoch = 0  # odd while paused
        self._lock = threading.Lock()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No checks and no restarts inside the block (its processes may be stopped on purpose)."""
        self.pause_epoch += 1
        try:
            yield
        finally:
            self.pause_epoch += 1

    def watch(
        self,
        process: Supervised,
        check: Callable[[], str | None] | None = None,
        restart_after: int = 3,
        start_timeout_s: float = 180.0,
    ) -> Watch:
        """Supervise an already started ``process`` from now on."""
        watch = Watch(process, self, check, restart_after, start_timeout_s)
        self.watches.append(watch)
        watch._thread.start()
        return watch

    def record(self, process: str, what: str) -> None:
        """Keep and log an event."""
        logger.warning("supervisor: %s %s", process, what)
        with self._lock:
            self.events.append(Event(time.time(), process, what))

    def stop(self, grace_s: float = 15.0) -> None:
        """Stop watching, then stop the processes (last started first)."""
        self.stopping.set()
        for watch in self.watches:
            watch._thread.join(timeout=grace_s + 30)
        for watch in reversed(self.watches):
            watch.process.stop(grace_s)
