"""One model served end to end at growing sizes: stack start, one request per size, Triton's compute per engine.

For full-size models (``easel random-model``), where one request takes minutes: the sizes run in ascending order and
the first one that fails ends the run, so its error names where the machine stops coping. Memory is sampled over the
whole process tree (its own pages, ``RssAnon``, and mapped file pages, ``RssFile``) every second.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from serve.tables import text_table

logger = logging.getLogger(__name__)

PROMPT = "a lighthouse on a cliff at dusk, flat vector illustration"


@dataclass
class SizeRun:
    """One request at one size."""

    size: int
    steps: int = 1  # denoising steps asked
    status: int | None = None
    end_to_end_s: float = 0.0
    error: str = ""
    peak_own_gb: float = 0.0
    engines: dict[str, dict[str, float]] = field(default_factory=dict)
    engine_peak_gib: dict[str, float] = field(default_factory=dict)  # each stub's peak RSS so far (VmHWM)
    ready_after: int | None = None  # /readyz's status right after the request (200: the stack stayed ready)


class TreeMemory:
    """Samples the summed own (anonymous) resident memory of this process and its descendants in a thread."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.peak_gb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> None:
        """Start a new peak at the current value."""
        self.peak_gb = 0.0
        self.sample()

    def sample(self) -> float:
        """The tree's own memory now, in GB (also kept in the peak)."""
        root = psutil.Process()
        own = 0
        try:
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            processes = [root]
        for process in processes:
            try:
                own += _rss_anon(process.pid)
            except (OSError, StopIteration):  # gone, or a zombie (no RssAnon line)
                continue
        self.peak_gb = max(self.peak_gb, own / 1e9)
        return own / 1e9

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()


def _rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))


def _ready(api_url: str) -> int | None:
    """``/readyz``'s status (None: no answer)."""
    try:
        return httpx.get(f"{api_url}/readyz", timeout=30).status_code
    except httpx.HTTPError:
        return None


def _engine_stats(triton_http_url: str) -> dict[str, tuple[int, float]]:
    stats = httpx.get(f"{triton_http_url}/v2/models/stats", timeout=30).json()["model_stats"]
    return {s["name"]: (int(s["execution_count"]), s["inference_stats"]["compute_infer"]["ns"] / 1e9) for s in stats}


def _engine_peaks(stack_id: str) -> dict[str, float]:
    """Each python-backend stub's peak resident memory since it started (VmHWM), GiB, by model name."""
    from serve.processes.signals import stack_processes

    peaks = {}
    for process in stack_processes(stack_id):
        try:
            model = next((a.split("/")[-3] for a in process.cmdline() if a.endswith("/1/model.py")), None)
            if model is None:
                continue
            with open(f"/proc/{process.pid}/status") as status:
                hwm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
        except (OSError, StopIteration, psutil.Error):
            continue
        peaks[model] = round(max(peaks.get(model, 0.0), hwm / 2**30), 2)
    return peaks


def run_sizes(
    info, sizes: list[int], steps: int, guidance: float, memory: TreeMemory, images: Path | None = None, n: int = 1
) -> list[SizeRun]:
    """One request per size against the stack ``info`` until one fails; Triton's compute per engine for each."""
    runs = []
    for size in sorted(sizes):
        before = _engine_stats(info.triton_http_url)
        body = {
            "prompt": PROMPT,
            "n": n,
            "size": f"{size}x{size}",
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "seed": 1,
            "scheduler": "euler",
        }
        logger.info("request %dx%d, %d steps", size, size, steps)
        run = SizeRun(size, steps)
        memory.reset()
        started = time.perf_counter()
        try:
            response = httpx.post(f"{info.api_url}/v1/images/generations", json=body, timeout=3600)
            run.status = response.status_code
            if response.status_code != 200:
                run.error = response.text[:500]
            elif images is not None:
                images.mkdir(parents=True, exist_ok=True)
                image = base64.b64decode(response.json()["data"][0]["b64_json"])
                (images / f"{size}.png").write_bytes(image)
        except httpx.HTTPError as error:
            run.error = repr(error)[:500]
        run.end_to_end_s = round(time.perf_counter() - started, 1)
        run.ready_after = _ready(info.api_url)
        memory.sample()
        run.peak_own_gb = round(memory.peak_gb, 2)
        run.engine_peak_gib = _engine_peaks(info.stack_id)
        try:
            after = _engine_stats(info.triton_http_url)
            run.engines = {
                name: {
                    "executions": after[name][0] - before[name][0],
                    "compute_s": round(after[name][1] - before[name][1], 2),
                }
                for name in after
                if after[name][0] > before[name][0]
            }
        except httpx.HTTPError as error:
            run.error += f" (Triton stats: {error!r})"[:300]
        logger.info("%s", run)
        runs.append(run)
        if run.status != 200:
            break
    return runs


def format_runs(runs: list[SizeRun], denoiser: str = "unet") -> str:
    """A table of the runs: size, status, end-to-end s, s per step, VAE s, peak own memory, ``/readyz`` after.

    The seconds per step are the ``denoiser``'s compute over the steps asked.
    """
    columns = [("size", ">6"), ("status", ">8"), ("e2e s", ">9.1f"), ("s/step", ">13.2f"), ("VAE s", ">8.1f")]
    columns += [("peak own GB", ">13.2f"), ("readyz", ">8"), ("  engine peak RSS GiB  error", "")]
    cells = []
    for run in runs:
        # per step asked, not per execution: Triton's counts include the canaries sent while a long request ran
        per_step = run.engines[denoiser]["compute_s"] / run.steps if denoiser in run.engines else float("nan")
        vae = run.engines.get("vae_decoder", {}).get("compute_s", float("nan"))
        engines = " ".join(f"{k}={v:.2f}" for k, v in sorted(run.engine_peak_gib.items()) if not k.startswith("vec"))
        cells.append(
            (
                run.size,
                run.status or "-",
                run.end_to_end_s,
                per_step,
                vae,
                run.peak_own_gb,
                run.ready_after or "-",
                f"  {engines}  {run.error[:80]}",
            )
        )
    return text_table(columns, cells)


def run_benchmark(
    model_dir: Path, sizes: list[int], steps: int, guidance: float, out: Path, n: int = 1, **options
) -> str:
    """``easel bench model``: a scratch stack over ``model_dir``, one request per size; JSON to ``out``, report back.

    The report and the JSON name each engine's runtime and precision (what ``--runtime``/``--precision`` chose).

    ``options``: more ``StackOptions`` (e.g. ``memory_budget_bytes``).
    """
    from dataclasses import asdict

    from loadtests.benchmarks import loop
    from serve.stack import scratch_stack

    with TreeMemory() as memory:
        started = time.perf_counter()
        with scratch_stack(model_dir, **options) as stack:
            start_s, start_peak_gb = time.perf_counter() - started, memory.peak_gb
            runs = run_sizes(stack.info, sizes, steps, guidance, memory, out.parent, n=n)
            denoiser = stack.engines.family.denoiser
            chosen = {name: f"{c.runtime.value} {c.precision}" for name, c in stack.engines.runtimes().items()}
            runtimes = stack.engines.runtimes_table()
    loop.write_json(
        out,
        [],
        model=str(model_dir),
        n=n,
        steps=steps,
        guidance=guidance,
        options=options,
        engines=chosen,
        stack_start_s=round(start_s, 1),
        stack_start_peak_own_gb=round(start_peak_gb, 2),
        runs=[asdict(run) for run in runs],
    )
    head = f"stack start (cache check or build, Triton, Ray): {start_s:.0f} s, peak {start_peak_gb:.2f} GB own"
    return "\n".join([head, runtimes, format_runs(runs, denoiser), f"written to {out}"])
