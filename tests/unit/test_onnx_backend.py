import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from serve.triton.onnx_backend import ShardedSession, graph_input, run_batched


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
