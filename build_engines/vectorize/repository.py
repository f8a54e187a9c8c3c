"""Install the trained vectorize models (committed ONNX, tier-1 table) and their ensemble into a Triton repository.

The served models read everything from the repository: the ONNX engines, and ``tier1.json`` in
``vectorize_features``'s version folder (the features model reads it at start-up).
"""

from __future__ import annotations

import logging
from pathlib import Path

from build_engines.vectorize.runtime import TRAINED_DIR
from serve.triton.spec import Backend
from serve.vectorize.tiers import TIER1_FILE
from serve.vectorize.versions import ENGINES, install_version

logger = logging.getLogger(__name__)


def install_vectorize(
    repository: Path, trained_dir: Path = TRAINED_DIR, backend: Backend = Backend.PYTHON_ONNX
) -> bool:
    """Install features, quality, policy and the ``vectorize`` ensemble; False (nothing installed) if untrained.

    The models are small (microseconds per call): with ``backend`` TensorRT they stay on native ONNX Runtime.
    """
    if backend is Backend.TENSORRT:
        backend = Backend.ONNXRUNTIME
    missing = [
        str(path)
        for path in (*(trained_dir / f"{spec.name}.onnx" for spec in ENGINES), trained_dir / TIER1_FILE)
        if not path.exists()
    ]
    if missing:
        logger.warning(
            "vectorize models not trained (%s missing); vectorize will use vtracer defaults", ", ".join(missing)
        )
        return False
    install_version(repository, trained_dir, 1, backend)
    return True
