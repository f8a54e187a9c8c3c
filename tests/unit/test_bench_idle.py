"""``easel bench idle``'s measurement: the CPU share of this process's children over a window (no stack)."""

import subprocess
import sys

from loadtests.benchmarks.idle import format_rows, measure_idle


def test_a_busy_process_shows_about_a_core_and_a_sleeping_one_about_nothing(tmp_path):
    (tmp_path / "busy.py").write_text("while True:\n    pass\n")
    (tmp_path / "asleep.py").write_text("import time\ntime.sleep(60)\n")
    children = [subprocess.Popen([sys.executable, str(tmp_path / name)]) for name in ("busy.py", "asleep.py")]
    try:
        rows = {row.process: row for row in measure_idle(2.0)}
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert rows["busy.py"].cpu_percent > 30  # a core, less what two shared cores give it under load
    assert rows["asleep.py"].cpu_percent < 5
    table = format_rows(list(rows.values()))
    assert "cpu % of a core" in table and "total:" in table
