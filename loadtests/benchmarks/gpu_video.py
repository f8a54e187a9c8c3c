"""The video stages of ``easel bench gpu`` (model ``svd``; ``tiny-svd`` on a CPU): image-to-video and RIFE on a GPU.

1. Engines: Stable Video Diffusion's architecture (the published img2vid configs, random weights: 14 frames at
   1024x576) built for the torch runtime (a video's UNet runs eager: a whole video per row), and a RIFE v4.25
   ``flownet.pkl`` of random weights exported to its frame engine, as ``easel up --interpolator`` builds it.
2. In process: diffusers' ``StableVideoDiffusionPipeline`` (fp16 on a GPU) animating a random still, one video at a
   time; the IFNet module (fp32, on the device) drawing :data:`FACTOR` - 1 frames between each two of that video.
3. Through Triton: the replica's SVD loop (:mod:`serve.text_to_image.image_to_video`) calling Triton's engines at
   every step, as ``easel up --device cuda`` serves a video, one at a time and two at once (their UNet calls merged
   in Triton's batcher); its frames' PSNR against diffusers' (both fp16, same weights, still and seed); the
   interpolator engine over the same frames (ONNX Runtime, which runs it on the CPU: what a GPU stack serves today).

A row's p50 is per video (or per interpolated clip); ``video`` entries give it per frame-step (SVD) or per new frame
(RIFE). The engine models read their tensors with ``as_numpy``: without the pack's NumPy for Triton's stubs
(``--stub-numpy``) the Triton rows are skipped, as the replica's loop row of the image models is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtests.benchmarks.gpu_engines import free, psnr
from loadtests.benchmarks.gpu_rows import LIVE_SERVERS, ModelRun, first_on_path, stage
from serve.text_to_image.engine_folder import EngineFolder

logger = logging.getLogger(__name__)

FACTOR = 4
"""RIFE's factor: 3 new frames between each two."""
IN_PROCESS_SHARE = 0.45
"""Of a video model's time left once built: the in-process rows (diffusers, IFNet); Triton's rows take the rest."""
SVD_DIFFUSERS = "SVD, diffusers"
SVD_SERVED = "SVD, easel, replica's loop, Triton per step"
RIFE_MODULE = f"RIFE x{FACTOR}, IFNet module fp32"
RIFE_SERVED = f"RIFE x{FACTOR}, easel, interpolator engine (ONNX Runtime) through Triton"
GUIDANCE = 3.0  # SVD's default (diffusers' max_guidance_scale), growing from 1.0 over the frames


@dataclass(frozen=True)
class Clip:
    """The video every row draws: the model's default size and frames, its steps, one random still."""

    width: int
    height: int
    frames: int
    steps: int
    still: np.ndarray

    @classmethod
    def of(cls, folder: EngineFolder, steps: int) -> Clip:
        """The clip of ``folder``'s model at ``steps`` steps."""
        width, height = (int(side) for side in folder.family.default_size.split("x"))
        still = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        return cls(width, height, folder.family.default_frames, steps, still)

    def generation(self, seed: int):
        """The replica's job for this clip from ``seed`` (SVD's default conditioning at 7 fps)."""
        from serve.protocol.video import SVD_CONDITIONING
        from serve.text_to_image.generation import Generation, ImageInputs, Motion, SamplingParams, VideoConditioning

        sampling = SamplingParams("", "", 1, self.width, self.height, self.steps, GUIDANCE, seed, "euler")
        motion = Motion("", self.frames, VideoConditioning(fps=7, **SVD_CONDITIONING))
        return Generation(sampling=sampling, inputs=ImageInputs(images=(self.still,)), motion=motion)

    def entry(self, run: ModelRun, row: dict | None, method: str) -> None:
        """Report ``row``'s video's p50 per frame-step."""
        if row is not None:
            per = row["p50_ms"] / (self.frames * self.steps)
            size = f"{self.width}x{self.height}"
            entry = {"model": run.model.name, "method": method, "frames": self.frames, "steps": self.steps}
            run.report.add("video", entry | {"size": size, "ms_per_frame_step": per, "concurrency": row["concurrency"]})


def video_stages(run: ModelRun, folder: EngineFolder, repository: Path, work: Path, log_triton) -> None:
    """The video model's stages within ``run.deadline``: in process, then through Triton."""
    from build_engines.finishing.ifnet import random_flownet

    clip = Clip.of(folder, run.settings.steps)
    flownet = random_flownet(work / "rife" / "flownet.pkl")
    whole = run.deadline
    run.deadline = whole.within(whole.left_s() * IN_PROCESS_SHARE)
    reference = stage(run, "in process", lambda: asyncio.run(in_process_rows(run, clip, flownet))) or []
    run.deadline = whole
    served = lambda: asyncio.run(served_rows(run, folder, clip, flownet, repository, work, reference, log_triton))  # noqa: E731
    stage(run, "Triton", served)


async def in_process_rows(run: ModelRun, clip: Clip, flownet: Path) -> list[np.ndarray]:
    """Diffusers' SVD one video at a time, IFNet over its frames; diffusers' frames of seed 0 (the PSNR's reference)."""
    import torch
    from diffusers import StableVideoDiffusionPipeline
    from PIL import Image

    if run.deadline.expired():
        run.skip({"method": SVD_DIFFUSERS})
        return []
    device = run.settings.device
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipeline = StableVideoDiffusionPipeline.from_pretrained(run.model_dir, torch_dtype=dtype).to(device)
    pipeline.set_progress_bar_config(disable=True)
    call = {"height": clip.height, "width": clip.width, "num_frames": clip.frames, "num_inference_steps": clip.steps}
    call |= {"fps": 7, "max_guidance_scale": GUIDANCE, "output_type": "np"}

    def video(seed: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(seed)
        frames = pipeline(Image.fromarray(clip.still), generator=generator, **call).frames[0]
        return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)

    method = f"{SVD_DIFFUSERS} {str(dtype).removeprefix('torch.')}"
    clip.entry(run, await run.timed(method, 1, lambda i: asyncio.to_thread(video, i)), method)
    reference = list(video(0)) if not run.deadline.expired() else []
    pipeline = None  # its weights leave the device before the IFNet's and Triton's
    free()
    frames = reference or list(np.repeat(clip.still[None], clip.frames, axis=0))
    await ifnet_row(run, flownet, frames)
    return reference


async def ifnet_row(run: ModelRun, flownet: Path, frames: list[np.ndarray]) -> None:
    """The IFNet module on the device over ``frames``: :data:`FACTOR` - 1 new frames between each two."""
    import torch

    from build_engines.finishing.ifnet import read_flownet
    from serve.finishing.interpolators import pair_rows, timesteps

    device = run.settings.device
    net = read_flownet(flownet).to(device).eval()
    moments = timesteps(FACTOR)
    pairs = [pair_rows(a, b, moments) for a, b in zip(frames, frames[1:], strict=False)]

    def clip_once() -> None:
        with torch.no_grad():
            for pair, times in pairs:
                pair, times = torch.from_numpy(pair).to(device), torch.from_numpy(times).to(device)
                net(pair[:, :3], pair[:, 3:], times).cpu()

    _new_frames_entry(run, await run.timed(RIFE_MODULE, 1, lambda i: asyncio.to_thread(clip_once)), len(frames))
    net = None
    free()


def _new_frames_entry(run: ModelRun, row: dict | None, frames: int) -> None:
    if row is not None:
        new = (frames - 1) * (FACTOR - 1)
        entry = {"model": run.model.name, "method": row["method"], "factor": FACTOR, "new_frames": new}
        run.report.add("video", entry | {"ms_per_new_frame": row["p50_ms"] / new, "concurrency": 1})


async def served_rows(
    run: ModelRun,
    folder: EngineFolder,
    clip: Clip,
    flownet: Path,
    repository: Path,
    work: Path,
    reference: list[np.ndarray],
    log_triton: Callable[[str, Path], None],
) -> None:
    """The replica's SVD loop through Triton at c=1 and 2, its frames against diffusers', the interpolator engine."""
    from build_engines.finishing.interpolators import build_interpolator
    from serve.models.served import triton_specs
    from serve.text_to_image.pipeline import TextToImagePipeline
    from serve.triton.client import TritonClient
    from serve.triton.engine_files import EngineFiles
    from serve.triton.repository import install_model, write_python_paths
    from serve.triton.runners import model_runner, replica_runner
    from serve.triton.server import TritonServer

    if not run.engine_models_may_run(SVD_SERVED):
        return
    finishing = work / "finishing"
    interpolator = build_interpolator("rife", flownet, finishing)
    if interpolator.error:
        raise RuntimeError(f"the interpolator engine was not built: {interpolator.error}")
    install_model(interpolator.spec, repository, EngineFiles(finishing / interpolator.spec.name).files())
    specs = [*triton_specs(folder, run.prefix).values(), interpolator.spec]
    with first_on_path(run.settings.stub_numpy):
        write_python_paths(repository)  # read by each model.py as its stub starts
    log = work / f"triton-{run.model.name}.log"
    log.unlink(missing_ok=True)
    server = TritonServer(repository, log, models=specs)
    LIVE_SERVERS.add(server)
    try:
        server.start(timeout_s=max(60.0, min(600.0, run.deadline.left_s() + 30)))
        client = TritonClient(server.endpoints.grpc_url)
        replica = TextToImagePipeline(folder, model_runner(replica_runner(client), run.prefix))
        try:
            await svd_rows(run, clip, replica, reference)
            await rife_row(run, clip, interpolator, client, reference)
        finally:
            await client.close()
    finally:
        server.stop()
        LIVE_SERVERS.discard(server)
        log_triton(f"Triton log, {run.model.name}", log)


async def svd_rows(run: ModelRun, clip: Clip, replica, reference: list[np.ndarray]) -> None:
    """The replica's loop at c=1 and 2; seed 0's frames against diffusers' (PSNR, min and mean over the frames)."""

    async def video(seed: int) -> list[np.ndarray]:
        return (await replica.generate(clip.generation(seed))).images

    rows = [await run.timed(SVD_SERVED, concurrency, video) for concurrency in (1, 2)]
    for row in rows:
        clip.entry(run, row, SVD_SERVED)
    if reference and rows[0] is not None and not run.deadline.expired():  # a failed row is recorded; RIFE's still runs
        values = [psnr(a, b) for a, b in zip(await video(0), reference, strict=True)]
        entry = {"model": run.model.name, "against": "diffusers' frames (seed 0)", "min_db": min(values)}
        run.report.add("psnr", entry | {"mean_db": float(np.mean(values))})


async def rife_row(run: ModelRun, clip: Clip, interpolator, client, reference: list[np.ndarray]) -> None:
    """The interpolator engine through Triton over the clip's frames (diffusers', else the still repeated)."""
    from serve.finishing.interpolators import interpolate_frames

    frames = reference or list(np.repeat(clip.still[None], clip.frames, axis=0))
    row = await run.timed(RIFE_SERVED, 1, lambda i: interpolate_frames(frames, FACTOR, interpolator, client))
    _new_frames_entry(run, row, len(frames))
