import json
import logging

import numpy as np
import onnx
import pytest
import torch

from build_engines.text_to_image import build as build_module
from build_engines.text_to_image.default_model import create_default_model
from build_engines.text_to_image.export import (
    ParityError,
    check_parity,
    export_all,
    gather_external_data,
    parity_feeds,
    reference_outputs,
)
from serve.files import content_hash
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.families import family_of_folder


def test_random_embedded_model_is_deterministic(tmp_path):
    first = create_default_model(tmp_path / "a", "bench")
    second = create_default_model(tmp_path / "b", "bench")
    assert content_hash(first) == content_hash(second)


def test_build_exports_checked_engines_and_reuses_the_cache(default_model, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "home"))
    repository = tmp_path / "repository"
    engine_dir = build_module.build(default_model, repository).path
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    specs = EngineFolder(engine_dir).specs
    engines = ["text_encoder", "unet", "vae_decoder", "vae_encoder", "unet_lcm"]
    assert [r["engine"] for r in manifest["engines"]] == list(specs) == engines
    assert all(r["parity"]["relative_error"] <= 1e-3 for r in manifest["engines"])
    for name in specs:
        graph = onnx.load(repository / name / "1" / "model.onnx").graph
        assert [i.name for i in graph.input] == [t.name for t in specs[name].inputs]
        assert [o.name for o in graph.output] == [t.name for t in specs[name].outputs]
        assert (repository / name / "1" / "model.py").exists()

    stamp = (engine_dir / "unet" / "model.onnx").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        assert build_module.build(default_model, repository).path == engine_dir
    assert "up to date" in caplog.text
    assert (engine_dir / "unet" / "model.onnx").stat().st_mtime_ns == stamp
    build_module.build(default_model, repository, force=True)
    assert (engine_dir / "unet" / "model.onnx").stat().st_mtime_ns != stamp


def test_parity_check_catches_a_wrong_engine(default_model, engine_dir):
    family = family_of_folder(default_model)
    unet = family.export_modules(default_model)["unet"].load(torch.float32)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.mul_(1.5)
    spec = family.specs["unet"]
    feeds = parity_feeds(spec, family, seed=3)
    with pytest.raises(ParityError, match="unet"):
        check_parity(spec, engine_dir / "unet" / "model.onnx", feeds, reference_outputs(unet, feeds))


def test_external_data_is_gathered_into_one_aligned_file(tmp_path):
    """A graph whose weights an exporter wrote one file per tensor loads the same from one model.onnx.data."""
    from onnx import TensorProto, helper, numpy_helper

    weights = {name: np.arange(n, dtype=np.float32) + k for k, (name, n) in enumerate([("w0", 1000), ("w1", 3000)])}
    initializers = [numpy_helper.from_array(array, name) for name, array in weights.items()]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w0"], ["y0"]), helper.make_node("Add", ["y0", "w1"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3000])],
        initializers,
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=True, all_tensors_to_one_file=False)
    assert len(list(tmp_path.iterdir())) == 3
    gather_external_data(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    model = onnx.load(str(path), load_external_data=False)
    offsets = [int(next(e.value for e in t.external_data if e.key == "offset")) for t in model.graph.initializer]
    assert all(offset % 4096 == 0 for offset in offsets)
    loaded = onnx.load(str(path))
    for tensor in loaded.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), weights[tensor.name])


def test_fp16_export_keeps_fp32_io_and_the_force_upcast_vae_in_fp32(tiny_xl_model, tmp_path):
    family = family_of_folder(tiny_xl_model)
    reports = {r.engine: r for r in export_all(family, tiny_xl_model, tmp_path, precision="fp16")}
    assert reports["unet"].precision == "fp16" and reports["vae_decoder"].precision == "fp32"
    assert reports["unet"].parity.max_abs_error is None and "fp16" in reports["unet"].parity.note
    assert reports["vae_decoder"].parity.relative_error <= 1e-3
    unet = onnx.load(str(tmp_path / "unet" / "model.onnx"))
    assert {i.name: i.type.tensor_type.elem_type for i in unet.graph.input} == dict.fromkeys(
        [t.name for t in family.specs["unet"].inputs], onnx.TensorProto.FLOAT
    )
    weights = [t for t in unet.graph.initializer if t.dims and np.prod(t.dims) > 64]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)


def test_a_second_build_of_the_same_engines_waits_for_the_first_and_says_whose(tmp_path, caplog):
    import os
    import threading

    engine_dir, order = tmp_path / "engines" / "abc-fp32", []
    second_waits = threading.Event()

    def second() -> None:
        second_waits.set()
        with build_module.one_build(engine_dir):
            order.append("second")

    with caplog.at_level(logging.INFO, logger=build_module.__name__), build_module.one_build(engine_dir):
        thread = threading.Thread(target=second)
        thread.start()
        second_waits.wait(10)
        thread.join(0.5)
        assert thread.is_alive()  # it waits
        order.append("first")
    thread.join(10)
    assert order == ["first", "second"]
    assert f"waiting for pid {os.getpid()}, which builds the same engines" in caplog.text
