"""The run state of a stack: which process runs it, in which phase, and where it listens (``state.json``).

Recorded from the first moment (``easel up --detach``'s parent writes it as it starts the process; the stack records
each phase), so ``easel down`` finds and stops a stack in any phase: :func:`stop_recorded` stops its process, the
processes recorded as working for it (:func:`working_for_the_stack`: ``easel models add`` building) and every
process left that carries its mark.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from serve.paths import run_dir
from serve.processes.managed import STACK_ENV
from serve.processes.signals import process_name, stack_processes, stop_stack_processes, terminate

STATE_FILE = "state.json"

STARTING, BUILDING, STARTING_TRITON, STARTING_RAY, DEPLOYING, READY = (
    "starting",
    "building",
    "starting Triton",
    "starting Ray",
    "deploying",
    "ready",
)
"""The phases of ``easel up``, recorded in ``state.json`` as each begins (``starting``: by ``--detach``'s parent the
moment it starts the process, before that process has even loaded its code)."""
BUILD_GRACE_S = 2.0
"""How long ``easel down`` gives a stack that is not ready yet to stop on SIGTERM before it kills it."""
LEFTOVER_GRACE_S = 2.0
"""How long the processes a stack that was not ready left behind get to stop on SIGTERM (nothing of theirs to drain)."""
READY_GRACE_S = 60.0
"""How long ``easel down`` gives a ready stack's orderly stop (Serve, Ray, Triton) before it kills it."""


@dataclass(frozen=True)
class StackInfo:
    """Which process runs the stack, its phase and, once deployed, where it listens; written to ``state.json``."""

    pid: int
    started_at: float
    stack_id: str
    phase: str = READY
    api_url: str | None = None
    grpc_address: str | None = None  # host:port of the public gRPC API
    triton_http_url: str | None = None
    triton_grpc_url: str | None = None
    triton_metrics_url: str | None = None
    dashboard_url: str | None = None
    engine_dir: str | None = None
    prometheus_url: str | None = None
    store_url: str | None = None  # where its jobs and API keys live (`easel status` counts them)
    tls_cert: str | None = None  # the certificate the API presents (clients here trust it: serve.processes.tls)

    def alive(self) -> bool:
        """Whether the process that runs this stack still does (a reused pid does not count)."""
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started_at) < 1.0
        except psutil.NoSuchProcess:
            return False


def state_path(folder: Path | None = None) -> Path:
    """The run-state file of the stack whose run folder is ``folder`` (default ``$EASEL_HOME/run``)."""
    return (folder or run_dir()) / STATE_FILE


def new_stack_id() -> str:
    """A new stack's id, the mark its processes carry."""
    return uuid.uuid4().hex[:12]


def write_state(info: StackInfo, folder: Path | None = None) -> Path:
    """Record ``info`` as the run folder's stack (written whole, then renamed: a reader never sees half of it)."""
    path = state_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(asdict(info), indent=2))
    partial.replace(path)
    return path


def read_state(folder: Path | None = None) -> StackInfo | None:
    """The state of a stack started with ``easel up``, if one is recorded."""
    path = state_path(folder)
    try:
        return StackInfo(**json.loads(path.read_text()))
    except (FileNotFoundError, TypeError, json.JSONDecodeError):
        return None


def running_stack(folder: Path | None = None) -> StackInfo | None:
    """The recorded stack if its process is alive; None if none is recorded or it is dead."""
    info = read_state(folder)
    return info if info is not None and info.alive() else None


@dataclass(frozen=True)
class Stopped:
    """What :func:`stop_recorded` found and did."""

    recorded: bool
    was_alive: bool = False
    leftovers: int = 0
    phase: str | None = None  # the stack's recorded phase when it was stopped
    pid: int | None = None  # the `easel up` process
    processes: tuple[str, ...] = ()  # what the stack ran besides it, "name (count)"
    helpers: tuple[str, ...] = ()  # processes that worked for it (``easel models add`` building), stopped first


HELPERS = "helpers"
"""The run folder's records of the processes that work for a running stack (``easel models add`` building)."""


@contextmanager
def working_for_the_stack(what: str, folder: Path | None = None) -> Iterator[None]:
    """Record this process, and mark the processes it starts, as the recorded stack's while the block runs.

    ``easel down`` then stops it and them with the stack (``easel models add`` while it builds).
    """
    info = read_state(folder)
    path = (folder or run_dir()) / HELPERS / f"{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    me = psutil.Process()
    path.write_text(json.dumps({"pid": me.pid, "started_at": me.create_time(), "what": what}))
    try:
        with environ({STACK_ENV: info.stack_id} if info is not None else {}):
            yield
    finally:
        path.unlink(missing_ok=True)


def _stop_helpers(folder: Path | None) -> list[str]:
    """Stop the processes recorded as working for the stack; what each was doing."""
    stopped = []
    for path in sorted(((folder or run_dir()) / HELPERS).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            process = psutil.Process(record["pid"])
            if abs(process.create_time() - record["started_at"]) < 1.0:
                terminate([process], BUILD_GRACE_S)
                stopped.append(f"{record['what']} (pid {record['pid']})")
        except (psutil.NoSuchProcess, OSError, ValueError, KeyError):
            pass
        path.unlink(missing_ok=True)
    return stopped


def stop_recorded(folder: Path | None = None, grace_s: float | None = None) -> Stopped:
    """Stop the stack recorded in ``state.json``, in whatever phase, and every process left that carries its mark.

    A ready stack's process gets SIGTERM, then SIGKILL after ``grace_s`` (default :data:`READY_GRACE_S`: its orderly
    stop); one still starting gets it together with every process of the stack (nothing is served yet to drain; its
    main thread may be inside Ray, where a signal waits), SIGKILL after :data:`BUILD_GRACE_S`. A dead stack (its
    process was killed) still has its leftovers stopped.
    """
    info = read_state(folder)
    if info is None:
        return Stopped(recorded=False)
    was_alive = info.alive()
    marked = stack_processes(info.stack_id)
    ran = Counter(process_name(process) for process in marked)
    helpers = _stop_helpers(folder)
    if was_alive and info.phase == READY:
        terminate([psutil.Process(info.pid)], READY_GRACE_S if grace_s is None else grace_s)
    elif was_alive:
        terminate([psutil.Process(info.pid), *marked], BUILD_GRACE_S if grace_s is None else grace_s)
    leftovers = stop_stack_processes(info.stack_id, BUILD_GRACE_S if info.phase == READY else LEFTOVER_GRACE_S)
    state_path(folder).unlink(missing_ok=True)
    processes = tuple(f"{name} ({n})" if n > 1 else name for name, n in sorted(ran.items()))
    return Stopped(True, was_alive, leftovers, info.phase, info.pid, processes, tuple(helpers))


@contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment inside the block (the processes started there inherit them)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
