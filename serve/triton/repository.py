"""Install models into a Triton model repository: ``<model>/config.pbtxt`` from the spec, files in ``<model>/1/``.

``easel build`` installs what it builds; a running stack installs an engine folder already built (a model added or
replaced while it runs) and removes what it installed once it is unloaded.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from serve.triton.spec import Backend, ModelSpec, write_model_config

logger = logging.getLogger(__name__)

ONNX_ENGINE_CLASS = "serve.triton.onnx_backend:OnnxRuntimeModel"
PYTHON_PATHS = "python_paths.txt"
"""At a repository's root: the import path of the process that started Triton, an entry a line. Every model.py puts
it first: a stub whose Python is not the starter's (a GPU machine's venv and carried wheels) does not see PYTHONPATH."""


def model_py(python_class: str) -> str:
    """The ``model.py`` of a python-backend model implemented by ``python_class`` ("module:Class")."""
    module, cls = python_class.split(":")
    return (
        f'"""Triton python-backend model, implemented in {module}."""\n\n'
        "import sys\n"
        "from pathlib import Path\n\n"
        f'_PATHS = Path(__file__).resolve().parents[2] / "{PYTHON_PATHS}"  # where Triton\'s starter imports from\n'
        "if _PATHS.is_file():\n"
        "    sys.path[:0] = [path for path in _PATHS.read_text().splitlines() if path not in sys.path]\n\n"
        f"from {module} import {cls} as TritonPythonModel  # noqa: E402, F401\n"
    )


def write_python_paths(repository: Path) -> None:
    """Write this process's import path into ``repository`` (:data:`PYTHON_PATHS`), for the models' stubs."""
    paths = [path for path in sys.path if path and Path(path).is_dir()]
    (repository / PYTHON_PATHS).write_text("\n".join(paths) + "\n")


def install_model(
    spec: ModelSpec,
    repository: Path,
    files: Mapping[str, Path] | None = None,
    backend: Backend = Backend.PYTHON_ONNX,
    gpu: bool = False,
) -> Path:
    """Write ``spec``'s config and ``model.py``, and link ``files`` (name in the version folder -> source).

    Links in the version folder that ``files`` does not name are removed; ``gpu``: the model's instance runs on the
    GPU (the torch runtime's engines where there is one).
    """
    write_model_config(spec, repository, backend, gpu)
    version_dir = repository / spec.name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    if spec.python_model:
        (version_dir / "model.py").write_text(model_py(spec.python_model))
    elif not spec.ensemble and backend is Backend.PYTHON_ONNX:
        (version_dir / "model.py").write_text(model_py(ONNX_ENGINE_CLASS))
    files = files or {}
    for stale in version_dir.iterdir():  # links left by an earlier engine (e.g. its external-data file)
        if stale.is_symlink() and stale.name not in files:
            stale.unlink()
    for name, source in files.items():
        link = version_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source.resolve())
    logger.info("installed %s into %s", spec.name, version_dir)
    return version_dir


def uninstall_model(name: str, repository: Path) -> None:
    """Remove Triton model ``name``'s folder (its config and links; the engine files they point to stay)."""
    shutil.rmtree(repository / name, ignore_errors=True)
    logger.info("removed %s from %s", name, repository)
