"""Triton python-backend model serving an engine with its runtime (ONNX Runtime, OpenVINO, torch), a call per batch.

Each model folder's ``1/model.py`` re-exports :class:`OnnxRuntimeModel` as ``TritonPythonModel``. Triton hands
``execute`` every request its dynamic batcher merged; requests whose shapes agree are concatenated along the batch
axis and run as one batch, then split back. A request that fails validation gets its own error response and the
rest of the batch still runs.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import numpy as np

from serve.metrics import MetricSpec
from serve.triton.activations import ActivationPool, pool_of, pools_from_env
from serve.triton.engine_files import EngineFiles
from serve.triton.graph_shapes import GraphShapes
from serve.triton.memory import MemoryModel, positions
from serve.triton.runtimes import OpenVinoSession, Runtime, RuntimeChoice, cpu_count

logger = logging.getLogger(__name__)

ENGINE_EAGER_CALLS = MetricSpec(
    "easel_engine_eager_calls",
    "counter",
    "Engine calls that ran eager though the engine's CUDA graphs were captured (no bucket for their rows and shapes).",
    ("model",),
    (),
    "triton",
)


def make_session(model_path: Path, intra_op_threads: int = 0, spinning: bool = False, arena: bool = True):
    """The one ONNX Runtime CPU session factory: ``intra_op_threads`` threads (0: one per core).

    Idle intra-op threads spin by default; beside Ray replicas on few cores that burns the CPU they need, so
    spinning is off unless asked for. ``arena=False`` frees each run's activations when it ends (served engines:
    a large request's memory is given back), where ONNX Runtime's arena would keep its high-water mark for good.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.enable_cpu_mem_arena = arena
    options.enable_mem_pattern = arena
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


class ShardedSession:
    """A single-threaded ONNX Runtime session whose batches are split into up to ``shards`` slices run at once.

    On a CPU, slicing the batch across cores beats ONNX Runtime's intra-op threads at every batch size
    (docs/PERFORMANCE.md): no hand-off between threads at each operator, and a core taken by another process
    delays one slice rather than every operator. A one-row batch runs on one core.
    """

    def __init__(self, model_path: Path, shards: int = 0) -> None:
        self.shards = shards or cpu_count()
        self.session = make_session(model_path, intra_op_threads=1, arena=False)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.input_ranks = {i.name: len(i.shape) for i in self.session.get_inputs()}
        self._pool = ThreadPoolExecutor(self.shards, thread_name_prefix="onnx-shard") if self.shards > 1 else None

    def run(self, feeds: dict[str, np.ndarray], shared: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """All outputs for ``feeds`` (batch axis first), computed slice by slice in parallel.

        ``shared``: inputs without a batch axis (an adapter-ready engine's banks), given whole to every slice. Inputs
        the graph does not take are left out: the exporter drops those no output depends on (an unused layer's
        bank; the text conditioning of a shallow UNet whose last block has no attention).
        """
        feeds = {name: array for name, array in feeds.items() if name in self.input_names}
        shared = {name: array for name, array in (shared or {}).items() if name in self.input_names}
        rows = len(next(iter(feeds.values())))
        count = min(self.shards, rows)
        if count <= 1:
            return self.session.run(self.output_names, feeds | shared)
        bounds = np.linspace(0, rows, count + 1).round().astype(int)
        slices = [{name: array[lo:hi] for name, array in feeds.items()} | shared for lo, hi in pairwise(bounds)]
        parts = list(self._pool.map(lambda feed: self.session.run(self.output_names, feed), slices))
        return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


Session = ShardedSession | OpenVinoSession  # or serve.triton.torch_runtime.TorchSession (torch loads only for it)
"""What :func:`open_engine` returns: ``run(feeds, shared)``, ``input_names``, ``output_names``, ``input_ranks``."""


def open_engine(files: EngineFiles, threads: int = 0, static_shapes: int = 0, device: str | None = None) -> Session:
    """The one door to an engine: opened with the runtime and precision its ``runtime.json`` names.

    ``threads``: the cores it may use (0: every core this process may run on). ONNX Runtime runs a batch in that many
    one-threaded slices (:class:`ShardedSession`), OpenVINO as one call with that many threads; ``static_shapes``:
    :class:`serve.triton.runtimes.OpenVinoSession`'s bounded cache of shapes compiled statically; ``device``: where
    the torch runtime runs it (``cuda:0``, ``cpu``; default: the GPU where there is one).
    """
    choice = RuntimeChoice.of(files)
    if choice.runtime is Runtime.TORCH:
        from serve.triton.torch_runtime import TorchSession

        return TorchSession(files, choice.precision, device)
    if choice.runtime is Runtime.OPENVINO:
        return OpenVinoSession(files, choice.precision, threads, static_shapes)
    return ShardedSession(files.onnx, threads)


class MemoryBound:
    """Runs a batch in slices whose activations fit the model's pool, each slice's bytes reserved while it runs.

    ``engine``: the Triton model's name, as the pool's entries say who holds and who waits.
    """

    def __init__(self, model: MemoryModel, pool: ActivationPool, dynamic_axes: tuple[int, ...], engine: str) -> None:
        self.model, self.pool, self.dynamic_axes, self.engine = model, pool, dynamic_axes, engine

    def rows_per_run(self, shape: tuple[int, ...]) -> int:
        """Rows of this input shape (batch axis first) that one run may hold; raises if not even one fits."""
        at = positions(shape, self.dynamic_axes)
        capacity = self.pool.capacity
        rows = self.model.rows_within(capacity, at)
        if rows < 1:
            raise MemoryError(
                f"one row of shape {tuple(shape[1:])} needs about {self.model.per_row(at) / 2**30:.2f} GiB; "
                f"the model's activation memory is {capacity / 2**30:.2f} GiB"
            )
        return rows

    def reserved(self, shape: tuple[int, ...]):
        """Hold the activations of a run of this input shape (rows first) for the block, waiting for them."""
        return self.pool.reserve(self.model.per_row(positions(shape, self.dynamic_axes)) * shape[0], self.engine)


Prepare = Callable[
    [dict[str, np.ndarray]], tuple[dict[str, np.ndarray], dict[str, np.ndarray], Mapping[int, Exception]]
]
"""A merged batch -> (the graph's per-row inputs, its inputs without a batch axis, the rows refused: row -> why):
see :func:`run_batched`."""


def run_batched(
    session: Session,
    feeds: list[dict[str, np.ndarray]],
    bound: MemoryBound | None = None,
    prepare: Prepare | None = None,
) -> list[dict[str, np.ndarray] | Exception]:
    """Run many requests' feeds through ``session``, one batch per group of equal shapes.

    With a ``bound``, each group runs in consecutive slices that fit the activation pool, each reserved from it while
    it runs. ``prepare`` turns each merged group into the graph's inputs (an adapter-ready engine reads its
    ``adapters`` strings and adds the banks; a row whose adapter cannot be applied is refused, and its request alone
    answered the error). Returns, for each feed in order, its outputs or the exception that its group (or its row)
    raised.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, feed in enumerate(feeds):
        groups[tuple((name, array.shape[1:], array.dtype.str) for name, array in sorted(feed.items()))].append(index)
    results: list[dict[str, np.ndarray] | Exception] = [RuntimeError("not run")] * len(feeds)
    for members in groups.values():
        sizes = [len(next(iter(feeds[i].values()))) for i in members]
        merged = {name: np.concatenate([feeds[i][name] for i in members]) for name in feeds[members[0]]}
        try:
            merged, shared, refused = prepare(merged) if prepare else (merged, {}, {})
            outputs = _run_bounded(session, merged, bound, shared)
        except Exception as error:  # noqa: BLE001 - reported per request, the server keeps running
            for i in members:
                results[i] = error
            continue
        bounds = np.cumsum([0, *sizes])
        for i, start, stop in zip(members, bounds[:-1], bounds[1:], strict=True):
            failed = [refused[row] for row in range(start, stop) if row in refused]
            rows = slice(None) if len(members) == 1 else slice(start, stop)  # alone: all (an unbatched engine's)
            outputs_of = {name: out[rows] for name, out in zip(session.output_names, outputs, strict=True)}
            results[i] = failed[0] if failed else outputs_of
    return results


def _run_bounded(session: Session, feeds: dict, bound: MemoryBound | None, shared: dict) -> list:
    if bound is None:
        return session.run(feeds, shared)
    first = next(iter(feeds.values()))
    step = bound.rows_per_run(first.shape)
    parts = []
    for lo in range(0, len(first), step):
        run = {name: array[lo : lo + step] for name, array in feeds.items()}
        with bound.reserved(next(iter(run.values())).shape):
            parts.append(session.run(run, shared))
    return parts[0] if len(parts) == 1 else [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


class OnnxRuntimeModel:
    """The python-backend model: reads its tensors from the Triton config, runs the engine with its runtime."""

    def initialize(self, args: dict) -> None:
        """Open the engine in the model's version folder (:func:`open_engine`)."""
        config = json.loads(args["model_config"])
        self.files = EngineFiles(Path(args["model_repository"]) / args["model_version"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        shards = int(params.get("batch_shards", "0")) if config.get("max_batch_size", 0) > 0 else 1
        gpu = args.get("model_instance_kind") == "GPU"
        device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
        self.session = open_engine(self.files, shards, int(params.get("static_shapes", "0")), device)
        if hasattr(self.session, "capture"):  # the torch runtime's buckets belong to the start, not to a request
            graphs = GraphShapes.read(Path(args["model_repository"]).parent)
            self.session.capture(shapes=self.session.engine.capture_shapes(graphs.sizes, graphs.chunks))
        self.eager = EagerCalls(self.session, config["name"], _backend_utils())
        self.bound = _memory_bound(config, self.files)
        self.input_ranks = self.session.input_ranks
        self.inputs = {t["name"]: np.dtype(_numpy_dtype(t["data_type"])) for t in config["input"]}
        self.outputs = {t["name"]: np.dtype(_numpy_dtype(t["data_type"])) for t in config["output"]}
        how = RuntimeChoice.of(self.files)
        logger.info("%s: %s %s, %d cores", config["name"], how.runtime.value, how.precision, shards or cpu_count())

    def execute(self, requests: list) -> list:
        """Merge the batch's requests into one session call per shape group; answer each request."""
        import triton_python_backend_utils as pb_utils

        feeds = [self._feed(request, pb_utils) for request in requests]
        results = run_batched(self.session, feeds, self.bound, self.prepare)
        self.eager.publish()
        responses = []
        for result in results:
            if isinstance(result, Exception):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(result))))
                continue
            tensors = [
                pb_utils.Tensor(name, result[name].astype(dtype, copy=False)) for name, dtype in self.outputs.items()
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    prepare: Prepare | None = None
    """Subclasses that read inputs of their own (strings) turn a merged batch into the graph's inputs here."""

    def _feed(self, request, pb_utils) -> dict[str, np.ndarray]:
        feed = {}
        for name, dtype in self.inputs.items():
            array = pb_utils.get_input_tensor_by_name(request, name).as_numpy().astype(dtype, copy=False)
            feed[name] = graph_input(array, self.input_ranks.get(name))
        return feed


class EagerCalls:
    """A model's :data:`ENGINE_EAGER_CALLS` counter on Triton's metrics port, fed from its session's count.

    ``pb_utils``: Triton's python-backend module; without it, or without its metrics API (an older Triton), or for a
    session that counts nothing (the CPU runtimes'), there is no counter and :meth:`publish` only keeps the count.
    """

    def __init__(self, session: Session, model: str, pb_utils=None) -> None:
        self.session, self.reported, self.metric = session, 0, None
        family = getattr(pb_utils, "MetricFamily", None)
        if family is None or not hasattr(session, "eager_total"):
            return
        try:
            self._family = family(ENGINE_EAGER_CALLS.series[0], ENGINE_EAGER_CALLS.description, family.COUNTER)
            self.metric = self._family.Metric(labels={"model": model})  # the family must outlive its metric
        except Exception as error:  # noqa: BLE001 - the model serves without its metric
            logger.warning("%s: no %s metric: %s", model, ENGINE_EAGER_CALLS.series[0], error)

    def publish(self) -> int:
        """Add the session's eager calls since the last publish to the counter; returns how many."""
        total = getattr(self.session, "eager_total", 0)
        new, self.reported = total - self.reported, total
        if new and self.metric is not None:
            self.metric.increment(new)
        return new


def _backend_utils():
    """Triton's ``triton_python_backend_utils`` where this runs inside Triton; None elsewhere."""
    try:
        import triton_python_backend_utils as pb_utils
    except ImportError:
        return None
    return pb_utils


def graph_input(array: np.ndarray, rank: int | None) -> np.ndarray:
    """A Triton input as the graph takes it: a per-sample scalar arrives as ``[batch, 1]`` and is ``[batch]``.

    ``rank``: the graph input's, None for an input the graph lacks: a per-row string the model reads itself (rank 1),
    or a tensor the export dropped because the graph does not use it (a shallow UNet's text states, where its last
    block has no attention), passed on as it is (the session leaves it out).
    """
    rank = rank or 1
    if array.ndim > rank and all(size == 1 for size in array.shape[rank:]):
        return array.reshape(array.shape[:rank])
    return array


def _memory_bound(config: dict, files: EngineFiles) -> MemoryBound | None:
    """The bound of a model with a measured memory model and a pool handed to this Triton; None otherwise."""
    pool = pool_of(pools_from_env(), config["name"])
    if pool is None or not files.memory.exists():
        return None
    first = next((t for t in config["input"] if -1 in [int(d) for d in t["dims"]]), None)
    axes = () if first is None else tuple(i + 1 for i, d in enumerate(first["dims"]) if int(d) == -1)
    logger.info("%s: activations from %s (%.2f GiB)", config["name"], pool.path, pool.capacity / 2**30)
    return MemoryBound(MemoryModel.load(files.memory), pool, axes, config["name"])


def _numpy_dtype(triton_type: str) -> str:
    return {
        "TYPE_FP32": "float32",
        "TYPE_FP16": "float16",
        "TYPE_INT64": "int64",
        "TYPE_INT32": "int32",
        "TYPE_UINT8": "uint8",
        "TYPE_BOOL": "bool",
        "TYPE_STRING": "object",
    }[triton_type]
