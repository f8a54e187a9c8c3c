"""Upscaling through the running stack: tiled Triton engines against the PyTorch module on the whole image."""

from __future__ import annotations

import base64
import io
import time

import grpc
import numpy as np
import openai
import pytest
import torch
from PIL import Image

from serve.finishing.recognise import read_state, recognise
from serve.grpc_api import easel_pb2, easel_pb2_grpc
from tests.images import encode, icon_pixels
from tests.integration.conftest import post_together

UPSCALE = "/v1/images/upscale"


def psnr(got: np.ndarray, want: np.ndarray) -> float:
    """PSNR of two uint8 images (peak 255)."""
    mse = np.mean((got.astype(np.float64) - want.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def whole_image(path, pixels: np.ndarray) -> np.ndarray:
    """The project's PyTorch module of the file at ``path`` on the whole image, as uint8 RGB."""
    state = read_state(path)
    module = recognise(state).module(state)
    with torch.no_grad():
        out = module(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0)[0]
    return (out.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def answered_pixels(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["data"][0]["b64_json"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """An icon, 150x200 (several tiles of 128 with their overlaps), with some noise so that every tile differs."""
    noise = np.random.default_rng(0).integers(-20, 20, (150, 200, 3))
    return np.clip(icon_pixels(150, 200).astype(int) + noise, 0, 255).astype(np.uint8)


def test_upscalers_are_listed_ready_or_with_why(api):
    listed = {entry["name"]: entry for entry in api.get("/v1/upscalers").json()["data"]}
    assert listed["x4"] == {"name": "x4", "status": "ready", "architecture": "RRDBNet", "scale": 4}
    assert listed["general"]["architecture"] == "SRVGGNetCompact"
    assert listed["broken"]["status"] == "error" and "not readable as weights" in listed["broken"]["error"]


@pytest.mark.parametrize("name", ["x4", "general"])
def test_the_tiled_served_upscale_matches_the_module_on_the_whole_image(api, upscaler_files, picture, name):
    """The acceptance bound: PSNR >= 40 dB against PyTorch on the same weights, while a plain resize is far off."""
    answer = api.post(
        UPSCALE, json={"image": base64.b64encode(encode(Image.fromarray(picture))).decode(), "upscaler": name}
    )
    served = answered_pixels(answer)
    want = whole_image(upscaler_files[name], picture)
    assert served.shape == want.shape == (600, 800, 3) and answer.json()["size"] == "800x600"
    assert psnr(served, want) >= 40
    resized = np.asarray(Image.fromarray(picture).resize((800, 600), Image.Resampling.LANCZOS))
    assert psnr(resized, want) < 30  # the engine's output is its own, not a resize


def test_multipart_with_a_lower_scale_resizes_the_output_down(api, picture):
    files = {"image": ("icon.png", encode(Image.fromarray(picture)), "image/png")}
    answer = api.post(UPSCALE, files=files, data={"upscaler": "general", "scale": "2.5"})
    assert answered_pixels(answer).shape == (375, 500, 3)
    assert answer.json()["scale"] == 2.5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"upscaler": "nope"}, "upscaler"),
        ({"upscaler": "broken"}, "upscaler"),
        ({"upscaler": "x4", "scale": 8}, "scale"),
        ({"upscaler": "x4", "image": base64.b64encode(b"not an image").decode()}, "image"),
        ({"upscaler": "x4", "image": "%%%"}, "image"),
        ({"upscaler": "x4", "large": True}, "scale"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_the_stack_stays_up(api, picture, body, field):
    image = Image.new("RGB", (1100, 1000)) if body.pop("large", False) else Image.fromarray(picture)
    answer = api.post(UPSCALE, json={"image": base64.b64encode(encode(image)).decode()} | body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == field
    assert api.get("/healthz").status_code == 200


GENERATE = "/v1/images/generations"
BODY = {"prompt": "a red heart icon", "size": "64x64", "num_inference_steps": 4, "seed": 3}


def job_answer(api, body: dict) -> dict:
    """A background job's answer, once it succeeded."""
    job = api.post(GENERATE, json=body | {"background": True}).json()
    for _ in range(1200):
        job = api.get(f"/v1/jobs/{job['id']}").json()
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    return job


def test_a_generation_is_upscaled_before_it_is_answered_synchronously_and_as_a_job(api):
    plain = api.post(GENERATE, json=BODY).json()["data"][0]["b64_json"]
    upscaled = answered_pixels(api.post(UPSCALE, json={"image": plain, "upscaler": "general"}))
    body = BODY | {"upscale": {"upscaler": "general"}}
    answered = answered_pixels(api.post(GENERATE, json=body))
    assert answered.shape == (256, 256, 3)
    np.testing.assert_array_equal(answered, upscaled)
    job = job_answer(api, body)
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(job["data"][0]["b64_json"]))).convert("RGB"))
    np.testing.assert_array_equal(image, upscaled)


def test_hires_fix_through_the_openai_client_and_two_at_once_each_equal_their_solo_image(stack, api):
    client = openai.OpenAI(base_url=f"{stack.info.api_url}/v1", api_key="unused", timeout=300)
    hires = {"upscaler": "general", "scale": 2, "denoise": 0.5}
    answer = client.images.generate(
        prompt=BODY["prompt"], size="64x64", extra_body={"seed": 5, "num_inference_steps": 4, "upscale": hires}
    )
    solo = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json))).convert("RGB"))
    assert solo.shape == (128, 128, 3)
    upscaled_only = answered_pixels(api.post(GENERATE, json=BODY | {"seed": 5, "upscale": hires | {"denoise": None}}))
    assert psnr(solo, upscaled_only) < 40  # the second pass redrew it
    bodies = [BODY | {"seed": seed, "upscale": hires} for seed in (5, 6)]
    together = post_together(stack.info.api_url, GENERATE, bodies)
    np.testing.assert_array_equal(answered_pixels(together[0]), solo)
    np.testing.assert_array_equal(answered_pixels(together[1]), answered_pixels(api.post(GENERATE, json=bodies[1])))


@pytest.mark.parametrize(
    ("upscale", "field"),
    [
        ({"upscaler": "nope"}, "upscale.upscaler"),
        ({"upscaler": "general", "scale": 5}, "upscale.scale"),
        ({"upscaler": "general", "denoise": 0}, "upscale.denoise"),
        ({"upscaler": "general", "denoise": 1.5}, "upscale.denoise"),
        ({"upscaler": "general", "scale": 1.1, "denoise": 0.5}, "upscale.scale"),
    ],
)
def test_a_generation_s_bad_upscale_is_a_400_naming_the_field(api, upscale, field):
    answer = api.post(GENERATE, json=BODY | {"upscale": upscale})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == field


def test_a_grpc_generation_with_upscale_answers_the_http_api_s_image(stack, api):
    hires = {"upscaler": "general", "scale": 2.0, "denoise": 0.5}
    with grpc.insecure_channel(stack.info.grpc_address) as channel:
        message = easel_pb2.GenerateRequest(**BODY, upscale=easel_pb2.Upscale(**hires))
        events = list(easel_pb2_grpc.EaselStub(channel).Generate(message, timeout=300))
    image = np.asarray(Image.open(io.BytesIO(events[-1].result.images[0].data)).convert("RGB"))
    assert image.shape == (128, 128, 3)
    np.testing.assert_array_equal(image, answered_pixels(api.post(GENERATE, json=BODY | {"upscale": hires})))
