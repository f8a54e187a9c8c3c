"""``easel bench gpu``: the pack for a GPU machine (real wheels from the index, Triton trimmed from the installed wheel;
size and contents), the benchmark's import path without what that machine lacks, and its report's parts."""

import json
import math
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from loadtests.benchmarks.gpu_pack import MAX_BYTES, RUN_SCRIPT, TRITON_ARCHIVE, make_pack
from loadtests.benchmarks.gpu_rows import GpuBenchSettings, GpuModel, ModelRun, Report, psnr


def test_the_pack_holds_what_the_gpu_machine_lacks_within_60_mib(tmp_path):
    pack = tmp_path / "pack"
    size = make_pack(pack)
    assert size <= MAX_BYTES == 60 * 2**20
    wheels = sorted(path.name for path in (pack / "wheels").glob("*.whl"))
    for name in ("diffusers-", "tritonclient-", "python_rapidjson-", "pydantic_core-", "click-"):
        assert any(wheel.startswith(name) for wheel in wheels), name
    assert all("py3-none-any" in w or "cp312" in w or "abi3" in w for w in wheels), wheels  # each runs on 3.12
    with tarfile.open(pack / TRITON_ARCHIVE) as archive:
        members = set(archive.getnames())
    assert {"pytriton/__init__.py", "pytriton/tritonserver/bin/tritonserver"} <= members
    assert "pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub" in members
    assert not any("/3.11/" in m or "libpython3-" in m for m in members)
    assert (pack / "site" / "clip" / "bpe_simple_vocab_16e6.txt.gz").is_file()
    assert (pack / "src" / "serve" / "triton" / "torch_runtime.py").is_file() and (
        pack / "src" / "pyproject.toml"
    ).is_file()
    run = (pack / RUN_SCRIPT).read_text()
    assert "python -m loadtests.benchmarks.gpu_cli" in run and (pack / RUN_SCRIPT).stat().st_mode & 0o100


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
