"""TensorRT plans from the same model spec: optimisation profiles from the API's limits, a plan cache, the build.

Each dynamic axis of an engine gets a (min, opt, max) range: the batch axis 1 / the first preferred batch size (else
2, one guided request) / the spec's ``max_batch_size``; latent axes the API's smallest side, the model's native side
and the API's largest side over the VAE's scale; other axes (an image's pixels, a ControlNet residual's) those scaled
by their tensor's ``axis_scale``; a denoiser's text axis one prompt chunk to the most; fixed axes (the text
encoders' length, channels) their size. Plans are fp16, built with a shared
timing cache, and cached by the ONNX file's hash, the profile, the GPU and the TensorRT version. The build needs
``tensorrt`` (the ``gpu`` extra) and an NVIDIA GPU.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from serve.files import files_hash
from serve.paths import easel_home
from serve.protocol.sizes import MAX_SIDE, MIN_SIDE
from serve.triton.engine_files import PLAN
from serve.triton.spec import ModelSpec

logger = logging.getLogger(__name__)

TENSORRT_MISSING = (
    "--backend tensorrt needs TensorRT and an NVIDIA GPU: pip install 'easel-serve[gpu]' on a machine with CUDA"
)
Shape = tuple[int, ...]


@dataclass(frozen=True)
class Range:
    """The sizes one axis takes: the smallest, the one TensorRT tunes for, the largest."""

    min: int
    opt: int
    max: int


def tensorrt_available() -> bool:
    """Whether TensorRT can build here: the ``tensorrt`` package and a CUDA GPU."""
    import importlib.util

    import torch

    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def latent_range(native_size: int, vae_scale_factor: int) -> Range:
    """The latent side's range, from the API's limits: every dynamic axis of the engines follows it (scaled)."""
    return Range(*(side // vae_scale_factor for side in (MIN_SIDE, native_size, MAX_SIDE)))


def batch_range(spec: ModelSpec) -> Range:
    """The batch axis' range (1, the first preferred batch size or 2, ``max_batch_size``)."""
    preferred = spec.dynamic_batching.preferred_batch_sizes if spec.dynamic_batching else ()
    return Range(1, min(preferred[0] if preferred else 2, spec.max_batch_size), spec.max_batch_size)


def profile(spec: ModelSpec, latent: Range) -> dict[str, tuple[Shape, Shape, Shape]]:
    """The min, opt and max shape of each input of ``spec`` (ONNX shapes: the batch axis first, scalars as [batch]).

    Each dynamic axis is the latent side scaled by its tensor's ``axis_scale`` (an image's pixels, a residual's); a
    prompt's text axis takes one chunk up to the most.
    """
    shapes = {}
    for tensor in spec.inputs:
        ends = [tensor.shape(getattr(latent, end)) for end in ("min", "opt", "max")]
        if tensor.chunks is not None:  # a prompt's text: one chunk to the most
            ends[-1] = tensor.shape(chunks=tensor.chunks[1])
        if spec.max_batch_size:
            batch = batch_range(spec)
            ends = [(getattr(batch, end), *shape) for end, shape in zip(("min", "opt", "max"), ends, strict=True)]
        shapes[tensor.name] = tuple(ends)
    return shapes


def plan_key(onnx_path: Path, shapes: Mapping[str, tuple[Shape, Shape, Shape]], gpu: str, tensorrt: str) -> str:
    """The cache key of a plan: the ONNX graph and weights, the profile, the GPU and the TensorRT version."""
    folder = onnx_path.parent
    graph = [p for p in folder.iterdir() if p.is_file() and p.suffix in (".onnx", ".data")]
    extra = json.dumps({"profile": shapes, "gpu": gpu, "tensorrt": tensorrt}, sort_keys=True).encode()
    return files_hash(graph, folder, extra)[:24]


def build_plan(onnx_path: Path, shapes: Mapping[str, tuple[Shape, Shape, Shape]], cache: Path | None = None) -> Path:
    """A cached fp16 plan of ``onnx_path`` for ``shapes``; built with TensorRT when not cached."""
    import tensorrt as trt
    import torch

    cache = cache or easel_home() / "plans"
    key = plan_key(onnx_path, shapes, torch.cuda.get_device_name(), trt.__version__)
    plan = cache / key / PLAN
    if plan.exists():
        logger.info("plan of %s cached in %s", onnx_path.parent.name, plan.parent)
        return plan
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    timing_file = cache / "timing.cache"
    timing = config.create_timing_cache(timing_file.read_bytes() if timing_file.exists() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    optimisation = builder.create_optimization_profile()
    for name, (smallest, tuned, largest) in shapes.items():
        optimisation.set_shape(name, smallest, tuned, largest)
    config.add_optimization_profile(optimisation)
    logger.info("building the TensorRT plan of %s (fp16; minutes)", onnx_path.parent.name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build a plan of {onnx_path}")
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_bytes(bytes(serialized))
    timing_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    return plan
