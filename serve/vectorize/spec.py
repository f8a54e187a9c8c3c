"""Triton I/O declarations of the vectorize models, read by the ONNX exporter, config writer and clients."""

from __future__ import annotations

from serve.triton.spec import DynamicBatching, ModelSpec, TensorSpec
from serve.vectorize.features import F
from serve.vectorize.params import P

_BATCHING = DynamicBatching(max_queue_delay_us=500, preferred_batch_sizes=(8, 32))

QUALITY = ModelSpec(
    name="vectorize_quality",
    inputs=(TensorSpec("features", "float32", (F,)), TensorSpec("params", "float32", (P,))),
    outputs=(TensorSpec("ssim", "float32", (1,)), TensorSpec("log_bytes", "float32", (1,))),
    max_batch_size=64,
    dynamic_batching=_BATCHING,
)
"""Quality predictor: image features and a normalised parameter vector -> predicted SSIM and ``ln(SVG
bytes)``."""

POLICY = ModelSpec(
    name="vectorize_policy",
    inputs=(TensorSpec("features", "float32", (F,)),),
    outputs=(TensorSpec("params", "float32", (P,)),),
    max_batch_size=64,
    dynamic_batching=_BATCHING,
)
"""PPO policy (deterministic actor mean): image features -> normalised parameter vector in ``[0, 1]``."""

SPECS = (QUALITY, POLICY)
