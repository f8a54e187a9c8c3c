"""``easel loadtest SCENARIO``: a bounded, loopback-only locust run from a scenario file, summarised."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from ipaddress import ip_address
from pathlib import Path
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve.tables import text_table

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
SCENARIOS = HERE / "scenarios"
LOCUSTFILE = HERE / "locustfile.py"
SHAPES = HERE / "shapes.py"
STAGES_ENV = "EASEL_LOADTEST_STAGES"  # a scenario's stages, for loadtests/shapes.py


class Stage(BaseModel):
    """One stage of a shaped run: the users reached, linearly, by the stage's end."""

    model_config = ConfigDict(extra="forbid")

    duration_s: int = Field(ge=1, le=1800)
    users: int = Field(ge=0, le=512)


class Scenario(BaseModel):
    """A load scenario file (``loadtests/scenarios/NAME.yaml``): a steady run, or ``stages`` (users rise and fall)."""

    model_config = ConfigDict(extra="forbid")

    users: int = Field(ge=1, le=512, description="Concurrent users (with stages: their peak).")
    spawn_rate: float = Field(gt=0, description="Users started per second (with stages: the fastest stage's).")
    run_time_s: int = Field(ge=1, le=1800, description="Duration; every run is bounded (with stages: their sum).")
    user_classes: list[str] = Field(min_length=1, description="Locust user classes from loadtests/locustfile.py.")
    stages: list[Stage] = Field(default_factory=list, description="Users over time (loadtests/shapes.py).")

    @model_validator(mode="before")
    @classmethod
    def _from_stages(cls, data: dict) -> dict:
        """With stages, the peak users, fastest spawn rate and run time follow from them."""
        if not isinstance(data, dict) or not data.get("stages"):
            return data
        stages = [Stage.model_validate(s) for s in data["stages"]]
        users = [0, *(s.users for s in stages)]
        rates = [abs(b - a) / s.duration_s for a, b, s in zip(users, users[1:], stages, strict=False)]
        derived = {"users": max(users), "spawn_rate": max(1.0, *rates), "run_time_s": sum(s.duration_s for s in stages)}
        if given := sorted(k for k in derived if k in data):
            raise ValueError(f"{', '.join(given)} follow from stages; leave them out")
        return {**data, **derived}

    @classmethod
    def load(cls, name_or_path: str) -> Scenario:
        """Read a scenario by name (from loadtests/scenarios) or by path."""
        path = Path(name_or_path)
        if not path.exists():
            path = SCENARIOS / f"{name_or_path}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in SCENARIOS.glob("*.yaml")))
            raise FileNotFoundError(f"no scenario {name_or_path!r}; known: {known}")
        return cls.model_validate(yaml.safe_load(path.read_text()))


def users_at(stages: list[tuple[int, int]], elapsed_s: float) -> tuple[int, float] | None:
    """Users wanted ``elapsed_s`` into a run of ``(duration_s, users)`` stages, and a spawn rate that keeps up.

    Each stage reaches its users linearly from the previous stage's; None once the stages are over.
    """
    start_s, start_users = 0.0, 0
    for duration_s, users in stages:
        if elapsed_s < start_s + duration_s:
            wanted = start_users + (users - start_users) * (elapsed_s - start_s) / duration_s
            return round(wanted), max(1.0, 2 * abs(users - start_users) / duration_s)
        start_s, start_users = start_s + duration_s, users
    return None


def require_loopback(url: str) -> None:
    """Refuse to send load anywhere but this machine."""
    host = urlparse(url).hostname or ""
    if host != "localhost" and not ip_address(host).is_loopback:
        raise ValueError(f"load tests only target loopback addresses, not {host!r}")


def run_locust(scenario: Scenario, api_url: str, out_dir: Path, env: dict[str, str]) -> int:
    """Run locust headless; CSV and HTML land in ``out_dir``. Returns locust's exit code."""
    require_loopback(api_url)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [LOCUSTFILE]
    history = []
    if scenario.stages:  # users change over the run: keep the percentiles of each moment (a 10 s window)
        files.append(SHAPES)
        env = {**env, STAGES_ENV: json.dumps([[s.duration_s, s.users] for s in scenario.stages])}
        history = ["--csv-full-history"]
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        ",".join(map(str, files)),
        "--headless",
        "--host",
        api_url,
        "--users",
        str(scenario.users),
        "--spawn-rate",
        str(scenario.spawn_rate),
        "--run-time",
        f"{scenario.run_time_s}s",
        "--stop-timeout",
        "60",
        "--only-summary",
        "--csv",
        str(out_dir / "locust"),
        *history,
        "--html",
        str(out_dir / "report.html"),
        *scenario.user_classes,
    ]
    logger.info("running: %s", " ".join(command))
    return subprocess.run(command, env=env, timeout=scenario.run_time_s + 180, check=False).returncode


def summary(out_dir: Path) -> list[dict[str, str]]:
    """Locust's aggregated stats rows (name, requests, failures, percentiles, req/s)."""
    with (out_dir / "locust_stats.csv").open() as handle:
        return list(csv.DictReader(handle))


def format_summary(rows: list[dict[str, str]]) -> str:
    """A short table of the stats rows."""
    columns = [("name", "<28"), ("reqs", ">7"), ("fails", ">7"), ("p50 ms", ">9"), ("p95 ms", ">9"), ("req/s", ">8.2f")]
    cells = [
        (r["Name"][:27], r["Request Count"], r["Failure Count"], r["50%"], r["95%"], float(r["Requests/s"]))
        for r in rows
    ]
    return text_table(columns, cells)


def locust_env(info, images: Path) -> dict[str, str]:
    """The environment the locust users read: the stack's gRPC addresses and the vectorize uploads."""
    return {
        **os.environ,
        "EASEL_GRPC": info.grpc_address,
        "EASEL_TRITON_GRPC": info.triton_grpc_url,
        "EASEL_LOADTEST_IMAGES": str(images),
    }


def run_scenario(scenario: Scenario, images: Path, out: Path) -> tuple[int, str]:
    """Run ``scenario`` against the running stack, or a scratch one started for it; (exit code, summary)."""
    from serve.processes.run_state import running_stack
    from serve.stack import scratch_stack

    def run(info) -> int:
        return run_locust(scenario, info.api_url, out, locust_env(info, images))

    info = running_stack()
    if info is not None:
        code = run(info)
    else:
        logger.info("no stack is up; starting one for this run")
        with scratch_stack() as stack:
            code = run(stack.info)
    return code, format_summary(summary(out))
