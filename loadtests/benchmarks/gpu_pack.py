"""``easel bench gpu --pack DIR``: the folder that runs ``easel bench gpu`` on a GPU machine with no network.

That machine (docs/guides/gpu.md): Python 3.12, PyTorch with CUDA, transformers, NumPy 2, onnx and grpcio, lacking
the rest. The pack holds three files and ``run.sh``:

- ``deps.tar.xz``: ``site/``, the wheels of :data:`CARRIED` for that Python unpacked (``pip download --no-deps
  --only-binary=:all:``, each at this machine's version where the index has it) with the openai-clip package's
  files (CLIP's BPE merges, read by ``importlib.metadata``); ``stub-numpy/``, NumPy :data:`STUB_NUMPY` without its
  tests, for Triton's python-backend stubs alone (Triton 2.51's stub predates NumPy 2 and misreads its arrays);
- ``triton.tar.xz``: Triton trimmed from the installed nvidia-pytriton wheel (its server and libraries, that Python's
  backend stub alone, libpython 3.13 left out);
- ``src.tar.xz``: the project's committed source (:data:`SOURCE`).

``run.sh`` unpacks them (no pip: the wheels are already unpacked) and runs the benchmark. At most :data:`MAX_BYTES`.
``python`` 3.11 makes a pack for this machine's Python, to rehearse it here.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import logging
import lzma
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

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
    "requests",
    "urllib3",
    "charset-normalizer",
    "standardwebhooks",
)
"""What ``easel bench gpu`` imports that the GPU machine lacks (and what those import)."""
STUB_NUMPY = "numpy==1.26.4"
"""The NumPy Triton's python-backend stubs read tensors with (the last before 2, which their pybind11 predates)."""
NUMPY_LEFT_OUT = ("tests", "f2py", "distutils")
"""Folders of NumPy the stubs never import (and its ``.pyi`` files)."""
SOURCE = ("serve", "build_engines", "loadtests", "pyproject.toml")
DEPS_ARCHIVE, TRITON_ARCHIVE, SOURCE_ARCHIVE = "deps.tar.xz", "triton.tar.xz", "src.tar.xz"
RUN_SCRIPT = "run.sh"
RUN = """#!/bin/sh
# easel bench gpu on this machine: the pack unpacked into SITE, then the benchmark, which writes OUT/gpu.json,
# OUT/gpu.txt and OUT/gpu.log as it goes (this script's own lines open gpu.log). Arguments go to the benchmark
# (e.g. --models sd15 --budget-s 300); PYTHON picks the interpreter (-P: the pack's source, not the folder it runs in).
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
SITE=${SITE:-/tmp/easel-site}
OUT=${OUT:-$HERE/out}
PYTHON=${PYTHON:-python}
export EASEL_HOME=${EASEL_HOME:-/tmp/easel-home}
rm -rf "$SITE/src"
mkdir -p "$SITE/site" "$OUT"
: > "$OUT/gpu.log"
say() { echo "run.sh: $*" | tee -a "$OUT/gpu.log"; }
started=$(date +%s)
tar -xJf "$HERE/triton.tar.xz" -C "$SITE/site" & triton=$!
tar -xJf "$HERE/deps.tar.xz" -C "$SITE"
if [ -f "$HERE/src.tar.xz" ]; then  # else SRC: a checkout of the project (one that travels beside the pack)
    tar -xJf "$HERE/src.tar.xz" -C "$SITE"
    SRC="$SITE/src"
fi
wait $triton
say "unpacked into $SITE in $(( $(date +%s) - started )) s; the source: $SRC"
export PYTHONPATH="$SITE/site:$SRC"
export EASEL_STUB_NUMPY="$SITE/stub-numpy" EASEL_GPU_KEEP_LOG=1
CHECK='import diffusers, tritonclient.grpc, loadtests.benchmarks.gpu, sys, numpy, torch
print(sys.version.split()[0], "numpy", numpy.__version__, "torch", torch.__version__)'
if ! versions=$("$PYTHON" -P -c "$CHECK" 2>> "$OUT/gpu.log"); then
    say "the carried packages do not import: see $OUT/gpu.log"
    exit 1
fi
say "Python $versions"
exec "$PYTHON" -P -m loadtests.benchmarks.gpu_cli --out "$OUT" "$@"
"""


def _local_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def download_wheels(folder: Path, names: tuple[str, ...] = CARRIED, python: str = PYTHON) -> list[Path]:
    """The manylinux wheels of ``names`` for ``python``: at this machine's versions, else the index's newest."""
    folder.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    base += ["--python-version", python, "--platform", PLATFORM, "--dest", str(folder)]
    pinned = [name if "==" in name or not _local_version(name) else f"{name}=={_local_version(name)}" for name in names]
    if subprocess.run([*base, *pinned], capture_output=True, check=False, timeout=600).returncode != 0:
        for name, spec in zip(names, pinned, strict=True):  # one at a time: the pin falls back where the index lacks it
            if subprocess.run([*base, spec], capture_output=True, check=False, timeout=300).returncode != 0:
                logger.info("%s: not in the index, the newest wheel for Python %s instead", spec, python)
                subprocess.run([*base, name.split("==")[0]], capture_output=True, check=True, timeout=300)
    return sorted(folder.glob("*.whl"))


def unpack_wheel(wheel: Path, target: Path, leave_out: tuple[str, ...] = ()) -> None:
    """The wheel's files under ``target``, as ``pip install --target`` lays out a pure or platform wheel.

    Its ``.data/purelib`` and ``.data/platlib`` go to the root, its scripts and headers nowhere; ``leave_out``: folder
    names (and ``.pyi`` files) not unpacked.
    """
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            path = PurePosixPath(info.filename)
            if path.parts[0].endswith(".data"):
                if len(path.parts) < 3 or path.parts[1] not in ("purelib", "platlib"):
                    continue
                path = PurePosixPath(*path.parts[2:])
            if info.is_dir() or (leave_out and (set(path.parts) & set(leave_out) or path.suffix == ".pyi")):
                continue
            destination = target / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(archive.read(info))
            if info.external_attr >> 16 & 0o111:
                destination.chmod(0o755)


def copy_distribution(name: str, site: Path) -> None:
    """An installed distribution's files (package and ``.dist-info``) into ``site`` (openai-clip has no wheel)."""
    for file in importlib.metadata.files(name) or []:
        if "__pycache__" in file.parts or file.parts[0].startswith(".."):
            continue
        target = site / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file.locate(), target)


def deps_archive(python: str = PYTHON) -> Path:
    """``deps.tar.xz`` for ``python`` (kept under ``$EASEL_HOME`` for the same wheels: made again when they change)."""
    with tempfile.TemporaryDirectory() as scratch:
        wheels = download_wheels(Path(scratch) / "wheels", python=python)
        stub = download_wheels(Path(scratch) / "stub", (STUB_NUMPY,), python)
        key = hashlib.sha256("\n".join(w.name for w in [*wheels, *stub]).encode()).hexdigest()[:12]
        archive = easel_home() / "gpu-pack" / f"deps-py{python}-{key}.tar.xz"
        if archive.exists():
            return archive
        staging = Path(scratch) / "staging"
        for wheel in wheels:
            unpack_wheel(wheel, staging / "site")
        copy_distribution("openai-clip", staging / "site")
        for wheel in stub:
            unpack_wheel(wheel, staging / "stub-numpy", NUMPY_LEFT_OUT)
        _write_archive(archive, staging, ("site", "stub-numpy"), preset=6)
    return archive


def triton_archive(python: str = PYTHON) -> Path:
    """Triton from the installed nvidia-pytriton, trimmed and compressed once (kept under ``$EASEL_HOME``)."""
    import pytriton

    site = Path(pytriton.__file__).parent.parent
    version = importlib.metadata.version("nvidia-pytriton")
    archive = easel_home() / "gpu-pack" / f"pytriton-{version}-py{python}.tar.xz"
    if archive.exists():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    # The GPU machine's: 5 MB less, for the 64 MiB a lent machine takes (once, about 90 s); a rehearsal's: fast.
    preset = 9 | lzma.PRESET_EXTREME if python == PYTHON else 2
    with tarfile.open(partial, "w:xz", preset=preset) as tar:
        tar.addfile(tarfile.TarInfo("pytriton/__init__.py"))  # `import pytriton` finds the server beside it
        for path in sorted((site / "nvidia_pytriton.libs").iterdir()):
            if not path.name.startswith("libpython3-"):  # the wheel's libpython 3.13: the stub uses the system's
                tar.add(path, arcname=f"nvidia_pytriton.libs/{path.name}")
        for path in sorted((site / "pytriton" / "tritonserver").rglob("*")):
            relative = path.relative_to(site)
            other_stub = "python_backend_stubs" in relative.parts and python not in relative.parts
            if path.is_file() and "__pycache__" not in relative.parts and not other_stub:
                tar.add(path, arcname=str(relative))
    partial.rename(archive)
    return archive


def source_archive(target: Path, preset: int = 6) -> None:
    """The project's files under :data:`SOURCE` that git tracks or would (no caches, no build outputs): ``target``."""
    command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", *SOURCE]
    listed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, check=True, text=True).stdout
    with tarfile.open(target, "w:xz", preset=preset) as tar:
        for name in filter(None, listed.split("\0")):
            if (PROJECT_ROOT / name).is_file():
                tar.add(PROJECT_ROOT / name, arcname=f"src/{name}")


def _write_archive(archive: Path, root: Path, names: tuple[str, ...], preset: int) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:xz", preset=preset) as tar:
        for name in names:
            tar.add(root / name, arcname=name)
    partial.rename(archive)


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder``."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def make_pack(folder: Path, python: str = PYTHON) -> int:
    """Write the pack for ``python`` into ``folder`` (emptied first); its size in bytes, refused over the bound."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copy2(deps_archive(python), folder / DEPS_ARCHIVE)
    shutil.copy2(triton_archive(python), folder / TRITON_ARCHIVE)
    source_archive(folder / SOURCE_ARCHIVE, preset=6 if python == PYTHON else 2)  # a rehearsal's: fast, as Triton's
    (folder / RUN_SCRIPT).write_text(RUN)
    (folder / RUN_SCRIPT).chmod(0o755)
    size = folder_bytes(folder)
    if size > MAX_BYTES:
        raise ValueError(f"the pack is {size / 2**20:.1f} MiB, over {MAX_BYTES / 2**20:.0f} MiB")
    logger.info("pack in %s: %.1f MiB", folder, size / 2**20)
    return size


def archive_names(path: Path) -> set[str]:
    """The member names of a ``.tar.xz`` (the tests' look inside a pack)."""
    with tarfile.open(fileobj=io.BytesIO(path.read_bytes()), mode="r:xz") as tar:
        return set(tar.getnames())
