"""Faults on a stack under load: a 3-minute `easel soak`, then `easel chaos`; nothing hangs, nothing is left behind.

The package's stack serves both, after ``test_reliability`` (a stack start costs a minute here); the last test
stops it.
"""

import logging

import pytest

from loadtests.chaos import Chaos, left_behind, sample_icon
from loadtests.soak.faults import PROCESS_FAULTS
from loadtests.soak.report import format_report
from loadtests.soak.samples import left_after_stop
from loadtests.soak.session import Soak
from serve.processes.signals import stack_processes

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)


def test_a_soak_with_each_process_killed_keeps_every_job_and_shapes_every_failure(stack):
    # 135 s: a kill every 22 s (each kind once, each given the 20 s the stack has to be ready again), the last 25 s
    # before the end; `easel soak --minutes 60` is the long run
    soak = Soak(stack, minutes=2.25, seed=0, clients=4, fault_every_s=22, compare=5)
    report = soak.run()
    logger.info("soak report:\n%s", format_report(report))
    assert sorted(f["kind"] for f in report["faults"]) == sorted(PROCESS_FAULTS)  # the Ray head's GCS among them
    checks = {c["name"]: c for c in report["checks"]}
    for name, check in checks.items():
        assert check["passed"] is not False, (name, check["detail"])
    judged = [name for name, check in checks.items() if check["passed"] is None]
    assert all("flat" in name for name in judged), judged  # only the trends need a longer run
    assert report["jobs"]["submitted"] > 0 and report["jobs"]["compared"] > 0, report["jobs"]
    assert set(report["requests"]) == {"generate", "job", "cancel", "vectorize", "grpc"}, report["requests"]


def test_easel_chaos_plays_a_fault_under_load_and_nothing_is_left_after_the_stack_stops(stack):
    # One fault: the soak above killed each of these processes already (and test_reliability sends the largest
    # requests); this is `easel chaos`'s own machinery, end to end.
    reports = Chaos(stack, clients=3, window_s=8, hang_s=120, faults=("SIGKILL UNet stub",)).run(sample_icon())
    seen = stack_processes(stack.stack_id)
    stack.stop()
    assert [report.fault for report in reports] == ["SIGKILL UNet stub"]
    (report,) = reports
    assert report.hung == 0 and report.left_behind == 0, report
    assert report.ready_again_s is not None and report.ready_again_s <= 20, report
    assert not [status for status in report.requests if status.startswith("5") and status != "503"], report
    assert not [status for status in report.requests if "not JSON" in status or "connection" in status], report
    assert left_after_stop(seen, stack.stack_id) == [] and left_behind(stack.stack_id) == []
