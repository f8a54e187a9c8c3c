"""Activation memory shared by engines that run one after another, reserved across Triton's stub processes.

A model's engines (text encoders, then the denoiser, then the VAE) each run in python-backend processes of their own.
Their activations come from one pool: the memory budget less the engines' resident weights
(:func:`serve.triton.memory.activation_pool`). Before each run a stub reserves the bytes its rows need and gives
them back when the run ends; while the pool is busy it waits its turn, first come first served. So whatever runs at
once stays within the pool, and an engine running alone may use all of it (a lone request's VAE decode takes what
the denoiser's steps would have used).

The pool is a small JSON file changed under an exclusive ``flock`` of a lock file beside it, and replaced whole
(written aside, then renamed), so a stub killed while it writes leaves the previous state, never a torn file. Each
entry names its process (pid and start time): entries of a process that died (a SIGKILLed stub) are dropped at the
next look, so nothing leaks. Nothing
deadlocks: a holder waits for nothing while it holds (one reservation per run, taken whole, never nested), a
reservation larger than the pool is refused at once, and waiters are served in order, so each one's turn comes.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

POOLS_ENV = "EASEL_ACTIVATION_POOLS"
"""Environment variable naming each Triton model's pool file (JSON ``{model name: path}``) for its stubs."""
ANY_ENGINE = "*"
"""The name in a pool's engines that stands for any measured engine the map does not name (one installed later)."""
POLL_S = (0.01, 0.05)
"""A waiting reservation looks again after the first, then at most the second, seconds."""

_sequence = itertools.count()


@dataclass(frozen=True)
class PoolSpec:
    """A pool to create: its capacity in bytes and the Triton models (engines) that draw on it."""

    capacity: int
    engines: tuple[str, ...]


@dataclass(frozen=True)
class PoolUsage:
    """A look at a pool: its capacity, the bytes held, and by which engines; the engines waiting, in order."""

    capacity: int
    held: int
    holders: tuple[str, ...]
    waiting: tuple[str, ...]


class ActivationPool:
    """One pool file: create it with :meth:`create`; reserve from it in any process with :meth:`reserve`."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ActivationPool({str(self.path)!r})"

    @classmethod
    def create(cls, path: Path | str, capacity: int) -> ActivationPool:
        """A new, empty pool of ``capacity`` bytes at ``path`` (one left there before is replaced)."""
        pool = cls(path)
        pool.path.parent.mkdir(parents=True, exist_ok=True)
        with pool._locked(create=True) as state:
            state.clear()
            state.update(capacity=int(capacity), held=[], queue=[])
        return pool

    @property
    def capacity(self) -> int:
        """The pool's size in bytes."""
        return self.usage().capacity

    def usage(self) -> PoolUsage:
        """What is held and waiting now (entries of processes that died left out)."""
        with self._locked() as state:
            return PoolUsage(
                state["capacity"],
                sum(entry["bytes"] for entry in state["held"]),
                tuple(entry["engine"] for entry in state["held"]),
                tuple(entry["engine"] for entry in state["queue"]),
            )

    def waiting(self, engine: str) -> bool:
        """Whether a process of ``engine`` is waiting for its turn (a stub that is idle but not stuck)."""
        return engine in self.usage().waiting

    @contextmanager
    def reserve(self, nbytes: int, engine: str) -> Iterator[None]:
        """Hold ``nbytes`` of the pool for the block, waiting until they are free and every earlier waiter has run.

        Raises :class:`MemoryError` at once if ``nbytes`` is over the pool's capacity. A process must not reserve
        again while it holds a reservation (it could wait for itself).
        """
        if nbytes <= 0:
            yield
            return
        me = _entry(engine, nbytes)
        with self._locked() as state:
            if nbytes > state["capacity"]:
                raise MemoryError(
                    f"{engine}: a run needs about {nbytes / 2**30:.2f} GiB of activations; the model's activation "
                    f"memory is {state['capacity'] / 2**30:.2f} GiB"
                )
            state["queue"].append(me)
        try:
            self._wait_for_turn(me)
        except BaseException:
            with self._locked() as state:
                state["queue"] = [entry for entry in state["queue"] if entry["id"] != me["id"]]
            raise
        try:
            yield
        finally:
            with self._locked() as state:
                state["held"] = [entry for entry in state["held"] if entry["id"] != me["id"]]

    def _wait_for_turn(self, me: dict) -> None:
        """Move ``me`` from the queue's head to the holders once its bytes fit."""
        started, pause = time.monotonic(), POLL_S[0]
        while True:
            with self._locked() as state:
                held = sum(entry["bytes"] for entry in state["held"])
                if state["queue"][0]["id"] == me["id"] and held + me["bytes"] <= state["capacity"]:
                    state["queue"].pop(0)
                    state["held"].append(me)
                    break
            time.sleep(pause)
            pause = min(POLL_S[1], 2 * pause)
        waited = time.monotonic() - started
        if waited > 1.0:
            gib = me["bytes"] / 2**30
            logger.info("%s: waited %.1f s for %.2f GiB of activation memory", me["engine"], waited, gib)

    @contextmanager
    def _locked(self, create: bool = False) -> Iterator[dict]:
        """The pool's state, read and written back under an exclusive lock; dead processes' entries dropped."""
        with open(self.path.with_name(f"{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
            raw = "" if create else self.path.read_text()
            state = json.loads(raw) if raw else {}
            for key in ("held", "queue"):
                if key in state:
                    state[key] = [entry for entry in state[key] if _alive(entry)]
            yield state
            text = json.dumps(state)
            if text != raw:
                aside = self.path.with_name(f".{self.path.name}.{os.getpid()}")
                aside.write_text(text)
                os.replace(aside, self.path)  # atomic: readers see the old state or the new, never a torn one


def _entry(engine: str, nbytes: int) -> dict:
    """A reservation: its engine, bytes, and the process it belongs to (pid and start time)."""
    me = psutil.Process()
    return {
        "id": f"{me.pid}-{next(_sequence)}",
        "engine": engine,
        "bytes": int(nbytes),
        "pid": me.pid,
        "started": me.create_time(),
    }


def _alive(entry: dict) -> bool:
    """Whether the process an entry belongs to still runs (the same process: a reused pid has another start time)."""
    try:
        process = psutil.Process(entry["pid"])
        same = abs(process.create_time() - entry["started"]) < 0.01
        return same and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def pools_from_env() -> dict[str, ActivationPool]:
    """The pools handed to this Triton's stubs, by Triton model name (empty: engines run unbounded)."""
    raw = os.environ.get(POOLS_ENV)
    return {name: ActivationPool(path) for name, path in json.loads(raw).items()} if raw else {}


def pool_of(pools: dict[str, ActivationPool], model: str) -> ActivationPool | None:
    """The pool Triton model ``model`` draws on: its own entry, else :data:`ANY_ENGINE`'s (None: unbounded)."""
    return pools.get(model) or pools.get(ANY_ENGINE)


def pools_environment(pools: dict[str, ActivationPool]) -> dict[str, str]:
    """The environment that hands ``pools`` (by Triton model name) to a Triton's stubs."""
    return {POOLS_ENV: json.dumps({name: str(pool.path) for name, pool in pools.items()})} if pools else {}
