"""One child process Easel starts (Triton, Prometheus, Redis), in its own process group.

It is probed until ready and stopped with SIGTERM then SIGKILL for the whole group, so nothing it spawned outlives it.

Every process of a stack carries ``EASEL_STACK=<id>`` in its environment (inherited by everything it spawns, Ray's
workers and Triton's stubs included), which is how ``easel down`` finds leftovers (:mod:`serve.processes.signals`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

STACK_ENV = "EASEL_STACK"
"""Environment variable naming the stack a process belongs to."""


class ProcessStartError(RuntimeError):
    """A process exited or did not become ready in time; the message carries the end of its log."""


def _die_with_parent(command: list[str]) -> list[str]:
    """``command`` wrapped so the kernel kills it if the process that started it dies (util-linux ``setpriv``)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command


class ManagedProcess:
    """A long-running child: ``command`` logged to ``log_path``, ready when ``probe()`` returns True."""

    def __init__(
        self,
        name: str,
        command: Callable[[], list[str]],
        log_path: Path,
        probe: Callable[[], bool],
        env: Callable[[], dict[str, str]] | None = None,
        die_with_parent: bool = True,
        failed: Callable[[bool], str | None] | None = None,
    ) -> None:
        self.name = name
        self.failed = failed or (lambda _exited: None)  # why a start cannot succeed, in one line (told if it exited)
        self.die_with_parent = die_with_parent
        self.command = command
        self.log_path = log_path
        self.probe = probe
        self.env = env or (lambda: dict(os.environ))
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        """The process id of the current run, if started."""
        return None if self.process is None else self.process.pid

    def start(self, timeout_s: float = 180.0) -> ManagedProcess:
        """Start the process and wait until its probe passes; raise :class:`ProcessStartError` if it does not."""
        self.spawn()
        self.wait_ready(timeout_s)
        return self

    def spawn(self) -> ManagedProcess:
        """Start the process without waiting for it (:meth:`wait_ready` waits)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                _die_with_parent(self.command()) if self.die_with_parent else self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                # Its own process group (stopping it stops everything it spawned), but the caller's session: Linux
                # shares CPU between sessions (autogroups) before nice values count, so a process in a session of
                # its own competes as an equal with all of Ray's niced workers together (a Triton restart under
                # load took 15-20 s instead of 5).
                process_group=0,
            )
        logger.info("%s pid %d starting (log %s)", self.name, self.process.pid, self.log_path)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Poll the probe until it passes; fail fast if the process exits or ``failed`` says why it cannot start."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.running():
                code = None if self.process is None else self.process.returncode
                self.kill()
                raise ProcessStartError(self.failed(True) or f"{self.name} exited with {code}:\n{self.log_tail()}")
            if why := self.failed(False):
                self.kill()
                raise ProcessStartError(why)
            try:
                if self.probe():
                    return
            except Exception as error:  # noqa: BLE001 - a probe that raises means "not ready yet"
                logger.debug("%s probe: %s", self.name, error)
            if time.monotonic() > deadline:
                self.kill()
                raise ProcessStartError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def running(self) -> bool:
        """Whether the process is alive (an exited one is reaped here, never left a zombie)."""
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever of it is left after ``grace_s``."""
        if self.process is None:
            return
        if self.running():
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM for %.0f s; killing it", self.name, grace_s)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the process group (the process and anything it spawned, orphans included) and reap."""
        if self.process is None:
            return
        _signal_group(self.process.pid, signal.SIGKILL)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            logger.error("%s (pid %d) did not die after SIGKILL", self.name, self.process.pid)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the process log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
