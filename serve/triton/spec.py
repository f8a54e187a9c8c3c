"""One declaration of each Triton model's I/O, read by the exporter, the config writer and the clients."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

_TRITON_DTYPES = {
    "bool": mc.TYPE_BOOL,
    "uint8": mc.TYPE_UINT8,
    "int32": mc.TYPE_INT32,
    "int64": mc.TYPE_INT64,
    "float16": mc.TYPE_FP16,
    "float32": mc.TYPE_FP32,
    "bytes": mc.TYPE_STRING,
}


class Backend(enum.StrEnum):
    """How an engine is hosted: python-backend ONNX Runtime (bundled CPU Triton), native ONNX Runtime, or TensorRT.

    The last two are for the NGC Triton image; TensorRT plans run on its GPU (:mod:`build_engines.tensorrt`).
    """

    PYTHON_ONNX = "python"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


def on_gpu(arrays: Mapping[str, object]) -> bool:
    """Whether every one of an engine call's tensors is on a GPU (kept there: never copied to the host).

    Its text inputs (a LoRA-ready engine's ``adapters`` rows) are read on the host, wherever the tensors are.
    """
    tensors = [array for array in arrays.values() if not _is_text(array)]
    return bool(tensors) and all(getattr(array, "is_cuda", False) for array in tensors)


def _is_text(array: object) -> bool:
    return isinstance(array, np.ndarray) and array.dtype.kind in "OSU"


def gpu_work(arrays: Mapping[str, object]) -> Callable[[], None] | None:
    """For an engine call's outputs on a GPU, a blocking call that returns once the GPU has computed them.

    None for arrays on the host (computed when they arrived). The GPU's queue is marked now, so the wait covers the
    work queued so far, not what is queued after.
    """
    tensors = [array for array in arrays.values() if getattr(array, "is_cuda", False)]
    if not tensors:
        return None
    import torch

    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(tensors[0].device))
    return event.synchronize


AXIS_SCALE = "axis_scale:"
"""A model config parameter per input whose dynamic axes are not the reference length (a ControlNet-ready UNet's
residuals, 1/2, 1/4, ...; an image, the VAE's factor): ``axis_scale:NAME`` -> :attr:`TensorSpec.axis_scale`."""


@dataclass(frozen=True)
class TensorSpec:
    """A tensor without its batch dimension; ``-1`` marks a dynamic axis, named in ``axis_names``.

    Every dynamic axis of a model follows one reference length (the latent side, for text-to-image):
    ``axis_scale`` says how this tensor's follow it, ``ceil(reference x axis_scale)`` (an image: the VAE's factor;
    a ControlNet residual: 1/2, 1/4, ...). A tensor with ``chunks`` (tokens per chunk, most chunks) instead has one
    dynamic axis of whole chunks, following no reference: a denoiser's text conditioning, a long prompt's chunks
    side by side (:mod:`serve.text_to_image.prompt_chunks`).
    """

    name: str
    dtype: str
    dims: tuple[int, ...]
    axis_names: tuple[str, ...] = ()
    axis_scale: float = 1.0
    chunks: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.dtype not in _TRITON_DTYPES:
            raise ValueError(f"unsupported dtype {self.dtype!r} for tensor {self.name!r}")
        if len(self.axis_names) != sum(d == -1 for d in self.dims):
            raise ValueError(f"tensor {self.name!r}: one axis name is needed per dynamic dimension")

    @property
    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype of this tensor (object for strings)."""
        return np.dtype(object) if self.dtype == "bytes" else np.dtype(self.dtype)

    def shape(self, *sides: int, chunks: int = 1) -> tuple[int, ...]:
        """Its dims with the dynamic axes at ``sides`` of the reference (one side: every axis), scaled.

        A tensor of :attr:`chunks` has ``chunks`` of them on its dynamic axis instead.
        """
        if self.chunks is not None:
            return tuple(self.chunks[0] * chunks if d == -1 else d for d in self.dims)
        sides = iter(sides * len(self.dims) if len(sides) == 1 else sides)
        return tuple(math.ceil(next(sides) * self.axis_scale) if d == -1 else d for d in self.dims)

    def onnx_dynamic_axes(self, batch_axis: str | None) -> dict[int, str]:
        """ONNX ``dynamic_axes`` entry for this tensor, with the batch axis first when batched."""
        offset = 0 if batch_axis is None else 1
        axes = {0: batch_axis} if batch_axis is not None else {}
        names = iter(self.axis_names)
        axes.update({i + offset: next(names) for i, d in enumerate(self.dims) if d == -1})
        return axes


@dataclass(frozen=True)
class DynamicBatching:
    """Triton dynamic batcher settings."""

    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    priority_levels: int = 0  # 0: one queue; else requests name a level (1 first) and the batcher honours it
    default_priority_level: int = 0


@dataclass(frozen=True)
class EnsembleStep:
    """One step of an ensemble: ``model``'s tensors mapped to ensemble tensor names."""

    model: str
    input_map: dict[str, str]
    output_map: dict[str, str]


@dataclass(frozen=True)
class ModelSpec:
    """A Triton model: its name, tensors and batching; an ensemble when ``ensemble`` lists steps.

    ``python_model`` ("module:Class") marks a python-backend model implemented by that class, not an ONNX engine;
    ``decoupled``: a python-backend model that answers each request when it is done, not a batch at a time.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    dynamic_batching: DynamicBatching | None = None
    instance_count: int = 1
    parameters: dict[str, str] = field(default_factory=dict)
    ensemble: tuple[EnsembleStep, ...] = ()
    python_model: str | None = None
    decoupled: bool = False
    canary_side: int = 8
    """The reference length of the supervisor's canary inference: the smallest its engine takes."""

    @property
    def batch_axis(self) -> str | None:
        """Name of the leading batch axis, or None for an unbatched model."""
        return "batch" if self.max_batch_size > 0 else None

    def input(self, name: str) -> TensorSpec:
        """The input tensor called ``name``."""
        return next(t for t in self.inputs if t.name == name)

    def positions(self, *sides: int) -> int:
        """The positions of its first input with dynamic axes at ``sides`` of the reference (1 when none has any).

        What its memory and time per row are fitted over (:mod:`serve.triton.memory`); the python backend counts
        them on the same input.
        """
        first = next((t for t in self.inputs if -1 in t.dims), None)
        if first is None:
            return 1
        return math.prod(size for size, d in zip(first.shape(*sides), first.dims, strict=True) if d == -1)

    @property
    def graph_inputs(self) -> tuple[TensorSpec, ...]:
        """The inputs an ONNX graph takes: all but strings, which the python-backend model reads itself."""
        return tuple(t for t in self.inputs if t.dtype != "bytes")

    def onnx_dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``dynamic_axes`` for ``torch.onnx.export``."""
        return {t.name: t.onnx_dynamic_axes(self.batch_axis) for t in (*self.graph_inputs, *self.outputs)}

    def to_model_config(self, backend: Backend = Backend.PYTHON_ONNX, gpu: bool = False) -> mc.ModelConfig:
        """The Triton ``ModelConfig`` protobuf for this model on ``backend``.

        ``gpu``: a python-backend model on the GPU (the torch runtime): one instance per GPU, holding its weights once.
        """
        config = mc.ModelConfig(name=self.name, max_batch_size=self.max_batch_size)
        if self.ensemble:
            config.platform = "ensemble"
        elif backend is Backend.ONNXRUNTIME and not self.python_model:
            config.platform = "onnxruntime_onnx"
        elif backend is Backend.TENSORRT and not self.python_model:
            config.platform = "tensorrt_plan"
        else:
            config.backend = "python"
        config.input.extend(_tensor_config(t, mc.ModelInput) for t in self.inputs)
        config.output.extend(_tensor_config(t, mc.ModelOutput) for t in self.outputs)
        for step in self.ensemble:
            config.ensemble_scheduling.step.append(
                mc.ModelEnsembling.Step(
                    model_name=step.model, model_version=-1, input_map=step.input_map, output_map=step.output_map
                )
            )
        if not self.ensemble:
            on_gpu = gpu or config.platform == "tensorrt_plan"
            kind = mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU
            count = 1 if gpu else self.instance_count
            config.instance_group.append(mc.ModelInstanceGroup(count=count, kind=kind))
        if self.decoupled:
            config.model_transaction_policy.decoupled = True
        if self.dynamic_batching is not None:
            config.dynamic_batching.max_queue_delay_microseconds = self.dynamic_batching.max_queue_delay_us
            config.dynamic_batching.preferred_batch_size.extend(self.dynamic_batching.preferred_batch_sizes)
            if self.dynamic_batching.priority_levels:
                config.dynamic_batching.priority_levels = self.dynamic_batching.priority_levels
                config.dynamic_batching.default_priority_level = self.dynamic_batching.default_priority_level
        for key, value in sorted(self.parameters.items()):
            config.parameters[key].string_value = value
        for tensor in self.inputs:  # what a client of Triton alone cannot read from the metadata's -1s
            if tensor.chunks is None and -1 in tensor.dims and tensor.axis_scale != 1:
                config.parameters[f"{AXIS_SCALE}{tensor.name}"].string_value = repr(tensor.axis_scale)
        return config


def _tensor_config(tensor: TensorSpec, message: type) -> mc.ModelInput | mc.ModelOutput:
    # A per-sample scalar is declared [1] to Triton and reshaped to [] so ONNX sees shape [batch].
    dims = list(tensor.dims) or [1]
    proto = message(name=tensor.name, data_type=_TRITON_DTYPES[tensor.dtype], dims=dims)
    if not tensor.dims:
        proto.reshape.SetInParent()
    return proto


def write_model_config(
    spec: ModelSpec, repository: Path, backend: Backend = Backend.PYTHON_ONNX, gpu: bool = False
) -> Path:
    """Write ``<repository>/<model>/config.pbtxt`` for ``spec`` (``gpu``: on the GPU) and return its path."""
    path = repository / spec.name / "config.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text_format.MessageToString(spec.to_model_config(backend, gpu)))
    return path


def read_model_config(path: Path) -> mc.ModelConfig:
    """Parse a ``config.pbtxt`` with Triton's own protobuf schema."""
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def triton_dtype_name(dtype: str) -> str:
    """The KServe v2 datatype string ("FP32", "INT64", "BYTES", ...) for a numpy dtype name."""
    return mc.DataType.Name(_TRITON_DTYPES[dtype]).removeprefix("TYPE_").replace("STRING", "BYTES")


class EngineRunner(Protocol):
    """Runs one engine on named numpy inputs (batch axis first): Triton, or ONNX Runtime or PyTorch in-process."""

    async def infer(
        self, spec: ModelSpec, inputs: Mapping[str, np.ndarray], priority: int = 0
    ) -> dict[str, np.ndarray]:
        """Return the engine's outputs by name (``priority``: Triton's level, 1 first; 0 the default)."""


def canary_body(spec: ModelSpec) -> dict:
    """The KServe v2 JSON body of ``spec``'s canary: zeros (empty strings), one row, dynamic axes at its canary side."""
    inputs = []
    for tensor in spec.inputs:
        dims = list(tensor.shape(spec.canary_side)) or [1]
        shape = [1, *dims] if spec.max_batch_size > 0 else dims
        if tensor.dtype == "bytes":  # e.g. a LoRA-ready engine's adapters: none
            data = [""] * int(np.prod(shape))
        else:
            data = np.zeros(shape, dtype=tensor.numpy_dtype).reshape(-1).tolist()
        inputs.append({"name": tensor.name, "shape": shape, "datatype": triton_dtype_name(tensor.dtype), "data": data})
    return {"inputs": inputs}
