"""The deadline worker: calls run in a child process; one past its deadline kills the child, the next gets a new one."""

import asyncio
import time

import pytest

from serve.processes.worker import DeadlineExceeded, DeadlineWorker


def test_a_call_returns_its_result_and_raises_its_exception():
    async def scenario():
        worker = DeadlineWorker("test").start()
        try:
            assert await worker.call(10, "math:factorial", 5) == 120
            with pytest.raises(ValueError, match="factorial"):
                await worker.call(10, "math:factorial", -1)
            assert await worker.call(10, "math:factorial", 3) == 6  # the worker survived the exception
            assert worker.restarts == 0
        finally:
            worker.stop()

    asyncio.run(scenario())


def test_a_call_past_its_deadline_kills_the_worker_and_the_event_loop_stays_free():
    async def scenario():
        worker = DeadlineWorker("test").start()
        first = worker._process
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        try:
            with pytest.raises(DeadlineExceeded):
                await worker.call(0.5, "time:sleep", 30)
            waited = time.monotonic() - started
            assert first.poll() is not None and worker.restarts == 1  # killed, not left running
            assert await worker.call(10, "math:factorial", 4) == 24  # a new worker takes the next call
            assert worker._process is not first
        finally:
            ticker.cancel()
            worker.stop()
        assert waited < 5
        assert ticks >= 5  # the caller's loop ran while the worker was busy

    asyncio.run(scenario())


def test_calls_queue_and_each_gets_its_own_deadline():
    async def scenario():
        worker = DeadlineWorker("test").start()
        try:
            results = await asyncio.gather(*(worker.call(2, "time:sleep", 0.3) for _ in range(4)))
        finally:
            worker.stop()
        assert results == [None] * 4  # 1.2 s in all, each call within its own 2 s

    asyncio.run(scenario())
