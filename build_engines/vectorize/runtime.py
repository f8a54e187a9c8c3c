"""The trained vectorize models in-process (ONNX Runtime), answering what the ``vectorize`` ensemble answers.

Offline tooling (evaluation, training checks) uses these; the server calls the same models through Triton.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.triton.onnx_backend import make_session
from serve.vectorize.spec import POLICY, QUALITY
from serve.vectorize.tiers import TIER1_FILE, Scores, Tier1Map
from serve.vectorize.triton_features import features_and_candidates

logger = logging.getLogger(__name__)

TRAINED_DIR = Path(__file__).resolve().parent / "trained"


class OrtPredictor:
    """The quality predictor (:data:`serve.vectorize.spec.QUALITY`) in an ONNX Runtime session."""

    def __init__(self, path: Path) -> None:
        self.session = make_session(path, intra_op_threads=1)

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
        self.session = make_session(path, intra_op_threads=1)

    def __call__(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Parameter vectors ``(N, P)`` with their predicted SSIM and ln(bytes), each ``(N, 1)``."""
        names = [t.name for t in POLICY.outputs]
        params, ssim, log_bytes = self.session.run(names, {"features": features.astype(np.float32)})
        return params, ssim, log_bytes


@dataclass(frozen=True)
class Models:
    """The tier-1 table, the quality predictor and the policy, loaded from one folder."""

    mapping: Tier1Map
    predictor: OrtPredictor
    policy: OrtPolicy

    @classmethod
    def load(cls, folder: Path = TRAINED_DIR) -> Models:
        """Load ``tier1.json``, ``vectorize_quality.onnx`` and ``vectorize_policy.onnx`` from ``folder``.

        Raises:
            FileNotFoundError: A model is missing (train with ``easel train vectorize``).
        """
        folder = Path(folder)
        paths = [folder / TIER1_FILE, folder / f"{QUALITY.name}.onnx", folder / f"{POLICY.name}.onnx"]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"vectorize models missing: {', '.join(missing)} (run `easel train vectorize`)")
        return cls(Tier1Map.load(paths[0]), OrtPredictor(paths[1]), OrtPolicy(paths[2]))

    def scores(self, pixels: np.ndarray) -> Scores:
        """What the ``vectorize`` ensemble answers for ``pixels``, computed in-process."""
        out = features_and_candidates(pixels, self.mapping)
        ssim, log_bytes = self.predictor(out["features_tiled"], out["candidates"])
        params, policy_ssim, policy_log_bytes = self.policy(out["features"])
        return Scores.from_outputs(
            {
                **out,
                "ssim": ssim,
                "log_bytes": log_bytes,
                "policy_params": params,
                "policy_ssim": policy_ssim,
                "policy_log_bytes": policy_log_bytes,
            }
        )
