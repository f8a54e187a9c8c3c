"""The soak's faults: a seeded schedule, and each fault played.

A process SIGKILLed, Redis restarted, the store's disk filled, memory taken from outside the stack; and the small disk
and the Redis server the soak starts for them.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from loadtests.soak.checks import READY_WITHIN_S
from loadtests.soak.samples import process_label
from serve.processes import STACK_ENV, ManagedProcess
from serve.processes.signals import stack_replicas
from serve.stack import Stack

logger = logging.getLogger(__name__)

PROCESS_FAULTS = ("triton", "stub", "text_to_image", "gateway", "gcs")
"""SIGKILL of tritonserver, of a python-backend stub, of a replica of each deployment, of the Ray head's GCS."""
FAULTS = (*PROCESS_FAULTS, "redis", "disk", "memory")
"""Every fault a schedule may draw from: those, a Redis restart, the store's disk full, memory taken from outside."""
HOLD_S = 20.0
"""How long a full disk or memory taken from outside lasts."""
MEMORY_TAKEN_BYTES = 8 << 30
MEMORY_LEFT_BYTES = 4 << 30
"""Memory pressure takes up to MEMORY_TAKEN_BYTES, leaving at least MEMORY_LEFT_BYTES available (a shared machine)."""
STORE_DISK_MIB = 512


@dataclass
class Fault:
    """One fault of the schedule."""

    at_s: float
    kind: str
    target: str = ""
    lasted_s: float = 0.0  # a full disk, memory taken: held this long; "ready again" counts from its end
    ready_again_s: float | None = None


def schedule(
    seed: int, duration_s: float, fault_every_s: float, kinds: tuple[str, ...] = PROCESS_FAULTS
) -> list[Fault]:
    """Faults every ``fault_every_s`` from the first at that time until 20 s before the end; each kind once first.

    The kinds go round in an order drawn from ``seed`` (so a short run still meets each of them), then again.
    """
    rng = random.Random(seed)
    kinds = list(kinds)
    rng.shuffle(kinds)
    times = np.arange(fault_every_s, duration_s - READY_WITHIN_S, fault_every_s)
    return [Fault(round(float(at), 1), kinds[i % len(kinds)]) for i, at in enumerate(times)]


def play(fault: Fault, stack: Stack, rng: random.Random, store_disk: Path | None, redis: ManagedProcess | None) -> None:
    """Play the fault: SIGKILL its process, or restart Redis, or hold the disk full or memory taken."""
    began = time.monotonic()
    logger.info("fault at %.0f s: %s", fault.at_s, fault.kind)
    if fault.kind == "disk":
        fault.target = fill(store_disk / "filler", HOLD_S)
    elif fault.kind == "memory":
        fault.target = take_memory(HOLD_S)
    elif fault.kind == "redis":
        fault.target = f"redis-server (pid {redis.pid}): SIGKILL, started again on its port"
        redis.kill()
        redis.start(60)
    else:
        kill(fault, stack, rng)
    fault.lasted_s = round(time.monotonic() - began, 1)


def kill(fault: Fault, stack: Stack, rng: random.Random) -> None:
    """SIGKILL the fault's process (a stub or a replica drawn by ``rng``)."""
    if fault.kind == "gcs":
        process = psutil.Process(stack.gcs.pid)
    elif fault.kind == "triton":
        process = psutil.Process(stack.triton.process.pid)
    elif fault.kind == "stub":
        stubs = sorted(psutil.Process(stack.triton.process.pid).children(), key=process_label)
        process = rng.choice([p for p in stubs if "triton_python_backend_stub" in p.name()])
    else:
        deployment = {"text_to_image": "TextToImage", "gateway": "Gateway"}[fault.kind]
        replicas = stack_replicas(stack.stack_id, deployment)
        process = rng.choice(sorted(replicas, key=lambda p: p.pid))
    fault.target = process_label(process)
    logger.info("SIGKILL %s (pid %d)", fault.target, process.pid)
    os.kill(process.pid, signal.SIGKILL)


def fill(path: Path, hold_s: float) -> str:
    """Fill the filesystem of ``path`` with one file, hold it full ``hold_s``, then delete the file; what it did."""
    written = 0
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        chunk = b"\0" * (1 << 20)
        while True:
            written += os.write(descriptor, chunk)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        time.sleep(hold_s)
    finally:
        os.close(descriptor)
        path.unlink()
    return f"{path.parent} full ({written >> 20} MiB written) for {hold_s:.0f} s"


def take_memory(hold_s: float) -> str:
    """A process outside the stack allocates and touches memory, holds it ``hold_s`` and exits; what it took."""
    available = psutil.virtual_memory().available
    taken = max(0, min(MEMORY_TAKEN_BYTES, available - MEMORY_LEFT_BYTES))
    code = (  # MAP_POPULATE: the kernel backs every page at once (touching them from Python took 38 s at load 40)
        "import mmap, sys, time; m = mmap.mmap(-1, int(sys.argv[1]), mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | "
        "mmap.MAP_POPULATE); print(flush=True); time.sleep(float(sys.argv[2]))"
    )
    env = {k: v for k, v in os.environ.items() if k != STACK_ENV}  # not the stack's
    with subprocess.Popen(
        [sys.executable, "-c", code, str(taken), str(hold_s)], stdout=subprocess.PIPE, env=env
    ) as hog:
        hog.stdout.readline()  # allocated
        low = psutil.virtual_memory().available
        hog.wait()
    return (
        f"{taken / 2**30:.1f} GiB taken for {hold_s:.0f} s (available {available / 2**30:.1f} -> {low / 2**30:.1f} GiB)"
    )


@contextmanager
def small_disk(folder: Path, mib: int) -> Iterator[Path | None]:
    """A tmpfs of ``mib`` MiB on ``folder`` for the SQLite store, so a fault can fill it; None where mounting fails.

    Mounting needs root (or CAP_SYS_ADMIN); without it the soak runs without the full-disk fault.
    """
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "easel-soak-store", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        logger.warning("no tmpfs for the store (%s): the full-disk fault is left out", mounted.stderr.strip())
        yield None
        return
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


@contextmanager
def redis_server(folder: Path) -> Iterator[tuple[ManagedProcess, str]]:
    """A redis-server for the store, and its URL.

    It loses nothing it acknowledged when killed: an append-only file, fsync'd on every write.
    """
    import redis

    from serve.processes import free_port

    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", ""]
    command += ["--appendonly", "yes", "--appendfsync", "always"]
    client = redis.Redis(port=port)
    server = ManagedProcess("redis-server", lambda: command, folder / "redis.log", lambda: bool(client.ping()))
    server.start(30)
    try:
        yield server, f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        server.stop()
