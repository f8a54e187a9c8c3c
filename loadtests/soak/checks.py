"""What must hold after a soak, and the numbers it is judged on: trends per process, windows of the load."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loadtests.soak.load import Outcome
from loadtests.soak.samples import Series

READY_WITHIN_S = 20.0
RSS_SLOPE_MIB_PER_MIN = 1.0
COUNT_SLOPE_PER_MIN = 0.5  # file descriptors, threads
MIN_TREND_S = 300.0
"""A process's trend is judged only over at least this many seconds after the warm-up."""
WARMUP_S = 300.0
"""A process's warm-up (at most a quarter of the run). A Gateway replica's RSS converges over its first ~5 minutes
(measured in three 18-20 minute soaks: 503 -> 519 MiB by 5 minutes, then within +-3 MiB); judged from 2 minutes on,
that convergence read as 1.4-1.6 MiB/min of growth."""
FLAT_OVER_S = 2400.0
"""A long run's memory is judged over its last 40 minutes (the warm-up grows to what comes before them)."""
REFUSED = ("429", "RESOURCE_EXHAUSTED")
"""A caller refused for its rate or a full queue: shaped, and apart from availability (the service answered)."""
SERVED = ("200", "202", "409", "OK")
"""A request served: an answer, a job taken, a gRPC call completed, a cancel of a job that had already ended (only a
cancel's 409 is shaped: :func:`loadtests.soak.load.shaped`)."""


@dataclass
class Check:
    """One thing that must hold; ``passed`` None: not judged (the run was too short to say)."""

    name: str
    passed: bool | None
    detail: str


def slope_per_min(t: list[float], values: list[float]) -> float:
    """The least-squares slope of ``values`` over ``t`` (seconds), per minute."""
    return float(np.polyfit(np.asarray(t) / 60.0, np.asarray(values, dtype=float), 1)[0])


def trends(series: list[Series], warmup_s: float) -> list[dict]:
    """Per process sampled long enough after its warm-up: its RSS, fd and thread slopes per minute.

    A process's warm-up is the first ``warmup_s`` after it was first seen as what it is: the run's start, or, for one
    started during the run (a restart after a fault, a Ray worker that became a replica), that moment.
    """
    rows = []
    for s in series:
        kept = [i for i, t in enumerate(s.t) if t >= max(s.t[0], s.since) + warmup_s]
        if len(kept) < 3 or s.t[kept[-1]] - s.t[kept[0]] < MIN_TREND_S:
            continue
        t = [s.t[i] for i in kept]
        rows.append(
            {
                "label": s.label,
                "pid": s.pid,
                "minutes": round((t[-1] - t[0]) / 60, 1),
                "rss_first_mib": round(s.rss_mib[kept[0]], 1),
                "rss_last_mib": round(s.rss_mib[kept[-1]], 1),
                "rss_mib_per_min": round(slope_per_min(t, [s.rss_mib[i] for i in kept]), 3),
                "fds_per_min": round(slope_per_min(t, [s.fds[i] for i in kept]), 3),
                "threads_per_min": round(slope_per_min(t, [s.threads[i] for i in kept]), 3),
            }
        )
    return rows


def windows(
    outcomes: list[Outcome], duration_s: float, width_s: float = 30.0, load: list[tuple[float, float]] = ()
) -> list[dict]:
    """Requests, failures, the synchronous generations' p50/p95 latency and the machine's load per ``width_s``.

    ``load``: (seconds into the run, the 1-minute load average) samples; the window's mean (None without samples).
    """
    rows = []
    for start in np.arange(0.0, max(duration_s, width_s), width_s):
        inside = [o for o in outcomes if start <= o.t < start + width_s]
        loads = [value for t, value in load if start <= t < start + width_s]
        latencies = [o.seconds for o in inside if o.kind == "generate" and o.status == "200"]
        rows.append(
            {
                "from_s": float(start),
                "requests": len(inside),
                "failed": sum(not o.status.startswith("2") and o.status != "OK" for o in inside),
                "generate_p50_s": round(float(np.percentile(latencies, 50)), 3) if latencies else None,
                "generate_p95_s": round(float(np.percentile(latencies, 95)), 3) if latencies else None,
                "load_average": round(float(np.mean(loads)), 1) if loads else None,
            }
        )
    return rows


def availability(outcomes: list[Outcome]) -> dict:
    """Served / asked, refusals of the caller (429, ``RESOURCE_EXHAUSTED``) apart; a 503 counts as not served."""
    refused = sum(o.status in REFUSED for o in outcomes)
    served = sum(o.status in SERVED for o in outcomes)
    asked = len(outcomes) - refused
    return {
        "asked": asked,
        "served": served,
        "refused_apart": refused,
        "not_served": asked - served,
        "availability": round(served / asked, 5) if asked else None,
    }


def availability_check(figures: dict, target: float) -> Check:
    """Availability at least ``target`` (not judged when nothing was asked).

    A soak without a target reports the figure only: a fault schedule denser than the hour's measures the faults.
    """
    name = f"availability >= {target:.1%} (served / asked, 429 refusals apart)"
    detail = (
        f"{figures['served']} served of {figures['asked']} asked ({figures['refused_apart']} refused 429 apart): "
        f"{figures['availability']}"
    )
    if figures["availability"] is None:
        return Check(name, None, f"not judged: {detail}")
    return Check(name, figures["availability"] >= target, detail)


def trend_check(name: str, rows: list[dict], key: str, limit: float) -> Check:
    """Every process's ``key`` slope under ``limit`` per minute (not judged without a process sampled long enough)."""
    if not rows:
        return Check(name, None, f"not judged: no process sampled {MIN_TREND_S:.0f} s after the warm-up")
    over = [f"{r['label']} ({r['pid']}): {r[key]}/min" for r in rows if r[key] >= limit]
    return Check(name, not over, f"{len(rows)} processes judged; over {limit}/min: {over or 'none'}")


def passed(report: dict) -> bool:
    """No check failed (checks not judged do not fail a run)."""
    return all(c["passed"] is not False for c in report["checks"])
