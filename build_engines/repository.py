"""Install engines into a Triton model repository: ``<model>/config.pbtxt`` from the spec, files in ``<model>/1/``."""

from __future__ import annotations

import logging
from pathlib import Path

from serve.triton.spec import Backend, ModelSpec, write_model_config

logger = logging.getLogger(__name__)

ONNX_MODEL_PY = '''"""Triton python-backend model: serves model.onnx beside this file with ONNX Runtime (see serve.triton)."""

from serve.triton.onnx_backend import OnnxRuntimeModel as TritonPythonModel  # noqa: F401
'''


def install_model(spec: ModelSpec, repository: Path, engine_folder: Path, backend: Backend = Backend.PYTHON_ONNX) -> Path:
    """Write ``spec``'s config and link the engine files of ``engine_folder`` into ``<repository>/<name>/1/``."""
    write_model_config(spec, repository, backend)
    version_dir = repository / spec.name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    if backend is Backend.PYTHON_ONNX:
        (version_dir / "model.py").write_text(ONNX_MODEL_PY)
    for source in sorted(engine_folder.iterdir()):
        link = version_dir / source.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source.resolve())
    logger.info("installed %s into %s", spec.name, version_dir)
    return version_dir
