"""``easel bench idle``'s measurement: each process's CPU share over a window (no stack)."""

import subprocess
import sys

from loadtests.benchmarks.idle import format_rows, measure_idle


def test_a_busy_process_shows_about_a_core_and_a_sleeping_one_about_nothing():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    asleep = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        rows = {row.pid: row for row in measure_idle(2.0)}
    finally:
        for child in (busy, asleep):
            child.kill()
            child.wait()
    assert rows[busy.pid].cpu_percent > 30  # a core, less what two shared cores give it under load
    assert rows[asleep.pid].cpu_percent < 5
    table = format_rows(list(rows.values()))
    assert "cpu % of a core" in table and "total:" in table
