"""``easel bench gpu``: Easel served through Triton on a GPU against diffusers, one prepared run, JSON after every row.

Per model (SD 1.5 at 512 and SDXL at 1024 with random weights made on the spot from the committed configs; the
embedded default for the image parity): each engine call on the torch runtime (fp16, its CUDA graph) against the
diffusers module it comes from (relative error); diffusers fp16 one request at a time and as a static batch of a wave
of requests; Easel through Triton with the loop inside Triton (:mod:`serve.text_to_image.triton_loop`), steps merged,
at each concurrency, and at c=1 unmerged; the replica's loop calling Triton once per step at c=1 (the round trip the
loop inside Triton removes); for the embedded default, each image's PSNR against diffusers'. Each row: p50/p95,
images/s and the device's peak memory (all processes: Triton's included). ``--device cpu`` runs the same path in fp32
on the embedded default (a smoke run: the numbers mean nothing). Rows that would start after ``budget_s`` are listed
as skipped. :mod:`loadtests.benchmarks.gpu_pack` prepares the folder that runs it on a GPU machine with no network.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from loadtests.benchmarks import loop
from loadtests.benchmarks.gpu_rows import GpuBenchSettings, GpuModel, ModelRun, Report, run_model

logger = logging.getLogger(__name__)


MODELS = {
    "tiny": GpuModel("tiny", 64, (1, 4, 8), (4, 8), psnr=True),
    "sd15": GpuModel("sd15", 512, (1, 4, 8, 16, 32), (4, 8, 16)),
    "sdxl": GpuModel("sdxl", 1024, (1, 4), (4,)),
}


def run_gpu_bench(settings: GpuBenchSettings, out: Path) -> str:
    """Run every model's rows, writing ``out/gpu.json`` after each; return the table."""
    import torch

    cuda = settings.device == "cuda"
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    report = Report(out / "gpu.json", device=device_name, torch=torch.__version__, settings=asdict(settings))
    for name in settings.models:
        model = MODELS[name]
        if settings.smoke:
            model = GpuModel(name, 64, (1, 4), (4,), model.psnr)
        if report.left_s(settings.budget_s) <= 0:
            report.add("skipped", {"model": name, "why": "the time budget was spent"})
            continue
        try:
            run_model(ModelRun(model, settings, report), out)
        except Exception as error:  # noqa: BLE001 - one model's failure is recorded; the next model still runs
            logger.exception("model %s failed", name)
            report.add("failed", {"model": name, "error": f"{type(error).__name__}: {error}"[:2000]})
    rows = [loop.BenchRow(**{k: r[k] for k in loop.BenchRow.__dataclass_fields__}) for r in report.data["rows"]]
    lines = [f"device: {device_name}", loop.format_table(rows, "img")]
    lines += [
        f"parity {p['model']} {p['engine']}: relative error {p['relative_error']:.1e}" for p in report.data["parity"]
    ]
    lines += [
        f"psnr {p['model']}: {p['min_db']:.1f} dB (min), {p['mean_db']:.1f} dB (mean)" for p in report.data["psnr"]
    ]
    lines += [f"skipped {s}" for s in report.data["skipped"]]
    lines += [f"failed {f['model']}: {f['error']}" for f in report.data["failed"]]
    return "\n".join([*lines, f"written to {report.path}"])
