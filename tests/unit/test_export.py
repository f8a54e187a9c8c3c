import json
import logging

import onnx
import pytest
import torch

from build_engines.text_to_image import build as build_module
from build_engines.text_to_image.default_model import create_default_model
from build_engines.text_to_image.export import ParityError, _modules, check_parity
from serve.text_to_image.spec import ENGINE_NAMES, PipelineDims, engine_specs


def test_random_embedded_model_is_deterministic(tmp_path):
    first = create_default_model(tmp_path / "a", "bench")
    second = create_default_model(tmp_path / "b", "bench")
    assert build_module.content_hash(first) == build_module.content_hash(second)


def test_build_exports_checked_engines_and_reuses_the_cache(default_model, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "home"))
    repository = tmp_path / "repository"
    engine_dir = build_module.build(default_model, repository)
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    assert {r["engine"] for r in manifest["parity"]} == set(ENGINE_NAMES)
    assert all(r["relative_error"] <= 1e-3 for r in manifest["parity"])
    specs = engine_specs(PipelineDims.load(engine_dir / "pipeline.json"))
    for name in ENGINE_NAMES:
        graph = onnx.load(repository / name / "1" / "model.onnx").graph
        assert [i.name for i in graph.input] == [t.name for t in specs[name].inputs]
        assert [o.name for o in graph.output] == [t.name for t in specs[name].outputs]
        assert (repository / name / "1" / "model.py").exists()

    stamp = (engine_dir / "unet" / "model.onnx").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        assert build_module.build(default_model, repository) == engine_dir
    assert "up to date" in caplog.text
    assert (engine_dir / "unet" / "model.onnx").stat().st_mtime_ns == stamp
    build_module.build(default_model, repository, force=True)
    assert (engine_dir / "unet" / "model.onnx").stat().st_mtime_ns != stamp


def test_parity_check_catches_a_wrong_engine(default_model, engine_dir):
    dims = PipelineDims.from_diffusers(default_model)
    unet = _modules(default_model)["unet"]
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.mul_(1.5)
    with pytest.raises(ParityError, match="unet"):
        check_parity(unet, engine_specs(dims)["unet"], dims, engine_dir / "unet" / "model.onnx", seed=3)


def test_not_a_diffusers_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        build_module.build(tmp_path, tmp_path / "repository")
