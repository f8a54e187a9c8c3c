import json
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from serve.triton.engine_files import EngineFiles
from serve.triton.onnx_backend import EagerCalls, OnnxRuntimeModel, ShardedSession, graph_input, run_batched
from serve.triton.runtimes import Runtime, RuntimeChoice
from serve.triton.torch_runtime import TorchEngine


def _double_model(path, shards: int = 1) -> ShardedSession:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return ShardedSession(path, shards)


def _record_calls(session: ShardedSession, monkeypatch) -> list[tuple]:
    calls = []
    real_run = session.session.run

    def run(names, feed):
        calls.append(feed["x"].shape)
        return real_run(names, feed)

    monkeypatch.setattr(session.session, "run", run)
    return calls


def test_requests_of_equal_shape_share_one_call_and_split_back(tmp_path, monkeypatch):
    session = _double_model(tmp_path / "m.onnx")
    calls = _record_calls(session, monkeypatch)
    feeds = [{"x": np.full((rows, 3), i, np.float32)} for i, rows in enumerate([2, 1, 2])]
    feeds.append({"x": np.ones((1, 5), np.float32)})
    results = run_batched(session, feeds)
    assert sorted(calls) == [(1, 5), (5, 3)]
    for feed, result in zip(feeds, results, strict=True):
        np.testing.assert_array_equal(result["y"], feed["x"] * 2)


def test_a_failing_group_does_not_fail_the_others(tmp_path):
    session = _double_model(tmp_path / "m.onnx")
    results = run_batched(session, [{"x": np.ones((1, 3), np.float32)}, {"x": np.ones((1, 2, 2), np.float32)}])
    np.testing.assert_array_equal(results[0]["y"], np.full((1, 3), 2, np.float32))
    assert isinstance(results[1], Exception)


@pytest.mark.parametrize(
    ("rows", "slices"), [(1, [(1, 4)]), (2, [(1, 4), (1, 4)]), (7, [(2, 4), (2, 4), (2, 4), (1, 4)])]
)
def test_a_batch_is_split_into_at_most_shards_slices_in_order(tmp_path, monkeypatch, rows, slices):
    session = _double_model(tmp_path / "m.onnx", shards=4)
    calls = _record_calls(session, monkeypatch)
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    (y,) = session.run({"x": x})
    np.testing.assert_array_equal(y, x * 2)
    assert sorted(calls, reverse=True) == slices


def test_triton_inputs_become_the_graph_s_per_sample_scalars_and_unused_tensors_pass_as_they_are():
    assert graph_input(np.zeros((3, 1), np.float32), 1).shape == (3,)  # a timestep per row
    assert graph_input(np.array([[b"a"], [b"b"]], dtype=object), None).shape == (2,)  # a string the model reads
    assert graph_input(np.zeros((2, 4, 8, 8), np.float32), 4).shape == (2, 4, 8, 8)
    unused = np.zeros((2, 16, 64), np.float32)  # the text states of a shallow UNet without attention, not exported
    assert graph_input(unused, None) is unused


class _Scale(torch.nn.Module):
    """A toy torch-runtime engine: each row of ``x`` times two, at any width."""

    def forward(self, x):
        return x * 2


def scale_module(folder: Path, engine: str, dtype: torch.dtype) -> torch.nn.Module:
    """The toy engine's loader (a :data:`serve.triton.torch_runtime.Loader`)."""
    return _Scale()


def _torch_model(tmp_path: Path) -> OnnxRuntimeModel:
    """The python-backend model over a toy torch engine with buckets, initialized as Triton initializes it (CPU)."""
    files = EngineFiles(tmp_path / "1")
    files.folder.mkdir()
    TorchEngine("scale", f"{__name__}:scale_module", (("x", "float32", (3,)),), ("y",), buckets=(1, 2)).save(files)
    RuntimeChoice(Runtime.TORCH, "fp32").save(files)
    tensors = {"data_type": "TYPE_FP32", "dims": [-1]}
    config = {
        "name": "sd.unet",
        "max_batch_size": 2,
        "input": [{"name": "x", **tensors}],
        "output": [{"name": "y", **tensors}],
    }
    model = OnnxRuntimeModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path), "model_version": "1"})
    return model


def test_a_torch_engine_s_eager_calls_are_counted_for_triton_s_metric(tmp_path):
    model = _torch_model(tmp_path)
    assert model.session.buckets == (1, 2)  # captured at initialize
    assert model.eager.metric is None  # no Triton here: the count is kept, nothing exported
    run_batched(model.session, [{"x": np.ones((2, 3), np.float32)}])  # bucket 2
    assert model.eager.publish() == 0
    run_batched(model.session, [{"x": np.ones((1, 5), np.float32)}, {"x": np.ones((3, 3), np.float32)}])
    assert model.eager.publish() == 2  # a width not captured, rows above the largest bucket
    assert model.eager.publish() == 0  # each call counted once


def test_the_eager_metric_needs_triton_s_metrics_api_and_a_counting_session(tmp_path):
    session = _torch_model(tmp_path).session
    older_triton = types.SimpleNamespace(Tensor=object)  # a python-backend module without MetricFamily
    assert EagerCalls(session, "sd.unet", older_triton).metric is None
    onnx = _double_model(tmp_path / "m.onnx")
    assert EagerCalls(onnx, "sd.unet", older_triton).publish() == 0  # the CPU runtimes count nothing
