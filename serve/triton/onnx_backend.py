"""Triton python-backend model that serves ``model.onnx`` with ONNX Runtime, one session call per batch.

Each model folder's ``1/model.py`` re-exports :class:`OnnxRuntimeModel` as ``TritonPythonModel``. Triton hands
``execute`` every request its dynamic batcher merged; requests whose shapes agree are concatenated along the batch
axis and run in one ONNX Runtime call, then split back. A request that fails validation gets its own error response
and the rest of the batch still runs.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def make_session(model_path: Path, intra_op_threads: int = 0):
    """An ONNX Runtime CPU session with the given intra-op thread count (0: ONNX Runtime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ONNX Runtime threads spin by default; beside Ray replicas on few cores that burns the CPU they need.
    options.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("EASEL_ORT_SPIN", "0"))
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def run_batched(session, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Exception]:
    """Run many requests' feeds through ``session``, one call per group of equal shapes.

    Returns, for each feed in order, its outputs or the exception that its group raised.
    """
    output_names = [o.name for o in session.get_outputs()]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, feed in enumerate(feeds):
        groups[tuple((name, array.shape[1:], array.dtype.str) for name, array in sorted(feed.items()))].append(index)
    results: list[dict[str, np.ndarray] | Exception] = [RuntimeError("not run")] * len(feeds)
    for members in groups.values():
        sizes = [len(next(iter(feeds[i].values()))) for i in members]
        merged = {name: np.concatenate([feeds[i][name] for i in members]) for name in feeds[members[0]]}
        try:
            outputs = session.run(output_names, merged)
        except Exception as error:  # noqa: BLE001 - reported per request, the server keeps running
            for i in members:
                results[i] = error
            continue
        bounds = np.cumsum([0, *sizes])
        for i, start, stop in zip(members, bounds[:-1], bounds[1:], strict=True):
            results[i] = {name: out[start:stop] for name, out in zip(output_names, outputs, strict=True)}
    return results


class OnnxRuntimeModel:
    """The python-backend model: reads its tensors from the Triton config, runs ``model.onnx``."""

    def initialize(self, args: dict) -> None:
        """Load the ONNX Runtime session named by the model repository layout."""
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threads = int(os.environ.get("EASEL_ORT_THREADS", params.get("intra_op_threads", "0")))
        self.session = make_session(version_dir / "model.onnx", threads)
        self.input_ranks = {i.name: len(i.shape) for i in self.session.get_inputs()}
        self.inputs = {t["name"]: np.dtype(_numpy_dtype(t["data_type"])) for t in config["input"]}
        self.outputs = {t["name"]: np.dtype(_numpy_dtype(t["data_type"])) for t in config["output"]}
        logger.info("%s: loaded %s with %d intra-op threads", config["name"], version_dir / "model.onnx", threads)

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
