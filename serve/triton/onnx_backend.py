"""Triton python-backend model that serves ``model.onnx`` with ONNX Runtime, one session call per batch.

Each model folder's ``1/model.py`` re-exports :class:`OnnxRuntimeModel` as ``TritonPythonModel``. Triton hands
``execute`` every request its dynamic batcher merged; requests whose shapes agree are concatenated along the batch
axis and run as one batch, then split back. A request that fails validation gets its own error response and the
rest of the batch still runs.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def cpu_count() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0))


def make_session(model_path: Path, intra_op_threads: int = 0, spinning: bool = False):
    """An ONNX Runtime CPU session with ``intra_op_threads`` threads (0: one per core).

    Idle intra-op threads spin by default; beside Ray replicas on few cores that burns the CPU they need, so
    spinning is off unless asked for.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


class ShardedSession:
    """A single-threaded ONNX Runtime session whose batches are split into up to ``shards`` slices run at once.

    On a CPU, slicing the batch across cores beats ONNX Runtime's intra-op threads at every batch size
    (docs/PERFORMANCE.md): no hand-off between threads at each operator, and a core taken by another process
    delays one slice rather than every operator. A one-row batch runs on one core.
    """

    def __init__(self, model_path: Path, shards: int = 0) -> None:
        self.shards = shards or cpu_count()
        self.session = make_session(model_path, intra_op_threads=1)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._pool = ThreadPoolExecutor(self.shards, thread_name_prefix="onnx-shard") if self.shards > 1 else None

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """All outputs for ``feeds`` (batch axis first), computed slice by slice in parallel."""
        rows = len(next(iter(feeds.values())))
        count = min(self.shards, rows)
        if count <= 1:
            return self.session.run(self.output_names, feeds)
        bounds = np.linspace(0, rows, count + 1).round().astype(int)
        slices = [{name: array[lo:hi] for name, array in feeds.items()} for lo, hi in pairwise(bounds)]
        parts = list(self._pool.map(lambda feed: self.session.run(self.output_names, feed), slices))
        return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


def run_batched(session: ShardedSession, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Exception]:
    """Run many requests' feeds through ``session``, one batch per group of equal shapes.

    Returns, for each feed in order, its outputs or the exception that its group raised.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, feed in enumerate(feeds):
        groups[tuple((name, array.shape[1:], array.dtype.str) for name, array in sorted(feed.items()))].append(index)
    results: list[dict[str, np.ndarray] | Exception] = [RuntimeError("not run")] * len(feeds)
    for members in groups.values():
        sizes = [len(next(iter(feeds[i].values()))) for i in members]
        merged = {name: np.concatenate([feeds[i][name] for i in members]) for name in feeds[members[0]]}
        try:
            outputs = session.run(merged)
        except Exception as error:  # noqa: BLE001 - reported per request, the server keeps running
            for i in members:
                results[i] = error
            continue
        bounds = np.cumsum([0, *sizes])
        for i, start, stop in zip(members, bounds[:-1], bounds[1:], strict=True):
            results[i] = {name: out[start:stop] for name, out in zip(session.output_names, outputs, strict=True)}
    return results


class OnnxRuntimeModel:
    """The python-backend model: reads its tensors from the Triton config, runs ``model.onnx``."""

    def initialize(self, args: dict) -> None:
        """Load the ONNX Runtime session named by the model repository layout."""
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        shards = int(params.get("batch_shards", "0")) if config.get("max_batch_size", 0) > 0 else 1
        self.session = ShardedSession(version_dir / "model.onnx", shards)
        self.input_ranks = {i.name: len(i.shape) for i in self.session.session.get_inputs()}
        self.inputs = {t["name"]: np.dtype(_numpy_dtype(t["data_type"])) for t in config["input"]}
        self.outputs = {t["name"]: np.dtype(_numpy_dtype(t["data_type"])) for t in config["output"]}
        logger.info("%s: %s, batches split %d ways", config["name"], version_dir / "model.onnx", self.session.shards)

    def execute(self, requests: list) -> list:
        """Merge the batch's requests into one session call per shape group; answer each request."""
        import triton_python_backend_utils as pb_utils

        feeds = [self._feed(request, pb_utils) for request in requests]
        results = run_batched(self.session, feeds)
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

    def _feed(self, request, pb_utils) -> dict[str, np.ndarray]:
        feed = {}
        for name, dtype in self.inputs.items():
            array = pb_utils.get_input_tensor_by_name(request, name).as_numpy().astype(dtype, copy=False)
            if array.ndim > self.input_ranks[name]:  # a per-sample scalar arrives as [batch, 1]
                array = array.reshape(array.shape[: self.input_ranks[name]])
            feed[name] = array
        return feed


def _numpy_dtype(triton_type: str) -> str:
    return {
        "TYPE_FP32": "float32",
        "TYPE_FP16": "float16",
        "TYPE_INT64": "int64",
        "TYPE_INT32": "int32",
        "TYPE_UINT8": "uint8",
        "TYPE_BOOL": "bool",
    }[triton_type]
