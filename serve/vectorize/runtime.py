"""In-process ONNX Runtime implementations of the tier protocols, loaded from the trained-models folder."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.vectorize.spec import POLICY, QUALITY
from serve.vectorize.tiers import Tier1Map

logger = logging.getLogger(__name__)

TRAINED_DIR = Path(__file__).resolve().parents[2] / "build_engines" / "vectorize" / "trained"
TIER1_FILE = "tier1.json"
MIN_MARGIN = 0.005


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtPredictor:
    """The quality predictor (:data:`serve.vectorize.spec.QUALITY`) in an ONNX Runtime session."""

    def __init__(self, path: Path) -> None:
        self.session = _session(path)

    def __call__(self, features: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted SSIM and ln(bytes), each ``(N,)``, in chunks of the model's max batch size."""
        ssim, log_bytes = [], []
        step = QUALITY.max_batch_size
        for start in range(0, len(features), step):
            out = self.session.run(
                [t.name for t in QUALITY.outputs],
                {
                    "features": features[start : start + step].astype(np.float32),
                    "params": params[start : start + step].astype(np.float32),
                },
            )
            ssim.append(out[0].reshape(-1))
            log_bytes.append(out[1].reshape(-1))
        return np.concatenate(ssim), np.concatenate(log_bytes)


class OrtPolicy:
    """The PPO policy (:data:`serve.vectorize.spec.POLICY`) in an ONNX Runtime session."""

    def __init__(self, path: Path) -> None:
        self.session = _session(path)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Parameter vectors ``(N, P)``."""
        return self.session.run([POLICY.outputs[0].name], {"features": features.astype(np.float32)})[0]


@dataclass
class Models:
    """Whatever trained vectorize models could be loaded (None where missing)."""

    mapping: Tier1Map | None = None
    predictor: OrtPredictor | None = None
    policy: OrtPolicy | None = None
    margin: float = MIN_MARGIN

    @classmethod
    def load(cls, folder: Path = TRAINED_DIR) -> Models:
        """Load ``tier1.json``, ``vectorize_quality.onnx`` and ``vectorize_policy.onnx`` from ``folder``."""
        folder = Path(folder)
        models = cls()
        models.mapping, models.margin = load_tier1(folder)
        if (folder / f"{QUALITY.name}.onnx").exists():
            models.predictor = OrtPredictor(folder / f"{QUALITY.name}.onnx")
        if (folder / f"{POLICY.name}.onnx").exists():
            models.policy = OrtPolicy(folder / f"{POLICY.name}.onnx")
        missing = [
            n
            for n, m in (("tier1", models.mapping), ("quality", models.predictor), ("policy", models.policy))
            if m is None
        ]
        if missing:
            logger.warning("vectorize models missing in %s: %s", folder, ", ".join(missing))
        return models


def load_tier1(folder: Path = TRAINED_DIR) -> tuple[Tier1Map | None, float]:
    """The tier-1 mapping (None if untrained) and tier 2's margin: the calibrated one, at least ``MIN_MARGIN``.

    The floor keeps tier 2 on tier 1's answer unless the predictor expects a clear SSIM gain: a 30-image
    calibration is too noisy to trust a margin of zero on unfamiliar icon styles.
    """
    path = Path(folder) / TIER1_FILE
    if not path.exists():
        return None, MIN_MARGIN
    data = json.loads(path.read_text())
    return Tier1Map.from_json(data), max(MIN_MARGIN, float(data.get("tier2_margin", MIN_MARGIN)))
