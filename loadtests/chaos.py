"""``easel chaos``: a bounded load on a stack while faults are injected in turn; what each fault costs.

Faults: SIGKILL of ``tritonserver``, of the UNet's python-backend stub, of a ``TextToImage`` replica, of a
``Gateway`` replica, and the largest requests the documented limits allow. For each: the requests sent while it
played out, by status; requests that hung (no answer within ``hang_s``: must be 0); seconds until ``/readyz`` was
200 again and a generation succeeded; the stack's peak memory (all its processes); processes left behind (orphans
of the stack whose parent died, or zombies: must be 0). At the end, processes left after the stack stopped.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from serve.processes.signals import stack_processes, stack_replicas
from serve.stack import Stack, largest_admitted_side

logger = logging.getLogger(__name__)

FAULTS = (
    "SIGKILL tritonserver",
    "SIGKILL UNet stub",
    "SIGKILL TextToImage replica",
    "SIGKILL Gateway replica",
    "largest allowed requests",
)
SMALL = {"prompt": "a red fox, flat icon", "size": "64x64", "num_inference_steps": 4}
LARGEST = {
    "prompt": "a red fox, flat icon",
    "n": 4,
    "num_inference_steps": 2,
    "seed": 1,
}  # at the largest size admitted


@dataclass
class FaultReport:
    """What one fault cost."""

    fault: str
    requests: dict[str, int] = field(default_factory=dict)
    hung: int = 0
    ready_again_s: float | None = None
    peak_memory_gib: float = 0.0
    left_behind: int = 0
    detail: str = ""  # what the injection itself saw (the largest requests' sizes and answers)


class Clients:
    """``clients`` threads, each running :meth:`_run` with its index until the block ends (a load's clients)."""

    def __init__(self, clients: int, hang_s: float) -> None:
        self.hang_s = hang_s  # the clients' timeout: a request without an answer by then hung
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.hang_s + 30)

    def _run(self, index: int) -> None:
        raise NotImplementedError


class _Load(Clients):
    """``clients`` threads sending small generations and vectorize uploads until stopped; answers are tallied."""

    def __init__(self, api_url: str, clients: int, hang_s: float, icon: bytes) -> None:
        super().__init__(clients, hang_s)
        self.api_url, self.icon = api_url, icon
        self.statuses: Counter[str] = Counter()

    def take(self) -> Counter[str]:
        """The tally since the last call."""
        with self._lock:
            taken, self.statuses = self.statuses, Counter()
        return taken

    def _run(self, index: int) -> None:
        with httpx.Client(base_url=self.api_url, timeout=self.hang_s) as client:
            sent = 0
            while not self._stop.is_set():
                sent += 1
                try:
                    if (index + sent) % 3:
                        response = client.post("/v1/images/generations", json={**SMALL, "seed": sent})
                    else:
                        response = client.post("/v1/vectorize", files={"file": ("icon.png", self.icon, "image/png")})
                    key = str(response.status_code)
                    if response.status_code >= 500 and not _json_error(response):
                        key += " (not JSON)"
                except httpx.TimeoutException:
                    key = "hung"
                except httpx.TransportError as error:
                    key = f"connection error ({type(error).__name__})"
                with self._lock:
                    self.statuses[key] += 1


def _json_error(response: httpx.Response) -> bool:
    try:
        return "error" in response.json()
    except ValueError:
        return False


def _memory_gib(stack_id: str) -> float:
    total = 0
    for process in stack_processes(stack_id):
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return (total + psutil.Process().memory_info().rss) / 2**30


def left_behind(stack_id: str) -> list[psutil.Process]:
    """Processes of the stack that lost their parent (reparented to init) or are zombies nobody reaps."""
    found = []
    for process in stack_processes(stack_id):
        try:
            if process.ppid() == 1 or process.status() == psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


class Chaos:
    """Runs the faults against a started :class:`Stack` under a bounded load."""

    def __init__(
        self,
        stack: Stack,
        clients: int = 4,
        window_s: float = 20.0,
        hang_s: float = 120.0,
        faults: tuple[str, ...] = FAULTS,
    ) -> None:
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
        self.stack, self.clients, self.window_s, self.hang_s = stack, clients, window_s, hang_s
        self.chosen = faults
        self.api = httpx.Client(base_url=stack.info.api_url, timeout=hang_s)

    def faults(self) -> dict[str, Callable[[], str | None]]:
        """Each chosen fault (of :data:`FAULTS`, in its order), by name: a function that injects it."""
        injections = (
            lambda: os.kill(self.stack.triton.process.pid, signal.SIGKILL),
            self._kill_unet_stub,
            lambda: stack_replicas(self.stack.stack_id, "TextToImage")[0].kill(),
            lambda: stack_replicas(self.stack.stack_id, "Gateway")[0].kill(),
            self._largest_requests,
        )
        return {name: inject for name, inject in zip(FAULTS, injections, strict=True) if name in self.chosen}

    def run(self, icon: bytes) -> list[FaultReport]:
        """Every fault in turn, each followed by recovery; the stack must be ready when called."""
        reports = []
        with _Load(self.stack.info.api_url, self.clients, self.hang_s, icon) as load:
            time.sleep(self.window_s / 4)
            load.take()  # warm-up answers are not any fault's
            for name, inject in self.faults().items():
                logger.info("fault: %s", name)
                reports.append(self._play(name, inject, load))
        return reports

    def _play(self, name: str, inject: Callable[[], None], load: _Load) -> FaultReport:
        report = FaultReport(name)
        peak = [0.0]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.25):
                peak[0] = max(peak[0], _memory_gib(self.stack.stack_id))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        worker = threading.Thread(target=lambda: setattr(report, "detail", inject() or ""), daemon=True)
        worker.start()
        time.sleep(0.5)
        report.ready_again_s = self._ready_again(started)
        worker.join()  # the kills return at once; the largest requests within their client timeout
        time.sleep(max(0.0, self.window_s - (time.monotonic() - started)))
        sampling.set()
        sampler.join()
        statuses = load.take()
        report.hung = statuses.pop("hung", 0)
        report.requests = dict(sorted(statuses.items()))
        report.peak_memory_gib = round(peak[0], 2)
        report.left_behind = len(left_behind(self.stack.stack_id))
        return report

    def _ready_again(self, started: float) -> float | None:
        """Seconds from the fault until /readyz is 200 and a generation succeeds (None: not within the hang time)."""
        while time.monotonic() - started < self.hang_s:
            try:
                ready = self.api.get("/readyz", timeout=5).status_code == 200
                if ready and self.api.post("/v1/images/generations", json=SMALL).status_code == 200:
                    return round(time.monotonic() - started, 1)
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        return None

    def _kill_unet_stub(self) -> None:
        for process in psutil.Process(self.stack.triton.process.pid).children():
            if any("/unet/1/model.py" in part for part in process.cmdline()):
                process.kill()
                return
        raise RuntimeError("no UNet stub found")

    def _largest_requests(self) -> str:
        import io

        import numpy as np
        from PIL import Image

        from serve.images.raster import MAX_PIXELS

        side = int(MAX_PIXELS**0.5)
        noise = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format="PNG")
        admitted = largest_admitted_side(self.stack.engines, self.stack.memory_budget_bytes)
        largest = {**LARGEST, "size": f"{admitted}x{admitted}"}
        with httpx.Client(base_url=self.stack.info.api_url, timeout=self.hang_s * 4) as client:
            started = time.monotonic()
            answers = [client.post("/v1/images/generations", json=largest).status_code]
            generated_s = time.monotonic() - started
            answers.append(client.post("/v1/vectorize", files={"file": ("big.png", buffer.getvalue())}).status_code)
        detail = (
            f"{admitted}x{admitted} n=4 x 2 steps: {answers[0]} in {generated_s:.0f} s; "
            f"{side}x{side} noise to vectorize: {answers[1]}"
        )
        logger.info("largest requests: %s", detail)
        if any(code >= 500 for code in answers):
            raise RuntimeError(f"the largest allowed requests were answered {answers}")
        return detail


def format_reports(reports: list[FaultReport], leftover_after_stop: int) -> str:
    """A plain-text table of the reports."""
    head = f"{'fault':<30}{'requests by status':<44}{'hung':>5}{'ready again s':>15}{'peak GiB':>10}{'left':>6}"
    rows = [
        f"{r.fault:<30}{', '.join(f'{k}: {v}' for k, v in r.requests.items()):<44}{r.hung:>5}"
        f"{'-' if r.ready_again_s is None else f'{r.ready_again_s:.1f}':>15}{r.peak_memory_gib:>10.2f}"
        f"{r.left_behind:>6}"
        for r in reports
    ]
    details = [f"{r.fault}: {r.detail}" for r in reports if r.detail]
    return "\n".join([head, *rows, *details, f"processes left after the stack stopped: {leftover_after_stop}"])


def write_json(path: Path, reports: list[FaultReport], leftover_after_stop: int, **context) -> None:
    """The reports as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"faults": [asdict(r) for r in reports], "left_after_stop": leftover_after_stop, **context}
    path.write_text(json.dumps(body, indent=2))


def sample_icon() -> bytes:
    """A small flat icon to vectorize (drawn here: a clone has no data set)."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (256, 256), "white")
    ImageDraw.Draw(image).ellipse((48, 48, 208, 208), fill=(220, 40, 40), outline=(20, 20, 20), width=8)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run(out: Path, clients: int = 4, window_s: float = 20.0, **options) -> str:
    """``easel chaos``: a scratch stack, every fault under load, the stack stopped; JSON to ``out``, the table back."""
    from serve.stack import scratch_stack

    with scratch_stack(**options) as stack:
        reports = Chaos(stack, clients=clients, window_s=window_s).run(sample_icon())
    leftover = len(stack_processes(stack.stack_id))
    write_json(out, reports, leftover, clients=clients, window_s=window_s, cpus=os.cpu_count())
    return format_reports(reports, leftover) + f"\nwritten to {out}"
