"""Benchmark helpers that need no server: rows, labels of the stack's processes, CPU accounting."""

import subprocess
import sys
import time

import pytest

from loadtests.benchmarks import loop
from serve.tables import text_table

STUB = "/root/.cache/easel/triton/backends-py3.11/python/triton_python_backend_stub"


@pytest.mark.parametrize(
    ("cmdline", "label"),
    [
        (["ray::ServeController.listen_for_change"], "ServeController"),
        (["ray::ServeReplica:easel:TextToImage"], "ServeReplica:easel:TextToImage"),
        ([STUB, "/tmp/repo/unet/1/model.py", "shm_region", "1048576"], "triton unet"),
        (["/usr/bin/python3.11", "-u", "/site-packages/ray/_private/log_monitor.py", "--x=1"], "log_monitor.py"),
        (["/site-packages/ray/core/src/ray/raylet/raylet", "--raylet_socket_name=/tmp/s"], "raylet"),
        ([], "?"),
    ],
)
def test_process_label(cmdline, label):
    assert loop.process_label(cmdline) == label


def test_cpu_by_process_counts_children():
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", burn])
    try:
        label = loop.process_label([sys.executable, "-c", burn])
        deadline = time.monotonic() + 10
        while loop.cpu_by_process().get(label, 0.0) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert loop.cpu_by_process()[label] >= 0.3
        assert "benchmark" in loop.cpu_by_process()
    finally:
        child.kill()
        child.wait()


def test_make_row_percentiles_and_rates():
    row = loop.make_row("served", 2, [0.1, 0.2, 0.3, 0.4], wall_s=2.0, cpu_s=1.0)
    assert (row.requests, row.p50_ms, row.per_s, row.cpu_s_per_request) == (4, 250.0, 2.0, 0.25)
    assert row.p95_ms == pytest.approx(385.0)


def test_steady_rate_leaves_out_the_drain():
    # Slot 1's last call ends at 2.5 s while slot 0 still runs: from 2 s on, fewer than 2 calls are in flight.
    # The whole run's rate, drain included, is 5 calls / 3 s; before the drain each slot ran one call per second.
    calls = [loop.Call(0, 0, 1), loop.Call(0, 1, 2), loop.Call(0, 2, 3), loop.Call(1, 0, 1), loop.Call(1, 1, 2.5)]
    assert loop.steady_rate(calls, 2) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="two calls per slot"):
        loop.steady_rate([loop.Call(0, 0, 1), loop.Call(1, 0, 1)], 2)


def test_run_closed_loop_keeps_every_slot_busy():
    import asyncio

    seen = []

    async def call(index: int) -> None:
        seen.append(index)
        await asyncio.sleep(0.1)  # long against a loaded machine's late wake-ups

    calls, wall = asyncio.run(loop.run_closed_loop(call, 3, 9))
    assert sorted(seen) == list(range(9)) and {c.slot for c in calls} == {0, 1, 2}
    assert all(c.latency_s >= 0.1 for c in calls) and wall >= 0.3
    assert loop.steady_rate(calls, 3) == pytest.approx(3 / 0.1, rel=0.5)


def test_text_table_pads_each_header_as_its_column_and_formats_each_cell():
    table = text_table([("name", "<8"), ("p50 ms", ">+9.2f"), ("n", ">3")], [("a", 1.5, 7), ("bb", -20.125, 12)])
    assert table.splitlines() == [
        "name       p50 ms  n",
        "a           +1.50  7",
        "bb         -20.12 12",
    ]


def test_bench_model_s_per_step_divides_the_denoisers_compute_by_the_steps_asked_not_its_executions():
    from loadtests.benchmarks.model import SizeRun, format_runs

    # one 2-step request whose UNet also answered 3 canaries (sent while it ran): 2 x 60 s + 3 tiny executions
    run = SizeRun(1024, steps=2, status=200, engines={"unet": {"executions": 5, "compute_s": 120.3}}, ready_after=200)
    row = format_runs([run]).splitlines()[1].split()
    assert row[:4] == ["1024", "200", "0.0", "60.15"] and row[6] == "200"
