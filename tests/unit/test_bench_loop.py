"""Benchmark helpers that need no server: rows, labels of the stack's processes, CPU accounting."""

import subprocess
import sys
import time

import pytest

from serve.benchmarks import loop

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
