"""``easel bench gpu``: the benchmark's import path without what the GPU machine lacks, and its report's parts.

The pack itself (wheels downloaded from the package index) is tested in tests/integration/test_gpu_pack.py."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from loadtests.benchmarks.gpu_rows import GpuBenchSettings, GpuModel, ModelRun, Report, psnr


def test_the_benchmark_imports_nothing_the_gpu_machine_lacks():
    """What the pack does not carry (Ray, FastAPI, OpenVINO, ...) is not imported on the benchmark's path."""
    absent = ("ray", "fastapi", "openvino", "redis", "locust", "grpc_tools", "rich", "vtracer")
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({absent!r}))\n"  # None: importing them raises ImportError
        "import loadtests.benchmarks.gpu_cli, loadtests.benchmarks.gpu, loadtests.benchmarks.gpu_rows\n"
        "import serve.text_to_image.triton_loop, serve.text_to_image.models, serve.triton.server\n"
        "import build_engines.text_to_image.build, build_engines.text_to_image.published, build_engines.memory\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_report_is_written_after_every_row_and_rows_past_the_budget_are_skipped(tmp_path):
    report = Report(tmp_path / "gpu.json", device="cpu")
    run = ModelRun(GpuModel("tiny", 64, (1,), ()), GpuBenchSettings(device="cpu", budget_s=60), report)

    async def call(index: int) -> None:
        return None

    import asyncio

    asyncio.run(run.timed("a method", 2, call, images_per_call=3))
    written = json.loads((tmp_path / "gpu.json").read_text())
    (row,) = written["rows"]
    assert row["concurrency"] == 6 and row["requests"] == 2 * 2 * 3 and row["model"] == "tiny"
    run = ModelRun(run.model, GpuBenchSettings(device="cpu", budget_s=0), report)
    asyncio.run(run.timed("late", 1, call))
    assert json.loads((tmp_path / "gpu.json").read_text())["skipped"][-1]["method"] == "late"


def test_psnr():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert math.isinf(psnr(image, image))
    noisy = np.clip(image.astype(int) + 1, 0, 255).astype(np.uint8)
    assert psnr(image, noisy) == pytest.approx(10 * np.log10(255**2 / np.mean((noisy.astype(float) - image) ** 2)))
