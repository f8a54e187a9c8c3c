"""`easel chaos` on the default model: every fault recovers, nothing hangs, nothing is left behind."""

import pytest

from serve.chaos import FAULTS, Chaos, left_behind, sample_icon
from serve.processes.signals import stack_processes
from serve.stack import Stack, StackOptions

pytestmark = pytest.mark.integration


def test_every_fault_is_survived_under_load(tmp_path):
    # A 1 GiB engine budget: the largest admitted request (4 images at 384x384) takes seconds, not minutes.
    with Stack(StackOptions(port=0, dashboard=False, run_dir=tmp_path, memory_budget_bytes=1 << 30)) as stack:
        reports = Chaos(stack, clients=3, window_s=8, hang_s=120).run(sample_icon())
    by_fault = {r.fault: r for r in reports}
    assert list(by_fault) == list(FAULTS)
    for report in reports:
        assert report.hung == 0, report
        assert report.left_behind == 0, report
        assert report.ready_again_s is not None, report
        assert not [status for status in report.requests if status.startswith("5") and status != "503"], report
        assert not [status for status in report.requests if "not JSON" in status or "connection" in status], report
    for fault in ("SIGKILL tritonserver", "SIGKILL UNet stub"):
        assert by_fault[fault].ready_again_s <= 20, by_fault[fault]
    assert stack_processes(stack.stack_id) == [] and left_behind(stack.stack_id) == []
