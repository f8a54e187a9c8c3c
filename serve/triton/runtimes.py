"""The runtimes and precisions an engine may run with, declared once, and the one door that opens an engine.

An engine's folder says how it runs in ``runtime.json`` (written by ``easel build``; absent: ONNX Runtime fp32, as
folders built before OpenVINO): :func:`serve.triton.onnx_backend.open_engine`, the one door, reads it and returns a
session with one interface whichever runtime it is. ONNX Runtime runs ``model.onnx``; OpenVINO runs the IR converted
from it at build (``model.xml``); PyTorch runs the engine's diffusers module itself, on a CUDA GPU
(:mod:`serve.triton.torch_runtime`; on a CPU in fp32, for tests).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from enum import StrEnum

import numpy as np

from serve.triton.engine_files import EngineFiles

logger = logging.getLogger(__name__)


class Runtime(StrEnum):
    """What runs an engine: ONNX Runtime or OpenVINO on a CPU, PyTorch on a CUDA GPU."""

    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    TORCH = "torch"


CPU_RUNTIMES = (Runtime.ONNXRUNTIME, Runtime.OPENVINO)
GPU_RUNTIME = Runtime.TORCH
DEVICES = ("auto", "cpu", "cuda")
"""Where a stack's engines run (``easel up --device``): ``auto`` is ``cuda`` where PyTorch sees a CUDA GPU."""
DEFAULT_DEVICE = "auto"
GPU_PRECISION = "fp16"
"""What ``--precision auto`` builds for the GPU."""


AUTO = "auto"
"""``--runtime auto``: on a GPU, the torch runtime; on a CPU, each engine measured both ways at build, the faster kept
(within the parity bound).
``--precision auto``: fp32, or :data:`FITTING_PRECISION` for a model whose fp32 engines do not fit this machine's memory
(:func:`build_engines.text_to_image.build.build` decides from the engines' measured weights)."""
RUNTIME_CHOICES = (*(r.value for r in Runtime), AUTO)
DEFAULT_RUNTIME = AUTO
"""What ``easel build`` and ``easel up`` use unless told: OpenVINO fp32 where it is faster (the full-size models' large
engines), ONNX Runtime where it is (small ones: the embedded models); docs/PERFORMANCE.md has the measurements."""


@dataclass(frozen=True)
class Precision:
    """One ``--precision``: the ONNX graph's dtype and the runtimes that run it."""

    name: str
    graph_dtype: str  # of the exported ONNX graph's weights ("float32" or "float16")
    runtimes: tuple[Runtime, ...]
    meaning: str


PRECISIONS = {
    p.name: p
    for p in (
        Precision("fp32", "float32", (*CPU_RUNTIMES, GPU_RUNTIME), "full precision, the reference"),
        Precision(
            "fp16",
            "float16",
            (Runtime.ONNXRUNTIME, GPU_RUNTIME),
            "half precision on a GPU: PyTorch modules (torch), or ONNX graphs for GPU execution providers",
        ),
        Precision(
            "bf16",
            "float32",
            (Runtime.OPENVINO, GPU_RUNTIME),
            "bfloat16: PyTorch modules on a GPU, or OpenVINO's bf16 hint where the CPU has AVX512_BF16 or AMX "
            "(elsewhere fp32, with a log line)",
        ),
        Precision("int8", "float32", (Runtime.OPENVINO,), "OpenVINO with int8 weights (NNCF compress_weights)"),
    )
}
PRECISION_CHOICES = (*PRECISIONS, AUTO)
DEFAULT_PRECISION = AUTO
FITTING_PRECISION = "int8"
"""What ``--precision auto`` builds when fp32 does not fit: int8 weights, a quarter of fp32's, which kept the quality
rule on the embedded default (100 % / 100 %, 47.3 dB to fp32; docs/PERFORMANCE.md). Not the default everywhere: on this
CPU (no AMX) it is slower than fp32 where fp32 fits."""
INFERENCE_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
"""OpenVINO's ``INFERENCE_PRECISION_HINT`` per precision (int8 weights compute in f32)."""


class UnknownChoice(ValueError):
    """A ``--runtime`` or ``--precision`` that is not one of the declared ones, or a pair that cannot run."""


def check_choice(runtime: str, precision: str) -> None:
    """Raise :class:`UnknownChoice` (one line naming the allowed values) unless the pair can be built."""
    if runtime not in RUNTIME_CHOICES:
        raise UnknownChoice(f"runtime must be one of {', '.join(RUNTIME_CHOICES)}, not {runtime!r}")
    if precision not in PRECISION_CHOICES:
        raise UnknownChoice(f"precision must be one of {', '.join(PRECISION_CHOICES)}, not {precision!r}")
    allowed = PRECISIONS[precision].runtimes if precision != AUTO else tuple(Runtime)
    if runtime != AUTO and Runtime(runtime) not in allowed:
        raise UnknownChoice(f"precision {precision} runs on {', '.join(allowed)}, not on runtime {runtime}")


@functools.cache
def gpu_present() -> bool:
    """Whether PyTorch sees a CUDA GPU here (asked once per process)."""
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str) -> str:
    """``cpu`` or ``cuda`` for one of :data:`DEVICES` (``auto``: ``cuda`` where a GPU is present)."""
    if device not in DEVICES:
        raise UnknownChoice(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "auto":
        return "cuda" if gpu_present() else "cpu"
    if device == "cuda" and not gpu_present():
        raise UnknownChoice("device cuda: PyTorch sees no CUDA GPU here")
    return device


def concrete_runtime(runtime: str, precision: str, device: str = "cpu") -> str:
    """``runtime``, or for ``auto`` where one candidate runs ``precision`` on ``device`` (a GPU: torch), that one."""
    options = candidates(runtime, precision, device)
    return options[0].value if runtime == AUTO and len(options) == 1 else runtime


def candidates(runtime: str, precision: str, device: str = "cpu") -> tuple[Runtime, ...]:
    """The runtimes a build measures for this choice (``auto``: every one that runs the precision on ``device``)."""
    check_choice(runtime, precision)
    if runtime != AUTO:
        return (Runtime(runtime),)
    declared = PRECISIONS[precision].runtimes
    if device == "cuda" and GPU_RUNTIME in declared:
        return (GPU_RUNTIME,)
    return tuple(r for r in declared if r is not GPU_RUNTIME)


@dataclass(frozen=True)
class RuntimeChoice:
    """How one engine runs, as ``runtime.json`` holds it; what the build measured to choose it."""

    runtime: Runtime = Runtime.ONNXRUNTIME
    precision: str = "fp32"
    error_vs_fp32: float | None = None  # max |this - the fp32 ONNX Runtime engine| / max(1, max |fp32|)
    seconds: dict[str, float] | None = None  # per runtime measured at build (auto), one call at the check's size

    def save(self, files: EngineFiles) -> None:
        """Write ``runtime.json`` into the engine's folder."""
        files.runtime.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def of(cls, files: EngineFiles) -> RuntimeChoice:
        """The engine's choice (ONNX Runtime fp32 for a folder without ``runtime.json``)."""
        if not files.runtime.exists():
            return cls()
        raw = json.loads(files.runtime.read_text())
        return cls(**(raw | {"runtime": Runtime(raw["runtime"])}))


def runs_on_gpu(files: EngineFiles) -> bool:
    """Whether Triton runs the engine ``files`` on the GPU: the torch runtime's, where PyTorch sees one."""
    return RuntimeChoice.of(files).runtime is Runtime.TORCH and gpu_present()


TORCH_JSON_FORMAT = 3
"""``torch.json``'s format (2: each input's axes, the native latent side and the VAE's scale, which capture reads;
3: a video's denoiser without buckets)."""


def runtime_versions(runtime: str) -> str:
    """What the engine cache's key adds for ``runtime``: OpenVINO's version where it may run the engines."""
    if runtime == Runtime.TORCH:  # torch's version is in every folder's name; torch.json's format is not
        return f"-tj{TORCH_JSON_FORMAT}"
    if runtime == Runtime.ONNXRUNTIME:
        return ""
    try:
        import openvino as ov
    except ImportError:  # a GPU machine without OpenVINO: its folders are named, never built
        return "-ov-absent"
    return f"-ov{ov.__version__.split('-')[0]}"


def cpu_count() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0))


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bf16 here (AVX512_BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def inference_hint(precision: str) -> str:
    """The OpenVINO inference precision for ``precision`` on this CPU: bf16 falls back to f32 where it cannot run."""
    hint = INFERENCE_HINTS[precision]
    if hint == "bf16" and not cpu_has_bf16():
        logger.warning("this CPU has neither AVX512_BF16 nor AMX: the bf16 engine runs in fp32")
        return "f32"
    return hint


class OpenVinoSession:
    """An OpenVINO IR compiled for the CPU with ``threads`` threads and one stream; batches run whole.

    ``static_shapes`` > 0: a model compiled for each input shape seen, the last ``static_shapes`` kept (each holds its
    own compiled weights); 0: one compilation with the graph's dynamic axes. Calls may come from several threads (the
    in-process runner): each takes an idle infer request of its compiled model, or makes one.
    """

    def __init__(self, files: EngineFiles, precision: str = "fp32", threads: int = 0, static_shapes: int = 0) -> None:
        import openvino as ov

        self.core = ov.Core()
        self.model = self.core.read_model(str(files.openvino))
        self.config = {
            "INFERENCE_NUM_THREADS": threads or cpu_count(),
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": inference_hint(precision),
        }
        self.static_shapes = static_shapes
        self.input_names = {port.any_name for port in self.model.inputs}
        self.output_names = [port.any_name for port in self.model.outputs]
        self.input_ranks = {port.any_name: port.get_partial_shape().rank.get_length() for port in self.model.inputs}
        self._lock = threading.Lock()
        self._compiled: OrderedDict[tuple | None, object] = OrderedDict()
        self._idle: dict[tuple | None, list] = {}
        if not static_shapes:
            self._compiled[None] = self.core.compile_model(self.model, "CPU", self.config)
            self.model = None  # the compiled model holds what it needs

    def _compiled_for(self, feeds: dict[str, np.ndarray]) -> tuple:
        """(key, compiled model) for these feeds: the dynamic one, or one compiled for their shapes (oldest dropped)."""
        if not self.static_shapes:
            return None, self._compiled[None]
        key = tuple(sorted((name, array.shape) for name, array in feeds.items()))
        with self._lock:
            if key not in self._compiled:
                model = self.model.clone()
                model.reshape({name: list(array.shape) for name, array in feeds.items()})
                self._compiled[key] = self.core.compile_model(model, "CPU", self.config)
                while len(self._compiled) > self.static_shapes:
                    dropped, _ = self._compiled.popitem(last=False)
                    self._idle.pop(dropped, None)
            self._compiled.move_to_end(key)
            return key, self._compiled[key]

    def run(self, feeds: dict[str, np.ndarray], shared: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """All outputs for ``feeds`` and ``shared`` (inputs the graph does not take are left out)."""
        feeds = {k: np.ascontiguousarray(v) for k, v in (feeds | (shared or {})).items() if k in self.input_names}
        key, compiled = self._compiled_for(feeds)
        with self._lock:
            idle = self._idle.setdefault(key, [])
            request = idle.pop() if idle else compiled.create_infer_request()
        try:
            request.infer(feeds)
            return [np.array(request.get_tensor(name).data) for name in self.output_names]
        finally:
            with self._lock:
                self._idle.setdefault(key, []).append(request)
