"""Frame interpolation (RIFE): the flownet file read into IFNet, its engine exported and checked, a video's frames
multiplied through an engine runner against the module, and the video request's ``interpolate``."""

import asyncio

import numpy as np
import pytest
import torch

from build_engines.finishing.ifnet import random_flownet, read_flownet
from build_engines.finishing.interpolators import build_interpolator
from build_engines.finishing.random_weights import random_upscaler, save_upscaler
from serve.errors import InvalidInput
from serve.finishing.interpolators import (
    InterpolatorEntry,
    Interpolators,
    interpolate_frames,
    padded_side,
    timesteps,
)
from serve.finishing.recognise import UnrecognisedUpscaler
from serve.protocol.video import VideoRequest
from serve.triton.engine_files import ONNX
from serve.triton.onnx_backend import make_session
from tests.conftest import psnr
from tests.videos import rife_reference


@pytest.fixture(scope="module")
def flownet(tmp_path_factory):
    return random_flownet(tmp_path_factory.mktemp("rife") / "flownet.pkl", seed=4)


@pytest.fixture(scope="module")
def built(flownet, tmp_path_factory):
    """The engine folder of interpolator ``rife`` and its entry."""
    folder = tmp_path_factory.mktemp("engines")
    return folder, build_interpolator("rife", flownet, folder)


class OnnxRunner:
    """The built engine run in-process by ONNX Runtime, as Triton's python backend runs it; calls counted."""

    def __init__(self, path):
        self.session, self.rows = make_session(path), []

    async def infer(self, spec, inputs):
        self.rows.append(len(inputs["pair"]))
        return {"middle": self.session.run(None, dict(inputs))[0]}


def test_a_flownet_file_is_read_with_or_without_ddp_s_prefix(flownet, tmp_path):
    state = torch.load(flownet, weights_only=True)
    assert all(key.startswith("module.") for key in state)
    torch.save({key.removeprefix("module."): value for key, value in state.items()}, tmp_path / "bare.pkl")
    first, second = read_flownet(flownet), read_flownet(tmp_path / "bare.pkl")
    assert all(
        torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )


def test_a_file_that_is_not_a_rife_flownet_is_refused_saying_what(tmp_path):
    upscaler = save_upscaler(random_upscaler("SRVGGNetCompact", 4), tmp_path / "general.pth")  # params_ema: {...}
    with pytest.raises(UnrecognisedUpscaler, match="not a state dict of tensors"):
        read_flownet(upscaler)
    torch.save(torch.nn.Conv2d(6, 3, 3).state_dict(), tmp_path / "conv.pkl")
    with pytest.raises(UnrecognisedUpscaler, match="not a Practical-RIFE v4.25/4.26 flownet.pkl"):
        read_flownet(tmp_path / "conv.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UnrecognisedUpscaler, match="not a PyTorch state dict"):
        read_flownet(tmp_path / "junk.pkl")
    entry = build_interpolator("bad", tmp_path / "junk.pkl", tmp_path / "engines")
    assert (entry.status, entry.architecture) == ("error", None) and "state dict" in entry.error


def test_the_built_engine_is_listed_ready_and_read_back(built):
    folder, entry = built
    assert (entry.status, entry.architecture) == ("ready", "RIFE 4.25")
    assert (folder / "interpolator_rife" / ONNX).is_file()
    Interpolators((entry,)).write(folder)
    assert Interpolators.read(folder).listing() == [{"name": "rife", "status": "ready", "architecture": "RIFE 4.25"}]


@pytest.mark.parametrize("factor", [2, 4])
def test_eight_frames_through_the_engine_are_the_module_s_and_their_count_is_the_factor_s(built, flownet, factor):
    folder, entry = built
    rng = np.random.default_rng(factor)
    base = rng.integers(0, 256, (1, 48, 80, 3), dtype=np.uint8)
    frames = [np.roll(base[0], shift, axis=1) for shift in range(8)]  # a scene moving a pixel a frame
    runner = OnnxRunner(folder / "interpolator_rife" / ONNX)
    got = asyncio.run(interpolate_frames(frames, factor, entry, runner))
    assert len(got) == (8 - 1) * factor + 1 and runner.rows == [factor - 1] * 7
    assert all(np.array_equal(got[k * factor], frames[k]) for k in range(8))  # the drawn frames stay as drawn
    want = rife_reference(read_flownet(flownet), np.stack(frames), factor)
    middles = [k for k in range(len(got)) if k % factor]
    assert min(psnr(got[k], want[k]) for k in middles) >= 40


def test_the_pairs_are_padded_as_practical_rife_pads_them():
    assert [padded_side(side) for side in (64, 128, 129, 512, 520)] == [128, 128, 256, 512, 640]
    assert timesteps(4) == [0.25, 0.5, 0.75] and timesteps(2) == [0.5]


def test_a_video_s_interpolation_shows_its_frames_at_the_factor_s_fps():
    request = VideoRequest(prompt="a fox", frames=8, fps=8, interpolate={"factor": 4})
    family = type(
        "Family",
        (),
        {"motion_adapters": ("wave",), "pipeline_class": "StableDiffusionPipeline", "animates_images": False},
    )
    video = request.generation("easel-default", 64, family)
    assert (video.frames, video.shown_frames, video.shown_fps, video.seconds) == (8, 29, 32, "0.90625")
    plain = VideoRequest(prompt="a fox", frames=8, fps=8).generation("easel-default", 64, family)
    assert (plain.shown_frames, plain.shown_fps, plain.seconds) == (8, 8, "1")


@pytest.mark.parametrize(
    ("interpolate", "field"),
    [({"factor": 3}, "interpolate.factor"), ({"factor": 2, "extra": 1}, "interpolate.extra"), ("[", "interpolate")],
)
def test_a_bad_interpolate_is_refused_naming_the_field(interpolate, field):
    from pydantic import ValidationError

    from serve.errors import invalid_input

    with pytest.raises(ValidationError) as raised:
        VideoRequest(prompt="a fox", interpolate=interpolate)
    assert invalid_input(raised.value).field == field


def test_an_interpolator_is_chosen_by_name_or_the_first_ready():
    ready, broken = InterpolatorEntry("rife", "a.pkl"), InterpolatorEntry("old", "b.pkl", "error", error="v3 layout")
    served = Interpolators((broken, ready))
    assert served.choose(None) is ready and served.choose("rife") is ready
    with pytest.raises(InvalidInput, match="cannot be served: v3 layout") as refused:
        served.choose("old")
    assert refused.value.field == "interpolate.interpolator"
    with pytest.raises(InvalidInput, match="start the stack with --interpolator"):
        Interpolators().choose(None)


def test_a_finished_video_interpolated_later_keeps_its_request_and_draws_nothing():
    from serve.finishing.schema import Interpolate
    from serve.protocol.video import interpolation_of

    family = type(
        "Family",
        (),
        {"motion_adapters": ("wave",), "pipeline_class": "StableDiffusionPipeline", "animates_images": False},
    )
    source = VideoRequest(prompt="a fox", frames=8, fps=6, seed=3).generation("easel-default", 64, family)
    later = interpolation_of(source, "job_1", Interpolate(factor=4))
    assert (later.source_video, later.shown_frames, later.shown_fps, later.seed) == ("job_1", 29, 24, 3)
    assert later.model_dump(exclude={"interpolate", "source_video"}) == source.model_dump(
        exclude={"interpolate", "source_video"}
    )
    with pytest.raises(InvalidInput, match="interpolated already") as refused:
        interpolation_of(later, "job_2", Interpolate(factor=2))
    assert refused.value.field == "video_id"


def test_a_video_s_finishing_is_priced_per_frame_and_its_new_frames_at_the_upscaled_padded_size():
    from serve.finishing.restorers import RestorerEntry, Restorers
    from serve.finishing.upscalers import UpscalerEntry, Upscalers
    from serve.serving.upscale import RESTORATION_MEGAPIXELS, Upscaling

    upscalers = Upscalers(
        (UpscalerEntry("general", "g.pth", architecture="SRVGGNetCompact", scale=4),),
        Restorers((RestorerEntry("face", "f.pth", architecture="GFPGANv1Clean"),)),
        Interpolators((InterpolatorEntry("rife", "flownet.pkl", architecture="RIFE 4.25"),)),
    )
    finishing = Upscaling(upscalers, None)
    family = type(
        "Family",
        (),
        {"motion_adapters": ("wave",), "pipeline_class": "StableDiffusionPipeline", "animates_images": False},
    )

    def video(**fields):
        body = VideoRequest(prompt="a fox", size="192x192", frames=8, **fields)
        return finishing.scale_named(body.generation("easel-default", 64, family))

    plain = video(interpolate={"factor": 4})
    assert finishing.finishing_cost(plain, 192, 192) == pytest.approx(21 * 256 * 256 / 1e6)  # padded to 256
    upscaled = video(interpolate={"factor": 4}, upscale={"upscaler": "general", "scale": 2})
    assert upscaled.shown_size == "384x384"
    assert finishing.finishing_cost(upscaled, 192, 192) == pytest.approx(21 * 384 * 384 / 1e6)
    own_scale = video(upscale={"upscaler": "general"})
    assert (own_scale.upscale.scale, own_scale.shown_size, finishing.finishing_cost(own_scale, 192, 192)) == (
        4.0,
        "768x768",
        0.0,
    )
    faces = video(restore_faces={"restorer": "face"})
    assert finishing.finishing_cost(faces, 192, 192) == pytest.approx(8 * RESTORATION_MEGAPIXELS)
    with pytest.raises(InvalidInput, match="unknown upscaler") as refused:
        video(upscale={"upscaler": "x9"})
    assert refused.value.field == "upscale.upscaler"
