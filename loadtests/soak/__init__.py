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
- availability, served / asked with 429 refusals apart (judged against ``--availability-target`` when given);
- the stack is ready again (``/readyz`` 200 and a generation answered) within 20 s of each fault;
- memory flat: each process's RSS grows less than 1 MiB/min after the warm-up (a long run's: over its last 40
  minutes); file descriptors and threads less
  than 0.5/min (judged for processes sampled over at least :data:`~loadtests.soak.checks.MIN_TREND_S`);
- ``easel soak`` only: no process of the stack alive 5 s after it stopped (by its mark and by parentage).

Timings are reported, never judged.

One soak is :class:`~loadtests.soak.session.Soak` over its parts: the load (:mod:`~loadtests.soak.load`), the faults
(:mod:`~loadtests.soak.faults`), the processes sampled (:mod:`~loadtests.soak.samples`), what must hold
(:mod:`~loadtests.soak.checks`) and the tables and figure (:mod:`~loadtests.soak.report`); :func:`run` is the command.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from loadtests.soak.checks import Check, passed
from loadtests.soak.faults import PROCESS_FAULTS, STORE_DISK_MIB, redis_server, small_disk
from loadtests.soak.report import format_report, plot
from loadtests.soak.samples import left_after_stop
from loadtests.soak.session import Soak


def run(
    out: Path,
    minutes: float,
    seed: int = 0,
    clients: int = 4,
    fault_every_s: float = 90.0,
    store: str = "sqlite",
    think_s: float = 0.0,
    availability_target: float | None = None,
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
            redis, options["store_url"] = held.enter_context(redis_server(folder / "redis"))
            faults.append("redis")
        else:
            store_disk = held.enter_context(small_disk(folder / "store", STORE_DISK_MIB))
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
                think_s=think_s,
                availability_target=availability_target,
            )
            report = soak.run()
        left = left_after_stop(list(soak.samples.processes.values()), stack.stack_id)  # its store still up
    report["checks"].append(
        asdict(
            Check(
                "nothing alive 5 s after the stack stopped (by mark and among the processes seen)",
                not left,
                f"{len(soak.samples.processes)} processes seen; alive: {left or 'none'}",
            )
        )
    )
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    figure = plot(report, out.with_suffix(".png"))
    return passed(report), format_report(report) + f"\nwritten to {out} and {figure}"
