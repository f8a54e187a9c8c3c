"""The deadline worker: calls run in a child process; one past its deadline kills the child, the next gets a new one."""

import asyncio
import time

import pytest

from serve.processes.worker import DeadlineExceeded, DeadlineWorker, WorkerBusy


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


def test_a_call_waits_for_its_turn_no_longer_than_its_caller_allows():
    async def scenario():
        worker = DeadlineWorker("test").start()
        try:
            busy = asyncio.create_task(worker.call(5, "time:sleep", 1.0))
            await asyncio.sleep(0.2)
            with pytest.raises(WorkerBusy):
                await worker.call(5, "math:factorial", 3, wait_s=0.3)
            await busy
            assert await worker.call(5, "math:factorial", 3, wait_s=0.3) == 6
        finally:
            worker.stop()

    asyncio.run(scenario())


def test_a_caller_that_leaves_mid_call_stops_the_work_and_the_next_call_gets_a_clean_worker():
    async def scenario():
        worker = DeadlineWorker("test").start()
        first = worker._process
        try:
            leaving = asyncio.create_task(worker.call(30, "time:sleep", 30))
            await asyncio.sleep(0.5)
            leaving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaving
            assert first.poll() is not None and worker.restarts == 1  # its work stopped with it
            assert await worker.call(10, "math:factorial", 4) == 24  # answered by a new worker, no stale answer
        finally:
            worker.stop()

    asyncio.run(scenario())
