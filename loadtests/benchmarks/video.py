"""``easel bench video``: a video's seconds per frame-step, served against diffusers' pipelines, and memory.

For each model (``tiny``: the embedded default; ``sd15``: SD 1.5's architecture with random weights, as ``easel
random-model sd15`` makes it) a random ``MotionAdapter`` of its UNet's shape is made
(:func:`build_engines.text_to_image.motion.random_motion_adapter`). One video of ``frames`` frames at the model's
native size, ``steps`` steps (guidance 7.5: two rows of every frame per step), seed 0, is made once to warm up and
then ``repeats`` times by each path, the median kept:

- served: ``POST /v1/videos`` on a scratch stack (Triton + Ray Serve), timed from submission to ``completed``
  (polled every 20 ms); peak memory: the stack's processes' resident memory summed, sampled every 0.1 s;
- diffusers: ``AnimateDiffPipeline`` in this process (PyTorch, the same weights); peak memory: this process's peak
  resident memory while it runs.

Seconds per frame-step: the time over frames x steps (it includes the text encoder and the VAE's decode of every
frame, as a user waits for them).

An image-to-video model (``svd``: the tiny Stable Video Diffusion, :mod:`build_engines.text_to_image.tiny_svd`)
animates a random still at its default size (guidance growing to 3.0 over the frames), against diffusers'
``StableVideoDiffusionPipeline`` the same way.

With ``interpolate`` (a factor), frame interpolation too (RIFE v4.25's layout, random weights:
:func:`build_engines.finishing.ifnet.random_flownet`): the same video with ``interpolate`` through the stack, the
new frames' cost the difference from the plain video's median; and the IFNet module in this process over the same
number of new frames at the video's size, padded as the engine's are.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psutil
import torch

from loadtests.benchmarks import loop
from serve.tables import text_table
from serve.triton.memory import peak_rss_reset, rss_bytes

logger = logging.getLogger(__name__)

POLL_S = 0.02
PROMPT = "a red fox running"


@dataclass(frozen=True)
class InterpolationRow:
    """One model and path of frame interpolation: the new frames of a video and the milliseconds each took."""

    model: str
    path: str
    size: int
    factor: int
    new_frames: int
    ms_per_new_frame: float


@dataclass(frozen=True)
class VideoRow:
    """One model and path: median seconds per video and per frame-step, peak memory."""

    model: str
    path: str
    size: int
    frames: int
    steps: int
    seconds: float
    seconds_per_frame_step: float
    peak_gib: float


class PeakMemory:
    """The resident memory of a process and its descendants, summed, at its peak (sampled every 0.1 s)."""

    def __init__(self, root: psutil.Process) -> None:
        self.root, self.peak = root, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            total = 0
            for process in [self.root, *self.root.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:  # ended meanwhile
                    continue
            self.peak = max(self.peak, total)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _served_once(api: httpx.Client, body: dict, timeout_s: float = 3600) -> float:
    """Seconds from ``POST /v1/videos`` to ``completed``."""
    started = time.perf_counter()
    video = api.post("/v1/videos", json=body)
    video.raise_for_status()
    deadline = time.monotonic() + timeout_s
    while (state := api.get(f"/v1/videos/{video.json()['id']}").json())["status"] in ("queued", "in_progress"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"video {state['id']} still {state['status']} after {timeout_s:.0f} s")
        time.sleep(POLL_S)
    if state["status"] != "completed":
        raise RuntimeError(f"video {state['id']} {state['status']}: {state.get('error')}")
    return time.perf_counter() - started


def animates_images(model_dir: Path) -> bool:
    """Whether ``model_dir`` is an image-to-video model (SVD), not one a motion adapter animates."""
    from serve.text_to_image.families import family_of_folder

    return family_of_folder(model_dir).animates_images


def _still_body(size: tuple[int, int]) -> dict:
    """An image-to-video request's still: random pixels at ``size`` (width, height), base64 PNG."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    return {"input_reference": base64.b64encode(buffer.getvalue()).decode(), "size": f"{size[0]}x{size[1]}"}


def served(
    model_dir: Path,
    adapter: Path | None,
    name: str,
    frames: int,
    steps: int,
    repeats: int,
    rife: tuple[Path, int] | None,
) -> tuple[VideoRow, InterpolationRow | None]:
    """The video through a scratch stack serving ``model_dir`` with ``adapter`` (None: SVD's still), and its row.

    With ``rife`` (a flownet file and a factor): also the same video interpolated, its new frames' cost.
    """
    from serve.stack import scratch_stack

    interpolators = {"rife": rife[0]} if rife else {}
    motion = {"bench": adapter} if adapter is not None else {}
    with scratch_stack(model_dir, motion_adapters=motion, interpolators=interpolators) as stack:
        family = stack.engines.family
        size = family.dims.native_size
        body = {"prompt": PROMPT, "frames": frames, "steps": steps, "seed": 0, "size": f"{size}x{size}"}
        if adapter is None:  # SVD: its still at its default size
            body |= _still_body(tuple(int(side) for side in family.default_size.split("x")))
            size = int(body["size"].split("x")[0])
        with httpx.Client(base_url=stack.info.api_url, timeout=600) as api:
            _served_once(api, body)  # warm-up: engines loaded, sessions opened
            with PeakMemory(psutil.Process()) as memory:
                times = [_served_once(api, body) for _ in range(repeats)]
            row, interpolated = _row(name, "served (Triton + Ray)", size, frames, steps, times, memory.peak), None
            if rife:
                asked = body | {"interpolate": {"factor": rife[1]}}
                _served_once(api, asked)
                more = statistics.median(_served_once(api, asked) for _ in range(repeats)) - row.seconds
                new = (frames - 1) * (rife[1] - 1)
                interpolated = InterpolationRow(name, "served (Triton + Ray)", size, rife[1], new, 1000 * more / new)
    return row, interpolated


def rife_in_process(flownet: Path, name: str, size: int, frames: int, factor: int, repeats: int) -> InterpolationRow:
    """IFNet in this process (PyTorch): the new frames of a ``frames``-frame video at ``size``, padded as served."""
    from build_engines.finishing.ifnet import read_flownet
    from serve.finishing.interpolators import padded_side, timesteps

    net, side = read_flownet(flownet), padded_side(size)
    first, second = torch.rand(1, 3, side, side), torch.rand(1, 3, side, side)
    moments = timesteps(factor)

    def once() -> float:
        started = time.perf_counter()
        with torch.no_grad():
            for _ in range(frames - 1):
                net(
                    first.expand(len(moments), -1, -1, -1),
                    second.expand(len(moments), -1, -1, -1),
                    torch.tensor(moments).view(-1, 1),
                )
        return time.perf_counter() - started

    once()
    new = (frames - 1) * (factor - 1)
    seconds = statistics.median(once() for _ in range(repeats))
    return InterpolationRow(name, "IFNet in-process", size, factor, new, 1000 * seconds / new)


def svd_in_process(model_dir: Path, name: str, frames: int, steps: int, repeats: int) -> VideoRow:
    """The same video by diffusers' ``StableVideoDiffusionPipeline`` in this process, from the same still."""
    import base64
    import io

    from diffusers import StableVideoDiffusionPipeline
    from PIL import Image

    from serve.text_to_image.families import family_of_folder

    width, height = (int(side) for side in family_of_folder(model_dir).default_size.split("x"))
    still = Image.open(io.BytesIO(base64.b64decode(_still_body((width, height))["input_reference"])))
    pipeline = StableVideoDiffusionPipeline.from_pretrained(model_dir)
    pipeline.set_progress_bar_config(disable=True)

    call = {"image": still, "height": height, "width": width, "num_frames": frames, "num_inference_steps": steps}
    return _diffusers_row(pipeline, call, name, width, repeats)


def in_process(model_dir: Path, adapter: Path, name: str, frames: int, steps: int, repeats: int) -> VideoRow:
    """The same video by diffusers' ``AnimateDiffPipeline`` in this process."""
    from diffusers import AnimateDiffPipeline, MotionAdapter, StableDiffusionPipeline

    pipeline = AnimateDiffPipeline.from_pipe(
        StableDiffusionPipeline.from_pretrained(model_dir), motion_adapter=MotionAdapter.from_pretrained(adapter)
    )
    pipeline.set_progress_bar_config(disable=True)
    size = pipeline.unet.config.sample_size * pipeline.vae_scale_factor

    call = {"prompt": PROMPT, "num_frames": frames, "height": size, "width": size, "num_inference_steps": steps}
    return _diffusers_row(pipeline, call, name, size, repeats)


def _diffusers_row(pipeline, call: dict, name: str, size: int, repeats: int) -> VideoRow:
    """``pipeline(**call)`` from seed 0, once to warm up then ``repeats`` times: its row, peak resident memory."""

    def once() -> float:
        started = time.perf_counter()
        pipeline(**call, generator=torch.Generator().manual_seed(0))
        return time.perf_counter() - started

    once()
    peak_rss_reset()
    times = [once() for _ in range(repeats)]
    frames, steps = call["num_frames"], call["num_inference_steps"]
    return _row(name, "diffusers in-process", size, frames, steps, times, rss_bytes(peak=True))


def _row(name: str, path: str, size: int, frames: int, steps: int, times: list[float], peak: int) -> VideoRow:
    seconds = statistics.median(times)
    row = VideoRow(name, path, size, frames, steps, seconds, seconds / (frames * steps), peak / 2**30)
    logger.info("%s", row)
    return row


def run(
    models: dict[str, Path], folder: Path, frames: int, steps: int, repeats: int, out: Path, interpolate: int = 0
) -> str:
    """Both paths for each of ``models`` (name -> diffusers folder); JSON to ``out``, the tables back.

    ``interpolate``: frame interpolation's rows at that factor too (0: none).
    """
    from build_engines.finishing.ifnet import random_flownet
    from build_engines.text_to_image.motion import random_motion_adapter

    rife = (random_flownet(folder / "rife" / "flownet.pkl"), interpolate) if interpolate else None
    rows, interpolations = [], []
    for name, model_dir in models.items():
        if animates_images(model_dir):  # SVD: no motion adapter, its own pipeline
            row, interpolated = served(model_dir, None, name, frames, steps, repeats, rife)
            rows += [row, svd_in_process(model_dir, name, frames, steps, repeats)]
        else:
            adapter = folder / f"motion_{name}"
            if not (adapter / "config.json").is_file():
                random_motion_adapter(model_dir, adapter)
            row, interpolated = served(model_dir, adapter, name, frames, steps, repeats, rife)
            rows += [row, in_process(model_dir, adapter, name, frames, steps, repeats)]
        if rife:
            interpolations += [interpolated, rife_in_process(rife[0], name, row.size, frames, interpolate, repeats)]
    videos, interpolation = [asdict(row) for row in rows], [asdict(row) for row in interpolations]
    loop.write_json(out, [], frames=frames, steps=steps, repeats=repeats, videos=videos, interpolation=interpolation)
    columns = [("model", "<6"), ("path", "<22"), ("size", ">5"), ("s / video", ">10.2f")]
    columns += [("s / frame-step", ">15.3f"), ("peak GiB", ">9.2f")]
    cells = [(r.model, r.path, r.size, r.seconds, r.seconds_per_frame_step, r.peak_gib) for r in rows]
    heading = (
        f"Videos (AnimateDiff with random motion adapters, guidance 7.5; SVD to 3.0): {frames} frames, {steps} steps"
    )
    tables = [heading, text_table(columns, cells)]
    if interpolations:
        columns = [("model", "<6"), ("path", "<22"), ("size", ">5"), ("factor", ">7"), ("new frames", ">11")]
        columns += [("ms / new frame", ">15.1f")]
        cells = [(r.model, r.path, r.size, r.factor, r.new_frames, r.ms_per_new_frame) for r in interpolations]
        tables += [
            f"Frame interpolation (RIFE v4.25 layout, random weights): x{interpolate}",
            text_table(columns, cells),
        ]
    return "\n".join([*tables, f"written to {out}"])
