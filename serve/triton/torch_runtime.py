"""The torch runtime: an engine's own PyTorch module, fp16 (or bf16) on a CUDA GPU, with a CUDA graph per batch bucket.

An engine folder built for it (``easel build --runtime torch``, or ``auto`` where a GPU is present) holds no graph:
``torch.json`` (:class:`TorchEngine`) names the engine, its tensors, the function that loads its module (the module
its ONNX graph would be exported from) and its batch buckets. :func:`serve.triton.onnx_backend.open_engine` opens it
as a :class:`TorchSession`, so Triton's python-backend model, the in-process runner and the memory measurement run it
as they run the CPU runtimes' engines.

A bucket is a row count at some input shapes: a call of ``rows`` rows runs in the smallest bucket captured at its
shapes that holds them, its rows padded (the last row repeated) and the outputs sliced back. On a GPU each bucket is a
CUDA graph captured once, when the session is started (:meth:`TorchSession.capture`: the native size, or the latent
sizes and prompt chunk counts a stack serves), under the session's device. A call with no bucket (more rows than the
largest, or shapes not captured) runs eager: logged once per shape and counted (:attr:`TorchSession.eager_calls`). On a
CPU a bucket is the eager call on the padded rows (fp32: fp16 falls back with a log line), which is how the padding,
slicing and counting are tested without a GPU.

A LoRA-ready engine's module also takes inputs without a batch axis (:attr:`TorchEngine.shared`: its banks, given
whole to every call, after the batched ones). Its buckets read them from static tensors too, one set per shapes
(:mod:`serve.triton.torch_graphs`); the axes whose size a call chooses (a bank's rank, its adapters' count:
:attr:`TorchEngine.padded`) are captured at a few sizes, a call zero-padded to the smallest that holds it.

The arguments of sinusoidal embeddings (:data:`FULL_PRECISION_INPUTS`: the timestep) stay fp32 in an fp16 or bf16
engine: fp16 would round a fractional timestep (Euler, DPM++ Karras, SD3, Flux) to a step of 0.5.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from serve.triton.engine_files import EngineFiles
from serve.triton.torch_graphs import Bucket, Padded, SharedInputs, bucket_for, padded_shapes, padding_sizes

logger = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32)
"""The denoiser's buckets: a guided request is 2 rows, 16 of them 32 (the UNet's rows per call)."""
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FULL_PRECISION_INPUTS = frozenset({"timestep", "guidance", "time_ids"})
"""Inputs an fp16 or bf16 engine takes in fp32: what the modules turn into sinusoidal embeddings (in fp32, then cast
to their own dtype): the denoisers' timestep, Flux's guidance, SDXL's size and crop ids."""
TEXT_TOKENS = "text_tokens"
"""The axis of a denoiser's text states, whole prompt chunks (:data:`serve.text_to_image.spec.TEXT_AXIS`)."""

Loader = Callable[[Path, str, torch.dtype], torch.nn.Module]
"""``(engine folder, engine name, dtype) -> module``: the module taking the engine's inputs positionally."""
Shapes = tuple[tuple[int, ...], ...]
"""Each input's shape without the batch axis (a shared input's whole), in the module's argument order."""
Tensors = tuple[tuple[str, str, tuple[int, ...]], ...]
"""Each input's name, dtype and shape (without the batch axis)."""


@dataclass(frozen=True)
class CaptureShape:
    """Where buckets are captured: a latent size and a prompt's chunk count (the text states' length; native: 1)."""

    latent_height: int
    latent_width: int
    chunks: int = 1


def dim_axes(dims: Sequence[int], axis_names: Sequence[str]) -> tuple[str, ...]:
    """Each dim's axis name, ``""`` for a fixed one, of a tensor whose dynamic dims (``-1``) are ``axis_names``."""
    names = iter(axis_names)
    return tuple(next(names) if size == -1 else "" for size in dims)


@dataclass(frozen=True)
class TorchEngine:
    """An engine as the torch runtime runs it, as ``torch.json`` holds it (written by ``easel build``).

    ``loader``: "module:function", a :data:`Loader`; ``inputs``: each input's name, dtype and shape without the batch
    axis at the engine's native size (its capture shape), in the module's argument order; ``keep_fp32``: the module
    runs in fp32 whatever the precision (SDXL's VAE); ``buckets``: the row counts captured (none: always eager);
    ``axes``: each input's :func:`dim_axes`, and ``side`` the latent side ``inputs`` are at (what
    :meth:`input_shapes` resizes; absent in engines built before them: those capture their native size alone);
    ``scale``: pixels per latent (what turns a stack's graph sizes, in pixels, into capture shapes); ``shared``:
    inputs without a batch axis, after ``inputs`` (a LoRA-ready engine's banks), ``shared_axes`` theirs;
    ``padded``: axes (by name) a call may hold fewer of than its bucket, zero-padded, and the sizes captured.
    """

    engine: str
    loader: str
    inputs: Tensors
    outputs: tuple[str, ...]
    keep_fp32: bool = False
    buckets: tuple[int, ...] = ()
    axes: tuple[tuple[str, ...], ...] = ()
    side: int = 0
    scale: int = 0
    shared: Tensors = ()
    shared_axes: tuple[tuple[str, ...], ...] = ()
    padded: Padded = ()

    def save(self, files: EngineFiles) -> None:
        """Write ``torch.json`` into the engine's folder."""
        files.torch_module.write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def of(cls, files: EngineFiles) -> TorchEngine:
        """The engine ``files``' ``torch.json`` describes."""
        raw = json.loads(files.torch_module.read_text())
        raw["inputs"] = tuple((name, dtype, tuple(shape)) for name, dtype, shape in raw["inputs"])
        raw["axes"] = tuple(tuple(names) for names in raw.get("axes", ()))  # none in engines built before them
        raw["shared"] = tuple((name, dtype, tuple(shape)) for name, dtype, shape in raw.get("shared", ()))
        raw["shared_axes"] = tuple(tuple(names) for names in raw.get("shared_axes", ()))
        raw["padded"] = tuple((axis, tuple(sizes)) for axis, sizes in raw.get("padded", ()))
        return cls(**raw | {"outputs": tuple(raw["outputs"]), "buckets": tuple(raw["buckets"])})

    @property
    def names(self) -> list[str]:
        """Every input's name in the module's argument order: the batched ones, then the shared ones."""
        return [name for name, _, _ in (*self.inputs, *self.shared)]

    @property
    def all_axes(self) -> tuple[tuple[str, ...], ...]:
        """Every input's :func:`dim_axes`, the batched ones' then the shared ones'."""
        return (*self.axes, *self.shared_axes)

    def loader_function(self) -> Loader:
        """The function :attr:`loader` names (its module imported: diffusers, transformers)."""
        module_name, function = self.loader.split(":")
        return getattr(importlib.import_module(module_name), function)

    def load(self, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
        """The engine's module, loaded by :attr:`loader` from the engine folder ``folder``."""
        return self.loader_function()(folder, self.engine, dtype)

    def capture_shapes(self, sizes: Sequence[tuple[int, int]], chunks: int) -> list[CaptureShape] | None:
        """Where to capture for pixel ``sizes`` (height, width) beside the native one, at 1..``chunks`` prompt chunks.

        None (the native size, one chunk) when nothing more is asked, or for an engine built without its scale.
        """
        if not sizes and chunks <= 1:
            return None
        if self.side <= 0 or self.scale <= 0:
            logger.warning("%s: built without its axes: captures its native size alone (rebuild it)", self.engine)
            return None
        latents = [(self.side, self.side), *((height // self.scale, width // self.scale) for height, width in sizes)]
        return [CaptureShape(h, w, k) for h, w in dict.fromkeys(latents) for k in range(1, chunks + 1)]

    def input_shapes(self, at: CaptureShape | None = None, sizes: Mapping[str, int] | None = None) -> Shapes:
        """Each input's shape at ``at`` (None: native): its latent axes at that size, its text tokens at its chunks.

        An axis following the latents at a scale (an image's, a ControlNet residual's) keeps its ratio to
        :attr:`side`; other axes keep their native size, but :attr:`padded` ones, at ``sizes``. Raises ValueError for
        an engine built without its axes.
        """
        native = tuple(shape for _, _, shape in (*self.inputs, *self.shared))
        if at is None and not sizes:
            return native
        axes = self.all_axes
        if len(axes) != len(native) or (at is not None and self.side <= 0):
            raise ValueError(f"{self.engine}: built without its axes (rebuild it to capture other sizes)")
        return tuple(
            tuple(_resized(size, axis, at, self.side, sizes or {}) for size, axis in zip(shape, names, strict=True))
            for shape, names in zip(native, axes, strict=True)
        )


def _resized(size: int, axis: str, at: CaptureShape | None, side: int, sizes: Mapping[str, int]) -> int:
    if axis in sizes:
        return sizes[axis]
    if at is None:
        return size
    if axis == TEXT_TOKENS:
        return size * at.chunks  # native: one chunk
    if "height" in axis:
        return math.ceil(at.latent_height * size / side)
    if "width" in axis:
        return math.ceil(at.latent_width * size / side)
    return size


def compute_dtype(precision: str, device: torch.device, keep_fp32: bool) -> torch.dtype:
    """The dtype the module runs in: the precision's on a GPU; fp32 for ``keep_fp32``, and for fp16 on a CPU."""
    dtype = torch.float32 if keep_fp32 else DTYPES[precision]
    if dtype == torch.float16 and device.type != "cuda":
        logger.warning("fp16 on %s: the torch runtime runs this engine in fp32", device)
        return torch.float32
    return dtype


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """The context in which ``device``'s work runs: its CUDA device made current (streams, graphs, pools are its)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class TorchSession:
    """An engine's module on ``device`` (default: the GPU where there is one), with the sessions' ``run`` interface.

    Calls may come from several threads (the in-process runner): they run one at a time. Everything it does on a GPU
    (loading, capture, calls) runs under its device (:func:`on_device`), whichever device the thread had current.
    """

    def __init__(self, files: EngineFiles, precision: str = "fp16", device: str | None = None) -> None:
        self.engine = TorchEngine.of(files)
        self.device = _concrete(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
        self.dtype = compute_dtype(precision, self.device, self.engine.keep_fp32)
        folder = files.torch_module.resolve().parent.parent  # the engine folder (the file may be a repository link)
        with on_device(self.device):
            module = self.engine.load(folder, self.dtype).to(self.device, self.dtype).eval()
        full = {index for index, (name, _, _) in enumerate(self.engine.inputs) if name in FULL_PRECISION_INPUTS}
        self.module = module if self.dtype == torch.float32 else CastIO(module, self.dtype, full)
        self.input_names = set(self.engine.names)
        self.output_names = list(self.engine.outputs)
        self.input_ranks = {name: 1 + len(shape) for name, _, shape in self.engine.inputs}
        self.input_ranks |= {name: len(shape) for name, _, shape in self.engine.shared}
        self.eager_calls: Counter[Shapes] = Counter()
        """Calls that ran eager though buckets were captured, by their inputs' shapes (without the batch axis)."""
        self._lock = threading.Lock()
        self._buckets: dict[tuple, Bucket] = {}  # by (rows, *shapes)
        self._kept: dict[str, tuple[object, torch.Tensor]] = {}  # a shared input's last array, on the device

    def capture(self, buckets: Sequence[int] | None = None, shapes: Sequence[CaptureShape] | None = None) -> None:
        """Make each bucket (default: the engine's) at each of ``shapes`` (default: the native size, one chunk).

        On a GPU each is a CUDA graph, captured under the session's device on one stream into one memory pool, the
        largest calls first. Shapes that give an engine the same inputs (chunks, for an engine without text states)
        are captured once; an engine built without its axes captures its native size alone (with a log line). Each
        is captured at every combination of the :attr:`TorchEngine.padded` axes' sizes, its shared inputs' static
        tensors one set per shapes.
        """
        sizes = sorted(set(self.engine.buckets if buckets is None else buckets))
        paddings = padding_sizes(self.engine.padded)
        try:
            wanted = list(dict.fromkeys(self.engine.input_shapes(at, p) for at in shapes or [None] for p in paddings))
        except ValueError as error:
            logger.warning("%s: %s: capturing its native size alone", self.engine.engine, error)
            wanted = [self.engine.input_shapes()]
        plan = sorted(((rows, at) for at in wanted for rows in sizes), key=_elements, reverse=True)
        cuda = self.device.type == "cuda"
        with self._lock, torch.inference_mode(), on_device(self.device):
            pool = torch.cuda.graph_pool_handle() if cuda else None
            stream = torch.cuda.Stream(self.device) if cuda else None
            statics: dict[Shapes, SharedInputs] = {}
            batched = len(self.engine.inputs)
            dtypes = [getattr(torch, dtype) for _, dtype, _ in (*self.engine.inputs, *self.engine.shared)]
            for rows, at in plan:
                example = [
                    torch.zeros((rows, *shape), dtype=dtype, device=self.device)
                    for dtype, shape in zip(dtypes[:batched], at[:batched], strict=True)
                ]
                shared = at[batched:]
                if shared and shared not in statics:  # the banks' static tensors: one set per shapes
                    zeros = zip(dtypes[batched:], shared, strict=True)
                    statics[shared] = SharedInputs([torch.zeros(s, dtype=d, device=self.device) for d, s in zeros])
                self._buckets[(rows, *at)] = Bucket(self._eager, rows, example, statics.get(shared), pool, stream)
        logger.info(
            "%s: buckets %s at %d shapes (%s) on %s", self.engine.engine, sizes, len(wanted), self.dtype, self.device
        )

    @property
    def buckets(self) -> tuple[int, ...]:
        """The row counts made (captured on a GPU) at any shapes, smallest first."""
        return tuple(sorted({key[0] for key in self._buckets}))

    @property
    def shapes(self) -> tuple[Shapes, ...]:
        """The input shapes buckets were made at."""
        return tuple(dict.fromkeys(key[1:] for key in self._buckets))

    def run(self, feeds: dict[str, np.ndarray], shared: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """All outputs for ``feeds`` (batch axis first; inputs the module does not take are left out), as float32.

        ``shared``: the inputs without a batch axis (a LoRA-ready engine's banks; they may come in ``feeds`` too).
        """
        given = {**feeds, **(shared or {})}
        with on_device(self.device):
            names = [name for name, _, _ in self.engine.inputs]
            inputs = [torch.from_numpy(np.ascontiguousarray(given[name])).to(self.device) for name in names]
            inputs += self._shared(given)
            return [output.float().cpu().numpy() for output in self._call(inputs)]

    def run_tensors(
        self, feeds: Mapping[str, torch.Tensor], shared: Mapping[str, np.ndarray] | None = None
    ) -> list[torch.Tensor]:
        """All outputs for ``feeds`` already on this session's device, as float32 tensors there, without waiting.

        The host never waits for the GPU here (no copy back): the caller's next work queues behind it. The outputs
        are the session's own (copies of a graph's static outputs, which its next replay overwrites). ``shared``:
        as :meth:`run`'s, copied to the device once per array.
        """
        with on_device(self.device):
            inputs = [feeds[name] for name, _, _ in self.engine.inputs] + self._shared(shared or {})
            return [output.float().clone() for output in self._call(inputs)]

    def _shared(self, given: Mapping[str, object]) -> list[torch.Tensor]:
        """The shared inputs of ``given`` on the device: an array given again (the same banks) is not copied again."""
        tensors = []
        for name, _, _ in self.engine.shared:
            array = given[name]
            kept = self._kept.get(name)
            if kept is None or kept[0] is not array:
                tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
                kept = self._kept[name] = (array, tensor.to(self.device))
            tensors.append(kept[1])
        return tensors

    def _call(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The module's outputs for ``inputs``: a captured bucket's where one holds them, else eager (counted)."""
        with self._lock, torch.inference_mode():
            at = _shapes(inputs, len(self.engine.inputs))
            target = padded_shapes(self.engine.padded, self.engine.all_axes, at)
            keys = [key[0] for key in self._buckets if key[1:] == target]
            rows = bucket_for(len(inputs[0]), keys) if target is not None else None
            if rows is None:
                self._count_eager(len(inputs[0]), at)
                return self._eager(*inputs)
            return self._buckets[(rows, *target)](inputs)

    @property
    def eager_total(self) -> int:
        """Calls run eager though buckets were captured, at any shapes."""
        return sum(self.eager_calls.values())

    def _count_eager(self, rows: int, at: Shapes) -> None:
        if not self._buckets:  # nothing captured (an engine without buckets): eager is its way, not a miss
            return
        self.eager_calls[at] += 1
        if self.eager_calls[at] == 1:
            names = self.engine.names
            captured = "; ".join(
                f"rows {sorted(k[0] for k in self._buckets if k[1:] == s)} at {_named(names, s)}" for s in self.shapes
            )
            logger.warning(
                "%s: a call of %d rows at %s runs eager (no graph; logged once per shape, counted); captured: %s",
                self.engine.engine,
                rows,
                _named(names, at),
                captured,
            )

    def _eager(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.module(*inputs)
        return outputs if isinstance(outputs, tuple) else (outputs,)


def _concrete(device: torch.device) -> torch.device:
    """``device`` with its index: ``cuda`` is the current CUDA device."""
    return (
        torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" and device.index is None else device
    )


def _shapes(inputs: list[torch.Tensor], batched: int) -> Shapes:
    """Each input's shape without the batch axis, the ``batched`` first ones' (what a bucket is captured at)."""
    return tuple(tuple(tensor.shape[1:] if index < batched else tensor.shape) for index, tensor in enumerate(inputs))


def _elements(plan: tuple[int, Shapes]) -> int:
    rows, shapes = plan
    return rows * sum(math.prod(shape) for shape in shapes)


def _named(names: Sequence[str], shapes: Shapes) -> str:
    return ", ".join(f"{name} {list(shape)}" for name, shape in zip(names, shapes, strict=True))


class CastIO(torch.nn.Module):
    """Runs ``module`` in ``dtype`` behind float32 inputs and outputs, so an fp16 engine keeps the fp32 specs.

    ``full_precision``: the positions of inputs handed on as they come (fp32: :data:`FULL_PRECISION_INPUTS`).
    """

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype, full_precision: Collection[int] = ()) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype
        self.full_precision = frozenset(full_precision)
        self.graph_extras = getattr(module, "graph_extras", None)  # an adapter-ready engine's bank inputs
        self.side_files = getattr(module, "side_files", {})

    def forward(self, *inputs):
        """``module``'s outputs in float32."""
        cast = (
            x if index in self.full_precision or not x.is_floating_point() else x.to(self.dtype)
            for index, x in enumerate(inputs)
        )
        outputs = self.module(*cast)
        return tuple(o.float() for o in outputs) if isinstance(outputs, tuple) else outputs.float()
