"""Images in, through a real Triton and Ray Serve app: img2img, inpainting, ControlNets, OpenAI's ``images.edit``.

The tiny SD with two ControlNets (and one made for SDXL, refused), against diffusers' own pipelines on the same
weights; concurrent requests of every kind each get their solo image while Triton merges their UNet rows.
"""

import base64
import io
import json
import logging
import time

import diffusers
import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from scipy import ndimage

from serve.grpc_api import easel_pb2, easel_pb2_grpc
from serve.stack import Stack, StackOptions
from tests.conftest import psnr, reference_images
from tests.controls import b64, box_mask, edges_image, input_image, openai_mask
from tests.images import encode, png_header_only
from tests.integration.conftest import GENERATE, batch_histogram, decode_images, post_together

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

EDITS = "/v1/images/edits"
PROMPT = "a red heart icon"
BODY = {"prompt": PROMPT, "seed": 3, "num_inference_steps": 10, "size": "64x64"}


@pytest.fixture(scope="module")
def stack(default_model, controlnet_dirs, tmp_path_factory):
    """The embedded model with ControlNets ``edges`` and ``depth`` (and ``xl``, made for SDXL: refused)."""
    options = StackOptions(
        port=0,
        dashboard=False,
        repository=tmp_path_factory.mktemp("repository"),
        run_dir=tmp_path_factory.mktemp("run"),
        cache_bytes=0,
        controlnets=controlnet_dirs.for_sd,
    )
    with Stack(options) as stack:
        yield stack


@pytest.fixture(scope="module")
def api(stack):
    with httpx.Client(base_url=stack.info.api_url, timeout=300) as client:
        yield client


def _png(pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(pixels))


def _edit(api, images, mask=None, **fields) -> httpx.Response:
    """A multipart edit as OpenAI's clients send it (non-text fields as JSON text)."""
    files = [("image", (f"image{i}.png", _png(image))) for i, image in enumerate(images)]
    if mask is not None:
        files.append(("mask", ("mask.png", mask)))
    data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (BODY | fields).items() if v is not None}
    return api.post(EDITS, files=files, data=data)


def _ok(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return decode_images(response)


@pytest.mark.parametrize(("scheduler", "strength"), [("ddim", 0.5), ("euler", 0.8)])
def test_img2img_through_the_stack_matches_diffusers(api, diffusers_pipeline, scheduler, strength):
    image = input_image(64)
    got = _ok(_edit(api, [image], strength=strength, scheduler=scheduler))
    want = reference_images(
        diffusers.StableDiffusionImg2ImgPipeline.from_pipe(diffusers_pipeline),
        scheduler,
        prompt=PROMPT,
        image=Image.fromarray(image),
        strength=strength,
        num_inference_steps=10,
        seed=3,
    )
    assert psnr(got, want) >= 40


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_inpainting_through_the_stack_matches_diffusers(api, diffusers_pipeline, scheduler):
    image, mask = input_image(64), box_mask(64)
    got = _ok(api.post(GENERATE, json=BODY | {"image": [b64(image)], "mask": b64(mask), "scheduler": scheduler}))
    want = reference_images(
        diffusers.StableDiffusionInpaintPipeline.from_pipe(diffusers_pipeline),
        scheduler,
        prompt=PROMPT,
        image=Image.fromarray(image),
        mask_image=Image.fromarray(mask),
        num_inference_steps=10,
        height=64,
        width=64,
        seed=3,
    )
    assert psnr(got, want) >= 40


def _controlnet_pipeline(pipeline, folders, names):
    nets = [diffusers.ControlNetModel.from_pretrained(folders[name]) for name in names]
    controlnet = nets[0] if len(nets) == 1 else nets
    return diffusers.StableDiffusionControlNetPipeline.from_pipe(pipeline, controlnet=controlnet)


@pytest.mark.parametrize(("scheduler", "stacked"), [("ddim", False), ("euler", True)], ids=["one", "two-stacked"])
def test_controlnets_through_the_stack_match_diffusers(api, diffusers_pipeline, controlnet_dirs, scheduler, stacked):
    controls = [{"name": "edges", "image": b64(edges_image(64)), "scale": 0.8}]
    if stacked:
        controls.append({"name": "depth", "image": b64(input_image(64)), "scale": 0.6, "start": 0.1, "end": 0.7})
    got = _ok(api.post(GENERATE, json=BODY | {"controlnets": controls, "scheduler": scheduler}))
    reference = _controlnet_pipeline(diffusers_pipeline, controlnet_dirs.sd, [c["name"] for c in controls])
    images = [Image.open(io.BytesIO(base64.b64decode(c["image"]))) for c in controls]
    settings = {
        "image": images,
        "controlnet_conditioning_scale": [c["scale"] for c in controls],
        "control_guidance_start": [c.get("start", 0.0) for c in controls],
        "control_guidance_end": [c.get("end", 1.0) for c in controls],
    }
    if not stacked:
        settings = {name: values[0] for name, values in settings.items()}
    want = reference_images(
        reference, scheduler, prompt=PROMPT, num_inference_steps=10, height=64, width=64, seed=3, **settings
    )
    assert psnr(got, want) >= 40


def test_the_openai_client_edits_with_a_mask_and_keeps_what_is_not_masked(stack, api):
    # An image the model drew: one its VAE reconstructs (40 dB far from the edges), unlike arbitrary pixels.
    image = _ok(api.post(GENERATE, json={"prompt": "a blue star icon", "seed": 0, "size": "64x64"}))[0]
    mask = box_mask(64)
    client = openai.OpenAI(base_url=f"{stack.info.api_url}/v1", api_key="unused", timeout=300)
    answer = client.images.edit(
        image=("icon.png", _png(image), "image/png"),
        mask=("mask.png", openai_mask(mask), "image/png"),
        prompt=PROMPT,
        size="64x64",
        extra_body={"seed": 11, "num_inference_steps": 8},
    )
    edited = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json))).convert("RGB"))
    assert edited.shape == (64, 64, 3)
    # Outside the mask the latents end as the image's (4-channel inpainting); the VAE decoder's reach (convolutions
    # and its mid-block attention) blends some of the drawn area in: measured 29.6 dB against the image 8 px away
    # from the mask, where the image through the VAE alone is 40.4 dB, and the masked area 6.5 dB (redrawn).
    far = ~ndimage.binary_dilation(mask > 0, iterations=8)
    kept, redrawn = psnr(edited[far], image[far]), psnr(edited[mask > 0], image[mask > 0])
    logger.info("openai edit: unmasked area %.1f dB against the image, masked area %.1f dB", kept, redrawn)
    assert kept >= 25 and kept > redrawn + 15


def test_outpainting_draws_the_padding_at_the_padded_size(api):
    image = input_image(64)
    response = _edit(api, [image], outpaint={"right": 32, "bottom": 8}, size=None)
    assert response.status_code == 200, response.text
    assert decode_images(response).shape == (1, 72, 96, 3)


def test_several_images_make_n_each(api):
    images = [input_image(64), np.ascontiguousarray(input_image(64)[:, ::-1])]
    assert _ok(_edit(api, images, n=2, strength=0.6)).shape == (4, 64, 64, 3)


def test_controlnets_are_listed_with_the_refused_one_and_why(api):
    listed = {entry["name"]: entry for entry in api.get("/v1/controlnets").json()["data"]}
    assert {name for name, entry in listed.items() if entry["status"] == "ready"} == {"edges", "depth"}
    assert listed["xl"]["status"] == "error" and "StableDiffusionXLPipeline" in listed["xl"]["error"]


def test_concurrent_controlnets_strengths_masks_and_text_are_isolated_and_share_unet_executions(api, stack):
    image, edges = b64(input_image(64)), b64(edges_image(64))
    variants = [
        {},
        {"controlnets": [{"name": "edges", "image": edges}]},
        {"controlnets": [{"name": "edges", "image": edges, "scale": 0.4}]},
        {"controlnets": [{"name": "depth", "image": image, "end": 0.5}]},
        {"image": [image], "strength": 0.6},
        {"image": [image], "strength": 0.9},
        {"image": [image], "mask": b64(box_mask(64))},
        {"image": [image], "mask": b64(box_mask(64)), "controlnets": [{"name": "edges", "image": edges}]},
    ]
    bodies = [BODY | {"seed": 60 + i} | variant for i, variant in enumerate(variants)]
    alone = [_ok(api.post(GENERATE, json=body)) for body in bodies]
    before = batch_histogram(stack.info.triton_http_url)

    together = post_together(stack.info.api_url, GENERATE, bodies)
    histogram = batch_histogram(stack.info.triton_http_url) - before
    for body, single, response in zip(bodies, alone, together, strict=True):
        np.testing.assert_array_equal(_ok(response), single, err_msg=str(body)[:200])
    logger.info("unet batch sizes with mixed ControlNets, images and masks: %s", dict(sorted(histogram.items())))
    assert sum(count for size, count in histogram.items() if size > 2) > 0, "no execution merged requests"


def test_an_edit_runs_as_a_background_job_with_progress(api):
    job = _edit(api, [input_image(64)], strength=0.5, background=True)
    assert job.status_code == 202, job.text
    job = job.json()
    for _ in range(600):
        job = api.get(f"/v1/jobs/{job['id']}").json()
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.1)
    assert job["status"] == "succeeded" and job["progress"] == {"step": 5, "total": 5, "stage": "denoise"}, job
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(job["data"][0]["b64_json"]))).convert("RGB"))
    np.testing.assert_array_equal(image[None], _ok(_edit(api, [input_image(64)], strength=0.5)))


def test_grpc_takes_the_same_images(stack, api):
    import grpc

    image, mask = input_image(64), box_mask(64)
    with grpc.insecure_channel(stack.info.grpc_address) as channel:
        events = list(
            easel_pb2_grpc.EaselStub(channel).Generate(
                easel_pb2.GenerateRequest(
                    prompt=PROMPT,
                    size="64x64",
                    seed=3,
                    num_inference_steps=10,
                    image=[_png(image)],
                    mask=_png(mask),
                    controlnets=[easel_pb2.ControlNet(name="edges", image=_png(edges_image(64)), scale=0.7)],
                ),
                timeout=300,
            )
        )
    got = np.asarray(Image.open(io.BytesIO(events[-1].result.images[0].data)).convert("RGB"))
    controls = [{"name": "edges", "image": b64(edges_image(64)), "scale": 0.7}]
    body = BODY | {"image": [b64(image)], "mask": b64(mask), "controlnets": controls}
    np.testing.assert_array_equal(got[None], _ok(api.post(GENERATE, json=body)))


def _corrupt_png() -> bytes:
    return _png(input_image(64))[:60]


IMAGE_PART = ("image", ("x.png", encode(Image.fromarray(input_image(64)))))


@pytest.mark.parametrize(
    ("route", "request_fields", "param"),
    [
        (EDITS, {"files": [("image", ("x.png", b"not an image"))]}, "image"),
        (EDITS, {"files": [("image", ("x.png", _corrupt_png()))]}, "image"),
        (EDITS, {"files": [("image", ("x.png", png_header_only(5000, 5000)))]}, "image"),
        (EDITS, {"files": [IMAGE_PART, ("mask", ("m.png", b"junk"))]}, "mask"),
        (EDITS, {"files": [IMAGE_PART, ("mask", ("m.png", _png(box_mask(72))))]}, "mask"),
        (EDITS, {"files": [IMAGE_PART], "data": {"strength": "1.5"}}, "strength"),
        (EDITS, {"files": [IMAGE_PART], "data": {"strength": "NaN"}}, "strength"),
        (EDITS, {"data": {}}, "image"),
        (GENERATE, {"json": {"mask": b64(box_mask(64))}}, "mask"),
        (GENERATE, {"json": {"image": [b64(input_image(64))], "strength": -0.5}}, "strength"),
        (GENERATE, {"json": {"controlnets": [{"name": "nope", "image": b64(edges_image(64))}]}}, "controlnets.0.name"),
        (GENERATE, {"json": {"controlnets": [{"name": "xl", "image": b64(edges_image(64))}]}}, "controlnets.0.name"),
        (GENERATE, {"json": {"controlnets": [{"name": "edges", "image": "bm90IGFuIGltYWdl"}]}}, "controlnets.0.image"),
    ],
)
def test_bad_image_input_is_a_400_naming_the_field_and_the_stack_goes_on(api, route, request_fields, param):
    if route == EDITS:
        data = {k: str(v) for k, v in BODY.items()} | request_fields.get("data", {})
        response = api.post(EDITS, files=request_fields.get("files", []), data=data)
    else:
        response = api.post(GENERATE, json=BODY | request_fields["json"])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.json()
    assert _ok(api.post(GENERATE, json=BODY)).shape == (1, 64, 64, 3)


def test_the_cost_counts_the_steps_that_run_and_the_controlnets(api):
    expensive = {"controlnets": [{"name": "edges", "image": b64(edges_image(64))}] * 4, "num_inference_steps": 150}
    response = api.post(GENERATE, json=BODY | expensive | {"size": "1024x1024"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "num_inference_steps"
    assert "ControlNets" in response.json()["error"]["message"]
