"""``easel bench gpu --pack``: the pack for a GPU machine, made for real (wheels downloaded from the package index,
Triton trimmed from the installed nvidia-pytriton wheel): its size and contents."""

import tarfile

from loadtests.benchmarks.gpu_pack import MAX_BYTES, RUN_SCRIPT, TRITON_ARCHIVE, make_pack


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
