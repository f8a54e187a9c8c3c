"""AnimateDiff videos: the motion UNet engine and the loop against diffusers' ``AnimateDiffPipeline`` (no servers)."""

import asyncio
import base64
import io
import json
import zipfile

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from starlette.requests import Request

from build_engines.text_to_image.adapters import AdapterBuild
from build_engines.text_to_image.loras import build_registry, save_registry
from build_engines.text_to_image.motion import motion_fit, random_motion_adapter
from build_engines.text_to_image.random_adapters import IP_WEIGHTS, make_ip_adapter, make_lora, make_motion_lora
from serve.adapters.requests import StackAdapters
from serve.errors import InvalidInput, invalid_input
from serve.http.forms import read_video_form
from serve.images import MAX_IMAGE_BYTES, MAX_IMAGE_CHARS
from serve.images.video import frames_zip, mp4
from serve.models.admission import Work
from serve.models.text_to_image import encode_image
from serve.moderation import Policy
from serve.protocol.schema import GenerationRequest
from serve.protocol.video import VideoGeneration, VideoRequest, input_reference_named
from serve.serving.jobs import JobRequest
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.families import family_of_folder
from serve.text_to_image.generation import (
    AdapterInputs,
    Generation,
    ImageInputs,
    IpReferences,
    Motion,
    Outline,
    SamplingParams,
)
from serve.text_to_image.images import header_size
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.text_to_image.video import motion_of
from tests.conftest import psnr
from tests.videos import animatediff, reference_frames, reference_frames_from, video_to_video


@pytest.fixture(scope="module")
def motion_adapter(default_model, tmp_path_factory):
    """A random diffusers ``MotionAdapter`` for the tiny SD's UNet, made here."""
    return random_motion_adapter(default_model, tmp_path_factory.mktemp("motion") / "wave")


@pytest.fixture(scope="module")
def ip_adapter(default_model, tmp_path_factory):
    """A random IP-Adapter (with its image encoder) for the tiny SD's UNet, made here."""
    return make_ip_adapter(default_model, tmp_path_factory.mktemp("ip-adapter") / "ip", seed=5)


@pytest.fixture(scope="module")
def video_engines(default_model, motion_adapter, ip_adapter, tmp_path_factory):
    """The tiny SD's engines, LoRA- and IP-Adapter-ready, with the motion adapter's UNet (``unet_motion_wave``)."""
    from build_engines.text_to_image.build import build

    repository = tmp_path_factory.mktemp("repository-motion")
    adapters = AdapterBuild(lora=True, ip_adapters={"ip": ip_adapter})
    built = build(default_model, repository, adapters=adapters, motion_adapters={"wave": motion_adapter})
    return EngineFolder(built.path)


@pytest.fixture(scope="module")
def video_loras(default_model, motion_adapter, video_engines, tmp_path_factory):
    """A LoRA made for the UNet (``style``) and a motion LoRA (``swing``), prepared into a registry as a stack does."""
    folder = tmp_path_factory.mktemp("video-loras")
    make_lora(default_model, folder / "loras" / "style.safetensors", rank=4, seed=1, strength=0.6)
    make_motion_lora(default_model, motion_adapter, folder / "loras" / "swing.safetensors", rank=2, seed=2, strength=3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EASEL_HOME", str(folder / "home"))
        registry = build_registry(folder / "loras", video_engines, default_model)
    save_registry(registry, folder / "registry")
    return folder / "loras", registry, folder / "registry"


@pytest.fixture(scope="module")
def animatediff_pipeline(diffusers_pipeline, motion_adapter):
    """diffusers' ``AnimateDiffPipeline`` over the same UNet and adapter: the reference."""
    return animatediff(diffusers_pipeline, motion_adapter)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_every_frame_matches_animatediff(video_engines, video_runner, animatediff_pipeline, scheduler):
    pipeline = TextToImagePipeline(video_engines, video_runner)
    job = Generation(SamplingParams("a red fox", "blurry", 1, 64, 48, 3, 7.5, 5, scheduler), motion=Motion("wave", 6))
    got = np.stack(asyncio.run(pipeline.generate(job)).images)
    want = reference_frames(
        animatediff_pipeline,
        scheduler,
        6,
        5,
        prompt="a red fox",
        negative_prompt="blurry",
        width=64,
        height=48,
        num_inference_steps=3,
        guidance_scale=7.5,
    )
    assert got.shape == want.shape == (6, 48, 64, 3)
    assert min(psnr(a, b) for a, b in zip(got, want, strict=True)) >= 40
    assert psnr(got[0], got[-1]) < 30  # the frames are not one picture repeated


@pytest.fixture(scope="module")
def video_runner(video_engines, video_loras):
    """The engines in-process, their LoRAs from the registry: one runner (its sessions opened once) for the module."""
    return OnnxRuntimeRunner(video_engines, loras_dir=video_loras[2])


@pytest.fixture(scope="module")
def animatediff_with_loras(default_model, motion_adapter, video_loras):
    """diffusers' ``AnimateDiffPipeline`` with both LoRAs loaded by ``load_lora_weights`` (its own weights)."""
    from diffusers import AnimateDiffPipeline, MotionAdapter

    adapter = MotionAdapter.from_pretrained(motion_adapter)
    pipeline = AnimateDiffPipeline.from_pretrained(default_model, motion_adapter=adapter)
    pipeline.set_progress_bar_config(disable=True)
    for name in ("style", "swing"):
        pipeline.load_lora_weights(str(video_loras[0]), weight_name=f"{name}.safetensors", adapter_name=name)
    return pipeline


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_every_frame_with_loras_matches_animatediff_with_load_lora_weights(
    video_engines, video_loras, video_runner, animatediff_with_loras, scheduler
):
    """A UNet LoRA and a motion LoRA on the motion UNet (and the text encoder), as AnimateDiff's set_adapters."""
    registry = video_loras[1]
    assert registry.get("style").layers.keys() == {"text_encoder", "unet", "unet_motion_wave"}
    assert registry.get("swing").layers.keys() == {"unet_motion_wave"}  # the still UNet has no motion modules
    ours = TextToImagePipeline(video_engines, video_runner)
    sampling = SamplingParams("a red fox", "blurry", 1, 64, 48, 3, 7.5, 5, scheduler)
    adapters = AdapterInputs(loras=(("style", 0.8), ("swing", 1.0)))
    got = np.stack(asyncio.run(ours.generate(Generation(sampling, adapters=adapters, motion=Motion("wave", 6)))).images)
    kwargs = {"prompt": "a red fox", "negative_prompt": "blurry", "width": 64, "height": 48, "guidance_scale": 7.5}
    animatediff_with_loras.set_adapters(["style", "swing"], [0.8, 1.0])
    want = reference_frames(animatediff_with_loras, scheduler, 6, 5, num_inference_steps=3, **kwargs)
    assert got.shape == want.shape == (6, 48, 64, 3)
    assert min(psnr(a, b) for a, b in zip(got, want, strict=True)) >= 40
    if scheduler == "ddim":  # the motion LoRA moves the frames beyond the parity bar
        animatediff_with_loras.set_adapters(["style"], [0.8])
        without_swing = reference_frames(animatediff_with_loras, scheduler, 6, 5, num_inference_steps=3, **kwargs)
        assert min(psnr(a, b) for a, b in zip(got, without_swing, strict=True)) < 40


def test_every_frame_with_a_reference_matches_animatediff_with_load_ip_adapter(
    default_model, motion_adapter, ip_adapter, video_engines, video_runner
):
    """An IP-Adapter reference in every frame of a video, as AnimateDiff's ``ip_adapter_image``; it moves them."""
    from diffusers import AnimateDiffPipeline, MotionAdapter

    reference = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ours = TextToImagePipeline(video_engines, video_runner)
    sampling = SamplingParams("a red fox", "blurry", 1, 64, 48, 3, 7.5, 5, "ddim")
    adapters = AdapterInputs(ip=(IpReferences(0, images=(reference,), scale=0.7),))
    got = np.stack(asyncio.run(ours.generate(Generation(sampling, adapters=adapters, motion=Motion("wave", 6)))).images)
    plain = np.stack(asyncio.run(ours.generate(Generation(sampling, motion=Motion("wave", 6)))).images)
    pipeline = AnimateDiffPipeline.from_pretrained(
        default_model, motion_adapter=MotionAdapter.from_pretrained(motion_adapter)
    )
    pipeline.set_progress_bar_config(disable=True)
    pipeline.load_ip_adapter(str(ip_adapter), subfolder="", weight_name=IP_WEIGHTS)
    pipeline.set_ip_adapter_scale(0.7)
    kwargs = {"prompt": "a red fox", "negative_prompt": "blurry", "width": 64, "height": 48, "guidance_scale": 7.5}
    want = reference_frames(
        pipeline, "ddim", 6, 5, num_inference_steps=3, ip_adapter_image=Image.fromarray(reference), **kwargs
    )
    assert got.shape == want.shape == (6, 48, 64, 3)
    assert min(psnr(a, b) for a, b in zip(got, want, strict=True)) >= 40
    assert max(psnr(a, b) for a, b in zip(got, plain, strict=True)) < 30  # the reference changed every frame


def test_a_motion_lora_is_refused_for_stills_naming_the_field(video_loras, tmp_path):
    adapters = StackAdapters(str(video_loras[2]), store_url=f"sqlite:///{tmp_path / 'adapters.db'}")
    with pytest.raises(InvalidInput, match="'swing' is a motion LoRA") as refused:
        adapters.check(GenerationRequest(prompt="x", loras=[{"name": "swing"}]))
    assert refused.value.field == "loras.0.name"
    adapters.check(GenerationRequest(prompt="x", loras=[{"name": "style"}]))
    video = VideoGeneration(prompt="x", frames=4, fps=8, motion_adapter="wave", loras=[{"name": "swing"}])
    assert len(adapters.resolve(video)) == 1


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_image_to_video_matches_animatediff_video_to_video(
    video_engines, video_runner, animatediff_pipeline, scheduler
):
    """Every frame starts from the reference's noised latent: diffusers' video-to-video of the image repeated."""
    reference = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)  # resized to 64x48
    pipeline = TextToImagePipeline(video_engines, video_runner)
    sampling = SamplingParams("a red fox", "blurry", 1, 64, 48, 4, 7.5, 5, scheduler)
    job = Generation(sampling, inputs=ImageInputs((reference,), strength=0.6), motion=Motion("wave", 6))
    got = np.stack(asyncio.run(pipeline.generate(job)).images)
    want = reference_frames_from(
        video_to_video(animatediff_pipeline),
        scheduler,
        Image.fromarray(reference),
        6,
        5,
        prompt="a red fox",
        negative_prompt="blurry",
        width=64,
        height=48,
        num_inference_steps=4,
        guidance_scale=7.5,
        strength=0.6,
    )
    assert got.shape == want.shape == (6, 48, 64, 3)
    assert min(psnr(a, b) for a, b in zip(got, want, strict=True)) >= 40


def test_the_motion_unet_is_its_own_engine_with_frames_an_axis(video_engines):
    spec = video_engines.specs["unet_motion_wave"]
    assert spec.input("sample").dims == (4, -1, -1, -1)
    assert spec.input("sample").axis_names == ("frames", "latent_height", "latent_width")
    assert [t.name for t in spec.inputs] == [t.name for t in video_engines.specs["unet"].inputs]  # LoRA-ready both


def test_unknown_adapters_and_adapted_videos_are_refused_naming_the_field(video_engines):
    family = video_engines.family
    with pytest.raises(InvalidInput, match="'still'.*serves: wave") as error:
        family.check(Outline("ddim", 64, 64, motion_adapter="still"))
    assert error.value.field == "motion_adapter"
    with pytest.raises(InvalidInput, match="ControlNets") as error:
        family.check(Outline("ddim", 64, 64, controls=True, motion_adapter="wave"))
    assert error.value.field == "motion_adapter"
    family.check(Outline("ddim", 64, 64, loras=True, referenced=True, motion_adapter="wave"))


def test_a_motion_adapter_that_does_not_fit_is_refused_before_any_build(
    default_model, tiny_xl_model, motion_adapter, controlnet_dirs
):
    sd, xl = family_of_folder(default_model), family_of_folder(tiny_xl_model)
    assert motion_fit(sd, default_model, motion_adapter) is None
    assert "not StableDiffusionXLPipeline" in motion_fit(xl, tiny_xl_model, motion_adapter)
    assert "not a diffusers MotionAdapter" in motion_fit(sd, default_model, controlnet_dirs.sd["edges"])


def test_a_video_request_names_seconds_or_frames_over_the_limits_or_disagreeing():
    assert VideoRequest(prompt="x", seconds="2", fps="4").frame_count == 8  # as a form sends them
    assert VideoRequest(prompt="x").frame_count == 16
    for body, field in (
        ({"seconds": 2, "frames": 9, "fps": 4}, "seconds"),
        ({"frames": 33}, "frames"),
        ({"seconds": 5, "fps": 8}, "seconds"),
        ({"loras": [{"name": f"lora-{i}"} for i in range(5)]}, "loras"),  # the schema's maxItems, as a still's
    ):
        with pytest.raises((InvalidInput, ValidationError)) as error:
            VideoRequest(prompt="x", **body)
        refused = error.value if isinstance(error.value, InvalidInput) else invalid_input(error.value)
        assert refused.field == field, body


def test_an_input_reference_is_checked_and_named_and_its_strength_is_in_0_1(video_engines):
    png = base64.b64encode(encode_image(np.zeros((40, 56, 3), np.uint8), "png")).decode()
    video = VideoRequest(prompt="x", input_reference=png, steps=10).generation("m", 64, video_engines.family)
    assert (video.image, video.effective_strength, video.denoising_steps) == ([png], 0.8, 8)  # 10 steps x 0.8
    strong = VideoRequest(prompt="x", input_reference=png, strength=1).generation("m", 64, video_engines.family)
    assert strong.effective_strength == 1.0
    for body, field in (
        ({"input_reference": png, "strength": 0}, "strength"),
        ({"input_reference": png, "strength": 1.5}, "strength"),
        ({"strength": 0.5}, "strength"),  # without an image
        ({"input_reference": "not an image!"}, "input_reference"),
        ({"input_reference": "A" * (MAX_IMAGE_CHARS + 4)}, "input_reference"),
    ):
        with pytest.raises((InvalidInput, ValidationError)) as error:
            VideoRequest(prompt="x", **body)
        refused = error.value if isinstance(error.value, InvalidInput) else invalid_input(error.value)
        assert refused.field == field, body
    with pytest.raises(InvalidInput, match="^input_reference: not a readable image") as error:
        with input_reference_named():  # the stills' checks, as a video's are made
            header_size(b"no image", "image")
    assert error.value.field == "input_reference"


def form(files: dict) -> Request:
    """``POST /v1/videos`` as the ``openai`` client's multipart form with ``files``, read by no server."""
    sent = httpx.Request("POST", "http://easel/v1/videos", data={"prompt": "x", "frames": "4"}, files=files)
    body = sent.read()
    headers = [(name.lower().encode(), value.encode()) for name, value in sent.headers.items()]

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/v1/videos", "headers": headers}, receive)


def test_the_form_takes_input_reference_as_a_file_and_names_any_other_file_or_one_too_large():
    png = encode_image(np.zeros((8, 8, 3), np.uint8), "png")
    body = asyncio.run(read_video_form(form({"input_reference": ("a.png", png, "image/png")})))
    assert (base64.b64decode(body.input_reference), body.frame_count) == (png, 4)
    for files, field in (
        ({"image": ("a.png", png, "image/png")}, "image"),
        ({"input_reference": ("a.png", bytes(MAX_IMAGE_BYTES + 1), "image/png")}, "input_reference"),
    ):
        with pytest.raises(InvalidInput) as error:
            asyncio.run(read_video_form(form(files)))
        assert error.value.field == field


def test_a_video_costs_frames_x_steps_x_megapixels_and_its_refusal_names_frames(video_engines):
    from serve.models.admission import Admission, Limits

    body = VideoRequest(prompt="x", frames=8, steps=4, size="64x64")
    video = body.generation("easel-default", 64, video_engines.family)
    assert video.motion_adapter == "wave" and video.size == "64x64" and video.background
    still, frames = Work(1, 4, 64, 64), Work(1, 4, 64, 64, frames=8)
    assert frames.cost == pytest.approx(8 * still.cost)  # (4 steps + 1 decode) x 8 frames x 0.0041 MP
    admission = Admission.for_engines(video_engines, Limits(video_engines.memory_budget(), max_cost=frames.cost - 0.01))
    with pytest.raises(InvalidInput, match="8 frames") as error:
        admission.check(frames)
    assert error.value.field == "frames"
    small = Admission.for_engines(video_engines, Limits(video_engines.memory_budget(600 << 20)))
    with pytest.raises(InvalidInput, match="video UNet") as error:
        small.check(Work(1, 4, 512, 512, frames=32))
    assert error.value.field == "frames"


def test_the_mp4_is_h264_with_the_frames_fps_and_size():
    import av

    frames = [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(5)]
    pngs = [encode_image(pixels, "png") for pixels in frames]
    with av.open(io.BytesIO(mp4(pngs, fps=6))) as container:
        stream = container.streams.video[0]
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        assert (stream.codec_context.name, stream.average_rate, stream.width, stream.height) == ("h264", 6, 64, 48)
    assert len(decoded) == 5 and psnr(np.stack(decoded), np.stack(frames)) > 30  # lossy, close
    with zipfile.ZipFile(io.BytesIO(frames_zip(pngs))) as archive:
        assert [archive.read(name) for name in archive.namelist()] == pngs  # the exact frames


def test_a_model_without_motion_adapters_refuses_videos_naming_the_field(tiny_xl_model):
    xl = family_of_folder(tiny_xl_model)
    with pytest.raises(InvalidInput, match="StableDiffusionXLPipeline") as error:
        VideoRequest(prompt="x").generation("xl", 64, xl)
    assert error.value.field == "motion_adapter"
    with pytest.raises(InvalidInput, match="SD 1.x") as error:
        xl.check(Outline("ddim", 64, 64, motion_adapter="wave"))
    assert error.value.field == "motion_adapter"


def test_a_stored_video_job_reads_back_as_the_video_it_was(video_engines):
    """What a job runner reads after a restart: the video, not a still (a still's job reads back as one)."""
    video = VideoRequest(prompt="x", frames=4, fps=2).generation("easel-default", 64, video_engines.family)
    row = JobRequest(video.model_copy(update={"seed": 7}), Policy.BLOCK).row()
    read = JobRequest.read(json.loads(json.dumps(row)))  # as a store keeps it
    assert read == JobRequest(video.model_copy(update={"seed": 7}), Policy.BLOCK)
    assert motion_of(read.request) == Motion("wave", 4)
    still = JobRequest.read({"prompt": "x", "seed": 7})  # a row stored before jobs kept their policy
    assert type(still.request) is GenerationRequest and motion_of(still.request) is None and still.policy is None
