"""``easel bench gpu``: Easel served through Triton on a GPU against diffusers, one prepared run within a hard deadline.

Per model (SD 1.5 at 512 and SDXL at 1024 with random weights made on the spot from the committed configs; the
embedded default on request): fp16 parity of every engine at every captured bucket against fp32, the bare replay of
the denoiser's 2-row graph, a fractional-timestep image fp16 against fp32; diffusers fp16 one request at a time and
as a static batch per wave; the loop inside Triton (:mod:`serve.text_to_image.triton_loop`) through the replica's
client, merged at each concurrency, its cost per step at c=1, unmerged at c=1; the replica's loop calling Triton at
every step at c=1 (:mod:`loadtests.benchmarks.gpu_rows`). Then issue 74's acceptance lines, PASS, FAIL or NOT RUN
(:mod:`loadtests.benchmarks.gpu_accept`).

``budget_s`` is a hard deadline: each model gets its share of the time left (:attr:`GpuModel.weight`), every row
checks it before each call, and what it cuts is kept (partial) or listed as skipped. The out folder gets three files,
rewritten as the run goes (:mod:`loadtests.benchmarks.gpu_report`); the model repository, engines and Triton's logs
live in a work folder. ``--device cpu`` runs the same path in fp32 at 64 px (a smoke run: the numbers mean nothing).
:mod:`loadtests.benchmarks.gpu_pack` prepares the folder that runs it on a GPU machine with no network.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from loadtests.benchmarks.gpu_clock import Deadline, Watchdog
from loadtests.benchmarks.gpu_report import LOG, CappedLog, Report
from loadtests.benchmarks.gpu_rows import LIVE_SERVERS, GpuBenchSettings, GpuModel, ModelRun, build_model, image_stages
from loadtests.benchmarks.gpu_video import video_stages

logger = logging.getLogger(__name__)


MODELS = {
    "tiny": GpuModel("tiny", 64, (1, 8, 4), (4, 8), psnr=True, weight=0.4),
    "sd15": GpuModel("sd15", 512, (1, 16, 8, 4), (16, 4, 8), weight=1.2, replica_loop=True, variants=True),
    "sdxl": GpuModel("sdxl", 1024, (1, 4), (4,), weight=1.0, fractional=False),
    "svd": GpuModel("svd", 1024, (1, 2), (), weight=0.6, video=True),
    "tiny-svd": GpuModel("tiny-svd", 128, (1, 2), (), weight=0.4, video=True),
}
"""Each model's rows, acceptance's first: SD 1.5 c=1, 16, 8 (then 4) and its wave of 16, the loop's variants; SDXL c=1,
4 and its wave of 4. SDXL's fractional image is left out (fp32 at 1024 costs a quarter of its share); SD 1.5 at c=32
was measured once (docs/PERFORMANCE.md) and is not worth its 17 s of a lent machine here. ``svd`` (Stable Video
Diffusion, 14 frames at 1024x576) and ``tiny-svd`` (its toy, the CPU's) run the video stages
(:mod:`loadtests.benchmarks.gpu_video`)."""


def smoke_model(model: GpuModel) -> GpuModel:
    """``model`` on a CPU: 64 px, SD 1.5's acceptance rows (c=1, 8, 16, the wave of 16), every stage.

    A video model as it is: its clip is its model's default.
    """
    if model.video:
        return model
    return replace(
        model, size=64, concurrency=(1, 16, 8), waves=(16,), fractional=True, replica_loop=True, variants=True
    )


def run_gpu_bench(settings: GpuBenchSettings, out: Path, work: Path, keep_log: bool = False) -> str:
    """Run every model's stages within ``settings.budget_s``, writing ``out``'s three files; return the text.

    ``keep_log``: append to ``gpu.log`` (``run.sh`` opened it) rather than start it anew.
    """
    import torch

    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "model_repository", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    log = CappedLog(out / LOG, append=keep_log)
    logging.getLogger().addHandler(log)
    logging.captureWarnings(True)
    deadline = Deadline.after(settings.budget_s)
    cuda = settings.device == "cuda"
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    videos = [name for name in settings.models if MODELS[name].video]
    report = Report(out, device=device_name, torch=torch.__version__, settings=asdict(settings), work=str(work))
    report.data["video_models"] = videos
    watchdog = Watchdog(deadline, lambda: _expired(report)).start()
    try:
        weights = [MODELS[name].weight for name in settings.models]
        for index, name in enumerate(settings.models):
            model = smoke_model(MODELS[name]) if settings.smoke else MODELS[name]
            share = deadline.share(weights[index], sum(weights[index:]))
            if share.expired():
                report.add("skipped", {"model": name, "why": "the time budget was spent"})
                continue
            logger.info("%s: %.0f s of the %.0f s left", name, share.left_s(), deadline.left_s())
            try:
                run = ModelRun(model, settings, report, share)
                folder, repository = build_model(run, work)
                (video_stages if model.video else image_stages)(run, folder, repository, work, log.append)
            except Exception as error:  # noqa: BLE001 - one model's failure is recorded; the next model still runs
                logger.exception("model %s failed", name)
                report.add("failed", {"model": name, "error": f"{type(error).__name__}: {error}"[:2000]})
    finally:
        watchdog.cancel()
        report.write()
        logging.getLogger().removeHandler(log)
        log.close()
    return report.text()


def _expired(report: Report) -> None:
    """The watchdog's last act: Triton stopped, the files written."""
    for server in list(LIVE_SERVERS):
        server.stop(grace_s=5)
    report.add("failed", {"model": None, "error": "the run was ended past its deadline (the watchdog)"})
