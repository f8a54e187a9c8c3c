"""Triton I/O declarations of the vectorize models, read by the ONNX exporter, config writer and clients."""

from __future__ import annotations

from serve.triton.spec import DynamicBatching, EnsembleStep, ModelSpec, TensorSpec
from serve.vectorize.features import F
from serve.vectorize.params import P

_BATCHING = DynamicBatching(max_queue_delay_us=500, preferred_batch_sizes=(8, 32))

QUALITY = ModelSpec(
    name="vectorize_quality",
    inputs=(TensorSpec("features", "float32", (F,)), TensorSpec("params", "float32", (P,))),
    outputs=(TensorSpec("ssim", "float32", (1,)), TensorSpec("log_bytes", "float32", (1,))),
    max_batch_size=512,  # one request scores all tier-2 candidates (about 260) in one batch
    dynamic_batching=_BATCHING,
)
"""Quality predictor: image features and a normalised parameter vector -> predicted SSIM and ``ln(SVG
bytes)``."""

POLICY = ModelSpec(
    name="vectorize_policy",
    inputs=(TensorSpec("features", "float32", (F,)),),
    outputs=(
        TensorSpec("params", "float32", (P,)),
        TensorSpec("ssim", "float32", (1,)),
        TensorSpec("log_bytes", "float32", (1,)),
    ),
    max_batch_size=64,
    dynamic_batching=_BATCHING,
)
"""PPO policy (deterministic actor mean): image features -> normalised parameter vector in ``[0, 1]``, with the
quality predictor's SSIM and ``ln(bytes)`` for it (the predictor's graph is part of this one)."""

SPECS = (QUALITY, POLICY)

FEATURES = ModelSpec(
    name="vectorize_features",
    inputs=(TensorSpec("image", "uint8", (-1, -1, 3), ("height", "width")),),
    outputs=(
        TensorSpec("features", "float32", (1, F)),
        TensorSpec("features_tiled", "float32", (-1, F), ("candidates",)),
        TensorSpec("candidates", "float32", (-1, P), ("candidates",)),
        TensorSpec("familiar", "float32", (1,)),
        TensorSpec("margins", "float32", (4,)),
    ),
    python_model="serve.vectorize.triton_features:FeaturesModel",
)
"""Image features, the tier-2 candidate parameter sets (and the features tiled to match) for the predictor, whether
the image lies within the training distribution, and the calibrated margins (:class:`serve.vectorize.tiers.Margins`)
of the tier-1 table it reads from its version folder in the model repository."""

ENSEMBLE = ModelSpec(
    name="vectorize",
    inputs=FEATURES.inputs,
    outputs=(
        FEATURES.outputs[0],
        FEATURES.outputs[2],
        TensorSpec("ssim", "float32", (-1, 1), ("candidates",)),
        TensorSpec("log_bytes", "float32", (-1, 1), ("candidates",)),
        TensorSpec("policy_params", "float32", (-1, P), ("rows",)),
        TensorSpec("policy_ssim", "float32", (-1, 1), ("rows",)),
        TensorSpec("policy_log_bytes", "float32", (-1, 1), ("rows",)),
        FEATURES.outputs[3],
        FEATURES.outputs[4],
    ),
    ensemble=(
        EnsembleStep(
            FEATURES.name,
            {"image": "image"},
            {
                "features": "features",
                "features_tiled": "features_tiled",
                "candidates": "candidates",
                "familiar": "familiar",
                "margins": "margins",
            },
        ),
        EnsembleStep(
            QUALITY.name,
            {"features": "features_tiled", "params": "candidates"},
            {"ssim": "ssim", "log_bytes": "log_bytes"},
        ),
        EnsembleStep(
            POLICY.name,
            {"features": "features"},
            {"params": "policy_params", "ssim": "policy_ssim", "log_bytes": "policy_log_bytes"},
        ),
    ),
)
"""One call for every tier: features -> (policy params, predicted quality of every tier-2 candidate)."""
