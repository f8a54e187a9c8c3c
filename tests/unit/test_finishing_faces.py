"""Face restoration: GFPGAN v1 clean recognised from its keys, its ONNX engine against PyTorch, the crop and paste.

No server: the restorer's engine runs in ONNX Runtime here, and the paths that call Triton get a runner over the
PyTorch module (what the integration tests compare the served engine against).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from build_engines.finishing.random_weights import drawn_face, random_restorer, save_upscaler
from build_engines.finishing.restorers import UnitRange, build_restorer
from serve.errors import InvalidInput
from serve.finishing import faces
from serve.finishing.face_architecture import GFPGANv1Clean
from serve.finishing.recognise import read_state, recognise
from serve.finishing.restorers import FACE_SIDE, NO_FACE, Restorers, restore_faces
from serve.finishing.schema import UpscaleOptions
from serve.listing import READY
from serve.triton.engine_files import ONNX
from serve.triton.onnx_backend import make_session

V14_SHAPES = {
    "conv_body_first.weight": (32, 3, 1, 1),
    "conv_body_down.6.skip.weight": (256, 256, 1, 1),
    "final_conv.weight": (256, 256, 3, 3),
    "final_linear.weight": (16 * 512, 256 * 16),
    "toRGB.6.weight": (3, 32, 1, 1),
    "condition_scale.6.2.weight": (32, 32, 3, 3),
    "stylegan_decoder.style_mlp.15.weight": (512, 512),
    "stylegan_decoder.constant_input.weight": (1, 512, 4, 4),
    "stylegan_decoder.style_conv1.modulated_conv.weight": (1, 512, 512, 3, 3),
    "stylegan_decoder.style_convs.13.modulated_conv.modulation.weight": (64, 512),
    "stylegan_decoder.to_rgbs.6.modulated_conv.weight": (1, 3, 64, 1, 1),
    "stylegan_decoder.noises.noise14": (1, 1, 512, 512),
}
"""Keys and shapes of the community file ``GFPGANv1.4.pth`` (its ``params_ema``)."""


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


class TorchRunner:
    """The restorer's engine as PyTorch runs it (the reference the served engine is held to)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.calls = UnitRange(module).eval(), 0

    async def infer(self, spec, inputs):
        self.calls += 1
        with torch.no_grad():
            return {"restored": self.module(torch.from_numpy(inputs["image"])).numpy()}


@pytest.fixture(scope="module")
def restorer_file(tmp_path_factory):
    return save_upscaler(random_restorer(seed=3), tmp_path_factory.mktemp("faces") / "GFPGANv1.4.pth")


def test_the_full_size_module_has_the_v14_files_keys_and_shapes():
    with torch.device("meta"):
        state = GFPGANv1Clean().state_dict()
    assert {key: tuple(state[key].shape) for key in V14_SHAPES} == V14_SHAPES
    assert len(state) == 285  # the encoder's 146 tensors, the decoder's 124 and its 15 stored noises


def test_a_restorer_file_is_recognised_from_its_keys_and_loads_strictly(restorer_file):
    state = read_state(restorer_file)
    recognised = recognise(state)
    assert recognised.kind == "GFPGANv1Clean" and recognised.restores_faces
    assert recognised.arguments == {
        "out_size": 512,
        "style": 64,
        "channel_multiplier": 1.0,
        "narrow": 0.125,
        "mlp": 8,
        "different_w": True,
        "sft_half": True,
    }
    loaded = recognised.module(state).state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in random_restorer(seed=3).state_dict().items())
    with torch.device("meta"):
        full = GFPGANv1Clean().state_dict()
    assert recognise(full).arguments | {"style": 0} == recognised.arguments | {
        "style": 0,
        "channel_multiplier": 2.0,
        "narrow": 1.0,
    }


def test_the_onnx_engine_restores_a_crop_as_the_pytorch_module_does(restorer_file, tmp_path):
    entry = build_restorer("face", restorer_file, tmp_path)
    assert entry.status == READY and entry.architecture == "GFPGANv1Clean"
    picture = drawn_face(384)
    [box] = faces.detect(picture)
    crop = faces.restorer_input(picture, faces.crop_for(box, 384, 384), FACE_SIDE)[None]
    served = make_session(tmp_path / "restorer_face" / ONNX).run(None, {"image": crop})[0]
    with torch.no_grad():
        expected = UnitRange(random_restorer(seed=3))(torch.from_numpy(crop)).numpy()
    assert psnr(np.clip(served, 0, 1), np.clip(expected, 0, 1)) >= 40


def test_an_upscaler_file_is_not_taken_as_a_face_restorer(tmp_path):
    from build_engines.finishing.random_weights import random_upscaler

    path = save_upscaler(random_upscaler("SRVGGNetCompact", 4), tmp_path / "compact.pth")
    entry = build_restorer("wrong", path, tmp_path)
    assert entry.status == "error" and "not a face restorer" in entry.error


def test_the_feather_mask_ramps_from_the_edge_to_one_inside():
    mask = faces.feather_mask(64)
    ramp = round(64 * faces.FEATHER)
    assert mask.shape == (64, 64) and np.allclose(mask, mask.T) and np.allclose(mask, mask[::-1, ::-1])
    assert mask[0, 0] < 0.01 and mask[0, 32] < 0.1
    assert np.all(mask[ramp:-ramp, ramp:-ramp] == 1.0)
    assert np.all(np.diff(mask[32, : ramp + 1]) > 0)


def test_a_paste_blends_by_weight_inside_the_crop_and_leaves_the_rest():
    pixels = np.full((100, 120, 3), 40, np.uint8)
    crop = faces.crop_for((50, 30, 40, 40), 120, 100)
    assert (crop.left, crop.top, crop.side) == (40, 20, 60)
    assert faces.crop_for((100, 80, 40, 40), 120, 100) == faces.Crop(60, 40, 60)  # moved inside the image
    white = np.ones((3, 30, 30), np.float32)  # resized to the crop's side
    half, full, none = (faces.paste(pixels, crop, white, weight) for weight in (0.5, 1.0, 0.0))
    centre = (slice(crop.top + 10, crop.top + 50), slice(crop.left + 10, crop.left + 50))
    assert np.all(full[centre] == 255) and np.all(half[centre] == round(40 + 0.5 * 215))
    assert np.array_equal(none, pixels)
    outside = np.ones(pixels.shape[:2], bool)
    outside[crop.top : crop.top + crop.side, crop.left : crop.left + crop.side] = False
    assert np.all(full[outside] == 40)


def test_faces_are_restored_and_pasted_and_a_faceless_image_comes_back_unchanged(restorer_file):
    entry = Restorers(tuple([build_restorer_entry(restorer_file)])).choose("face")
    runner = TorchRunner(random_restorer(seed=3))
    picture = drawn_face(256)
    restored, found = asyncio.run(restore_faces(picture, entry, 1.0, runner))
    [crop] = found["crops"]
    assert found["found"] == 1 and runner.calls == 1 and crop["width"] == crop["height"] >= 256 * 0.75
    assert psnr(restored, picture, 255) < 30  # the face was replaced
    plain = np.full((200, 300, 3), 128, np.uint8)
    same, none = asyncio.run(restore_faces(plain, entry, 1.0, runner))
    assert same is plain and none == {"found": 0, "note": NO_FACE} and runner.calls == 1


def build_restorer_entry(path):
    from serve.finishing.restorers import RestorerEntry

    return RestorerEntry("face", str(path), architecture="GFPGANv1Clean")


def test_a_request_names_the_field_for_an_unknown_restorer_or_a_weight_out_of_range():
    restorers = Restorers((build_restorer_entry("x.pth"),))
    with pytest.raises(InvalidInput, match="restore_faces.restorer: unknown face restorer 'other'"):
        restorers.choose("other")
    with pytest.raises(InvalidInput, match="none: start the stack with --face-restorer"):
        Restorers().choose("face")
    with pytest.raises(ValidationError, match="restore_faces.weight"):
        UpscaleOptions(upscaler="x4", restore_faces={"restorer": "face", "weight": 1.5})
    form = UpscaleOptions.model_validate({"upscaler": "x4", "restore_faces": '{"restorer": "face", "weight": 0.3}'})
    assert form.restore_faces.weight == 0.3


def test_restore_faces_is_priced_at_a_restorer_pass_per_face_it_may_restore():
    from PIL import Image

    from serve.finishing.upscalers import UpscalerEntry, Upscalers
    from serve.serving.upscale import RESTORATION_MEGAPIXELS, UpscaleBody, Upscaling
    from tests.images import encode

    finishing = Upscalers(
        (UpscalerEntry("x4", "x4.pth", architecture="RRDBNet", scale=4),), Restorers((build_restorer_entry("f"),))
    )
    upscaling = Upscaling(finishing, None)
    data = encode(Image.new("RGB", (100, 50)))
    plain = upscaling.work(UpscaleBody(data, UpscaleOptions(upscaler="x4"))).cost
    restored = upscaling.work(UpscaleBody(data, UpscaleOptions(upscaler="x4", restore_faces={"restorer": "face"}))).cost
    assert plain == pytest.approx(0.08 + 0.005) and restored == pytest.approx(plain + RESTORATION_MEGAPIXELS)
    with pytest.raises(InvalidInput, match="restore_faces.restorer"):
        upscaling.work(UpscaleBody(data, UpscaleOptions(upscaler="x4", restore_faces={"restorer": "nope"})))
