"""Three models in one stack (the embedded default, a second tiny SD and the tiny SDXL): each request's `model` picks
one, each image is that model's (parity with diffusers), OpenAI's client lists them, an unknown one is a 400."""

import json
import logging
import shutil

import grpc
import httpx
import openai
import pytest

from serve.grpc_api import easel_pb2, easel_pb2_grpc
from serve.settings import DEFAULT_MODEL
from serve.stack import Stack, StackOptions
from tests.conftest import diffusers_reference, psnr, reference_images
from tests.integration.conftest import batch_histogram, decode_images, post_together
from tests.integration.test_text_to_image import GENERATE

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

SD, XL = "sd", "xl"
MODELS = (DEFAULT_MODEL, SD, XL)
BODY = {
    "prompt": "a red heart icon",
    "size": "64x64",
    "num_inference_steps": 2,
    "guidance_scale": 7.5,
    "seed": 3,
    "scheduler": "ddim",
}


@pytest.fixture(scope="module")
def second_sd(default_model, tmp_path_factory):
    """A second SD model: the embedded default with another noise schedule (so its images differ, its engines too)."""
    folder = tmp_path_factory.mktemp("second-sd") / "model"
    shutil.copytree(default_model, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["beta_end"] = 0.02
    config_path.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def stack(second_sd, tiny_xl_model, tmp_path_factory):
    """One stack serving the three models (the default first) on free ports, no result cache."""
    options = StackOptions(
        port=0,
        dashboard=False,
        models={DEFAULT_MODEL: None, SD: second_sd, XL: tiny_xl_model},
        repository=tmp_path_factory.mktemp("repository"),
        run_dir=tmp_path_factory.mktemp("run"),
        cache_bytes=0,
    )
    with Stack(options) as stack:
        yield stack


@pytest.fixture(scope="module")
def api(stack):
    with httpx.Client(base_url=stack.info.api_url, timeout=300) as client:
        yield client


@pytest.fixture(scope="module")
def references(default_model, second_sd, tiny_xl_model):
    """Each model's image for :data:`BODY` from diffusers' own pipeline over its folder."""
    folders = {DEFAULT_MODEL: default_model, SD: second_sd, XL: tiny_xl_model}
    wanted = {}
    for name, folder in folders.items():
        pipeline = diffusers_reference(folder, **({"add_watermarker": False} if name == XL else {}))
        wanted[name] = reference_images(
            pipeline,
            "ddim",
            prompt=BODY["prompt"],
            width=64,
            height=64,
            num_inference_steps=2,
            guidance_scale=7.5,  # SDXL's pipeline defaults to 5
            seed=3,
        )
    return wanted


def test_the_openai_client_lists_every_model_with_its_family(stack, api):
    client = openai.OpenAI(base_url=f"{stack.info.api_url}/v1", api_key="unused", timeout=60)
    listed = client.models.list().data
    assert [model.id for model in listed] == list(MODELS)  # the default first
    assert all(model.object == "model" and model.owned_by == "easel" and model.created > 0 for model in listed)
    xl = api.get("/v1/models/xl").json()
    assert (xl["family"], xl["loaded"], xl["native_size"], xl["controlnets"]) == ("sdxl", True, "256x256", [])
    assert api.get(f"/v1/models/{DEFAULT_MODEL}").json()["family"] == "sd"
    missing = api.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model_id"
    ready = api.get("/readyz").json()["models"]
    assert {"unet", "sd.unet", "xl.unet", "xl.text_encoder_2"} <= set(ready)  # each model's own Triton models


def test_each_request_gets_its_model_s_image_alone_and_together(stack, api, references):
    alone = {}
    for name in MODELS:
        response = api.post(GENERATE, json=BODY | {"model": name})
        assert response.status_code == 200, response.text
        alone[name] = decode_images(response)
    parity = {name: psnr(alone[name], references[name]) for name in MODELS}
    logger.info("PSNR against diffusers: %s", parity)
    assert all(value >= 40 for value in parity.values()), parity
    assert psnr(alone[DEFAULT_MODEL], alone[SD]) < 30 and psnr(alone[SD], alone[XL]) < 30  # three models, not one
    no_model = api.post(GENERATE, json=BODY)
    assert (decode_images(no_model) == alone[DEFAULT_MODEL]).all()  # absent: the default model

    before = batch_histogram(stack.info.triton_http_url, "xl.unet")
    bodies = [BODY | {"model": name, "seed": 3} for name in MODELS for _ in range(3)]
    together = post_together(stack.info.api_url, GENERATE, bodies)
    for body, response in zip(bodies, together, strict=True):
        assert response.status_code == 200, response.text
        assert (decode_images(response) == alone[body["model"]]).all()
    merged = batch_histogram(stack.info.triton_http_url, "xl.unet") - before
    logger.info("xl.unet batches while the three models ran together: %s", dict(merged))
    assert any(size > 1 for size in merged)  # a model's steps still merge across its requests


def test_an_unknown_model_is_a_400_naming_model_and_what_a_model_lacks_is_refused(stack, api):
    unknown = api.post(GENERATE, json=BODY | {"model": "gpt-image-1"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "model"
    assert "served: easel-default, sd, xl" in unknown.json()["error"]["message"]
    background = api.post(GENERATE, json=BODY | {"model": "nope", "background": True})
    assert background.status_code == 400 and background.json()["error"]["param"] == "model"  # refused, not queued
    refused = api.post(GENERATE, json=BODY | {"model": XL, "loras": [{"name": "style"}]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "loras.0.name"
    with grpc.insecure_channel(stack.info.grpc_address) as channel:
        easel = easel_pb2_grpc.EaselStub(channel)
        with pytest.raises(grpc.RpcError) as refused_rpc:
            list(easel.Generate(easel_pb2.GenerateRequest(prompt="x", model="nope"), timeout=30))
        assert refused_rpc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert refused_rpc.value.details().startswith("model:")
        events = list(easel.Generate(easel_pb2.GenerateRequest(prompt="x", size="64x64", model=XL), timeout=120))
        assert len(events[-1].result.images) == 1
    assert api.get("/readyz").status_code == 200  # the stack serves on
