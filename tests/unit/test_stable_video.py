"""Stable Video Diffusion: the family read from its folder, its engines and loop against diffusers' pipeline (in
process, ONNX Runtime), a video request's defaults and refusals on an SVD model, and its admission by frames."""

import asyncio
import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from build_engines.text_to_image.build import default_model_dir
from serve.errors import InvalidInput
from serve.models.admission import Admission, Limits, Work
from serve.protocol.video import SVD_CONDITIONING, VideoRequest
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.families import family_of_folder
from serve.text_to_image.generation import Generation, ImageInputs, Motion, SamplingParams, VideoConditioning
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.text_to_image.video import motion_of
from tests.conftest import psnr

STILL = np.random.default_rng(4).integers(0, 256, (64, 96, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def svd_model():
    return default_model_dir("tiny-svd")


@pytest.fixture(scope="module")
def svd_engines(svd_model, tmp_path_factory):
    """The tiny SVD's engines (image encoder, video UNet, VAE encoder, temporal decoder)."""
    from build_engines.text_to_image.build import build

    return EngineFolder(build(svd_model, tmp_path_factory.mktemp("repository-svd")).path)


def still_b64() -> str:
    buffer = io.BytesIO()
    Image.fromarray(STILL).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_the_family_reads_svd_s_folder_and_declares_a_video_row_per_unet_call(svd_model):
    family = family_of_folder(svd_model)
    assert (family.name, family.animates_images, family.dims.frames) == ("svd", True, 6)
    assert family.default_size == "128x72"  # SVD's 1024x576 for its 768 px UNet, the same shape here
    assert list(family.specs) == ["image_encoder", "unet", "vae_encoder", "vae_decoder"]
    sample = family.specs["unet"].input("sample")
    assert sample.dims == (-1, 8, -1, -1) and sample.axis_names == ("frames", "latent_height", "latent_width")


@pytest.mark.parametrize(("chunk", "guidance"), [(None, 3.0), (4, 2.0), (2, 1.0)])
def test_every_frame_matches_stable_video_diffusion(svd_engines, svd_model, chunk, guidance):
    """Guided (growing over the frames) or not, decoded whole or in chunks: diffusers' frames, bar rounding."""
    from diffusers import StableVideoDiffusionPipeline

    pipeline = TextToImagePipeline(svd_engines, OnnxRuntimeRunner(svd_engines))
    conditioning = VideoConditioning(
        fps=6, motion_bucket_id=60, noise_aug_strength=0.1, decode_chunk_size=chunk, min_guidance_scale=1.0
    )
    job = Generation(
        sampling=SamplingParams("", "", 1, 96, 64, 3, guidance, 12, "euler"),
        inputs=ImageInputs(images=(STILL,)),
        motion=Motion("", 5, conditioning),
    )
    got = np.stack(asyncio.run(pipeline.generate(job)).images)
    reference = StableVideoDiffusionPipeline.from_pretrained(svd_model)
    reference.set_progress_bar_config(disable=True)
    want = reference(
        Image.fromarray(STILL),
        height=64,
        width=96,
        num_frames=5,
        num_inference_steps=3,
        max_guidance_scale=guidance,
        fps=6,
        motion_bucket_id=60,
        noise_aug_strength=0.1,
        decode_chunk_size=chunk,
        generator=torch.Generator().manual_seed(12),
        output_type="np",
    ).frames[0]
    want = (np.clip(want, 0, 1) * 255).round().astype(np.uint8)
    assert got.shape == want.shape == (5, 64, 96, 3)
    assert min(psnr(a, b) for a, b in zip(got, want, strict=True)) >= 40


def test_a_video_on_an_svd_model_takes_the_model_s_defaults_and_svd_s_conditioning(svd_model):
    family = family_of_folder(svd_model)
    video = VideoRequest(prompt="a fox", input_reference=still_b64(), seed=1).generation("svd", 96, family)
    assert (video.size, video.frames, video.guidance_scale, video.scheduler, video.strength) == (
        "128x72",
        6,
        3.0,
        "euler",
        1.0,
    )
    assert motion_of(video) == Motion("", 6, VideoConditioning(fps=8, **SVD_CONDITIONING))
    asked = VideoRequest(prompt="a", input_reference=still_b64(), frames=4, motion_bucket_id=30, decode_chunk_size=2)
    assert motion_of(asked.generation("svd", 96, family)).conditioning.motion_bucket_id == 30


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"input_reference": None}, "input_reference"),
        ({"strength": 0.5}, "strength"),
        ({"motion_adapter": "wave"}, "motion_adapter"),
        ({"negative_prompt": "blurry"}, "negative_prompt"),
        ({"character": {"name": "zed"}}, "character"),
        ({"ip_adapters": [{"images": [still_b64()]}]}, "ip_adapters"),
        ({"identity": {"embedding": [1.0] * 512}}, "identity"),
    ],
)
def test_what_an_svd_model_does_not_read_is_refused_naming_the_field(svd_model, change, field):
    body = {"prompt": "a", "input_reference": still_b64()} | change
    with pytest.raises(InvalidInput) as error:
        VideoRequest(**{k: v for k, v in body.items() if v is not None}).generation(
            "svd", 96, family_of_folder(svd_model)
        )
    assert error.value.field == field


def test_svd_s_fields_on_an_animatediff_model_are_refused_naming_them(default_model):
    family = type("Family", (), {"motion_adapters": ("wave",), "pipeline_class": "StableDiffusionPipeline"})
    family.animates_images = False
    for name, value in (("motion_bucket_id", 3), ("noise_aug_strength", 0.1), ("decode_chunk_size", 2)):
        with pytest.raises(InvalidInput) as error:
            VideoRequest(prompt="a", **{name: value}).generation("easel-default", 64, family)
        assert error.value.field == name


def test_a_video_whose_row_overruns_the_pool_is_refused_naming_frames(svd_engines):
    """A whole video is one UNet row: its frames x latent positions count against the activation pool."""
    limits = Limits(svd_engines.memory_budget())
    admission = Admission.for_engines(svd_engines, limits)
    admission.check(Work(1, 4, 96, 64, encodes=True, frames=6, guided=True))
    small = Admission.for_engines(svd_engines, Limits(svd_engines.memory_budget(400 << 20)))
    with pytest.raises(InvalidInput, match="video UNet") as error:
        small.check(Work(1, 4, 512, 512, encodes=True, frames=32, guided=True))
    assert error.value.field == "frames"
