"""The torch runtime: an engine's own PyTorch module, fp16 (or bf16) on a CUDA GPU, with a CUDA graph per batch bucket.

An engine folder built for it (``easel build --runtime torch``, or ``auto`` where a GPU is present) holds no graph:
``torch.json`` (:class:`TorchEngine`) names the engine, its tensors, the function that loads its module (the module
its ONNX graph would be exported from) and its batch buckets. :func:`serve.triton.onnx_backend.open_engine` opens it
as a :class:`TorchSession`, so Triton's python-backend model, the in-process runner and the memory measurement run it
as they run the CPU runtimes' engines.

A bucket is a row count: a call of ``rows`` rows at the engine's capture shapes (its native size) runs in the smallest
bucket that holds them, its rows padded (the last row repeated) and the outputs sliced back. On a GPU each bucket is a
CUDA graph captured once, when the session is started (:meth:`TorchSession.capture`); a call larger than the largest
bucket, or at other shapes, runs eager. On a CPU a bucket is the eager call on the padded rows (fp32: fp16 falls back
with a log line), which is how the padding and slicing are tested without a GPU.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from serve.triton.engine_files import EngineFiles

logger = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32)
"""The denoiser's buckets: a guided request is 2 rows, 16 of them 32 (the UNet's rows per call)."""
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WARMUP_CALLS = 2
"""Eager calls on a side stream before a bucket is captured (cuDNN and cuBLAS choose their kernels)."""

Loader = Callable[[Path, str, torch.dtype], torch.nn.Module]
"""``(engine folder, engine name, dtype) -> module``: the module taking the engine's inputs positionally."""


@dataclass(frozen=True)
class TorchEngine:
    """An engine as the torch runtime runs it, as ``torch.json`` holds it (written by ``easel build``).

    ``loader``: "module:function", a :data:`Loader`; ``inputs``: each input's name, dtype and shape without the batch
    axis at the engine's native size (its capture shape), in the module's argument order; ``keep_fp32``: the module
    runs in fp32 whatever the precision (SDXL's VAE); ``buckets``: the row counts captured (none: always eager).
    """

    engine: str
    loader: str
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...]
    outputs: tuple[str, ...]
    keep_fp32: bool = False
    buckets: tuple[int, ...] = ()

    def save(self, files: EngineFiles) -> None:
        """Write ``torch.json`` into the engine's folder."""
        files.torch_module.write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def of(cls, files: EngineFiles) -> TorchEngine:
        """The engine ``files``' ``torch.json`` describes."""
        raw = json.loads(files.torch_module.read_text())
        inputs = tuple((name, dtype, tuple(shape)) for name, dtype, shape in raw.pop("inputs"))
        return cls(**raw | {"inputs": inputs, "outputs": tuple(raw["outputs"]), "buckets": tuple(raw["buckets"])})

    def loader_function(self) -> Loader:
        """The function :attr:`loader` names (its module imported: diffusers, transformers)."""
        module_name, function = self.loader.split(":")
        return getattr(importlib.import_module(module_name), function)

    def load(self, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
        """The engine's module, loaded by :attr:`loader` from the engine folder ``folder``."""
        return self.loader_function()(folder, self.engine, dtype)


def bucket_for(rows: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket holding ``rows`` rows; None when none does (the call runs eager)."""
    return min((size for size in buckets if size >= rows), default=None)


def padded(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor`` with its last row repeated up to ``rows`` rows (a padded row is a real input: no NaN, no zeros)."""
    missing = rows - len(tensor)
    return tensor if missing <= 0 else torch.cat([tensor, tensor[-1:].expand(missing, *tensor.shape[1:])])


def compute_dtype(precision: str, device: torch.device, keep_fp32: bool) -> torch.dtype:
    """The dtype the module runs in: the precision's on a GPU; fp32 for ``keep_fp32``, and for fp16 on a CPU."""
    dtype = torch.float32 if keep_fp32 else DTYPES[precision]
    if dtype == torch.float16 and device.type != "cuda":
        logger.warning("fp16 on %s: the torch runtime runs this engine in fp32", device)
        return torch.float32
    return dtype


class _Bucket:
    """One bucket at the capture shapes: inputs copied into static rows, the module's call, outputs sliced back.

    On a GPU the call is a CUDA graph captured here (into ``pool``, which the buckets share: one runs at a time);
    elsewhere it is the eager call on the padded rows.
    """

    def __init__(self, call: Callable, rows: int, inputs: list[torch.Tensor], pool=None) -> None:
        self.rows = rows
        self.static = [padded(tensor, rows).clone() for tensor in inputs]
        self.graph = None
        self.outputs: tuple[torch.Tensor, ...] = ()
        if self.static[0].is_cuda:
            self._capture(call, pool)
        else:
            self.call = call

    def _capture(self, call: Callable, pool) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                call(*self.static)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.outputs = call(*self.static)

    def __call__(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The outputs of ``inputs`` (at most :attr:`rows` rows, the capture shapes), sliced to their rows."""
        count = len(inputs[0])
        for static, tensor in zip(self.static, inputs, strict=True):
            static.copy_(padded(tensor, self.rows))
        if self.graph is not None:
            self.graph.replay()
            outputs = self.outputs
        else:
            outputs = self.call(*self.static)
        return tuple(output[:count] for output in outputs)


class TorchSession:
    """An engine's module on ``device`` (default: the GPU where there is one), with the sessions' ``run`` interface.

    Calls may come from several threads (the in-process runner): they run one at a time.
    """

    def __init__(self, files: EngineFiles, precision: str = "fp16", device: str | None = None) -> None:
        self.engine = TorchEngine.of(files)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = compute_dtype(precision, self.device, self.engine.keep_fp32)
        folder = files.torch_module.resolve().parent.parent  # the engine folder (the file may be a repository link)
        module = self.engine.load(folder, self.dtype).to(self.device, self.dtype).eval()
        self.module = module if self.dtype == torch.float32 else CastIO(module, self.dtype)
        self.input_names = {name for name, _, _ in self.engine.inputs}
        self.output_names = list(self.engine.outputs)
        self.input_ranks = {name: 1 + len(shape) for name, _, shape in self.engine.inputs}
        self._lock = threading.Lock()
        self._buckets: dict[tuple, _Bucket] = {}

    def capture(self, buckets: Sequence[int] | None = None) -> None:
        """Make each bucket (default: the engine's) at the capture shapes: on a GPU a CUDA graph, largest first."""
        sizes = sorted(self.engine.buckets if buckets is None else buckets, reverse=True)
        pool = torch.cuda.graph_pool_handle() if self.device.type == "cuda" else None
        with self._lock, torch.inference_mode():
            for rows in sizes:
                example = [
                    torch.zeros((rows, *shape), dtype=getattr(torch, dtype), device=self.device)
                    for _, dtype, shape in self.engine.inputs
                ]
                self._buckets[(rows, *_shapes(example))] = _Bucket(self._eager, rows, example, pool)
        logger.info("%s: %d buckets (%s) on %s", self.engine.engine, len(sizes), self.dtype, self.device)

    @property
    def buckets(self) -> tuple[int, ...]:
        """The row counts made (captured on a GPU), smallest first."""
        return tuple(sorted(key[0] for key in self._buckets))

    def run(self, feeds: dict[str, np.ndarray], shared: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """All outputs for ``feeds`` (batch axis first; inputs the module does not take are left out), as float32."""
        names = [name for name, _, _ in self.engine.inputs]
        inputs = [torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device) for name in names]
        with self._lock, torch.inference_mode():
            bucket = self._buckets.get((bucket_for(len(inputs[0]), self.buckets), *_shapes(inputs)))
            outputs = bucket(inputs) if bucket is not None else self._eager(*inputs)
            return [output.float().cpu().numpy() for output in outputs]

    def _eager(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.module(*inputs)
        return outputs if isinstance(outputs, tuple) else (outputs,)


def _shapes(inputs: list[torch.Tensor]) -> tuple:
    """Each input's shape without the batch axis (a bucket's key, after its rows)."""
    return tuple(tuple(tensor.shape[1:]) for tensor in inputs)


class CastIO(torch.nn.Module):
    """Runs ``module`` in ``dtype`` behind float32 inputs and outputs, so an fp16 engine keeps the fp32 specs."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype
        self.graph_extras = getattr(module, "graph_extras", None)  # an adapter-ready engine's bank inputs
        self.side_files = getattr(module, "side_files", {})

    def forward(self, *inputs):
        """``module``'s outputs in float32."""
        outputs = self.module(*(x.to(self.dtype) if x.is_floating_point() else x for x in inputs))
        return tuple(o.float() for o in outputs) if isinstance(outputs, tuple) else outputs.float()
