"""Runtimes and precisions: declared once, checked with one-line errors, and engines opened through one door."""

import logging

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from build_engines.openvino import choose_runtime, error_against
from serve.triton.engine_files import EngineFiles
from serve.triton.onnx_backend import ShardedSession, open_engine
from serve.triton.runtimes import (
    FITTING_PRECISION,
    PRECISION_CHOICES,
    RUNTIME_CHOICES,
    OpenVinoSession,
    Runtime,
    RuntimeChoice,
    UnknownChoice,
    check_choice,
    inference_hint,
)


def _linear_engine(folder, rows: int = 64, columns: int = 48) -> EngineFiles:
    """An engine folder whose model.onnx is ``y = x @ w`` (random weights, dynamic batch)."""
    folder.mkdir(parents=True, exist_ok=True)
    weight = np.random.default_rng(0).standard_normal((rows, columns)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", columns])],
        [numpy_helper.from_array(weight, "w")],
    )
    files = EngineFiles(folder)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), files.onnx)
    return files


def _reference(files: EngineFiles, feeds):
    return ShardedSession(files.onnx, 1).run(feeds)


@pytest.mark.parametrize(
    ("runtime", "precision", "named"),
    [
        ("tensorrt", "fp32", "runtime must be one of onnxruntime, openvino, torch, auto, not 'tensorrt'"),
        ("openvino", "int4", "precision must be one of fp32, fp16, bf16, int8, auto, not 'int4'"),
        ("onnxruntime", "bf16", "precision bf16 runs on openvino, torch, not on runtime onnxruntime"),
        ("openvino", "fp16", "precision fp16 runs on onnxruntime, torch, not on runtime openvino"),
        ("torch", "int8", "precision int8 runs on openvino, not on runtime torch"),
    ],
)
def test_an_unknown_or_impossible_choice_is_one_line_naming_the_allowed(runtime, precision, named):
    with pytest.raises(UnknownChoice) as error:
        check_choice(runtime, precision)
    assert str(error.value) == named


@pytest.mark.parametrize(("flag", "value"), [("--runtime", "tensorrt"), ("--precision", "int4")])
def test_build_refuses_an_unknown_value_naming_the_allowed_ones(flag, value):
    from serve.cli.main import main

    result = CliRunner().invoke(main, ["build", flag, value])
    assert result.exit_code == 2
    allowed = RUNTIME_CHOICES if flag == "--runtime" else PRECISION_CHOICES
    error = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error) == 1 and all(f"'{name}'" in error[0] for name in allowed), result.output


def test_a_folder_without_runtime_json_runs_on_onnx_runtime(tmp_path):
    files = _linear_engine(tmp_path / "unet")
    assert RuntimeChoice.of(files) == RuntimeChoice(Runtime.ONNXRUNTIME, "fp32")
    assert isinstance(open_engine(files, 1), ShardedSession)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_engines_are_converted_at_build_and_opened_through_the_same_door(tmp_path, precision):
    files = _linear_engine(tmp_path / "unet")
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    expected = _reference(files, {"x": x})
    choice = choose_runtime(files, "openvino", precision, {"x": x}, expected, 1e-3)
    assert choice.runtime is Runtime.OPENVINO and RuntimeChoice.of(files) == choice
    assert files.openvino.exists() and files.openvino.with_suffix(".bin").exists()
    session = open_engine(files, 1)
    assert isinstance(session, OpenVinoSession) and session.input_ranks == {"x": 2}
    (y,) = session.run({"x": x[:2]}, {"unused": np.ones(1)})  # an input the graph lacks is left out
    error = error_against([y], [expected[0][:2]])
    assert error == pytest.approx(choice.error_vs_fp32, abs=choice.error_vs_fp32 + 1e-6)
    weights = files.openvino.with_suffix(".bin").stat().st_size
    if precision == "fp32":
        assert error < 1e-5 and weights >= 64 * 48 * 4
    else:  # int8 weights: a quarter of the bytes, and an error that is not zero
        assert 1e-6 < error < 5e-2 and weights < 64 * 48 * 2


def test_auto_keeps_the_faster_runtime_and_removes_the_other_ones_files(tmp_path, monkeypatch):
    import build_engines.openvino as build_openvino

    monkeypatch.setattr(build_openvino, "AUTO_FLOOR_S", 0.0)  # however small the call, both are measured
    files = _linear_engine(tmp_path / "unet")
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    choice = choose_runtime(files, "auto", "fp32", {"x": x}, _reference(files, {"x": x}), 1e-3)
    assert set(choice.seconds) == {"onnxruntime", "openvino"}
    assert choice.seconds[choice.runtime.value] == min(choice.seconds.values())
    assert files.openvino.exists() == (choice.runtime is Runtime.OPENVINO)


def test_auto_leaves_an_engine_too_small_for_openvino_to_pay_on_onnx_runtime_unconverted(tmp_path):
    files = _linear_engine(tmp_path / "unet")  # one 64 x 48 matmul: microseconds
    x = np.ones((2, 64), np.float32)
    choice = choose_runtime(files, "auto", "fp32", {"x": x}, _reference(files, {"x": x}), 1e-3)
    assert choice.runtime is Runtime.ONNXRUNTIME and set(choice.seconds) == {"onnxruntime"}
    assert not files.openvino.exists()


def test_auto_keeps_only_runtimes_within_the_parity_bound(tmp_path, monkeypatch):
    import build_engines.openvino as build_openvino

    files = _linear_engine(tmp_path / "unet")
    x = np.ones((1, 64), np.float32)
    measured = {Runtime.ONNXRUNTIME: (1e-7, 0.5), Runtime.OPENVINO: (2e-3, 0.1)}  # the faster one is off by 2e-3
    monkeypatch.setattr(build_openvino, "_measure", lambda _files, how, *_: measured[how.runtime])
    choice = choose_runtime(files, "auto", "fp32", {"x": x}, _reference(files, {"x": x}), 1e-3)
    assert choice.runtime is Runtime.ONNXRUNTIME and not files.openvino.exists()


def test_auto_times_the_candidates_at_the_serving_size_where_given(tmp_path, monkeypatch):
    import build_engines.openvino as build_openvino

    monkeypatch.setattr(build_openvino, "AUTO_FLOOR_S", 0.0)
    files = _linear_engine(tmp_path / "unet")
    check, serving = np.ones((3, 64), np.float32), np.ones((1, 64), np.float32)
    at_check = {Runtime.ONNXRUNTIME: (1e-7, 0.1), Runtime.OPENVINO: (1e-7, 0.5)}  # ONNX Runtime faster at the check
    at_serving = {Runtime.ONNXRUNTIME: 2.0, Runtime.OPENVINO: 0.5}  # OpenVINO faster where it serves
    monkeypatch.setattr(build_openvino, "_measure", lambda _files, how, *_: at_check[how.runtime])
    timed = []
    monkeypatch.setattr(
        build_openvino, "_timed", lambda _f, how, feeds, _r: timed.append(feeds) or at_serving[how.runtime]
    )
    choice = choose_runtime(files, "auto", "fp32", {"x": check}, [], 1e-3, serving_feeds={"x": serving})
    assert choice.runtime is Runtime.OPENVINO and choice.seconds == {"onnxruntime": 2.0, "openvino": 0.5}
    assert [feeds["x"].shape for feeds in timed] == [(1, 64), (1, 64)]
    assert choose_runtime(files, "auto", "fp32", {"x": check}, [], 1e-3).runtime is Runtime.ONNXRUNTIME


def test_static_shapes_are_compiled_per_shape_and_bounded(tmp_path):
    files = _linear_engine(tmp_path / "unet")
    choose_runtime(files, "openvino", "fp32", {"x": np.ones((1, 64), np.float32)}, [np.zeros((1, 48))], 1.0)
    session = OpenVinoSession(files, threads=1, static_shapes=2)
    weight = _reference(files, {"x": np.eye(64, dtype=np.float32)})[0]
    for rows in (1, 2, 1, 3):
        (y,) = session.run({"x": np.eye(64, dtype=np.float32)[:rows]})
        np.testing.assert_allclose(y, weight[:rows], rtol=1e-5, atol=1e-5)
    assert [key[0][1] for key in session._compiled] == [(1, 64), (3, 64)]  # 2 dropped, oldest first


def test_calls_from_several_threads_each_get_an_infer_request(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    files = _linear_engine(tmp_path / "unet")
    choose_runtime(files, "openvino", "fp32", {"x": np.ones((1, 64), np.float32)}, [np.zeros((1, 48))], 1.0)
    session = open_engine(files, 1)
    rows = [np.random.default_rng(i).standard_normal((1 + i % 3, 64)).astype(np.float32) for i in range(12)]
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda x: session.run({"x": x})[0], rows))
    for x, y in zip(rows, outputs, strict=True):
        np.testing.assert_allclose(y, _reference(files, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_bf16_falls_back_to_fp32_with_a_log_line_where_the_cpu_lacks_it(monkeypatch, caplog):
    import serve.triton.runtimes as runtimes

    monkeypatch.setattr(runtimes, "cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert inference_hint("bf16") == "f32"
    assert "neither AVX512_BF16 nor AMX" in caplog.text
    monkeypatch.setattr(runtimes, "cpu_has_bf16", lambda: True)
    assert inference_hint("bf16") == "bf16" and inference_hint("int8") == "f32" and inference_hint("fp32") == "f32"


def test_a_model_fits_here_while_its_weights_leave_room_for_one_image_at_its_native_size(engine_dir, monkeypatch):
    from build_engines.text_to_image.build import fits_here
    from serve.text_to_image.engine_folder import EngineFolder

    folder = EngineFolder(engine_dir)
    assert fits_here(folder)
    machine = type("Memory", (), {"total": folder.weights_bytes})  # a machine its weights fill
    monkeypatch.setattr("serve.triton.memory.psutil.virtual_memory", lambda: machine)
    assert not fits_here(EngineFolder(engine_dir))


def test_precision_auto_builds_fp32_where_it_fits_and_int8_weights_where_it_does_not(default_model, monkeypatch):
    from build_engines.text_to_image import build as building
    from build_engines.text_to_image.build import build, engine_dir_for

    assert build(default_model, None, precision="auto").path == engine_dir_for(default_model, runtime="auto")
    monkeypatch.setattr(building, "fits_here", lambda folder: False)  # as SDXL's fp32 engines on a 24 GB machine
    folder = build(default_model, None, precision="auto")
    assert folder.path == engine_dir_for(default_model, precision=FITTING_PRECISION, runtime="openvino")
    assert {(c.runtime, c.precision) for c in folder.runtimes().values()} == {(Runtime.OPENVINO, FITTING_PRECISION)}
    only = build(default_model, None, precision="auto", runtime="onnxruntime")  # int8 does not run there: fp32
    assert only.path == engine_dir_for(default_model, runtime="onnxruntime")
