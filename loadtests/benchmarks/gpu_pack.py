"""``easel bench gpu --pack DIR``: the folder that runs ``easel bench gpu`` on a GPU machine with no network.

That machine (docs/guides/gpu.md): Python 3.12, PyTorch with CUDA, transformers, numpy, onnx and grpcio, lacking the
rest: the pack carries the Python 3.12 wheels of :data:`CARRIED` (downloaded here: ``pip download --no-deps
--only-binary=:all:``, each at this machine's version where the index has it), Triton trimmed from the installed
nvidia-pytriton wheel (its server and libraries, the 3.12 backend stub alone, libpython 3.13 left out:
``triton.tar.xz``), the openai-clip package's files (CLIP's BPE merges, read by ``importlib.metadata``), the project's
source, and ``run.sh``, which installs them into a folder and runs the benchmark. At most :data:`MAX_BYTES`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from serve.paths import PROJECT_ROOT, easel_home

logger = logging.getLogger(__name__)

MAX_BYTES = 60 * 2**20
PYTHON = "3.12"
PLATFORM = "manylinux2014_x86_64"
CARRIED = (
    "diffusers",
    "tritonclient",
    "python-rapidjson",
    "protobuf",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "starlette",
    "python-multipart",
    "importlib-metadata",
    "zipp",
    "typing-extensions",
    "click",
    "psutil",
    "httpx",
    "httpcore",
    "anyio",
    "sniffio",
    "h11",
    "idna",
    "certifi",
)
"""What ``easel bench gpu`` imports that the GPU machine lacks (and what those import)."""
SOURCE = ("serve", "build_engines", "loadtests", "pyproject.toml")
TRITON_ARCHIVE = "triton.tar.xz"
RUN_SCRIPT = "run.sh"
RUN = """#!/bin/sh
# easel bench gpu on this machine: the carried wheels and Triton installed into SITE, then the benchmark run.
# Results: OUT/gpu.json, written after every row. Arguments go to the benchmark (e.g. --models tiny,sd15).
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
SITE=${SITE:-/tmp/easel-site}
OUT=${OUT:-$HERE/out}
export EASEL_HOME=${EASEL_HOME:-/tmp/easel-home}
mkdir -p "$SITE" "$OUT"
python -m pip install --quiet --no-index --no-deps --target "$SITE" "$HERE"/wheels/*.whl
tar -xJf "$HERE/triton.tar.xz" -C "$SITE"
cp -r "$HERE"/site/. "$SITE"/
export PYTHONPATH="$SITE:$HERE/src"
exec python -m loadtests.benchmarks.gpu_cli --out "$OUT" "$@"
"""


def _local_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def download_wheels(folder: Path, names: tuple[str, ...] = CARRIED) -> None:
    """The Python 3.12 manylinux wheels of ``names``: at this machine's versions, else the index's newest."""
    folder.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    base += ["--python-version", PYTHON, "--platform", PLATFORM, "--dest", str(folder)]
    pinned = [f"{name}=={_local_version(name)}" if _local_version(name) else name for name in names]
    if subprocess.run([*base, *pinned], capture_output=True, check=False, timeout=600).returncode == 0:
        return
    for name, spec in zip(names, pinned, strict=True):  # one at a time: the pin falls back where the index lacks it
        if subprocess.run([*base, spec], capture_output=True, check=False, timeout=300).returncode != 0:
            logger.info("%s: not in the index, the newest wheel for Python %s instead", spec, PYTHON)
            subprocess.run([*base, name], capture_output=True, check=True, timeout=300)


def triton_archive() -> Path:
    """Triton from the installed nvidia-pytriton, trimmed and compressed once (kept under ``$EASEL_HOME``)."""
    import pytriton

    site = Path(pytriton.__file__).parent.parent
    version = importlib.metadata.version("nvidia-pytriton")
    archive = easel_home() / "gpu-pack" / f"pytriton-{version}-py{PYTHON}.tar.xz"
    if archive.exists():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:xz", preset=2) as tar:
        tar.addfile(tarfile.TarInfo("pytriton/__init__.py"))  # `import pytriton` finds the server beside it
        for path in sorted((site / "nvidia_pytriton.libs").iterdir()):
            if not path.name.startswith("libpython3-"):  # the wheel's libpython 3.13: the stub uses the system's
                tar.add(path, arcname=f"nvidia_pytriton.libs/{path.name}")
        for path in sorted((site / "pytriton" / "tritonserver").rglob("*")):
            relative = path.relative_to(site)
            other_stub = "python_backend_stubs" in relative.parts and PYTHON not in relative.parts
            if path.is_file() and "__pycache__" not in relative.parts and not other_stub:
                tar.add(path, arcname=str(relative))
    partial.rename(archive)
    return archive


def copy_distribution(name: str, site: Path) -> None:
    """An installed distribution's files (package and ``.dist-info``) into ``site`` (openai-clip has no wheel)."""
    for file in importlib.metadata.files(name) or []:
        if "__pycache__" in file.parts or file.parts[0].startswith(".."):
            continue
        target = site / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file.locate(), target)


def copy_source(target: Path) -> None:
    """The project's committed files under :data:`SOURCE` (no caches, no build outputs)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", *SOURCE], cwd=PROJECT_ROOT, capture_output=True, check=True, text=True
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = PROJECT_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder``."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def make_pack(folder: Path) -> int:
    """Write the pack into ``folder`` (emptied first); its size in bytes, refused (ValueError) over the bound."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    download_wheels(folder / "wheels")
    shutil.copy2(triton_archive(), folder / TRITON_ARCHIVE)
    copy_distribution("openai-clip", folder / "site")
    copy_source(folder / "src")
    (folder / RUN_SCRIPT).write_text(RUN)
    (folder / RUN_SCRIPT).chmod(0o755)
    size = folder_bytes(folder)
    if size > MAX_BYTES:
        raise ValueError(f"the pack is {size / 2**20:.1f} MiB, over {MAX_BYTES / 2**20:.0f} MiB")
    logger.info("pack in %s: %.1f MiB", folder, size / 2**20)
    return size
