"""Images in through the stack for SDXL (its default model, ``xl``): img2img, inpainting and ControlNets, against
diffusers' own pipelines."""

import diffusers
import httpx
import numpy as np
import pytest
from PIL import Image

from serve.stack import Stack
from tests.conftest import psnr, reference_images
from tests.controls import b64, box_mask, edges_image, input_image
from tests.integration.conftest import GENERATE, decode_images

pytestmark = pytest.mark.integration

PROMPT = "a red heart icon"
BODY = {"prompt": PROMPT, "seed": 3, "num_inference_steps": 6, "guidance_scale": 6.0, "size": "128x128"}


def served(stack: Stack, **fields) -> np.ndarray:
    """The images ``stack`` answers for :data:`BODY` with ``fields``."""
    with httpx.Client(base_url=stack.info.api_url, timeout=300) as api:
        response = api.post(GENERATE, json=BODY | fields)
    assert response.status_code == 200, response.text
    return decode_images(response)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_sdxl_img2img_and_inpainting_match_diffusers(stack, diffusers_xl_pipeline, scheduler):
    image, mask = input_image(128), box_mask(128)
    common = {"prompt": PROMPT, "num_inference_steps": 6, "guidance_scale": 6.0, "seed": 3}
    img2img = diffusers.StableDiffusionXLImg2ImgPipeline.from_pipe(diffusers_xl_pipeline)
    want = reference_images(img2img, scheduler, image=Image.fromarray(image), strength=0.7, **common)
    got = served(stack, image=[b64(image)], strength=0.7, scheduler=scheduler)
    assert psnr(got, want) >= 40
    inpaint = diffusers.StableDiffusionXLInpaintPipeline.from_pipe(diffusers_xl_pipeline)
    kwargs = {"image": Image.fromarray(image), "mask_image": Image.fromarray(mask), "height": 128, "width": 128}
    want = reference_images(inpaint, scheduler, strength=1.0, **kwargs, **common)
    assert psnr(served(stack, image=[b64(image)], mask=b64(mask), scheduler=scheduler), want) >= 40


@pytest.mark.parametrize(("scheduler", "stacked"), [("euler", False), ("ddim", True)], ids=["one", "two-stacked"])
def test_sdxl_controlnets_match_diffusers(stack, diffusers_xl_pipeline, controlnet_dirs, scheduler, stacked):
    controls = [{"name": "edges", "image": edges_image(128), "scale": 0.8, "start": 0.0, "end": 1.0}]
    if stacked:
        controls.append({"name": "depth", "image": input_image(128), "scale": 0.5, "start": 0.2, "end": 0.9})
    nets = [diffusers.ControlNetModel.from_pretrained(controlnet_dirs.sdxl[c["name"]]) for c in controls]
    reference = diffusers.StableDiffusionXLControlNetPipeline.from_pipe(
        diffusers_xl_pipeline, controlnet=nets if stacked else nets[0]
    )
    settings = {
        "image": [Image.fromarray(c["image"]) for c in controls],
        "controlnet_conditioning_scale": [c["scale"] for c in controls],
        "control_guidance_start": [c["start"] for c in controls],
        "control_guidance_end": [c["end"] for c in controls],
    }
    settings = settings if stacked else {name: values[0] for name, values in settings.items()}
    want = reference_images(
        reference,
        scheduler,
        prompt=PROMPT,
        num_inference_steps=6,
        guidance_scale=6.0,
        height=128,
        width=128,
        seed=3,
        **settings,
    )
    body = [c | {"image": b64(c["image"])} for c in controls]
    assert psnr(served(stack, controlnets=body, scheduler=scheduler), want) >= 40


def test_an_sd_controlnet_is_refused_by_an_sdstack(stack):
    with httpx.Client(base_url=stack.info.api_url, timeout=300) as api:
        response = api.post(GENERATE, json=BODY | {"controlnets": [{"name": "sd", "image": b64(edges_image(128))}]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "controlnets.0.name"
    assert "StableDiffusionPipeline" in response.json()["error"]["message"]
