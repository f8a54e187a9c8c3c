"""Inpainting checkpoints (a 9-channel UNet) of both families through the stack, against diffusers' pipelines.

The package's stack serves both checkpoints as two models of its own (``model`` picks one), as `easel up --model
sd=DIR --model sdxl=DIR`.
"""

import diffusers
import pytest
from PIL import Image

from tests.conftest import psnr, reference_images
from tests.controls import b64, box_mask, input_image
from tests.integration.xl_stack.test_image_input import PROMPT, served

pytestmark = pytest.mark.integration

PIPELINES = {"sd": diffusers.StableDiffusionInpaintPipeline, "sdxl": diffusers.StableDiffusionXLInpaintPipeline}


@pytest.fixture(scope="module")
def pipelines(inpaint_model, xl_inpaint_model):
    """diffusers' inpainting pipeline of each checkpoint, by model name."""
    loaded = {
        "sd": PIPELINES["sd"].from_pretrained(inpaint_model),
        "sdxl": PIPELINES["sdxl"].from_pretrained(xl_inpaint_model),
    }
    for pipeline in loaded.values():
        pipeline.set_progress_bar_config(disable=True)
    return loaded


@pytest.mark.parametrize("model", ["sd", "sdxl"])
@pytest.mark.parametrize(("scheduler", "strength"), [("ddim", 1.0), ("euler", 0.7)])
def test_a_9_channel_inpainting_checkpoint_matches_diffusers(stack, pipelines, model, scheduler, strength):
    image, mask = input_image(128), box_mask(128)
    want = reference_images(
        pipelines[model],
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
    got = served(stack, model=model, image=[b64(image)], mask=b64(mask), strength=strength, scheduler=scheduler)
    assert psnr(got, want) >= 40
