"""InstantID on the SDXL stack, against diffusers: its adapter through ``load_ip_adapter``, its IdentityNet as a
``ControlNetModel`` fed the face's tokens and the landmarks InstantID's own ``draw_kps`` draws.

diffusers ships InstantID's pipeline only among its community pipelines: that pipeline is the SDXL ControlNet
pipeline with IP-Adapter tokens, whose ControlNet reads ``encoder_hidden_states=prompt_image_emb`` (the resampled
face) instead of the prompt. The reference here is diffusers' ``StableDiffusionXLControlNetPipeline`` with exactly
that change (a forward pre-hook on the ControlNet), and ``draw_kps`` as InstantID's pipeline file writes it
(:mod:`tests.instantid`).
"""

import base64
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from build_engines.faces.random_pack import drawn_faces
from build_engines.text_to_image.random_adapters import INSTANTID_WEIGHTS
from serve.adapters.ip_adapter import IDENTITY_NET
from tests.conftest import psnr, reference_images
from tests.images import encode
from tests.instantid import draw_kps
from tests.integration.conftest import GENERATE, decode_images

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

BODY = {
    "prompt": "a portrait",
    "seed": 5,
    "num_inference_steps": 6,
    "size": "128x96",
    "scheduler": "euler",
    "guidance_scale": 5.0,
}
PIXELS = drawn_faces([(160, 120, 60)], seed=9)
PICTURE = base64.b64encode(encode(Image.fromarray(PIXELS))).decode()


def _served(api, identity: dict, body: dict = BODY) -> np.ndarray:
    response = api.post(GENERATE, json=body | {"identity": identity})
    assert response.status_code == 200, response.text
    return decode_images(response)


@pytest.fixture(scope="module")
def found(api) -> dict:
    """The picture's face as the stack's face models find it (InsightFace's float32 landmarks)."""
    return api.post("/v1/faces/analyze", json={"image": PICTURE, "max_faces": 1}).json()["data"][0]


def _reference(tiny_xl_model, instantid, found: dict, others: list) -> tuple:
    """Diffusers' SDXL ControlNet pipeline with the InstantID loaded, and the face's ``ip_adapter_image_embeds``.

    Its ControlNets: ``others``, then the IdentityNet, which reads the resampled face; the embeds: the negative's
    zeros first.
    """
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    identity_net = ControlNetModel.from_pretrained(instantid / IDENTITY_NET)
    controlnet = [*others, identity_net] if others else identity_net
    pipeline = StableDiffusionXLControlNetPipeline.from_pretrained(
        tiny_xl_model, controlnet=controlnet, add_watermarker=False
    )
    pipeline.set_progress_bar_config(disable=True)
    pipeline.load_ip_adapter(str(instantid), subfolder="", weight_name=INSTANTID_WEIGHTS, image_encoder_folder=None)
    pipeline.set_ip_adapter_scale(0.8)
    face = torch.tensor(found["embedding"])[None, None, None]  # [batch, images, tokens, width]: the face, one token
    embeds = torch.cat([face * 0, face])
    with torch.no_grad():
        tokens = pipeline.unet.encoder_hid_proj.image_projection_layers[0](embeds[:, 0])  # its prompt_image_emb

    def reads_the_face(module, args, kwargs):
        return args, kwargs | {"encoder_hidden_states": tokens}

    identity_net.register_forward_pre_hook(reads_the_face, with_kwargs=True)
    return pipeline, embeds


def _pose(found: dict) -> Image.Image:
    return draw_kps(Image.fromarray(PIXELS), np.asarray(found["landmarks"], np.float32))


def test_an_instantid_identity_draws_as_diffusers_with_its_identitynet_reading_the_face(
    api, tiny_xl_model, instantid, found
):
    identity = {"image": PICTURE, "face": "largest", "strength": 0.8, "pose_strength": 0.7, "adapter": "instantid"}
    got = _served(api, identity)
    pipeline, embeds = _reference(tiny_xl_model, instantid, found, [])
    kwargs = {"prompt": BODY["prompt"], "width": 128, "height": 96, "num_inference_steps": 6, "seed": 5}
    kwargs |= {"guidance_scale": 5.0, "image": _pose(found), "controlnet_conditioning_scale": 0.7}
    want = reference_images(pipeline, "euler", ip_adapter_image_embeds=[embeds], **kwargs)
    logger.info("InstantID: PSNR %.1f dB against diffusers", psnr(got, want))
    assert psnr(got, want) >= 40
    plain = decode_images(api.post(GENERATE, json=BODY))
    assert psnr(got, plain) < 35, "the identity changed nothing"


def test_an_instantid_identity_beside_another_controlnet_draws_as_diffusers_with_both(
    api, tiny_xl_model, instantid, controlnet_dirs, found
):
    """The IdentityNet beside a ControlNet the request names: their residuals summed as ``MultiControlNetModel`` does.

    The request's ControlNets first, the IdentityNet last.
    """
    from diffusers import ControlNetModel

    identity = {"image": PICTURE, "face": "largest", "strength": 0.8, "pose_strength": 0.7, "adapter": "instantid"}
    control = {"name": "edges", "image": PICTURE, "scale": 2.0}
    got = _served(api, identity, BODY | {"controlnets": [control]})
    edges = ControlNetModel.from_pretrained(controlnet_dirs.for_sdxl["edges"])
    pipeline, embeds = _reference(tiny_xl_model, instantid, found, [edges])
    kwargs = {"prompt": BODY["prompt"], "width": 128, "height": 96, "num_inference_steps": 6, "seed": 5}
    kwargs |= {"guidance_scale": 5.0, "image": [Image.fromarray(PIXELS), _pose(found)]}
    kwargs |= {"controlnet_conditioning_scale": [2.0, 0.7]}
    want = reference_images(pipeline, "euler", ip_adapter_image_embeds=[embeds], **kwargs)
    logger.info("InstantID with a ControlNet: PSNR %.1f dB against diffusers", psnr(got, want))
    assert psnr(got, want) >= 40
    assert psnr(got, _served(api, identity)) < 40, "the ControlNet changed nothing (more than parity's bar)"


def test_the_pose_of_another_face_and_the_face_sent_by_hand_draw_as_the_picture_does(api, found):
    by_image = _served(api, {"image": PICTURE, "face": "largest", "adapter": "instantid"})
    keypoints = base64.b64encode(encode(_pose(found))).decode()
    by_hand = _served(api, {"embedding": found["embedding"], "keypoints": keypoints, "adapter": "instantid"})
    assert psnr(by_hand, by_image) >= 40
    moved = np.asarray(found["landmarks"], np.float32) + np.float32(30)  # another pose: the same face elsewhere
    other = base64.b64encode(encode(draw_kps(Image.fromarray(PIXELS), moved))).decode()
    posed = _served(api, {"image": PICTURE, "face": "largest", "keypoints": other, "adapter": "instantid"})
    assert psnr(posed, by_image) < 35, "the pose sent changed nothing"


def test_a_character_s_face_and_first_picture_s_pose_draw_as_its_picture_does(api, found):
    """A character keeps its first picture's landmarks: named, it draws as that picture sent as identity.image."""
    made = api.post("/v1/characters", json={"name": "iris", "images": [PICTURE], "face": "largest"})
    assert made.status_code == 200, made.text
    try:
        by_image = _served(api, {"image": PICTURE, "face": "largest", "adapter": "instantid"})
        by_name = _served(api, {"character": "iris", "adapter": "instantid"})
        assert psnr(by_name, by_image) >= 40
    finally:
        assert api.delete("/v1/characters/iris").status_code == 200


@pytest.mark.parametrize(
    ("identity", "field"),
    [
        ({"embedding": [0.1] * 512, "adapter": "instantid"}, "identity.keypoints"),  # no landmarks to draw
        ({"embedding": [0.1] * 512, "keypoints": "aGVsbG8=", "adapter": "instantid"}, "identity.keypoints"),
        ({"embedding": [0.1] * 512, "keypoints": PICTURE, "adapter": "faceid"}, "identity.keypoints"),
        ({"embedding": [0.1] * 511, "keypoints": PICTURE, "adapter": "instantid"}, "identity.embedding"),
    ],
)
def test_an_instantid_s_bad_identity_is_a_400_naming_the_field(api, identity, field):
    response = api.post(GENERATE, json=BODY | {"identity": identity})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field, response.text
    assert api.post(GENERATE, json=BODY).status_code == 200


def test_the_identitynet_is_listed_and_never_named_as_a_controlnet(api):
    listed = {entry["name"]: entry for entry in api.get("/v1/controlnets").json()["data"]}
    assert listed["instantid"]["identity"] is True and listed["instantid"]["status"] == "ready"
    model = next(entry for entry in api.get("/v1/models").json()["data"] if entry["id"] == "xl")
    assert model["ip_adapter_kinds"] == {"ip": "image", "face": "image", "faceid": "faceid", "instantid": "instantid"}
    body = BODY | {"controlnets": [{"name": "instantid", "image": PICTURE}]}
    response = api.post(GENERATE, json=body)
    assert response.status_code == 400 and "identity" in response.json()["error"]["message"], response.text
