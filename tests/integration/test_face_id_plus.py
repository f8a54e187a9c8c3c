"""IP-Adapter FaceID Plus v2 (SD 1.x and SDXL) through a real Triton and Ray Serve app, against diffusers'
``load_ip_adapter``.

Its own stack: a FaceID Plus reads the image encoder's hidden states, which the other test stacks' plain IP-Adapters
(image embeddings) cannot share. The reference side aligns the face with InsightFace's own ``norm_crop`` and encodes
it with diffusers' ``prepare_ip_adapter_image_embeds``, as h94's and diffusers' documentation do.
"""

import base64
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from build_engines.faces.random_pack import drawn_faces, random_face_pack
from build_engines.text_to_image.random_adapters import FACEID_PLUSV2_WEIGHTS, make_faceid_adapter
from serve.names import DEFAULT_MODEL
from tests.conftest import psnr, reference_images
from tests.images import encode
from tests.integration.conftest import GENERATE, NO_CANARY_S, decode_images, default_stack

pytestmark = pytest.mark.integration
XL = "xl"
logger = logging.getLogger(__name__)

BODY = {
    "prompt": "a portrait",
    "seed": 3,
    "num_inference_steps": 6,
    "size": "64x64",
    "scheduler": "ddim",
    "guidance_scale": 7.5,
}
PIXELS = drawn_faces([(160, 120, 60)], seed=9)
PICTURE = base64.b64encode(encode(Image.fromarray(PIXELS))).decode()


@pytest.fixture(scope="module")
def plus(default_model, tmp_path_factory):
    """A random FaceID Plus v2 (h94's layout, its CLIP image encoder beside it), served as ``plus``."""
    return make_faceid_adapter(default_model, tmp_path_factory.mktemp("plus"), seed=3, plus=True)


@pytest.fixture(scope="module")
def plus_xl(tiny_xl_model, tmp_path_factory):
    """A random SDXL FaceID Plus v2 (h94's layout for SDXL: the same keys at SDXL's widths), served as ``xl:plus``."""
    return make_faceid_adapter(tiny_xl_model, tmp_path_factory.mktemp("plus-xl"), seed=4, plus=True)


@pytest.fixture(scope="module")
def stack(plus, plus_xl, tiny_xl_model, tmp_path_factory):
    """The embedded model (the default) and the tiny SDXL ``xl``, LoRA-ready (the FaceIDs' LoRAs), each with its
    FaceID Plus, and face models."""
    loras = tmp_path_factory.mktemp("loras")
    yield from default_stack(
        tmp_path_factory,
        models={DEFAULT_MODEL: None, XL: tiny_xl_model},
        repository=tmp_path_factory.mktemp("repository"),
        loras_dir={DEFAULT_MODEL: loras, XL: loras},
        ip_adapters={f"{DEFAULT_MODEL}:plus": plus, f"{XL}:plus": plus_xl},
        faces=random_face_pack(tmp_path_factory.mktemp("faces") / "buffalo_l"),
        canary_interval_s=NO_CANARY_S,
    )


def _served(api, identity: dict, body: dict = BODY) -> np.ndarray:
    response = api.post(GENERATE, json=body | {"identity": identity})
    assert response.status_code == 200, response.text
    return decode_images(response)


@pytest.mark.parametrize("model", [DEFAULT_MODEL, XL])
def test_a_faceid_plus_v2_identity_draws_as_diffusers_with_the_aligned_face_s_clip_states(
    api, default_model, tiny_xl_model, plus, plus_xl, model
):
    """SD 1.x's and SDXL's FaceID Plus v2, each against its diffusers pipeline with ``load_ip_adapter``."""
    import diffusers
    from insightface.utils.face_align import norm_crop

    body = BODY | {"model": model}
    found = api.post("/v1/faces/analyze", json={"image": PICTURE, "max_faces": 1}).json()["data"][0]
    by_image = _served(api, {"image": PICTURE, "face": "largest", "strength": 0.9}, body)
    crop = norm_crop(PIXELS, np.asarray(found["landmarks"], np.float32), image_size=224)
    sent = {"embedding": found["embedding"], "aligned_face": base64.b64encode(encode(Image.fromarray(crop))).decode()}
    assert psnr(_served(api, sent | {"strength": 0.9}, body), by_image) >= 40  # the face and its crop sent by hand
    xl = model == XL
    pipeline_class = diffusers.StableDiffusionXLPipeline if xl else diffusers.StableDiffusionPipeline
    pipeline = pipeline_class.from_pretrained(
        tiny_xl_model if xl else default_model, **({"add_watermarker": False} if xl else {})
    )
    pipeline.set_progress_bar_config(disable=True)
    pipeline.load_ip_adapter(
        str(plus_xl if xl else plus),
        subfolder="",
        weight_name=FACEID_PLUSV2_WEIGHTS,
        image_encoder_folder="image_encoder",
    )
    pipeline.set_ip_adapter_scale(0.9)
    projection = pipeline.unet.encoder_hid_proj.image_projection_layers[0]
    projection.clip_embeds = pipeline.prepare_ip_adapter_image_embeds([Image.fromarray(crop)], None, "cpu", 1, True)[0]
    projection.shortcut = True  # v2
    face = torch.tensor(found["embedding"])[None, None]
    kwargs = {
        "prompt": BODY["prompt"],
        "width": 64,
        "height": 64,
        "num_inference_steps": 6,
        "seed": 3,
        "guidance_scale": 7.5,
    }
    expected = reference_images(pipeline, "ddim", ip_adapter_image_embeds=[torch.cat([face * 0, face])], **kwargs)
    logger.info("%s FaceID Plus v2: PSNR %.1f dB against diffusers", model, psnr(by_image, expected))
    assert psnr(by_image, expected) >= 40
    assert psnr(by_image, decode_images(api.post(GENERATE, json=body))) < 30, "the identity changed nothing"


@pytest.mark.parametrize(
    ("identity", "param"),
    [
        ({"character": "zed"}, "identity.character"),  # a character keeps no picture's aligned face
        ({"embedding": [0.1] * 512}, "identity.aligned_face"),
        ({"embedding": [0.1] * 512, "aligned_face": "bm90IGFuIGltYWdl"}, "identity.aligned_face"),
    ],
)
def test_a_faceid_plus_refuses_an_identity_without_its_picture_naming_the_field(api, identity, param):
    refused = api.post(GENERATE, json=BODY | {"identity": identity})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
    assert api.post(GENERATE, json=BODY).status_code == 200


def test_a_faceid_plus_image_is_not_made_again_by_a_rerun_as_its_aligned_face_is_not_kept(api):
    made = api.post(GENERATE, json=BODY | {"identity": {"image": PICTURE, "face": "largest"}})
    assert made.status_code == 200, made.text
    rerun = api.post("/v1/images/rerun", json={"image_id": made.json()["data"][0]["id"]})
    error = rerun.json()["error"]
    assert rerun.status_code == 400 and error["param"] == "image_id" and "identity.aligned_face" in error["message"]


def test_a_character_keeps_its_first_picture_s_aligned_face_and_draws_as_that_picture(api):
    made = api.post("/v1/characters", json={"name": "ida", "images": [PICTURE], "face": "largest"})
    assert made.status_code == 200, made.text
    try:
        by_image = _served(api, {"image": PICTURE, "face": "largest", "strength": 0.9})
        assert psnr(_served(api, {"character": "ida", "strength": 0.9}), by_image) >= 40
    finally:
        assert api.delete("/v1/characters/ida").status_code == 200
