"""Triton python-backend model ``vectorize_features``: image -> features, tier-2 candidates, familiarity, margins.

It heads the ``vectorize`` ensemble: its ``features`` feed the policy, its ``candidates`` (tiled with the features)
feed the quality predictor, so one ensemble call answers every tier. It reads the tier-1 table (``tier1.json``) from
its own version folder in the model repository, where ``easel build`` installs it beside the ONNX engines.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import scipy.ndimage  # noqa: F401 - compute_features' filter, loaded with the model, not on its first image

from serve.vectorize.features import FEATURE_NAMES, compute_features
from serve.vectorize.tiers import TIER1_FILE, Tier1Map, candidates

logger = logging.getLogger(__name__)

_LOG_SIDE = FEATURE_NAMES.index("log_side")


def features_and_candidates(pixels: np.ndarray, mapping: Tier1Map) -> dict[str, np.ndarray]:
    """The ``vectorize_features`` outputs for one RGB image.

    The models are trained at the 256 px reference size, where ``log_side`` is always 0 (its training spread is nil,
    so any other value would stand hundreds of deviations away); pixel-sized parameters follow the image's size through
    :func:`serve.vectorize.params.scale_to_size` instead, so the models see the size feature at the reference.
    """
    features = compute_features(pixels).astype(np.float32)[None]
    features[0, _LOG_SIDE] = 0.0
    vectors = candidates(features, mapping)
    return {
        "features": features,
        "features_tiled": np.repeat(features, len(vectors), axis=0),
        "candidates": vectors,
        "familiar": np.asarray([float(mapping.familiar(features))], dtype=np.float32),
        "margins": mapping.margins.as_array(),
    }


class FeaturesModel:
    """The python-backend model; a bad image gets its own error response, the other requests still run."""

    def initialize(self, args: dict) -> None:
        """Load the tier-1 table from this model's version folder."""
        path = Path(args["model_repository"]) / args["model_version"] / TIER1_FILE
        self.mapping = Tier1Map.load(path)
        logger.info("vectorize_features: tier-1 table %s", path)

    def execute(self, requests: list) -> list:
        """Compute each request's features and candidates."""
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            pixels = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            if pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) == 0:
                error = pb_utils.TritonError(f"image must be HxWx3 uint8, got shape {pixels.shape}")
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            outputs = features_and_candidates(pixels, self.mapping)
            tensors = [pb_utils.Tensor(name, array) for name, array in outputs.items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
