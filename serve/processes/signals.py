"""Signals to groups of processes.

Stop every process of a stack (found by the ``EASEL_STACK`` mark in its environment, orphans included), or pause a
process's children while something is timed without them.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psutil

from serve.processes.managed import STACK_ENV

logger = logging.getLogger(__name__)


def stack_processes(stack_id: str) -> list[psutil.Process]:
    """Every live process (but this one) whose environment marks it as part of stack ``stack_id``, and their children.

    Children count unmarked too: a process can rewrite its own environment block (setproctitle does by default). One
    pass over the processes reads both the marks and the parents (psutil's ``children()`` reads every process's parent
    again for each process it is asked about: a stack has about forty).
    """
    found: dict[int, psutil.Process] = {}
    children: dict[int, list[psutil.Process]] = defaultdict(list)
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            children[process.ppid()].append(process)
            if process.environ().get(STACK_ENV) == stack_id and process.status() != psutil.STATUS_ZOMBIE:
                found[process.pid] = process
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    parents, seen = list(found), set(found)
    while parents:
        for child in children.get(parents.pop(), ()):
            if child.pid not in seen:
                seen.add(child.pid)
                parents.append(child.pid)
                if _alive(child):
                    found[child.pid] = child
    return list(found.values())


def stack_replicas(stack_id: str, *deployments: str) -> list[psutil.Process]:
    """Stack ``stack_id``'s Ray Serve replicas of ``deployments`` (or Ray's proxy, ``ProxyActor``); never another's."""
    marks = tuple(f"ServeReplica:easel:{name}" if name != "ProxyActor" else "ray::ProxyActor" for name in deployments)
    found = []
    for process in stack_processes(stack_id):
        with suppress(psutil.Error):
            command = " ".join(process.cmdline())
            if any(mark in command for mark in marks):
                found.append(process)
    return found


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def terminate(processes: list[psutil.Process], grace_s: float = 10.0) -> list[psutil.Process]:
    """SIGTERM ``processes``, SIGKILL those still alive after ``grace_s``; return the ones that had to be killed."""
    for process in processes:
        _send(process, signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        name = process_name(process)
        logger.warning("pid %d (%s) ignored SIGTERM for %.0f s; killing it", process.pid, name, grace_s)
        _send(process, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)
    return alive


def stop_stack_processes(stack_id: str, grace_s: float = 10.0) -> int:
    """Stop every process left of stack ``stack_id``; return how many there were."""
    left = stack_processes(stack_id)
    if left:
        logger.info("stopping %d leftover process(es) of stack %s", len(left), stack_id)
        terminate(left, grace_s)
        deadline = time.monotonic() + 5
        while stack_processes(stack_id) and time.monotonic() < deadline:  # children spawned while we stopped
            terminate(stack_processes(stack_id), 1.0)
    return len(left)


def _send(process: psutil.Process, signum: int) -> None:
    try:
        process.send_signal(signum)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def process_name(process: psutil.Process) -> str:
    """A process's name, or ``?`` once it has gone."""
    try:
        return process.name()
    except psutil.Error:
        return "?"


@contextmanager
def children_paused() -> Iterator[None]:
    """Stop (SIGSTOP) every process this one started, e.g. the stack a benchmark runs, until the block ends.

    In-process baselines timed inside it see a machine as quiet as with no stack at all, while the stack stays up,
    so they can be interleaved with served requests and both see the same machine.
    """
    children = psutil.Process().children(recursive=True)
    for child in children:
        with suppress(psutil.NoSuchProcess):
            child.suspend()
    _wait_until_stopped(children)
    try:
        yield
    finally:
        for child in children:
            with suppress(psutil.NoSuchProcess):
                child.resume()


def _wait_until_stopped(processes: list[psutil.Process], timeout_s: float = 1.0) -> None:
    """Wait (briefly) until SIGSTOP has taken effect: the signal is delivered when each process next runs."""
    done = {psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD}
    deadline = time.monotonic() + timeout_s
    for process in processes:
        with suppress(psutil.NoSuchProcess):
            while process.status() not in done and time.monotonic() < deadline:
                time.sleep(0.001)
