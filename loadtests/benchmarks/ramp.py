"""``easel loadtest ramp``: a deployment's replicas, requests in flight and latency while users rise and fall.

Replicas come from Serve's own state (the controller's details, sampled by the process that holds the stack),
requests in flight and the autoscaler's decision from Ray Serve's metrics in the stack's Prometheus
(``serve_autoscaling_total_requests``: the autoscaler's input; ``serve_autoscaling_desired_replicas``: its raw
decision), users and latency from locust's stats history (p50/p95 over locust's rolling 10 s window).
"""

from __future__ import annotations

import csv
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtests.scenario import Scenario, format_summary, locust_env, run_locust, summary
from serve.observability.prometheus import query_range

logger = logging.getLogger(__name__)

DEPLOYMENT = "TextToImage"
SAMPLE_S = 2.0
SETTLE_S = 10.0
"""Seconds recorded after the load ends: the last requests drain, Ray's metrics reach Prometheus."""
TABLE_WINDOW_S = 15
PROMQL = {
    "in_flight": 'sum(ray_serve_autoscaling_total_requests{{deployment="{d}"}})',
    "desired_replicas": 'max(ray_serve_autoscaling_desired_replicas{{deployment="{d}"}})',
}


@dataclass(frozen=True)
class RampPoint:
    """One moment of the run (seconds since its start); None where a source had no value yet."""

    t_s: float
    users: int | None
    replicas: int | None
    desired_replicas: float | None
    in_flight: float | None
    requests_per_s: float | None
    p50_ms: float | None
    p95_ms: float | None


class ReplicaSampler(threading.Thread):
    """Serve's count of RUNNING replicas of ``deployment`` every :data:`SAMPLE_S` (needs this process's Ray)."""

    def __init__(self, deployment: str = DEPLOYMENT) -> None:
        super().__init__(daemon=True, name="replica-sampler")
        self.deployment = deployment
        self.samples: list[tuple[float, int]] = []
        self.sampled = threading.Event()  # set once the first sample is in
        self._done = threading.Event()

    def run(self) -> None:
        """Sample until :meth:`stop`.

        Serve's details are read as the controller sends them: ``serve.status()`` validates them into models whose
        request routers are pickled, a second of CPU a look in a process that has torch loaded.
        """
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        while not self._done.is_set():
            for app in client.get_serve_details().get("applications", {}).values():
                if (deployment := app.get("deployments", {}).get(self.deployment)) is not None:
                    running = sum(replica.get("state") == "RUNNING" for replica in deployment.get("replicas", []))
                    self.samples.append((time.time(), running))
                    self.sampled.set()
            self._done.wait(SAMPLE_S)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._done.set()
        self.join(timeout=10)


def run_ramp(scenario: Scenario, images: Path, out: Path, docs: Path | None) -> tuple[int, str]:
    """Run ``scenario`` on a scratch stack with Prometheus, record the ramp, plot it; (exit code, report)."""
    from serve.stack import scratch_stack

    with scratch_stack(prometheus=True, prometheus_port=0) as stack:
        code, points = record_ramp(stack.info, scenario, images, out)
    table = format_table(points)
    report = {"scenario": scenario.model_dump(), "deployment": DEPLOYMENT, "points": [asdict(p) for p in points]}
    for folder in filter(None, (out, docs)):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ramp.json").write_text(json.dumps(report, indent=1))
        (folder / "ramp.md").write_text(table + "\n")
        plot(points, scenario, folder / "ramp.png")
    return code, f"{table}\n\n{format_summary(summary(out))}"


def record_ramp(info, scenario: Scenario, images: Path, out: Path) -> tuple[int, list[RampPoint]]:
    """Run ``scenario`` against the stack this process holds (``info``: its addresses, with Prometheus)."""
    sampler = ReplicaSampler()
    sampler.start()
    sampler.sampled.wait(30)  # the record starts with Serve's count
    start = time.time()
    try:
        code = run_locust(scenario, info.api_url, out, locust_env(info, images))
        time.sleep(SETTLE_S)  # the last requests drain, and Ray's metrics reach Prometheus (reported every few s)
        end = time.time()
    finally:
        sampler.stop()
    prometheus = info.prometheus_url
    metrics = {name: _series(prometheus, expr.format(d=DEPLOYMENT), start, end) for name, expr in PROMQL.items()}
    return code, merge(start, end, sampler.samples, metrics, _locust_history(out / "locust_stats_history.csv"))


def _series(prometheus_url: str, expr: str, start: float, end: float) -> list[tuple[float, float]]:
    """One summed series over the run (empty when Prometheus has none)."""
    result = query_range(prometheus_url, expr, start, end, step_s=SAMPLE_S)
    return [(float(t), float(v)) for t, v in result[0]["values"]] if result else []


def _locust_history(path: Path) -> list[tuple[float, int, float | None, float | None, float | None]]:
    """Locust's aggregated stats history: (time, users, req/s, p50 ms, p95 ms)."""

    def number(text: str) -> float | None:
        return None if text in ("", "N/A") else float(text)

    with path.open() as handle:
        return [
            (float(r["Timestamp"]), int(r["User Count"]), number(r["Requests/s"]), number(r["50%"]), number(r["95%"]))
            for r in csv.DictReader(handle)
            if r["Name"] == "Aggregated"
        ]


def _at(series: list[tuple], t: float) -> tuple | None:
    """The last sample of ``series`` (time first) at or before ``t``."""
    last = None
    for sample in series:
        if sample[0] > t:
            break
        last = sample
    return last


def merge(start: float, end: float, replicas, metrics: dict, history) -> list[RampPoint]:
    """Every source on one clock, a point every :data:`SAMPLE_S` from ``start`` to ``end``."""
    points = []
    t = start
    while t <= end:
        replica = _at(replicas, t)
        row = _at(history, t)
        values = {name: (_at(series, t) or (None, None))[1] for name, series in metrics.items()}
        points.append(
            RampPoint(
                t_s=round(t - start, 1),
                users=row[1] if row else None,
                replicas=replica[1] if replica else None,
                desired_replicas=values["desired_replicas"],
                in_flight=values["in_flight"],
                requests_per_s=row[2] if row else None,
                p50_ms=row[3] if row else None,
                p95_ms=row[4] if row else None,
            )
        )
        t += SAMPLE_S
    return points


def format_table(points: list[RampPoint]) -> str:
    """A Markdown table with one row per :data:`TABLE_WINDOW_S`: the last point of each window."""

    def cell(value, digits: int = 0) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    lines = [
        "| t (s) | users | replicas | desired | in flight | req/s | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_window: dict[int, RampPoint] = {}
    for point in points:
        by_window[int(point.t_s // TABLE_WINDOW_S)] = point
    for point in by_window.values():
        lines.append(
            f"| {point.t_s:.0f} | {cell(point.users)} | {cell(point.replicas)} | {cell(point.desired_replicas)} | "
            f"{cell(point.in_flight)} | {cell(point.requests_per_s, 2)} | {cell(point.p50_ms)} | {cell(point.p95_ms)} |"
        )
    return "\n".join(lines)


def plot(points: list[RampPoint], scenario: Scenario, path: Path) -> Path:
    """Users and requests in flight, replicas (running and desired), and p50/p95 latency over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [p.t_s for p in points]

    def column(name: str) -> list[float]:
        return [float("nan") if getattr(p, name) is None else getattr(p, name) for p in points]

    figure, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(times, column("users"), label="locust users")
    axes[0].plot(times, column("in_flight"), label="requests in flight (autoscaler's view)")
    axes[1].step(times, column("replicas"), where="post", label="running replicas (serve.status)")
    axes[1].step(times, column("desired_replicas"), where="post", linestyle="--", label="autoscaler's raw decision")
    axes[2].plot(times, column("p50_ms"), label="p50")
    axes[2].plot(times, column("p95_ms"), label="p95")
    labels = ("users / requests", f"{DEPLOYMENT} replicas", "latency (ms, 10 s window)")
    for axis, label in zip(axes, labels, strict=True):
        axis.set_ylabel(label, fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="upper right")
    axes[1].yaxis.get_major_locator().set_params(integer=True)
    axes[2].set_xlabel("seconds since the run started")
    figure.suptitle(f"easel loadtest ramp: {' -> '.join(str(s.users) for s in scenario.stages)} users", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
