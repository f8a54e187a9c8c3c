import numpy as np
import onnx
from onnx import TensorProto, helper

from serve.triton.onnx_backend import make_session, run_batched


def _double_model(path):
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return make_session(path, intra_op_threads=1)


def test_requests_of_equal_shape_share_one_call_and_split_back(tmp_path, monkeypatch):
    session = _double_model(tmp_path / "m.onnx")
    calls = []
    real_run = session.run
    monkeypatch.setattr(session, "run", lambda names, feed: calls.append(feed["x"].shape) or real_run(names, feed))
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
