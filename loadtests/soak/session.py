"""One soak of a started stack: the load and the fault schedule played, then the report with its checks."""

from __future__ import annotations

import logging
import os
import random
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import httpx

from loadtests.chaos import SMALL
from loadtests.soak.checks import (
    COUNT_SLOPE_PER_MIN,
    FLAT_OVER_S,
    READY_WITHIN_S,
    RSS_SLOPE_MIB_PER_MIN,
    WARMUP_S,
    Check,
    availability,
    availability_check,
    trend_check,
    trends,
    windows,
)
from loadtests.soak.faults import PROCESS_FAULTS, play, schedule
from loadtests.soak.load import GENERATE, Load
from loadtests.soak.samples import Samples
from serve.processes import ManagedProcess
from serve.stack import Stack

logger = logging.getLogger(__name__)


class Soak:
    """Runs the load and the fault schedule against a started :class:`Stack` and judges what must hold."""

    def __init__(
        self,
        stack: Stack,
        minutes: float,
        seed: int = 0,
        clients: int = 4,
        fault_every_s: float = 90.0,
        sample_s: float = 5.0,
        compare: int = 10,
        hang_s: float = 120.0,
        faults: tuple[str, ...] = PROCESS_FAULTS,
        store_disk: Path | None = None,
        redis: ManagedProcess | None = None,
        think_s: float = 0.0,
        availability_target: float | None = None,
    ) -> None:
        """The soak of a started stack; ``faults``: the kinds to play.

        ``think_s``: each client's mean pause between requests (a user's; 0: back to back). ``availability_target``:
        the availability judged (None: reported only).

        ``disk`` needs ``store_disk`` (the SQLite store's own small filesystem), ``redis`` the store's Redis server
        (``redis``), ``gcs`` a stack that keeps its GCS.
        """
        self.stack, self.duration_s, self.seed, self.clients = stack, minutes * 60, seed, clients
        self.fault_every_s, self.sample_s, self.compare, self.hang_s = fault_every_s, sample_s, compare, hang_s
        self.warmup_s = max(min(WARMUP_S, self.duration_s / 4), self.duration_s - FLAT_OVER_S)
        self.think_s, self.availability_target = think_s, availability_target
        self.store_disk, self.redis = store_disk, redis
        self.faults = schedule(seed, self.duration_s, fault_every_s, faults)
        self.samples = Samples(stack.stack_id, sample_s)
        self.rng = random.Random(seed)

    def run(self) -> dict:
        """The whole soak; the report (JSON-ready) with its checks."""
        started = time.monotonic()
        self.samples.start(started)
        with Load(self.stack, self.clients, self.seed, self.hang_s, started, self.think_s) as load:
            for fault in self.faults:
                time.sleep(max(0.0, fault.at_s - (time.monotonic() - started)))
                play(fault, self.stack, self.rng, self.store_disk, self.redis)
                fault.ready_again_s = self._ready_again(time.monotonic())
                logger.info(
                    "fault %s (%s) at %.0f s: ready again in %s s",
                    fault.kind,
                    fault.target,
                    fault.at_s,
                    fault.ready_again_s,
                )
            time.sleep(max(0.0, self.duration_s - (time.monotonic() - started)))
            logger.info("load stopping (%d requests so far)", len(load.outcomes))
        self.samples.stop()
        return self._report(load, time.monotonic() - started)

    def _ready_again(self, since: float) -> float | None:
        """Seconds until /readyz is 200 and a generation answers 200 (None: not within the client timeout)."""
        with httpx.Client(base_url=self.stack.info.api_url, timeout=30) as client:
            while time.monotonic() - since < self.hang_s:
                try:
                    if (
                        client.get("/readyz").status_code == 200
                        and client.post(GENERATE, json=SMALL).status_code == 200
                    ):
                        return round(time.monotonic() - since, 1)
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        return None

    def _report(self, load: Load, elapsed_s: float) -> dict:
        jobs = self._final_jobs(load.jobs)
        compared, differ = self._compare(load.jobs, jobs)
        outcomes = sorted(load.outcomes, key=lambda o: o.t)
        by_kind: dict[str, Counter[str]] = {}
        for o in outcomes:
            by_kind.setdefault(o.kind, Counter())[o.status] += 1
        unshaped = [o for o in outcomes if not o.shaped]
        failed = Counter(o.status for o in outcomes if o.status not in ("200", "202", "OK"))
        statuses = Counter(status for status in jobs.values())
        lost = statuses.pop("lost", 0)
        unfinished = sum(n for status, n in statuses.items() if status in ("queued", "running"))
        rows = trends(list(self.samples.series.values()), self.warmup_s)
        figures = availability(outcomes)
        late = [f for f in self.faults if f.ready_again_s is None or f.ready_again_s > READY_WITHIN_S]
        checks = [
            Check(
                "every job ends, none lost",
                lost == 0 and unfinished == 0 and bool(jobs),
                f"{len(jobs)} submitted: {dict(sorted(statuses.items()))}, lost {lost}",
            ),
            Check(
                "succeeded jobs' images equal their solo run's",
                differ == 0 and compared > 0,
                f"{compared} compared, {differ} differ",
            ),
            Check(
                "every failure a 503/429 + Retry-After (gRPC UNAVAILABLE/RESOURCE_EXHAUSTED), none hung",
                not unshaped,
                f"{len(outcomes)} requests, {sum(failed.values())} failed {dict(sorted(failed.items()))}, "
                f"unshaped {len(unshaped)}: {[asdict(o) for o in unshaped[:5]]}; event streams {dict(load.streams)}",
            ),
            *([availability_check(figures, self.availability_target)] if self.availability_target else []),
            Check(
                f"ready again within {READY_WITHIN_S:.0f} s of each fault",
                not late,
                ", ".join(f"{f.kind} {f.ready_again_s} s" for f in self.faults) or "no fault",
            ),
            trend_check("memory flat (RSS < 1 MiB/min per process)", rows, "rss_mib_per_min", RSS_SLOPE_MIB_PER_MIN),
            trend_check("file descriptors flat (< 0.5/min per process)", rows, "fds_per_min", COUNT_SLOPE_PER_MIN),
            trend_check("threads flat (< 0.5/min per process)", rows, "threads_per_min", COUNT_SLOPE_PER_MIN),
        ]
        return {
            "minutes": round(elapsed_s / 60, 2),
            "seed": self.seed,
            "clients": self.clients,
            "think_s": self.think_s,
            "fault_every_s": self.fault_every_s,
            "cpus": os.cpu_count(),
            "warmup_s": self.warmup_s,
            "faults": [asdict(f) for f in self.faults],
            "availability": figures,
            "requests": {kind: dict(sorted(c.items())) for kind, c in sorted(by_kind.items())},
            "windows": windows(outcomes, elapsed_s, load=self.samples.load),
            "jobs": {"submitted": len(jobs), **dict(sorted(statuses.items())), "lost": lost, "compared": compared},
            "trends": rows,
            "series": [asdict(s) for s in self.samples.series.values()],
            "checks": [asdict(c) for c in checks],
        }

    def _final_jobs(self, submitted: dict[str, dict], wait_s: float = 180.0) -> dict[str, str]:
        """Each submitted job's status once every one is final or ``wait_s`` passed; "lost" for an unknown id."""
        status: dict[str, str] = {}
        deadline = time.monotonic() + wait_s
        with httpx.Client(base_url=self.stack.info.api_url, timeout=30) as client:
            for job_id in submitted:
                while True:
                    try:
                        response = client.get(f"/v1/jobs/{job_id}")
                    except httpx.TransportError:
                        response = None
                    if response is not None and response.status_code == 404:
                        status[job_id] = "lost"
                        break
                    if response is not None and response.status_code == 200:
                        status[job_id] = response.json()["status"]
                        if status[job_id] in ("succeeded", "failed", "canceled"):
                            break
                    if time.monotonic() > deadline:
                        status.setdefault(job_id, "unanswered")
                        break
                    time.sleep(0.5)
        return status

    def _compare(self, submitted: dict[str, dict], status: dict[str, str]) -> tuple[int, int]:
        """A sample of succeeded jobs against the same request run alone, uncached: (compared, differing)."""
        succeeded = sorted(job_id for job_id, s in status.items() if s == "succeeded")
        sample = self.rng.sample(succeeded, min(self.compare, len(succeeded)))
        differ = 0
        with httpx.Client(base_url=self.stack.info.api_url, timeout=self.hang_s) as client:
            for job_id in sample:
                job = client.get(f"/v1/jobs/{job_id}").json()
                body = {k: v for k, v in submitted[job_id].items() if k != "background"}
                solo = client.post(GENERATE, json=body, headers={"Cache-Control": "no-cache"})
                images = [[item["b64_json"] for item in answer.get("data", [])] for answer in (solo.json(), job)]
                if solo.status_code != 200 or images[0] != images[1]:  # their images' ids differ
                    differ += 1
                    logger.warning("job %s differs from its solo run (%d)", job_id, solo.status_code)
        return len(sample), differ
