"""The stack's processes watched: sampled while the soak runs, and those left alive after the stack stopped.

Each process's RSS, open file descriptors and threads, and the machine's load average, every few seconds.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from serve.processes.signals import stack_processes


@dataclass
class Series:
    """One process's samples over the run."""

    label: str
    pid: int
    t: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    since: float = 0.0  # when it took this label (a Ray worker becomes a replica after it started)


class Samples:
    """A thread sampling every process of the stack ``stack_id`` every ``every_s``, and the machine's load average."""

    def __init__(self, stack_id: str, every_s: float) -> None:
        self.stack_id, self.every_s = stack_id, every_s
        self.series: dict[int, Series] = {}
        self.processes: dict[int, psutil.Process] = {}  # every process of the stack seen, for the check after stop
        self.load: list[tuple[float, float]] = []  # the machine's 1-minute load average (it is shared)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, started: float) -> None:
        """Sample from now on, timed from ``started`` (``time.monotonic()``)."""
        self._thread = threading.Thread(target=self._sample, args=(started,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (after the sample under way)."""
        self._done.set()
        self._thread.join()

    def _sample(self, started: float) -> None:
        while True:
            t = round(time.monotonic() - started, 1)
            self.load.append((t, os.getloadavg()[0]))
            for process in stack_processes(self.stack_id):
                try:
                    with process.oneshot():
                        rss, fds, threads = process.memory_info().rss, process.num_fds(), process.num_threads()
                        label = process_label(process)
                except psutil.Error:
                    continue
                series = self.series.setdefault(process.pid, Series(label, process.pid, since=t))
                if label != series.label:
                    series.label, series.since = label, t
                self.processes.setdefault(process.pid, process)
                series.t.append(t)
                series.rss_mib.append(round(rss / 2**20, 2))
                series.fds.append(fds)
                series.threads.append(threads)
            if self._done.wait(self.every_s):
                return


def process_label(process: psutil.Process) -> str:
    """What a process is: its title (Ray's ``ray::...``), a stub's model, or its name."""
    try:
        cmdline = process.cmdline()
        name = process.name()
    except psutil.Error:
        return "?"
    model = next((part for part in cmdline if part.endswith("/model.py")), None)
    if "triton_python_backend_stub" in name and model:
        return f"stub {Path(model).parent.parent.name}"  # .../MODEL/1/model.py
    replica = re.search(r"ServeReplica:[^:\s]+:[^.\s]+", " ".join(cmdline))  # Ray titles it two ways
    if replica:
        return replica.group(0)
    if cmdline and cmdline[0].startswith("ray::"):
        return cmdline[0].strip().split(".")[0]
    return name


def left_after_stop(processes: list[psutil.Process], stack_id: str, wait_s: float = 5.0) -> list[str]:
    """After ``wait_s``: the stack's processes still alive, by its mark and among those seen during the run."""
    time.sleep(wait_s)
    alive = {p.pid: p for p in stack_processes(stack_id)}
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.setdefault(process.pid, process)
        except psutil.Error:
            continue
    return [f"{pid} {process_label(p)}" for pid, p in sorted(alive.items())]
