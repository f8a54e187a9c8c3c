"""`easel soak`'s schedule, trends and report, on made-up samples (no servers)."""

import shutil
import subprocess
import time

import httpx
import pytest

from loadtests.soak.checks import (
    MIN_TREND_S,
    availability,
    availability_check,
    passed,
    slope_per_min,
    trend_check,
    trends,
    windows,
)
from loadtests.soak.faults import FAULTS, PROCESS_FAULTS, fill, schedule
from loadtests.soak.load import Outcome, shaped
from loadtests.soak.report import format_report, plot
from loadtests.soak.samples import Series


def test_a_schedule_is_seeded_meets_every_fault_kind_first_and_ends_before_the_run_does():
    faults = schedule(seed=3, duration_s=180, fault_every_s=30)
    assert [f.at_s for f in faults] == [30, 60, 90, 120, 150]
    assert sorted(f.kind for f in faults) == sorted(PROCESS_FAULTS)  # the default kinds
    assert [f.kind for f in schedule(3, 180, 30)] == [f.kind for f in faults]
    kinds = {tuple(f.kind for f in schedule(seed, 180, 30)) for seed in range(20)}
    assert len(kinds) > 1  # the seed draws the order
    every = tuple(k for k in FAULTS if k != "redis")  # the embedded default's: no Redis to restart
    long = schedule(0, 1200, 90, every)
    assert len(long) == 13 and long[-1].at_s < 1200 - 20
    assert sorted(f.kind for f in long[:7]) == sorted(every)
    assert [f.kind for f in long[7:13]] == [f.kind for f in long[:6]]


def test_a_full_disk_is_held_then_freed(tmp_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "t", str(folder)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        started = time.monotonic()
        what = fill(folder / "filler", hold_s=0.2)
        assert time.monotonic() - started >= 0.2 and "full (4 MiB written)" in what, what
        assert not list(folder.iterdir()) and shutil.disk_usage(folder).free > 3 << 20  # freed
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_slopes_are_per_minute_and_trends_skip_the_warm_up_and_short_lived_processes():
    t = [float(s) for s in range(0, 901, 30)]
    assert slope_per_min(t, [100 + 2 * s / 60 for s in t]) == pytest.approx(2.0)
    # Grows 50 MiB in the first two minutes (warm-up), then flat; a restarted process lived 2 minutes only.
    warm = Series(
        "stub unet", 1, t, [150.0 if s >= 120 else 100 + s / 120 * 50 for s in t], [40] * len(t), [9] * len(t)
    )
    leaking = Series(
        "ray::ServeReplica:easel:Gateway",
        2,
        t,
        [500 + 1.5 * s / 60 for s in t],
        [80] * len(t),
        [30 + s // 60 for s in t],
    )
    short = Series("stub vae_decoder", 3, t[:5], [100, 120, 140, 160, 180], [1] * 5, [1] * 5)
    # Restarted at 300 s (after a fault): its own first two minutes are its warm-up.
    later = [s for s in t if s >= 300]
    restarted = Series(
        "tritonserver",
        4,
        later,
        [200.0 if s >= 420 else 100 + (s - 300) for s in later],
        [50] * len(later),
        [20] * len(later),
    )
    # A Ray worker idle from the start that became a replica at 300 s and warmed up until 420 s.
    became = Series(
        "ServeReplica:easel:Gateway",
        5,
        t,
        [60.0 if s < 300 else min(300.0, 60 + 2 * (s - 300)) for s in t],
        [30] * len(t),
        [10] * len(t),
        since=300.0,
    )
    rows = {r["pid"]: r for r in trends([warm, leaking, short, restarted, became], warmup_s=120)}
    assert set(rows) == {1, 2, 4, 5} and rows[5]["rss_mib_per_min"] == pytest.approx(0.0)
    assert rows[4]["rss_mib_per_min"] == pytest.approx(0.0) and rows[4]["rss_first_mib"] == 200.0
    assert rows[1]["rss_mib_per_min"] == pytest.approx(0.0) and rows[1]["minutes"] >= MIN_TREND_S / 60
    assert rows[2]["rss_mib_per_min"] == pytest.approx(1.5) and rows[2]["threads_per_min"] == pytest.approx(1.0, 0.05)
    memory = trend_check("memory", list(rows.values()), "rss_mib_per_min", 1.0)
    assert memory.passed is False and "Gateway" in memory.detail and "unet" not in memory.detail
    assert trend_check("memory", [], "rss_mib_per_min", 1.0).passed is None  # too short to say


def test_windows_count_failures_and_the_generations_latency():
    outcomes = [
        Outcome(1.0, "generate", "200", True, 0.5),
        Outcome(2.0, "generate", "200", True, 1.5),
        Outcome(3.0, "vectorize", "503", True, 0.1),
        Outcome(31.0, "grpc", "OK", True, 2.0),
        Outcome(32.0, "grpc", "UNAVAILABLE", True, 0.1),
    ]
    first, second = windows(outcomes, 60.0, load=[(0.0, 2.0), (5.0, 4.0), (35.0, 40.0)])
    assert (first["requests"], first["failed"], second["requests"], second["failed"]) == (3, 1, 2, 1)
    assert first["generate_p50_s"] == pytest.approx(1.0) and second["generate_p95_s"] is None
    assert (first["load_average"], second["load_average"]) == (3.0, 40.0)
    assert windows(outcomes, 60.0)[0]["load_average"] is None


@pytest.mark.parametrize(
    ("status", "headers", "body", "want"),
    [
        (200, {}, b"{}", True),
        (503, {"Retry-After": "5"}, b'{"error": {"message": "not ready"}}', True),
        (429, {"Retry-After": "1"}, b'{"error": {"message": "busy"}}', True),
        (503, {}, b'{"error": {"message": "not ready"}}', False),  # no Retry-After
        (503, {"Retry-After": "5"}, b"upstream died", False),  # not Easel's JSON error
        (500, {"Retry-After": "5"}, b'{"error": {"message": "boom"}}', False),
        (400, {}, b'{"error": {"message": "bad"}}', False),  # the soak sends only valid requests
        (409, {}, b'{"error": {"message": "already ended"}}', False),  # a generation is never a conflict
    ],
)
def test_a_failed_request_is_shaped_only_as_503_or_429_with_retry_after_and_a_json_error(status, headers, body, want):
    request = httpx.Request("POST", "http://127.0.0.1:8000/v1/images/generations")
    assert shaped(httpx.Response(status, headers=headers, content=body, request=request)) is want


@pytest.mark.parametrize(
    ("status", "body", "want"),
    [
        (200, b'{"id": "job_1", "status": "canceled"}', True),
        (409, b'{"error": {"message": "job job_1 is already succeeded", "param": "id"}}', True),  # it had ended
        (409, b"conflict", False),  # not Easel's JSON error
        (500, b'{"error": {"message": "boom"}}', False),
    ],
)
def test_a_cancel_s_answer_is_judged_and_a_409_for_a_job_already_ended_is_shaped(status, body, want):
    request = httpx.Request("POST", "http://127.0.0.1:8000/v1/jobs/job_1/cancel")
    assert shaped(httpx.Response(status, content=body, request=request)) is want


def test_a_report_fails_on_a_failed_check_only_prints_every_check_and_plots(tmp_path):
    report = {
        "minutes": 3.0,
        "seed": 0,
        "clients": 4,
        "jobs": {"submitted": 2, "succeeded": 2, "lost": 0, "compared": 1},
        "requests": {"generate": {"200": 10, "503": 1}},
        "availability": {"asked": 11, "served": 10, "refused_apart": 0, "not_served": 1, "availability": 0.90909},
        "faults": [{"at_s": 35.0, "kind": "triton", "target": "tritonserver", "lasted_s": 0.0, "ready_again_s": 4.2}],
        "windows": [
            {
                "from_s": 0.0,
                "requests": 11,
                "failed": 1,
                "generate_p50_s": 0.4,
                "generate_p95_s": None,
                "load_average": 1.5,
            }
        ],
        "trends": [],
        "series": [
            {
                "label": "tritonserver",
                "pid": 7,
                "t": [0.0, 5.0],
                "rss_mib": [300.0, 301.0],
                "fds": [90, 90],
                "threads": [40, 40],
            }
        ],
        "checks": [
            {"name": "every job ends, none lost", "passed": True, "detail": "2 submitted"},
            {"name": "memory flat", "passed": None, "detail": "not judged"},
        ],
    }
    assert passed(report)
    text = format_report(report)
    assert "PASS" in text and "not judged" in text and "tritonserver" in text
    report["checks"].append({"name": "ready again within 20 s", "passed": False, "detail": "triton None s"})
    assert not passed(report) and "FAIL" in format_report(report)
    assert plot(report, tmp_path / "soak.png").read_bytes()[:4] == b"\x89PNG"


def test_availability_is_served_over_asked_with_the_caller_s_refusals_apart():
    statuses = ["200"] * 990 + ["202"] * 5 + ["OK"] * 2 + ["503"] * 3 + ["429"] * 40 + ["RESOURCE_EXHAUSTED"] * 10
    figures = availability([Outcome(float(i), "generate", s, True, 0.1) for i, s in enumerate(statuses)])
    assert figures == {"asked": 1000, "served": 997, "refused_apart": 50, "not_served": 3, "availability": 0.997}
    assert availability_check(figures, 0.995).passed is True
    assert availability_check(figures, 0.998).passed is False
    assert availability([])["availability"] is None
    assert availability_check(availability([]), 0.995).passed is None  # nothing asked: not judged
