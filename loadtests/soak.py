"""``easel soak``: a mixed load for minutes on a stack while faults land in the middle of it, then what must hold.

The load (threads, each seeded): synchronous generations (a few seeds repeat, so some are cache hits), background jobs
(some followed through their event stream, some canceled), vectorize uploads and streamed gRPC generations. A fault
every ``fault_every_s`` from a seeded schedule: SIGKILL of ``tritonserver``, of a python-backend stub, of a
``TextToImage`` replica, of a ``Gateway`` replica, of the Ray head's GCS; a Redis restart (a Redis store the soak
started); a full disk under the SQLite store (a tmpfs the soak mounted); memory taken by a process outside the stack.
Each process of the stack is sampled (RSS, open file descriptors,
threads) every few seconds.

What must hold, each a check in the report (pass, fail, or not judged when the run is too short to say):

- every job submitted ends in a final state, none lost; a sample of succeeded jobs' images equal their solo run's;
- every failed request is a 503/429 with ``Retry-After`` (gRPC: ``UNAVAILABLE``/``RESOURCE_EXHAUSTED``): never a
  500, a bare connection error or a request without an answer within the client's timeout;
- the stack is ready again (``/readyz`` 200 and a generation answered) within 20 s of each fault;
- memory flat: each process's RSS grows less than 1 MiB/min after the warm-up; file descriptors and threads less
  than 0.5/min (judged for processes sampled over at least :data:`MIN_TREND_S`);
- ``easel soak`` only: no process of the stack alive 5 s after it stopped (by its mark and by parentage).

Timings are reported, never judged.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

from loadtests.chaos import SMALL, Clients, sample_icon
from serve.processes import STACK_ENV, ManagedProcess
from serve.processes.signals import stack_processes
from serve.stack import Stack
from serve.tables import text_table

logger = logging.getLogger(__name__)

PROCESS_FAULTS = ("triton", "stub", "text_to_image", "gateway", "gcs")
"""SIGKILL of tritonserver, of a python-backend stub, of a replica of each deployment, of the Ray head's GCS."""
FAULTS = (*PROCESS_FAULTS, "redis", "disk", "memory")
"""Every fault a schedule may draw from: those, a Redis restart, the store's disk full, memory taken from outside."""
HOLD_S = 20.0
"""How long a full disk or memory taken from outside lasts."""
MEMORY_TAKEN_BYTES = 8 << 30
MEMORY_LEFT_BYTES = 4 << 30
"""Memory pressure takes up to MEMORY_TAKEN_BYTES, leaving at least MEMORY_LEFT_BYTES available (a shared machine)."""
STORE_DISK_MIB = 512
GENERATE = "/v1/images/generations"
READY_WITHIN_S = 20.0
RSS_SLOPE_MIB_PER_MIN = 1.0
COUNT_SLOPE_PER_MIN = 0.5  # file descriptors, threads
MIN_TREND_S = 300.0
"""A process's trend is judged only over at least this many seconds after the warm-up."""
WARMUP_S = 300.0
"""A process's warm-up (at most a quarter of the run). A Gateway replica's RSS converges over its first ~5 minutes
(measured in three 18-20 minute soaks: 503 -> 519 MiB by 5 minutes, then within +-3 MiB); judged from 2 minutes on,
that convergence read as 1.4-1.6 MiB/min of growth."""
SHAPED_GRPC = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
LOAD_KINDS = ("generate", "job", "vectorize", "grpc")


@dataclass(frozen=True)
class Outcome:
    """One request of the load: when it ended (s into the run), what it was, how it was answered."""

    t: float
    kind: str
    status: str  # HTTP status, gRPC code name, "hung", or a transport error's name
    shaped: bool  # a success, or a failure as documented (503/429 + Retry-After, gRPC UNAVAILABLE/RESOURCE_EXHAUSTED)
    seconds: float


@dataclass
class Fault:
    """One fault of the schedule."""

    at_s: float
    kind: str
    target: str = ""
    lasted_s: float = 0.0  # a full disk, memory taken: held this long; "ready again" counts from its end
    ready_again_s: float | None = None


@dataclass
class Check:
    """One thing that must hold; ``passed`` None: not judged (the run was too short to say)."""

    name: str
    passed: bool | None
    detail: str


@dataclass
class Series:
    """One process's samples over the run."""

    label: str
    pid: int
    t: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    since: float = 0.0  # when it took this label (a Ray worker becomes a replica after it started)


def schedule(
    seed: int, duration_s: float, fault_every_s: float, kinds: tuple[str, ...] = PROCESS_FAULTS
) -> list[Fault]:
    """Faults every ``fault_every_s`` from the first at that time until 20 s before the end; each kind once first.

    The kinds go round in an order drawn from ``seed`` (so a short run still meets each of them), then again.
    """
    rng = random.Random(seed)
    kinds = list(kinds)
    rng.shuffle(kinds)
    times = np.arange(fault_every_s, duration_s - READY_WITHIN_S, fault_every_s)
    return [Fault(round(float(at), 1), kinds[i % len(kinds)]) for i, at in enumerate(times)]


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


def _shaped(response: httpx.Response) -> bool:
    if response.status_code < 400:
        return True
    if response.status_code not in (429, 503) or "Retry-After" not in response.headers:
        return False
    try:
        return "error" in response.json()
    except ValueError:
        return False


class _Load(Clients):
    """``clients`` threads sending the mixed load until stopped; every answer and every job submitted recorded."""

    def __init__(self, stack: Stack, clients: int, seed: int, hang_s: float, started: float) -> None:
        super().__init__(clients, hang_s)
        self.api_url, self.grpc_address = stack.info.api_url, stack.info.grpc_address
        self.seed, self.started = seed, started
        self.icon = sample_icon()
        self.outcomes: list[Outcome] = []
        self.jobs: dict[str, dict] = {}  # id -> the request submitted
        self.streams: Counter[str] = Counter()  # event streams: read to their final event, or broken

    def _record(self, kind: str, status: str, shaped: bool, began: float) -> None:
        now = time.monotonic()
        with self._lock:
            self.outcomes.append(Outcome(round(now - self.started, 2), kind, status, shaped, round(now - began, 3)))

    def _run(self, index: int) -> None:
        import grpc

        from serve.grpc_api import easel_pb2, easel_pb2_grpc

        rng = random.Random(self.seed * 1000 + index)
        with (
            httpx.Client(base_url=self.api_url, timeout=self.hang_s) as client,
            grpc.insecure_channel(self.grpc_address) as channel,
        ):
            stub = easel_pb2_grpc.EaselStub(channel)
            while not self._stop.is_set():
                kind = rng.choices(LOAD_KINDS, weights=(4, 2, 2, 1))[0]
                began = time.monotonic()
                try:
                    if kind == "grpc":
                        request = easel_pb2.GenerateRequest(**SMALL, seed=rng.randrange(1000))
                        try:
                            list(stub.Generate(request, timeout=self.hang_s))
                            self._record(kind, "OK", True, began)
                        except grpc.RpcError as error:
                            code = error.code().name
                            status = "hung" if code == "DEADLINE_EXCEEDED" else code
                            self._record(kind, status, code in SHAPED_GRPC, began)
                        continue
                    if kind == "generate":  # a third from a few seeds: cache hits once seen
                        seed = rng.randrange(8) if rng.random() < 1 / 3 else rng.randrange(8, 10**6)
                        response = client.post(GENERATE, json={**SMALL, "seed": seed})
                    elif kind == "vectorize":
                        response = client.post("/v1/vectorize", files={"file": ("icon.png", self.icon, "image/png")})
                    else:
                        response = self._job(client, rng)
                    self._record(kind, str(response.status_code), _shaped(response), began)
                except httpx.TimeoutException:
                    self._record(kind, "hung", False, began)
                except httpx.TransportError as error:
                    self._record(kind, type(error).__name__, False, began)

    def _job(self, client: httpx.Client, rng: random.Random) -> httpx.Response:
        """Submit a background job; follow its event stream to the end, or cancel it, or leave it."""
        body = {**SMALL, "seed": rng.randrange(10**6), "background": True}
        response = client.post(GENERATE, json=body)
        if response.status_code != 202:
            return response
        job_id = response.json()["id"]
        with self._lock:
            self.jobs[job_id] = body
        follow = rng.random()
        if follow < 0.2:
            client.post(f"/v1/jobs/{job_id}/cancel")
        elif follow < 0.6:
            self._follow(client, job_id)
        return response

    def _follow(self, client: httpx.Client, job_id: str) -> None:
        """Read the job's event stream to its final event; a broken stream is opened again (once)."""
        for _ in range(2):
            try:
                with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
                    for line in stream.iter_lines():
                        if line.startswith("event: ") and line[7:] in ("completed", "failed", "canceled"):
                            self._count_stream("to the end")
                            return
            except httpx.TransportError:
                pass
            self._count_stream("broken")

    def _count_stream(self, how: str) -> None:
        with self._lock:
            self.streams[how] += 1


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
    ) -> None:
        """The soak of a started stack; ``faults``: the kinds to play.

        ``disk`` needs ``store_disk`` (the SQLite store's own small filesystem), ``redis`` the store's Redis server
        (``redis``), ``gcs`` a stack that keeps its GCS.
        """
        self.stack, self.duration_s, self.seed, self.clients = stack, minutes * 60, seed, clients
        self.fault_every_s, self.sample_s, self.compare, self.hang_s = fault_every_s, sample_s, compare, hang_s
        self.warmup_s = min(WARMUP_S, self.duration_s / 4)
        self.store_disk, self.redis = store_disk, redis
        self.faults = schedule(seed, self.duration_s, fault_every_s, faults)
        self.series: dict[int, Series] = {}
        self.processes: dict[int, psutil.Process] = {}  # every process of the stack seen, for the check after stop
        self.rng = random.Random(seed)
        self.load: list[tuple[float, float]] = []  # the machine's 1-minute load average (it is shared)

    def run(self) -> dict:
        """The whole soak; the report (JSON-ready) with its checks."""
        started = time.monotonic()
        sampling = threading.Event()
        sampler = threading.Thread(target=self._sample, args=(started, sampling), daemon=True)
        sampler.start()
        with _Load(self.stack, self.clients, self.seed, self.hang_s, started) as load:
            for fault in self.faults:
                time.sleep(max(0.0, fault.at_s - (time.monotonic() - started)))
                self._inject(fault)
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
        sampling.set()
        sampler.join()
        return self._report(load, time.monotonic() - started)

    def _sample(self, started: float, done: threading.Event) -> None:
        while True:
            t = round(time.monotonic() - started, 1)
            self.load.append((t, os.getloadavg()[0]))
            for process in stack_processes(self.stack.stack_id):
                try:
                    with process.oneshot():
                        rss, fds, threads = process.memory_info().rss, process.num_fds(), process.num_threads()
                        label = _label(process)
                except psutil.Error:
                    continue
                series = self.series.setdefault(process.pid, Series(label, process.pid, since=t))
                if label != series.label:
                    series.label, series.since = label, t
                self.processes.setdefault(process.pid, process)
                series.t.append(t)
                series.rss_mib.append(round(rss / 2**20, 2))
                series.fds.append(fds)
                series.threads.append(threads)
            if done.wait(self.sample_s):
                return

    def _inject(self, fault: Fault) -> None:
        """Play the fault: SIGKILL its process, or restart Redis, or hold the disk full or memory taken."""
        began = time.monotonic()
        logger.info("fault at %.0f s: %s", fault.at_s, fault.kind)
        if fault.kind == "disk":
            fault.target = _fill(self.store_disk / "filler", HOLD_S)
        elif fault.kind == "memory":
            fault.target = _take_memory(HOLD_S)
        elif fault.kind == "redis":
            fault.target = f"redis-server (pid {self.redis.pid}): SIGKILL, started again on its port"
            self.redis.kill()
            self.redis.start(60)
        else:
            self._kill(fault)
        fault.lasted_s = round(time.monotonic() - began, 1)

    def _kill(self, fault: Fault) -> None:
        """SIGKILL the fault's process."""
        if fault.kind == "gcs":
            process = psutil.Process(self.stack.gcs.pid)
        elif fault.kind == "triton":
            process = psutil.Process(self.stack.triton.process.pid)
        elif fault.kind == "stub":
            stubs = sorted(psutil.Process(self.stack.triton.process.pid).children(), key=_label)
            process = self.rng.choice([p for p in stubs if "triton_python_backend_stub" in p.name()])
        else:
            deployment = {"text_to_image": "TextToImage", "gateway": "Gateway"}[fault.kind]
            replicas = [
                p for p in stack_processes(self.stack.stack_id) if f"ServeReplica:easel:{deployment}" in _label(p)
            ]
            process = self.rng.choice(sorted(replicas, key=lambda p: p.pid))
        fault.target = _label(process)
        logger.info("SIGKILL %s (pid %d)", fault.target, process.pid)
        os.kill(process.pid, signal.SIGKILL)

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

    def _report(self, load: _Load, elapsed_s: float) -> dict:
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
        rows = trends(list(self.series.values()), self.warmup_s)
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
            Check(
                f"ready again within {READY_WITHIN_S:.0f} s of each fault",
                not late,
                ", ".join(f"{f.kind} {f.ready_again_s} s" for f in self.faults) or "no fault",
            ),
            _trend_check("memory flat (RSS < 1 MiB/min per process)", rows, "rss_mib_per_min", RSS_SLOPE_MIB_PER_MIN),
            _trend_check("file descriptors flat (< 0.5/min per process)", rows, "fds_per_min", COUNT_SLOPE_PER_MIN),
            _trend_check("threads flat (< 0.5/min per process)", rows, "threads_per_min", COUNT_SLOPE_PER_MIN),
        ]
        return {
            "minutes": round(elapsed_s / 60, 2),
            "seed": self.seed,
            "clients": self.clients,
            "cpus": os.cpu_count(),
            "warmup_s": self.warmup_s,
            "faults": [asdict(f) for f in self.faults],
            "requests": {kind: dict(sorted(c.items())) for kind, c in sorted(by_kind.items())},
            "windows": windows(outcomes, elapsed_s, load=self.load),
            "jobs": {"submitted": len(jobs), **dict(sorted(statuses.items())), "lost": lost, "compared": compared},
            "trends": rows,
            "series": [asdict(s) for s in self.series.values()],
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


def _fill(path: Path, hold_s: float) -> str:
    """Fill the filesystem of ``path`` with one file, hold it full ``hold_s``, then delete the file; what it did."""
    written = 0
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        chunk = b"\0" * (1 << 20)
        while True:
            written += os.write(descriptor, chunk)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        time.sleep(hold_s)
    finally:
        os.close(descriptor)
        path.unlink()
    return f"{path.parent} full ({written >> 20} MiB written) for {hold_s:.0f} s"


def _take_memory(hold_s: float) -> str:
    """A process outside the stack allocates and touches memory, holds it ``hold_s`` and exits; what it took."""
    available = psutil.virtual_memory().available
    taken = max(0, min(MEMORY_TAKEN_BYTES, available - MEMORY_LEFT_BYTES))
    code = (  # MAP_POPULATE: the kernel backs every page at once (touching them from Python took 38 s at load 40)
        "import mmap, sys, time; m = mmap.mmap(-1, int(sys.argv[1]), mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | "
        "mmap.MAP_POPULATE); print(flush=True); time.sleep(float(sys.argv[2]))"
    )
    env = {k: v for k, v in os.environ.items() if k != STACK_ENV}  # not the stack's
    with subprocess.Popen(
        [sys.executable, "-c", code, str(taken), str(hold_s)], stdout=subprocess.PIPE, env=env
    ) as hog:
        hog.stdout.readline()  # allocated
        low = psutil.virtual_memory().available
        hog.wait()
    return (
        f"{taken / 2**30:.1f} GiB taken for {hold_s:.0f} s (available {available / 2**30:.1f} -> {low / 2**30:.1f} GiB)"
    )


def _trend_check(name: str, rows: list[dict], key: str, limit: float) -> Check:
    if not rows:
        return Check(name, None, f"not judged: no process sampled {MIN_TREND_S:.0f} s after the warm-up")
    over = [f"{r['label']} ({r['pid']}): {r[key]}/min" for r in rows if r[key] >= limit]
    return Check(name, not over, f"{len(rows)} processes judged; over {limit}/min: {over or 'none'}")


def _label(process: psutil.Process) -> str:
    """What a process is: its title (Ray's ``ray::...``), a stub's model, or its name."""
    try:
        cmdline = process.cmdline()
        name = process.name()
    except psutil.Error:
        return "?"
    model = next((part for part in cmdline if part.endswith("/model.py")), None)
    if "triton_python_backend_stub" in name and model:
        return f"stub {Path(model).parent.parent.name}"  # .../MODEL/1/model.py
    replica = re.search(r"ServeReplica:[^:\s]+:[^.\s]+", " ".join(cmdline))  # Ray titles it two ways
    if replica:
        return replica.group(0)
    if cmdline and cmdline[0].startswith("ray::"):
        return cmdline[0].strip().split(".")[0]
    return name


def left_after_stop(processes: list[psutil.Process], stack_id: str, wait_s: float = 5.0) -> list[str]:
    """After ``wait_s``: the stack's processes still alive, by its mark and among those seen during the run."""
    time.sleep(wait_s)
    alive = {p.pid: p for p in stack_processes(stack_id)}
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.setdefault(process.pid, process)
        except psutil.Error:
            continue
    return [f"{pid} {_label(p)}" for pid, p in sorted(alive.items())]


def format_report(report: dict) -> str:
    """The checks, the faults and the windows as plain-text tables."""
    requests = "\n".join(f"  {kind}: {counts}" for kind, counts in report["requests"].items())
    trends = _trends_table(report["trends"])
    return "\n\n".join(
        [
            f"soak: {report['minutes']} min, seed {report['seed']}, {report['clients']} clients, jobs {report['jobs']}",
            f"requests by kind and status:\n{requests}",
            _faults_table(report["faults"]),
            _windows_table(report["windows"]),
            trends or "trends: no process sampled long enough after the warm-up",
            _checks_table(report["checks"]),
        ]
    )


def _checks_table(checks: list[dict]) -> str:
    """Each check's name, PASS / FAIL / not judged, and its detail."""
    return text_table(
        [("check", "<88"), ("result", "<12"), ("detail", "<")],
        [
            (c["name"][:87], {True: "PASS", False: "FAIL", None: "not judged"}[c["passed"]], c["detail"][:600])
            for c in checks
        ],
    )


def _faults_table(faults: list[dict]) -> str:
    """Each fault: when, what, on what, how long, and how soon the stack was ready again."""
    return text_table(
        [("at s", ">6.0f"), ("fault", ">15"), ("target", ">42"), ("lasted s", ">9"), ("ready again s", ">15")],
        [
            (
                f["at_s"],
                f["kind"],
                f["target"][:39],
                f["lasted_s"],
                "-" if f["ready_again_s"] is None else f["ready_again_s"],
            )
            for f in faults
        ],
    )


def _windows_table(windows: list[dict]) -> str:
    """Each window's requests, failures, generation latencies and load average."""
    return text_table(
        [
            ("from s", ">7.0f"),
            ("requests", ">9"),
            ("failed", ">7"),
            ("gen p50 s", ">10"),
            ("gen p95 s", ">10"),
            ("load avg", ">9"),
        ],
        [
            (
                w["from_s"],
                w["requests"],
                w["failed"],
                w["generate_p50_s"] or "-",
                w["generate_p95_s"] or "-",
                w["load_average"] or "-",
            )
            for w in windows
        ],
    )


def _trends_table(trends: list[dict]) -> str | None:
    """The 12 processes growing fastest in RSS: their growth per minute (None: no process sampled long enough)."""
    rows = sorted(trends, key=lambda r: -r["rss_mib_per_min"])[:12]
    if not rows:
        return None
    return text_table(
        [
            ("process", "<40"),
            ("min", ">5"),
            ("RSS MiB", ">16"),
            ("MiB/min", ">8"),
            ("fds/min", ">8"),
            ("thr/min", ">8"),
        ],
        [
            (
                r["label"][:39],
                r["minutes"],
                f"{r['rss_first_mib']}->{r['rss_last_mib']}",
                r["rss_mib_per_min"],
                r["fds_per_min"],
                r["threads_per_min"],
            )
            for r in rows
        ],
    )


def plot(report: dict, path: Path) -> Path:
    """Requests and failures, generations' p95, RSS, open fds per process over the run; faults marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["windows"]
    width = rows[1]["from_s"] - rows[0]["from_s"] if len(rows) > 1 else 30.0
    mid = [w["from_s"] + width / 2 for w in rows]
    figure, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    axes[0].plot(mid, [w["requests"] / width for w in rows], label="requests/s")
    axes[0].plot(mid, [w["failed"] / width for w in rows], label="failed/s (503/429, gRPC UNAVAILABLE)")
    load = [float("nan") if w["load_average"] is None else w["load_average"] for w in rows]
    shared = axes[0].twinx()  # the machine is shared: its load on a scale of its own
    shared.plot(mid, load, color="grey", linestyle=":")
    shared.set_ylabel("machine load average, 1 min (dotted)", fontsize=8, color="grey")
    axes[1].plot(mid, [float("nan") if w["generate_p95_s"] is None else w["generate_p95_s"] for w in rows], label="p95")
    axes[1].plot(mid, [float("nan") if w["generate_p50_s"] is None else w["generate_p50_s"] for w in rows], label="p50")
    for series in report["series"]:
        axes[2].plot(series["t"], series["rss_mib"], linewidth=0.8)
        axes[3].plot(series["t"], series["fds"], linewidth=0.8)
    labels = ("requests", "sync generation (s, 30 s window)", "RSS per process (MiB)", "open fds per process")
    for axis, label in zip(axes, labels, strict=True):
        axis.set_ylabel(label, fontsize=9)
        axis.grid(alpha=0.3)
        for fault in report["faults"]:
            axis.axvline(fault["at_s"], color="red", alpha=0.4, linewidth=0.8)
    for axis in axes[:2]:
        axis.legend(fontsize=8, loc="upper right")
    for fault in report["faults"]:
        axes[0].annotate(
            fault["kind"],
            (fault["at_s"], 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            rotation=90,
            va="top",
            ha="right",
            color="red",
        )
    axes[2].set_yscale("log")
    axes[3].set_yscale("log")
    axes[3].set_xlabel("seconds since the load started (red: faults)")
    figure.suptitle(
        f"easel soak: {report['minutes']} min, seed {report['seed']}, {report['clients']} clients", fontsize=11
    )
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def passed(report: dict) -> bool:
    """No check failed (checks not judged do not fail a run)."""
    return all(c["passed"] is not False for c in report["checks"])


def run(
    out: Path,
    minutes: float,
    seed: int = 0,
    clients: int = 4,
    fault_every_s: float = 90.0,
    store: str = "sqlite",
    **options,
) -> tuple[bool, str]:
    """``easel soak``: a scratch stack soaked, then stopped and checked; JSON to ``out``; (passed, the tables).

    ``store``: ``sqlite`` (the embedded default, on a small tmpfs of its own when this process may mount one, so the
    disk can fill) or ``redis`` (a Redis server the soak starts, so it can restart it).
    """
    from serve.paths import run_dir
    from serve.stack import scratch_stack

    folder = run_dir() / "bench"
    faults = [*PROCESS_FAULTS, "memory"]
    with ExitStack() as held:
        store_disk, redis = None, None
        if store == "redis":
            redis, options["store_url"] = held.enter_context(_redis_server(folder / "redis"))
            faults.append("redis")
        else:
            store_disk = held.enter_context(_small_disk(folder / "store", STORE_DISK_MIB))
            if store_disk is not None:
                options["store_url"] = f"sqlite:///{store_disk / 'easel.db'}"
                faults.append("disk")
        with scratch_stack(folder=folder, cache_bytes=64 << 20, **options) as stack:
            if stack.gcs is None:
                faults.remove("gcs")
            soak = Soak(
                stack,
                minutes,
                seed=seed,
                clients=clients,
                fault_every_s=fault_every_s,
                faults=tuple(faults),
                store_disk=store_disk,
                redis=redis,
            )
            report = soak.run()
        left = left_after_stop(list(soak.processes.values()), stack.stack_id)  # its store still up
    report["checks"].append(
        asdict(
            Check(
                "nothing alive 5 s after the stack stopped (by mark and among the processes seen)",
                not left,
                f"{len(soak.processes)} processes seen; alive: {left or 'none'}",
            )
        )
    )
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    figure = plot(report, out.with_suffix(".png"))
    return passed(report), format_report(report) + f"\nwritten to {out} and {figure}"


@contextmanager
def _small_disk(folder: Path, mib: int) -> Iterator[Path | None]:
    """A tmpfs of ``mib`` MiB on ``folder`` for the SQLite store, so a fault can fill it; None where mounting fails.

    Mounting needs root (or CAP_SYS_ADMIN); without it the soak runs without the full-disk fault.
    """
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "easel-soak-store", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        logger.warning("no tmpfs for the store (%s): the full-disk fault is left out", mounted.stderr.strip())
        yield None
        return
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


@contextmanager
def _redis_server(folder: Path) -> Iterator[tuple[ManagedProcess, str]]:
    """A redis-server for the store, and its URL.

    It loses nothing it acknowledged when killed: an append-only file, fsync'd on every write.
    """
    import redis

    from serve.processes import free_port

    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", ""]
    command += ["--appendonly", "yes", "--appendfsync", "always"]
    client = redis.Redis(port=port)
    server = ManagedProcess("redis-server", lambda: command, folder / "redis.log", lambda: bool(client.ping()))
    server.start(30)
    try:
        yield server, f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        server.stop()
