"""Inpainting checkpoints (a 9-channel UNet) of both families through the stack, against diffusers' pipelines."""

import diffusers
import pytest
from PIL import Image

from tests.conftest import psnr, reference_images
from tests.controls import b64, box_mask, input_image
from tests.integration.test_image_input_xl import PROMPT, image_stack, served

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def inpainting(request, inpaint_model, xl_inpaint_model, tmp_path_factory):
    """A stack serving the tiny SD's, then the tiny SDXL's, inpainting checkpoint, with diffusers' pipeline for it."""
    model, cls = {
        "sd": (inpaint_model, diffusers.StableDiffusionInpaintPipeline),
        "sdxl": (xl_inpaint_model, diffusers.StableDiffusionXLInpaintPipeline),
    }[request.param]
    pipeline = cls.from_pretrained(model)
    pipeline.set_progress_bar_config(disable=True)
    with image_stack(tmp_path_factory, model) as stack:
        yield stack, pipeline


@pytest.mark.parametrize(("scheduler", "strength"), [("ddim", 1.0), ("euler", 0.7)])
def test_a_9_channel_inpainting_checkpoint_matches_diffusers(inpainting, scheduler, strength):
    stack, pipeline = inpainting
    image, mask = input_image(128), box_mask(128)
    want = reference_images(
        pipeline,
        scheduler,
        prompt=PROMPT,
        image=Image.fromarray(image),
        mask_image=Image.fromarray(mask),
        strength=strength,
        num_inference_steps=6,
        guidance_scale=6.0,
        height=128,
        width=128,
        seed=3,
    )
    got = served(stack, image=[b64(image)], mask=b64(mask), strength=strength, scheduler=scheduler)
    assert psnr(got, want) >= 40
