"""``easel bench gpu --pack``: the pack for a GPU machine, made for real (wheels downloaded from the package index,
Triton trimmed from the installed nvidia-pytriton wheel): its size and contents, and its run.sh unpacking it and
importing the benchmark from it (a pack for this machine's Python)."""

import os
import subprocess
import sys

from loadtests.benchmarks.gpu_pack import (
    DEPS_ARCHIVE,
    MAX_BYTES,
    RUN_SCRIPT,
    SOURCE_ARCHIVE,
    TRITON_ARCHIVE,
    archive_names,
    make_pack,
)


def test_the_pack_holds_what_the_gpu_machine_lacks_within_60_mib(tmp_path):
    pack = tmp_path / "pack"
    size = make_pack(pack)
    assert size <= MAX_BYTES == 60 * 2**20
    assert sorted(path.name for path in pack.iterdir()) == sorted(
        [DEPS_ARCHIVE, TRITON_ARCHIVE, SOURCE_ARCHIVE, RUN_SCRIPT]
    )
    deps = archive_names(pack / DEPS_ARCHIVE)
    for name in ("diffusers", "tritonclient", "rapidjson", "pydantic_core", "click", "requests"):
        assert f"site/{name}/__init__.py" in deps or any(m.startswith(f"site/{name}") for m in deps), name
    assert any(m.startswith("site/pydantic_core/_pydantic_core.cpython-312") for m in deps)
    assert "site/clip/bpe_simple_vocab_16e6.txt.gz" in deps
    assert "stub-numpy/numpy/__init__.py" in deps and "stub-numpy/numpy-1.26.4.dist-info/METADATA" in deps
    assert any(m.startswith("stub-numpy/numpy/core/_multiarray_umath.cpython-312") for m in deps)
    assert not any("/tests/" in m for m in deps if m.startswith("stub-numpy/"))
    triton = archive_names(pack / TRITON_ARCHIVE)
    assert {"pytriton/__init__.py", "pytriton/tritonserver/bin/tritonserver"} <= triton
    assert "pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub" in triton
    assert not any("/3.11/" in m or "libpython3-" in m for m in triton)
    source = archive_names(pack / SOURCE_ARCHIVE)
    assert {"src/serve/triton/torch_runtime.py", "src/pyproject.toml", "src/loadtests/benchmarks/gpu_cli.py"} <= source
    run = (pack / RUN_SCRIPT).read_text()
    assert "-m loadtests.benchmarks.gpu_cli" in run and (pack / RUN_SCRIPT).stat().st_mode & 0o100


def test_run_sh_unpacks_the_pack_and_the_benchmark_imports_from_it(tmp_path):
    """A pack for this machine's Python: run.sh unpacks it, checks the imports and starts the benchmark (--help)."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    pack, site, out = tmp_path / "pack", tmp_path / "site", tmp_path / "out"
    make_pack(pack, python)
    env = {**os.environ, "PYTHON": sys.executable, "SITE": str(site), "OUT": str(out), "EASEL_HOME": str(tmp_path)}
    result = subprocess.run(
        ["sh", str(pack / RUN_SCRIPT), "--help"], env=env, capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:] + (out / "gpu.log").read_text()
    assert "--budget-s" in result.stdout and "run.sh: unpacked" in (out / "gpu.log").read_text()
    where = (
        "import diffusers, tritonclient, loadtests.benchmarks.gpu as gpu, pydantic_core; "
        "print(diffusers.__file__, tritonclient.__file__, gpu.__file__, pydantic_core.__file__)"
    )
    carried = {**env, "PYTHONPATH": f"{site / 'site'}:{site / 'src'}"}
    found = subprocess.run([sys.executable, "-P", "-c", where], env=carried, capture_output=True, text=True, check=True)
    diffusers, tritonclient, gpu, pydantic_core = found.stdout.split()
    assert all(path.startswith(str(site / "site")) for path in (diffusers, tritonclient, pydantic_core))
    assert gpu.startswith(str(site / "src"))
    stub = "import sys; sys.path.insert(0, sys.argv[1]); import numpy; print(numpy.__version__, numpy.__file__)"
    found = subprocess.run(
        [sys.executable, "-P", "-c", stub, str(site / "stub-numpy")], capture_output=True, text=True, check=True
    )
    version, path = found.stdout.split()
    assert version == "1.26.4" and path.startswith(str(site / "stub-numpy"))
