"""LoRA (both text encoders and the UNet) and IP-Adapter on SDXL (the embedded tiny-xl), against diffusers."""

import logging

import pytest
import torch

from serve.stack import Stack, StackOptions
from tests.adapters import LORAS, make_adapters, reference_image
from tests.conftest import psnr, reference_images
from tests.integration.conftest import GENERATE, decode_images

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

BODY = {
    "prompt": "a lighthouse",
    "seed": 5,
    "num_inference_steps": 8,
    "size": "128x96",
    "scheduler": "euler",
    "guidance_scale": 6.0,
}


@pytest.fixture(scope="module")
def adapters(tiny_xl_model, tmp_path_factory):
    return make_adapters(tiny_xl_model, tmp_path_factory.mktemp("adapters-xl"))


@pytest.fixture(scope="module")
def stack(tiny_xl_model, adapters, tmp_path_factory):
    options = StackOptions(
        port=0,
        dashboard=False,
        models={"model": tiny_xl_model},
        repository=tmp_path_factory.mktemp("repository"),
        run_dir=tmp_path_factory.mktemp("run"),
        cache_bytes=0,
        loras_dir=adapters.loras,
        ip_adapters={"ip": adapters.ip_adapter},
    )
    with Stack(options) as stack:
        yield stack


@pytest.fixture(scope="module")
def reference(tiny_xl_model, adapters):
    """diffusers' SDXL pipeline with the LoRAs (``load_lora_weights``) and the IP-Adapter (``load_ip_adapter``)."""
    from diffusers import StableDiffusionXLPipeline

    torch.set_num_threads(1)
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_xl_model, add_watermarker=False)
    pipeline.set_progress_bar_config(disable=True)
    for name in LORAS:
        pipeline.load_lora_weights(str(adapters.loras), weight_name=adapters.lora_file(name), adapter_name=name)
    pipeline.load_ip_adapter(str(adapters.ip_adapter), subfolder="", weight_name="ip_adapter.safetensors")
    return pipeline


@pytest.mark.parametrize("scale", [0.0, {"up": {"block_0": [0.0, 1.0]}}], ids=["loras-only", "instantstyle"])
def test_sdxl_loras_and_ip_adapter_parity_with_diffusers(api, reference, scale):
    image, b64 = reference_image(seed=3)
    loras = [{"name": "style", "scale": 0.9}, {"name": "kohya", "scale": 0.6}]
    response = api.post(GENERATE, json=BODY | {"loras": loras, "ip_adapter_image": b64, "ip_adapter_scale": scale})
    assert response.status_code == 200, response.text
    reference.set_adapters([lora["name"] for lora in loras], [lora["scale"] for lora in loras])
    reference.set_ip_adapter_scale(scale)
    kwargs = {
        "prompt": BODY["prompt"],
        "width": 128,
        "height": 96,
        "num_inference_steps": 8,
        "seed": 5,
        "guidance_scale": 6.0,
    }
    want = reference_images(reference, "euler", ip_adapter_image=image, **kwargs)
    reference.disable_lora()
    reference.set_ip_adapter_scale(0.0)
    base = reference_images(reference, "euler", ip_adapter_image=image, **kwargs)
    reference.enable_lora()
    got = decode_images(response)
    logger.info(
        "sdxl adapters %s: PSNR %.1f dB against diffusers, %.1f against the base model",
        scale,
        psnr(got, want),
        psnr(want, base),
    )
    assert psnr(got, want) >= 40
    assert psnr(want, base) < 35
