"""SD3 and Flux (the embedded tiny-sd3, tiny-flux and tiny-flux-schnell) through a real Triton and Ray Serve app.

One stack serves the three (``model`` picks one), each with a LoRA folder of its own: parity with diffusers' own
pipeline over HTTP, with and without a LoRA, and concurrent requests that each equal their solo image while sharing
transformer executions.
"""

import logging
from pathlib import Path

import httpx
import numpy as np
import pytest

from build_engines.text_to_image.random_adapters import make_lora
from serve.stack import Stack, StackOptions
from tests.conftest import TRANSFORMER_MODELS, diffusers_reference, psnr, reference_images
from tests.controls import b64, input_image
from tests.integration.conftest import GENERATE, NO_CANARY_S, batch_histogram, decode_images, post_together

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

BODY = {"prompt": "a lighthouse, flat icon", "size": "96x64", "seed": 5, "num_inference_steps": 4}


@pytest.fixture(scope="module", params=TRANSFORMER_MODELS)
def model(request, transformer_models):
    """(name, diffusers folder) of the model a test asks the stack for."""
    return request.param, transformer_models[request.param]


@pytest.fixture(scope="module")
def lora_dirs(transformer_models, tmp_path_factory) -> dict[str, Path]:
    """Each model's LoRA folder, with one random adapter (transformer and CLIP layers) for it, by model name."""
    folders = {}
    for name, folder in transformer_models.items():
        folders[name] = tmp_path_factory.mktemp(f"loras-{name}")
        make_lora(folder, folders[name] / "style.safetensors", rank=4, seed=1, strength=1.5)
    return folders


@pytest.fixture(scope="module")
def stack(transformer_models, lora_dirs, tmp_path_factory):
    """The stack serving the three models from their diffusers folders, LoRA-ready, without a result cache or canary."""
    options = StackOptions(
        port=0,
        dashboard=False,
        models=transformer_models,
        repository=tmp_path_factory.mktemp("repository"),
        run_dir=tmp_path_factory.mktemp("run"),
        cache_bytes=0,
        loras_dir=lora_dirs,
        canary_interval_s=NO_CANARY_S,  # a test counts executions
    )
    with Stack(options) as stack:
        yield stack


@pytest.fixture(scope="module")
def body(model) -> dict:
    """:data:`BODY` for the model."""
    return BODY | {"model": model[0]}


@pytest.fixture(scope="module")
def reference(model, lora_dirs):
    """diffusers' own pipeline over the model's weights, with the LoRA loaded (disabled unless asked)."""
    pipeline = diffusers_reference(model[1])
    pipeline.load_lora_weights(str(lora_dirs[model[0]]), weight_name="style.safetensors", adapter_name="style")
    return pipeline


def _diffusers(stack, pipeline, body: dict, lora: float | None = None) -> np.ndarray:
    if lora is None:
        pipeline.disable_lora()
    else:
        pipeline.enable_lora()
        pipeline.set_adapters(["style"], [lora])
    width, height = map(int, body["size"].split("x"))
    return reference_images(
        pipeline,
        body.get("scheduler", "ddim"),
        samplers=stack.models[body["model"]].folder.family.samplers,
        prompt=body["prompt"],
        negative_prompt=body.get("negative_prompt", ""),
        width=width,
        height=height,
        num_inference_steps=body["num_inference_steps"],
        guidance_scale=body.get("guidance_scale", 7.5),
        seed=body["seed"],
    )


def test_every_engine_of_the_family_is_ready(api, stack, model):
    served = stack.models[model[0]]
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert set(served.triton_names()) <= set(ready.json()["models"]) and "transformer" in served.folder.specs


@pytest.mark.parametrize(
    "fields",
    [{}, {"scheduler": "euler", "guidance_scale": 3.0, "negative_prompt": "blurry"}, {"guidance_scale": 1.0}],
)
def test_parity_with_the_diffusers_pipeline(api, stack, model, body, reference, fields):
    body = body | fields
    response = api.post(GENERATE, json=body)
    assert response.status_code == 200, response.text
    got, want = decode_images(response), _diffusers(stack, reference, body)
    logger.info("%s parity %s: PSNR %.1f dB against diffusers", model[0], fields, psnr(got, want))
    assert got.shape == want.shape == (1, 64, 96, 3)
    assert psnr(got, want) >= 40


def test_a_lora_per_request_matches_load_lora_weights(api, stack, model, body, reference):
    body = body | {"loras": [{"name": "style", "scale": 0.8}]}
    response = api.post(GENERATE, json=body)
    assert response.status_code == 200, response.text
    got = decode_images(response)
    logger.info("%s LoRA parity: PSNR %.1f dB", model[0], psnr(got, _diffusers(stack, reference, body, lora=0.8)))
    assert psnr(got, _diffusers(stack, reference, body, lora=0.8)) >= 40
    assert psnr(got, _diffusers(stack, reference, body)) < 40  # the adapter changed the image


def _executions(stack) -> dict[str, int]:
    """How many executions each text-to-image Triton model has run so far (the vectorize pipeline's are its own)."""
    stats = httpx.get(f"{stack.info.triton_http_url}/v2/models/stats").json()["model_stats"]
    return {m["name"]: int(m["execution_count"]) for m in stats if not m["name"].startswith("vectorize")}


def test_sizes_samplers_and_image_input_the_family_cannot_run_are_400s_naming_the_field(api, stack, body):
    """Refused at the Gateway before any engine runs, a background job's at submission (a 400, never a 202)."""
    picture = b64(input_image(64, 96))
    before = _executions(stack)
    for fields, field in (
        ({"size": "72x64"}, "size"),
        ({"scheduler": "dpmpp_2m"}, "scheduler"),
        ({"image": [picture]}, "image"),
        ({"controlnets": [{"name": "edges", "image": picture}]}, "controlnets"),
    ):
        for background in (False, True):
            response = api.post(GENERATE, json=body | fields | {"background": background})
            assert response.status_code == 400 and response.json()["error"]["param"] == field, response.text
    assert _executions(stack) == before  # no engine ran for them
    assert api.get("/v1/jobs").json()["data"] == []  # none was queued


def test_concurrent_requests_are_isolated_and_share_transformer_executions(api, stack, model, body):
    transformer = stack.models[model[0]].triton_name("transformer")
    sizes = ["64x64", "64x64", "96x64", "64x64", "64x96", "64x64"]
    bodies = [
        body | {"prompt": f"icon number {i}", "seed": 100 + i, "size": size, "num_inference_steps": 6}
        for i, size in enumerate(sizes)
    ]
    bodies[1] |= {"loras": [{"name": "style", "scale": 1.0}]}  # a LoRA row in the same batches
    alone = [decode_images(api.post(GENERATE, json=b)) for b in bodies]
    before = batch_histogram(stack.info.triton_http_url, transformer)
    together = post_together(stack.info.api_url, GENERATE, bodies)
    histogram = batch_histogram(stack.info.triton_http_url, transformer) - before
    for body, single, response in zip(bodies, alone, together, strict=True):
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(decode_images(response), single, err_msg=f"seed {body['seed']}")
    logger.info("%s transformer batch sizes under %d requests: %s", model[0], len(bodies), dict(histogram))
    rows_per_request = 2 if model[0] == "tiny-sd3" else 1  # SD3: classifier-free guidance; Flux: one row
    assert sum(count for size, count in histogram.items() if size > rows_per_request) > 0, dict(histogram)
