"""Upscalers without servers: recognised from community key layouts, exported with parity, tiled like the whole."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from build_engines.finishing.random_weights import random_upscaler, save_upscaler
from build_engines.finishing.upscalers import build_upscalers, export_upscaler
from serve.errors import InvalidInput
from serve.finishing.recognise import UnrecognisedUpscaler, read_state, recognise
from serve.finishing.schema import MAX_UPSCALE, UpscaleOptions
from serve.finishing.tiles import Tiling
from serve.finishing.upscalers import Upscalers
from serve.protocol.schema import GenerationRequest
from serve.triton.onnx_backend import make_session


def psnr(got: np.ndarray, want: np.ndarray) -> float:
    """PSNR of ``got`` against ``want`` over ``want``'s range."""
    span = float(want.max() - want.min())
    return float(10 * np.log10(span**2 / np.mean((got - want) ** 2)))


@pytest.mark.parametrize(
    ("kind", "scale", "suffix"),
    [("RRDBNet", 4, ".pth"), ("RRDBNet", 2, ".safetensors"), ("SRVGGNetCompact", 4, ".pth")],
)
def test_a_community_layout_is_recognised_with_its_scale_and_loads_the_same_weights(tmp_path, kind, scale, suffix):
    module = random_upscaler(kind, scale)
    state = read_state(save_upscaler(module, tmp_path / f"model{suffix}"))
    recognised = recognise(state)
    assert (recognised.kind, recognised.scale) == (kind, scale)
    image = torch.rand(1, 3, 12, 16)
    with torch.no_grad():
        assert torch.equal(recognised.module(state)(image), module(image))
        assert recognised.module(state)(image).shape == (1, 3, 12 * scale, 16 * scale)


def test_old_esrgan_keys_are_read_as_basicsr_names(tmp_path):
    module = random_upscaler("RRDBNet", 4)
    blocks = len(module.body)
    old = {}
    names = {"conv_first": "model.0", "conv_up1": "model.3", "conv_up2": "model.6", "conv_hr": "model.8"}
    names |= {"conv_last": "model.10", "conv_body": f"model.1.sub.{blocks}"}
    for key, value in module.state_dict().items():
        prefix, kind = key.rsplit(".", 1)
        if key.startswith("body."):
            _, block, rdb, conv, _ = key.split(".")
            old[f"model.1.sub.{block}.RDB{rdb[-1]}.{conv}.0.{kind}"] = value
        else:
            old[f"{names[prefix]}.{kind}"] = value
    torch.save(old, tmp_path / "esrgan.pth")
    state = read_state(tmp_path / "esrgan.pth")
    image = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(recognise(state).module(state)(image), module(image))


def test_a_file_that_is_no_upscaler_is_refused_with_why(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UnrecognisedUpscaler, match="not readable as weights"):
        read_state(tmp_path / "junk.pth")
    with pytest.raises(UnrecognisedUpscaler, match="neither RRDBNet"):
        recognise({"encoder.weight": torch.zeros(2, 2)})
    with pytest.raises(UnrecognisedUpscaler, match="not a"):
        read_state(tmp_path / "model.bin")


@pytest.mark.parametrize(("kind", "scale"), [("RRDBNet", 4), ("RRDBNet", 2), ("SRVGGNetCompact", 4)])
def test_tiles_blend_into_the_whole_image_upscale(kind, scale):
    """The acceptance bound, without servers: tiled against the module on the whole image, PSNR >= 40 dB."""
    module = random_upscaler(kind, scale)
    image = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 56, 72), 5, 1, 2)
    with torch.no_grad():
        whole = module(image)[0].numpy()

    async def run(tiles: np.ndarray) -> np.ndarray:
        assert tiles.shape[1:] == (3, 32, 32)  # every tile the engine's one shape
        with torch.no_grad():
            return module(torch.from_numpy(tiles)).numpy()

    tiled = asyncio.run(Tiling(32, 12, scale).upscale(image[0].numpy(), run))
    assert tiled.shape == whole.shape
    assert psnr(tiled, whole) >= 40
    without_feathering = asyncio.run(Tiling(32, 0, scale).upscale(image[0].numpy(), run))
    assert psnr(without_feathering, whole) < psnr(tiled, whole)


def test_an_image_smaller_than_a_tile_is_padded_and_cropped():
    async def nearest(tiles: np.ndarray) -> np.ndarray:
        return tiles.repeat(2, axis=2).repeat(2, axis=3)

    image = np.random.default_rng(0).random((3, 5, 7)).astype(np.float32)
    out = asyncio.run(Tiling(16, 4, 2).upscale(image, nearest))
    np.testing.assert_allclose(out, image.repeat(2, axis=1).repeat(2, axis=2), rtol=1e-6)


def test_the_export_matches_pytorch_on_a_batch_of_tiles(tmp_path):
    module = random_upscaler("SRVGGNetCompact", 4)
    assert export_upscaler(module, 4, tmp_path / "model.onnx", tile=16) <= 1e-3
    tiles = np.random.default_rng(1).random((3, 3, 16, 16)).astype(np.float32)
    got = make_session(tmp_path / "model.onnx").run(None, {"image": tiles})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(torch.from_numpy(tiles)).numpy(), atol=1e-4)


def test_a_build_lists_each_upscaler_ready_or_with_why_and_a_request_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "home"))
    general = save_upscaler(random_upscaler("SRVGGNetCompact", 4), tmp_path / "general.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    folder = build_upscalers({"general": general, "junk": tmp_path / "junk.safetensors"}, tmp_path / "repo", tile=16)
    upscalers = Upscalers.read(folder)
    listed = {entry["name"]: entry for entry in upscalers.listing()}
    assert listed["general"] == {"name": "general", "status": "ready", "architecture": "SRVGGNetCompact", "scale": 4}
    assert listed["junk"]["status"] == "error" and "not readable as weights" in listed["junk"]["error"]
    assert (tmp_path / "repo" / "upscaler_general" / "config.pbtxt").is_file()
    assert not (tmp_path / "repo" / "upscaler_junk").exists()
    assert upscalers.choose("general", 2.5)[1] == 2.5
    for name, scale, field in [("nope", None, "upscaler"), ("junk", None, "upscaler"), ("general", 8, "scale")]:
        with pytest.raises(InvalidInput) as refused:
            upscalers.choose(name, scale)
        assert refused.value.field == field


def _spandrel():
    try:
        import spandrel
    except Exception as error:  # noqa: BLE001 - ImportError, or torchvision's absence surfacing as another kind
        pytest.skip(f"spandrel does not import here ({type(error).__name__}: {error}); see MACHINE.md")
    return spandrel


@pytest.mark.parametrize(("kind", "scale"), [("RRDBNet", 4), ("RRDBNet", 2), ("SRVGGNetCompact", 4)])
def test_the_module_matches_spandrel_on_the_same_file_where_spandrel_imports(tmp_path, kind, scale):
    spandrel = _spandrel()
    path = save_upscaler(random_upscaler(kind, scale), tmp_path / "model.pth")
    theirs = spandrel.ModelLoader().load_from_file(str(path))
    assert theirs.scale == scale
    state = read_state(path)
    image = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(recognise(state).module(state)(image), theirs.model.eval()(image))


@pytest.mark.parametrize("scale", [0.5, MAX_UPSCALE + 0.5, 7.7e307])
def test_a_scale_outside_1_to_the_largest_upscale_is_refused_by_the_schema_naming_it(scale):
    """Before pricing: a huge scale once overflowed the price's pixel count (a 503 instead of a 400)."""
    with pytest.raises(ValueError, match="scale"):
        UpscaleOptions.model_validate({"upscaler": "x4", "scale": scale})
    with pytest.raises(ValueError, match=r"upscale\.scale"):
        GenerationRequest.model_validate({"prompt": "x", "upscale": {"upscaler": "x4", "scale": scale}})
