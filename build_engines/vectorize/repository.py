"""Install the trained vectorize models (committed ONNX) and their ensemble into a Triton model repository."""

from __future__ import annotations

import logging
from pathlib import Path

from build_engines.repository import install_model
from serve.triton.spec import Backend
from serve.vectorize.runtime import TRAINED_DIR
from serve.vectorize.spec import ENSEMBLE, FEATURES, POLICY, QUALITY

logger = logging.getLogger(__name__)


def install_vectorize(
    repository: Path, trained_dir: Path = TRAINED_DIR, backend: Backend = Backend.PYTHON_ONNX
) -> bool:
    """Install features, quality, policy and the ``vectorize`` ensemble; False (nothing installed) if untrained."""
    engines = [(spec, trained_dir / f"{spec.name}.onnx") for spec in (QUALITY, POLICY)]
    missing = [str(path) for _, path in engines if not path.exists()]
    if missing:
        logger.warning(
            "vectorize models not trained (%s missing); vectorize will use vtracer defaults", ", ".join(missing)
        )
        return False
    for spec, path in engines:
        install_model(spec, repository, {"model.onnx": path}, backend)
    install_model(FEATURES, repository, backend=backend)
    install_model(ENSEMBLE, repository, backend=backend)
    return True
