"""``easel up --detach``: a stack started in its own session and followed until ready; the first requests sent."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from serve.paths import run_dir
from serve.processes import STACK_ENV
from serve.processes.run_state import (
    BUILDING,
    READY,
    STARTING,
    StackInfo,
    new_stack_id,
    read_state,
    state_path,
    write_state,
)
from serve.processes.tls import client_verify
from serve.stack.ray_serve import wait_until_ready

logger = logging.getLogger(__name__)

FIRST_REQUEST = {
    "prompt": "a red heart icon",
    "size": "64x64",
    "num_inference_steps": 20,
    "seed": 0,
    "scheduler": "ddim",
}


class StillStarting(Exception):
    """``easel up --detach`` waited its time and the stack is still starting; it goes on in the background."""


def start_detached(
    argv: list[str],
    folder: Path | None = None,
    timeout_s: float = 600.0,
    progress: Callable[[str], None] = logger.info,
) -> StackInfo:
    """Run ``easel ARGV`` (an ``up`` command line) in a new session, logging to a file; return its state once ready.

    ``progress`` is told each phase, and while it builds each new line of the build's log. Past ``timeout_s`` it
    raises :class:`StillStarting` saying where the start goes on; a start that failed raises ``RuntimeError``.
    """
    folder = folder or run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    state_path(folder).unlink(missing_ok=True)
    log_path = folder / "easel-up.log"
    logged_from = log_path.stat().st_size if log_path.exists() else 0
    stack_id = new_stack_id()
    with log_path.open("ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "serve.cli", *argv, "--no-first-request", "--stack-id", stack_id],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != STACK_ENV},  # it marks its own processes
        )
    with contextlib.suppress(psutil.NoSuchProcess):  # recorded now, so `easel down` finds it however early
        write_state(StackInfo(child.pid, psutil.Process(child.pid).create_time(), stack_id, STARTING), folder)
    progress(f"starting in the background (pid {child.pid}, log {log_path})")
    deadline, said = time.monotonic() + timeout_s, None
    while (info := read_state(folder)) is None or info.pid != child.pid or info.phase != READY:
        if child.poll() is not None:
            raise RuntimeError(f"`easel up` exited with {child.returncode}: {_why_it_exited(log_path, logged_from)}")
        phase = info.phase if info is not None and info.pid == child.pid else STARTING
        if time.monotonic() > deadline:
            raise StillStarting(
                f"still {phase} after {timeout_s:.0f} s; it goes on in the background (pid {child.pid}): "
                f"follow {log_path}; `easel down` stops it"
            )
        now = f"{phase}: {_last_build_line(log_path, logged_from)}" if phase == BUILDING else phase
        if now != said:
            progress(now)
            said = now
        time.sleep(1)
    wait_until_ready(info.api_url, timeout_s=60, verify=client_verify(info.tls_cert))
    return info


def _why_it_exited(log_path: Path, start: int) -> str:
    """The one-line error ``easel up`` printed to ``log_path`` since byte ``start``; else the log's last 30 lines."""
    with log_path.open("rb") as log:
        log.seek(start)
        lines = log.read().decode(errors="replace").splitlines()
    said = [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]
    return said[-1] if said else "\n" + "\n".join(lines[-30:])


def _last_build_line(log_path: Path, start: int) -> str:
    """The message of the last line the build logged in ``log_path`` since byte ``start`` (its progress)."""
    with log_path.open("rb") as log:
        log.seek(start)
        lines = [line for line in log.read().decode(errors="replace").splitlines() if " build_engines." in line]
    return lines[-1].split(": ", 1)[-1][:120] if lines else "starting"


@dataclass(frozen=True)
class FirstRequest:
    """The example generation ``easel up`` sends once ready."""

    body: dict
    status: int
    seconds: float
    image_path: Path | None
    error: str | None = None
    ssim: float | None = None  # svg: the SVG rendered back against the PNG it came from


def send_first_requests(api_url: str, folder: Path | None = None, tls_cert: str | None = None) -> list[FirstRequest]:
    """Send :data:`FIRST_REQUEST` as PNG, then as SVG (text -> image -> Vectorizer); save both under the run folder.

    Stops at the first answer that is not a 200. With API keys on, it sends ``$EASEL_API_KEY``; over HTTPS it trusts
    ``tls_cert``, the stack's own certificate.
    """
    from serve.access.keys import client_headers

    answers, verify = [], client_verify(tls_cert)
    for output_format in ("png", "svg"):
        body = FIRST_REQUEST | {"output_format": output_format}
        started = time.perf_counter()
        response = httpx.post(
            f"{api_url}/v1/images/generations", json=body, headers=client_headers(), timeout=300, verify=verify
        )
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            answers.append(FirstRequest(body, response.status_code, elapsed, None, response.text[:500]))
            break
        item = response.json()["data"][0]
        path = (folder or run_dir()) / f"first.{output_format}"
        path.write_bytes(base64.b64decode(item["b64_json"]))
        answers.append(FirstRequest(body, response.status_code, elapsed, path, ssim=item.get("ssim")))
    return answers
