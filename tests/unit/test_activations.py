"""The activation pool engines share across processes: bounded, in order, nothing leaked by a killed process."""

import multiprocessing
import os
import signal
import threading
import time

import pytest

from serve.triton.activations import (
    ANY_ENGINE,
    POOLS_ENV,
    ActivationPool,
    PoolUsage,
    pool_of,
    pools_environment,
    pools_from_env,
)

MiB = 2**20
FORK = multiprocessing.get_context("fork")


def _hold(path, nbytes, engine, seconds, log, started=None):
    """Reserve, record (start, end, bytes) in the shared ``log``, hold for ``seconds``."""
    with ActivationPool(path).reserve(nbytes, engine):
        begin = time.monotonic()
        if started is not None:
            started.set()
        time.sleep(seconds)
        log.append((begin, time.monotonic(), nbytes, engine))


def _wait_until(condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _most_held_at_once(log) -> int:
    """The largest sum of bytes whose holding intervals overlap (from the processes' own clocks)."""
    events = sorted([(begin, nbytes) for begin, _, nbytes, _ in log] + [(end, -nbytes) for _, end, nbytes, _ in log])
    held = most = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):  # a release before an acquire at the same instant
        held += change
        most = max(most, held)
    return most


def test_processes_that_run_at_once_never_hold_more_than_the_pool(tmp_path):
    pool = ActivationPool.create(tmp_path / "pool.json", 100 * MiB)
    log = FORK.Manager().list()
    sizes = [60, 30, 50, 20, 70, 40, 10, 90]
    children = [
        FORK.Process(target=_hold, args=(pool.path, size * MiB, f"engine{i}", 0.1, log)) for i, size in enumerate(sizes)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert len(log) == len(sizes)
    assert _most_held_at_once(log) <= 100 * MiB
    assert sum(end - begin for begin, end, _, _ in log) > 0.1 * len(sizes) * 0.9  # each really held its bytes
    assert pool.usage().held == 0 and pool.usage().waiting == ()


def test_one_engine_alone_may_use_the_whole_pool_and_an_engine_that_would_fit_waits_behind_an_earlier_one(tmp_path):
    pool = ActivationPool.create(tmp_path / "pool.json", 100 * MiB)
    log = FORK.Manager().list()
    started = FORK.Event()
    first = FORK.Process(target=_hold, args=(pool.path, 60 * MiB, "unet", 0.5, log, started))
    first.start()
    assert started.wait(10)
    large = FORK.Process(target=_hold, args=(pool.path, 100 * MiB, "vae_decoder", 0.05, log))  # the whole pool
    large.start()
    _wait_until(lambda: pool.usage().waiting == ("vae_decoder",))
    small = FORK.Process(target=_hold, args=(pool.path, 10 * MiB, "text_encoder", 0.05, log))  # fits now, came later
    small.start()
    _wait_until(lambda: pool.usage().waiting == ("vae_decoder", "text_encoder"))
    assert pool.waiting("text_encoder") and not pool.waiting("unet")
    for child in (first, large, small):
        child.join(30)
        assert child.exitcode == 0
    order = [engine for _, _, _, engine in sorted(log)]
    assert order == ["unet", "vae_decoder", "text_encoder"]
    assert _most_held_at_once(log) <= 100 * MiB


def _hold_forever(path, nbytes, started):
    with ActivationPool(path).reserve(nbytes, "unet"):
        started.set()
        time.sleep(600)


def _wait_forever(path, nbytes):
    with ActivationPool(path).reserve(nbytes, "vae_decoder"):
        pass


def test_a_killed_holder_or_waiter_leaks_nothing(tmp_path):
    pool = ActivationPool.create(tmp_path / "pool.json", 100 * MiB)
    started = FORK.Event()
    holder = FORK.Process(target=_hold_forever, args=(pool.path, 80 * MiB, started))
    holder.start()
    assert started.wait(10)
    waiter = FORK.Process(target=_wait_forever, args=(pool.path, 90 * MiB))
    waiter.start()
    _wait_until(lambda: pool.usage().waiting == ("vae_decoder",))
    os.kill(waiter.pid, signal.SIGKILL)  # dead at the head of the queue: must not block who comes next
    waiter.join(10)
    assert pool.usage() == PoolUsage(100 * MiB, 80 * MiB, ("unet",), ())
    os.kill(holder.pid, signal.SIGKILL)  # dead while holding: its bytes come back
    holder.join(10)
    with pool.reserve(100 * MiB, "vae_decoder"):
        assert pool.usage().held == 100 * MiB


def test_a_run_larger_than_the_pool_is_refused_at_once_and_an_empty_one_needs_nothing(tmp_path):
    pool = ActivationPool.create(tmp_path / "pool.json", 100 * MiB)
    with pytest.raises(MemoryError, match="vae_decoder.*0.10 GiB"), pool.reserve(101 * MiB, "vae_decoder"):
        pass
    with pool.reserve(100 * MiB, "unet"), pool.reserve(0, "text_encoder"):  # measured nothing: never waits
        assert pool.usage().holders == ("unet",)
    assert pool.usage().held == 0


def test_threads_of_one_process_are_bounded_too(tmp_path):
    pool = ActivationPool.create(tmp_path / "pool.json", 100 * MiB)
    log = []
    threads = [
        threading.Thread(target=_hold, args=(pool.path, size * MiB, f"e{i}", 0.05, log))
        for i, size in enumerate([70, 70, 40, 30])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(log) == 4 and _most_held_at_once(log) <= 100 * MiB


def test_the_stubs_find_their_pools_by_triton_model_name(tmp_path, monkeypatch):
    pool = ActivationPool.create(tmp_path / "pool.json", 100 * MiB)
    env = pools_environment({"unet": pool, "vae_decoder": pool})
    monkeypatch.setenv(POOLS_ENV, env[POOLS_ENV])
    found = pools_from_env()
    assert set(found) == {"unet", "vae_decoder"} and found["unet"].capacity == 100 * MiB
    assert pools_environment({}) == {}


def _die_while_writing(path):
    """Reserve, but die (SIGKILL) in the middle of writing the pool's new state."""
    os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    with ActivationPool(path).reserve(10 * MiB, "unet"):
        pass


def test_a_stub_killed_while_it_writes_leaves_the_pool_whole(tmp_path):
    # Found in CI: a stub that died mid-write left an empty pool file, and every stub of the restarted Triton failed
    # to start (KeyError: 'capacity'), so the stack never became ready again.
    pool = ActivationPool.create(tmp_path / "pool.json", 100 * MiB)
    child = FORK.Process(target=_die_while_writing, args=(pool.path,))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert pool.usage() == PoolUsage(100 * MiB, 0, (), ())
    with pool.reserve(100 * MiB, "vae_decoder"):
        assert pool.usage().holders == ("vae_decoder",)


def test_an_engine_installed_after_the_start_draws_on_the_pool_that_takes_any_engine(tmp_path):
    pool = ActivationPool.create(tmp_path / "pool.json", 1 << 20)
    assert pool_of({"unet": pool}, "sd.v2.unet") is None  # a pool that names its engines only: unbounded
    pools = {"unet": pool, ANY_ENGINE: pool}
    assert pool_of(pools, "unet") is pool and pool_of(pools, "sd.v2.unet") is pool
