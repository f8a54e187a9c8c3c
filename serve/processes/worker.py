"""A child process that runs CPU-bound calls with a deadline, so that no single call can hold its caller hostage.

vtracer holds the GIL for as long as a conversion takes, and a detailed image (noise, a photograph) takes minutes:
run in the replica itself, it starves the replica's event loop (health checks fail, Ray kills the replica and every
request in it). In a :class:`DeadlineWorker` the caller's event loop stays free, and a call past its deadline kills
the child (a new one serves the next call) and raises :class:`DeadlineExceeded`. A call waits for its turn at most
as long as its caller allows (:class:`WorkerBusy`), and a caller that gives up (is cancelled) mid-call kills the child
too: its work stops with it.

The child is a plain ``python -m serve.processes.worker`` (no ``multiprocessing`` main-module re-import inside a
Ray worker); calls travel as pickles over its stdin/stdout. It dies with its parent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import logging
import pickle
import signal
import struct
import subprocess
import sys
import time
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct("!Q")
_PR_SET_PDEATHSIG = 1


class DeadlineExceeded(TimeoutError):
    """A call ran past its deadline; its worker was killed."""


class WorkerDied(RuntimeError):
    """The worker exited during a call (killed from outside, or out of memory)."""


class WorkerBusy(TimeoutError):
    """The worker was busy with other calls for longer than the caller would wait."""


def _send(stream: BinaryIO, value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError("worker stream closed")
    (length,) = _LENGTH.unpack(head)
    return pickle.loads(stream.read(length))


class DeadlineWorker:
    """One child process; :meth:`call` runs ``module.function(*args)`` there, one call at a time.

    ``preload``: modules the child imports at start, so the first call does not pay for them.
    """

    def __init__(self, name: str, preload: tuple[str, ...] = ()) -> None:
        self.name, self.preload = name, preload
        self.restarts = 0
        self._process: subprocess.Popen | None = None
        self._lock = asyncio.Lock()

    def start(self) -> DeadlineWorker:
        """Start the child (done by the first call if not before)."""
        self._process = subprocess.Popen(
            [sys.executable, "-m", "serve.processes.worker", *self.preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        return self

    async def call(self, deadline_s: float, function: str, *args: Any, wait_s: float | None = None) -> Any:
        """``function`` (``"package.module:name"``) applied to ``args`` in the child, within ``deadline_s`` seconds.

        Calls queue for the child, each at most ``wait_s`` seconds (None: as long as it takes) before
        :class:`WorkerBusy`; the deadline counts from the moment the child is handed the call. Exceptions raised by
        the function are raised here; a caller cancelled mid-call kills the child (its call's work stops).
        """
        try:
            await asyncio.wait_for(self._lock.acquire(), wait_s)
        except TimeoutError:
            raise WorkerBusy(f"{self.name} worker busy for more than {wait_s:g} s") from None
        try:
            if self._process is None or self._process.poll() is not None:
                self.start()
            process = self._process
            try:
                round_trip = asyncio.to_thread(self._round_trip, process, function, args)
                ok, value = await asyncio.wait_for(round_trip, deadline_s)
            except TimeoutError:
                self._replace(process, f"past its {deadline_s:g} s deadline running {function}")
                raise DeadlineExceeded(f"{function} took more than {deadline_s:g} s") from None
            except asyncio.CancelledError:
                self._replace(process, f"left by its caller running {function}")
                raise
            except (EOFError, BrokenPipeError, pickle.UnpicklingError) as error:
                self._replace(process, f"exited with {process.poll()} running {function}")
                raise WorkerDied(f"{self.name} worker died running {function}") from error
        finally:
            self._lock.release()
        if not ok:
            raise value
        return value

    @staticmethod
    def _round_trip(process: subprocess.Popen, function: str, args: tuple) -> tuple[bool, Any]:
        _send(process.stdin, (function, args))
        return _receive(process.stdout)

    def _replace(self, process: subprocess.Popen, why: str) -> None:
        """Kill ``process`` (its thread, blocked on the pipe, then sees EOF) and start the one for the next call."""
        logger.warning("%s worker (pid %d) %s; killed, a new one takes the next call", self.name, process.pid, why)
        process.kill()
        process.wait()
        self.restarts += 1
        self.start()  # its imports run while no call waits

    def stop(self) -> None:
        """Stop the child."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()


def _resolve(function: str):
    module, _, name = function.partition(":")
    return getattr(importlib.import_module(module), name)


def _serve(preload: list[str]) -> None:
    """The child's loop: read a call, answer ``(True, result)`` or ``(False, exception)``, until stdin closes."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # Linux: die with the parent
    except (OSError, AttributeError):
        pass
    for module in preload:
        importlib.import_module(module)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing the functions print may corrupt the answers
    while True:
        try:
            function, args = _receive(stdin)
        except EOFError:
            return
        started = time.perf_counter()
        try:
            answer = (True, _resolve(function)(*args))
        except Exception as error:  # noqa: BLE001 - handed to the caller, who raises it
            answer = (False, error)
        logger.debug("%s took %.3f s", function, time.perf_counter() - started)
        _send(stdout, answer)


if __name__ == "__main__":
    _serve(sys.argv[1:])
