"""``easel bench gpu``: the benchmark's import path without what the GPU machine lacks, and its report's parts.

The pack itself (wheels downloaded from the package index) is tested in tests/integration/test_gpu_pack.py."""

import asyncio
import json
import math
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from loadtests.benchmarks.gpu_clock import Deadline
from loadtests.benchmarks.gpu_pack import NUMPY_LEFT_OUT, unpack_wheel
from loadtests.benchmarks.gpu_rows import GpuBenchSettings, GpuModel, ModelRun, Report, psnr


def test_the_benchmark_imports_nothing_the_gpu_machine_lacks():
    """What the pack does not carry (Ray, FastAPI, OpenVINO, ...) is not imported on the benchmark's path."""
    absent = ("ray", "fastapi", "openvino", "redis", "locust", "grpc_tools", "rich", "vtracer")
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({absent!r}))\n"  # None: importing them raises ImportError
        "import loadtests.benchmarks.gpu_cli, loadtests.benchmarks.gpu, loadtests.benchmarks.gpu_rows\n"
        "import loadtests.benchmarks.gpu_engines, loadtests.benchmarks.gpu_models, loadtests.benchmarks.gpu_pack\n"
        "import serve.text_to_image.triton_loop, serve.text_to_image.loop_client, serve.models.served\n"
        "import serve.triton.server, serve.triton.client, serve.triton.runners, serve.text_to_image.pipeline\n"
        "import build_engines.text_to_image.build, build_engines.text_to_image.published, build_engines.memory\n"
        "import build_engines.text_to_image.export, build_engines.openvino\n"
        "import loadtests.benchmarks.gpu_video, build_engines.finishing.interpolators, build_engines.finishing.ifnet\n"
        "import serve.finishing.interpolators, serve.text_to_image.image_to_video, serve.protocol.video\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_report_is_written_after_every_row_and_rows_past_the_deadline_are_skipped(tmp_path):
    report = Report(tmp_path, device="cpu")
    settings = GpuBenchSettings(device="cpu")
    run = ModelRun(GpuModel("tiny", 64, (1,), ()), settings, report, Deadline.after(60))

    async def call(index: int) -> None:
        return None

    asyncio.run(run.timed("a method", 2, call, images_per_call=3))
    written = json.loads((tmp_path / "gpu.json").read_text())
    (row,) = written["rows"]
    assert row["concurrency"] == 6 and row["requests"] == 2 * 2 * 3 and row["model"] == "tiny"
    assert row["partial"] is False
    assert "a method" in (tmp_path / "gpu.txt").read_text()
    run = ModelRun(run.model, settings, report, Deadline.after(0))
    asyncio.run(run.timed("late", 1, call))
    assert json.loads((tmp_path / "gpu.json").read_text())["skipped"][-1]["method"] == "late"


def test_psnr():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert math.isinf(psnr(image, image))
    noisy = np.clip(image.astype(int) + 1, 0, 255).astype(np.uint8)
    assert psnr(image, noisy) == pytest.approx(10 * np.log10(255**2 / np.mean((noisy.astype(float) - image) ** 2)))


def test_a_wheel_unpacks_as_pip_lays_it_out_leaving_out_what_is_asked(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/__init__.py", "x = 1\n")
        archive.writestr("pkg/tests/test_x.py", "")
        archive.writestr("pkg/__init__.pyi", "")
        archive.writestr("pkg-1.0.data/purelib/extra/__init__.py", "")
        archive.writestr("pkg-1.0.data/scripts/tool", "")
        archive.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\n")
    unpack_wheel(wheel, tmp_path / "all")
    assert {p.relative_to(tmp_path / "all").as_posix() for p in (tmp_path / "all").rglob("*") if p.is_file()} == {
        "pkg/__init__.py",
        "pkg/tests/test_x.py",
        "pkg/__init__.pyi",
        "extra/__init__.py",
        "pkg-1.0.dist-info/METADATA",
    }
    unpack_wheel(wheel, tmp_path / "trimmed", NUMPY_LEFT_OUT)
    assert not (tmp_path / "trimmed" / "pkg" / "tests").exists()
    assert not (tmp_path / "trimmed" / "pkg" / "__init__.pyi").exists()
    assert (tmp_path / "trimmed" / "pkg" / "__init__.py").is_file()
