"""The denoising loop with in-process ONNX Runtime engines against diffusers' own pipeline (no servers)."""

import asyncio

import numpy as np
import pytest

from serve.text_to_image.pipeline import SCHEDULERS, Generation, OnnxRuntimeRunner, TextToImagePipeline
from tests.conftest import psnr, reference_images


@pytest.fixture(scope="module")
def pipeline(engine_dir):
    return TextToImagePipeline(engine_dir, OnnxRuntimeRunner(engine_dir))


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize(("n", "guidance", "width", "height"), [(1, 7.5, 96, 64), (2, 1.0, 72, 56)])
def test_matches_diffusers(pipeline, diffusers_pipeline, scheduler, n, guidance, width, height):
    job = Generation("a red fox", "blurry", n, width, height, 8, guidance, 11, scheduler)
    got = np.stack(asyncio.run(pipeline.generate(job)).images)
    want = reference_images(
        diffusers_pipeline,
        scheduler,
        prompt="a red fox",
        negative_prompt="blurry",
        num_images_per_prompt=n,
        width=width,
        height=height,
        num_inference_steps=8,
        guidance_scale=guidance,
        seed=11,
    )
    assert got.shape == want.shape == (n, height, width, 3)
    assert psnr(got, want) >= 40


def test_seeds_change_the_image_and_long_prompts_report_truncation(pipeline):
    a = asyncio.run(pipeline.generate(Generation("x", "", 1, 64, 64, 2, 7.5, 1, "ddim"))).images[0]
    b = asyncio.run(pipeline.generate(Generation("x", "", 1, 64, 64, 2, 7.5, 2, "ddim"))).images[0]
    assert psnr(a, b) < 30
    result = asyncio.run(pipeline.generate(Generation("word " * 40, "", 1, 64, 64, 1, 1.0, 1, "euler")))
    assert result.prompt_tokens_dropped > 0
