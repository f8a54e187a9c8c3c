"""LoRA (both text encoders and the UNet) and IP-Adapter on SDXL (the embedded tiny-xl), against diffusers.

The tiny-xl, ``xl``, has its own adapters (``--loras xl=DIR``, ``--ip-adapter xl:ip=DIR``, ``--ip-adapter
xl:face=DIR``); the embedded tiny SD beside it has LoRAs of its own (``--loras easel-default=DIR``). Each request's
adapters are looked up in its model's.
"""

import base64
import logging

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from build_engines.text_to_image.random_adapters import FACEID_WEIGHTS, IP_WEIGHTS
from serve.names import DEFAULT_MODEL
from tests.adapters import LORAS, reference_image
from tests.conftest import psnr, reference_images
from tests.images import encode
from tests.integration.conftest import GENERATE, decode_images
from tests.integration.xl_stack.conftest import XL

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

BODY = {
    "model": XL,
    "prompt": "a lighthouse",
    "seed": 5,
    "num_inference_steps": 8,
    "size": "128x96",
    "scheduler": "euler",
    "guidance_scale": 6.0,
}


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


def test_sdxl_two_ip_adapters_with_region_masks_match_diffusers(api, tiny_xl_model, adapters, face_adapter):
    """Two adapters on SDXL at a size that is not square (the masks' grids per level), the first with two references
    each in its region, against ``load_ip_adapter`` with lists and ``ip_adapter_masks``."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.image_processor import IPAdapterMaskProcessor

    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_xl_model, add_watermarker=False)
    pipeline.set_progress_bar_config(disable=True)
    folders = [str(adapters.ip_adapter), str(face_adapter)]
    pipeline.load_ip_adapter(folders, subfolder=["", ""], weight_name=[IP_WEIGHTS] * 2)
    (a1, a1_b64), (a2, a2_b64), (b, b_b64) = (reference_image(seed=s) for s in (1, 2, 3))
    left = np.zeros((96, 128, 3), np.uint8)
    left[:, :50] = 255
    regions = [Image.fromarray(left), Image.fromarray(255 - left)]
    encoded = [base64.b64encode(encode(region)).decode() for region in regions]
    ip_adapters = [
        {"name": "ip", "images": [a1_b64, b_b64], "scale": 0.8, "masks": encoded},
        {"name": "face", "images": [a2_b64], "scale": 0.6},
    ]
    response = api.post(GENERATE, json=BODY | {"ip_adapters": ip_adapters})
    assert response.status_code == 200, response.text
    masks = IPAdapterMaskProcessor().preprocess(regions, height=96, width=128)
    kwargs = {"prompt": BODY["prompt"], "width": 128, "height": 96, "num_inference_steps": 8, "seed": 5}
    kwargs |= {"guidance_scale": 6.0, "ip_adapter_image": [[a1, b], a2]}
    pipeline.set_ip_adapter_scale([0.8, 0.6])
    want = reference_images(
        pipeline, "euler", cross_attention_kwargs={"ip_adapter_masks": [masks[None, :, 0], None]}, **kwargs
    )
    pipeline.set_ip_adapter_scale([0.0, 0.0])
    base = reference_images(pipeline, "euler", **kwargs)
    got = decode_images(response)
    logger.info(
        "sdxl two IP-Adapters: PSNR %.1f dB against diffusers, %.1f against none", psnr(got, want), psnr(want, base)
    )
    assert psnr(got, want) >= 40
    assert psnr(want, base) < 35


def test_an_sdxl_identity_draws_as_diffusers_with_the_faceid_its_lora_and_the_embedding(api, tiny_xl_model, faceid):
    """An identity sent as an embedding (no face models needed) against ``load_ip_adapter`` of h94's FaceID layout
    (which loads its LoRA) and ``ip_adapter_image_embeds``."""
    from diffusers import StableDiffusionXLPipeline

    face = np.random.default_rng(4).standard_normal(512).astype(np.float32)
    face /= np.linalg.norm(face)
    identity = {"embedding": face.tolist(), "strength": 0.7}
    response = api.post(GENERATE, json=BODY | {"identity": identity})
    assert response.status_code == 200, response.text
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_xl_model, add_watermarker=False)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.load_ip_adapter(str(faceid), subfolder="", weight_name=FACEID_WEIGHTS, image_encoder_folder=None)
    pipeline.set_ip_adapter_scale(0.7)
    embeds = torch.from_numpy(face)[None, None]
    kwargs = {"prompt": BODY["prompt"], "width": 128, "height": 96, "num_inference_steps": 8, "seed": 5}
    kwargs |= {"guidance_scale": 6.0, "ip_adapter_image_embeds": [torch.cat([torch.zeros_like(embeds), embeds])]}
    want = reference_images(pipeline, "euler", **kwargs)
    got = decode_images(response)
    plain = api.post(GENERATE, json=BODY)
    assert plain.status_code == 200, plain.text
    logger.info("sdxl FaceID: PSNR %.1f dB against diffusers", psnr(got, want))
    assert psnr(got, want) >= 40
    assert psnr(got, decode_images(plain)) < 35, "the identity changed nothing"


def _xl_with_loras(api, loras: list[dict]) -> np.ndarray:
    """The stack's ``xl`` image with ``loras`` (and a reference at IP scale 0, as diffusers' pipeline needs one)."""
    _, b64 = reference_image(seed=3)
    response = api.post(GENERATE, json=BODY | {"loras": loras, "ip_adapter_image": b64, "ip_adapter_scale": 0.0})
    assert response.status_code == 200, response.text
    return decode_images(response)


def test_a_lora_uploaded_for_the_second_model_matches_diffusers_and_is_listed_with_it(api, adapters, reference):
    """``POST /v1/loras`` with ``model=xl``: read by diffusers against SDXL, served by the next ``xl`` requests."""
    file = ("lora.safetensors", (adapters.loras / "style.safetensors").read_bytes(), "application/octet-stream")
    added = api.post("/v1/loras", data={"name": "uploaded-xl", "model": "xl"}, files={"file": file})
    assert added.status_code == 200, added.text
    assert added.json()["model"] == "xl" and added.json()["source"] == "upload"
    got = _xl_with_loras(api, [{"name": "uploaded-xl", "scale": 0.9}])
    image, _ = reference_image(seed=3)
    reference.set_adapters(["style"], [0.9])
    reference.set_ip_adapter_scale(0.0)
    kwargs = {"prompt": BODY["prompt"], "width": 128, "height": 96, "num_inference_steps": 8, "seed": 5}
    want = reference_images(reference, "euler", ip_adapter_image=image, guidance_scale=6.0, **kwargs)
    logger.info("a LoRA uploaded for xl: PSNR %.1f dB against diffusers", psnr(got, want))
    assert psnr(got, want) >= 40
    for _ in range(3):  # the next requests, whichever replica takes them
        np.testing.assert_array_equal(_xl_with_loras(api, [{"name": "uploaded-xl", "scale": 0.9}]), got)
    listed = {entry["name"]: entry["model"] for entry in api.get("/v1/loras").json()["data"]}
    assert listed["uploaded-xl"] == listed["style"] == "xl" and listed["sd-style"] == "easel-default"


def _refused(api: httpx.Client, body: dict) -> str:
    response = api.post(GENERATE, json=body)
    assert response.status_code == 400, response.text
    return response.json()["error"]["param"]


def test_an_adapter_of_the_other_model_is_a_400_naming_the_field(api, default_loras):
    """Each request's adapters are its model's: the default's LoRA in an ``xl`` request, and the other way round."""
    small = {"prompt": "a lighthouse", "num_inference_steps": 2, "size": "64x64", "model": DEFAULT_MODEL}
    assert _refused(api, small | {"model": XL, "loras": [{"name": "sd-style"}]}) == "loras.0.name"
    assert _refused(api, small | {"loras": [{"name": "style"}]}) == "loras.0.name"
    _, b64 = reference_image(seed=1)
    assert _refused(api, small | {"ip_adapters": [{"name": "face", "images": [b64]}]}) == "ip_adapters.0.name"
    sd_file = ("lora.safetensors", (default_loras / "sd-style.safetensors").read_bytes(), "application/octet-stream")
    wrong = api.post("/v1/loras", data={"name": "sd-on-xl", "model": "xl"}, files={"file": sd_file})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "file", wrong.text
    assert api.post(GENERATE, json=small | {"loras": [{"name": "sd-style", "scale": 0.5}]}).status_code == 200
