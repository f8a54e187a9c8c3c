"""Text-to-image through a real Triton and a real Ray Serve app, over HTTP."""

import base64
import io
import json
import logging
import time

import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from loadtests.benchmarks.loop import triton_counts
from serve.names import DEFAULT_MODEL
from serve.stack import FIRST_REQUEST
from serve.text_to_image.samplers import NOISE_SAMPLERS
from serve.text_to_image.spec import DISTILLED_UNET, UNET
from serve.triton.server import CONTROL_HEADER
from serve.triton.spec import canary_body
from tests.bad_requests import BAD_GENERATIONS, deeply_nested
from tests.conftest import psnr, reference_images
from tests.integration.conftest import (
    GENERATE,
    batch_histogram,
    decode_images,
    engine_names,
    post_together,
    triton_killed,
)

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)


def test_health_and_readiness(api, stack):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and all(ready.json()["models"][m] for m in engine_names(stack))


def test_replica_logs_reach_their_files_with_rays_log_monitor_stopped(api, stack):
    processes = psutil.Process().children(recursive=True)
    assert not [p.pid for p in processes if any(arg.endswith("log_monitor.py") for arg in p.cmdline())]
    api.get("/healthz")

    def logged() -> bool:
        logs = (stack.ray_session_dir / "logs" / "serve").glob("replica_easel_Gateway_*.log")
        return any("/healthz" in path.read_text() for path in logs)

    deadline = time.monotonic() + 5  # the replica writes its access log after the response has gone
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert logged()


@pytest.mark.parametrize("scheduler", list(NOISE_SAMPLERS))
def test_parity_with_diffusers(api, diffusers_pipeline, scheduler):
    body = {
        "prompt": "a lighthouse, flat icon",
        "negative_prompt": "noise",
        "size": "96x64",
        "seed": 5,
        "num_inference_steps": 12,
        "guidance_scale": 6.0,
        "scheduler": scheduler,
    }
    response = api.post(GENERATE, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["Easel-Seed"] == "5"
    want = reference_images(
        diffusers_pipeline,
        scheduler,
        prompt=body["prompt"],
        negative_prompt="noise",
        width=96,
        height=64,
        num_inference_steps=12,
        guidance_scale=6.0,
        seed=5,
    )
    got = decode_images(response)
    assert got.shape == want.shape
    logger.info("parity %s: PSNR %.1f dB against diffusers", scheduler, psnr(got, want))
    assert psnr(got, want) >= 40


def test_concurrent_requests_are_isolated_and_batched_per_step(api, stack):
    bodies = [
        {"prompt": f"icon number {i}", "seed": 100 + i, "num_inference_steps": 10, "size": "64x64"} for i in range(8)
    ]
    alone = [decode_images(api.post(GENERATE, json=b)) for b in bodies]
    before = batch_histogram(stack.info.triton_http_url)

    together = post_together(stack.info.api_url, GENERATE, bodies)
    histogram = batch_histogram(stack.info.triton_http_url) - before
    for body, single, response in zip(bodies, alone, together, strict=True):
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(decode_images(response), single, err_msg=f"seed {body['seed']}")
    # Each guided request sends 2 rows per step: a batch of more than 2 rows merged several requests' steps.
    logger.info("unet batch-size histogram under 8 concurrent requests: %s", dict(sorted(histogram.items())))
    merged = sum(count for size, count in histogram.items() if size > 2)
    assert merged > 0, f"no UNet execution merged requests: {dict(histogram)}"


@pytest.mark.parametrize("pairing", ["red heart", "green heart", "blue anchor"])
def test_the_default_draws_the_colour_and_the_icon_asked_for(api, pairing):
    """The embedded default's first request (red heart, trained on) and pairings held out of training (green heart,
    blue anchor): the colour named, and the icon's shape (its ink mask against the icon rendered)."""
    from build_engines.text_to_image.evaluate import INK_THRESHOLD, dominant_colour, ink
    from build_engines.text_to_image.icons import COLOURS, held_out, render

    colour, icon = pairing.split()
    assert (pairing == "red heart") != (any(p.colour == colour and p.icon == icon for p in held_out()))
    body = FIRST_REQUEST | {"prompt": f"a {pairing} icon"}
    image = decode_images(api.post(GENERATE, json=body))[0]
    drawn = ink(image[None])[0] > INK_THRESHOLD
    wanted = ink(render(icon, COLOURS[colour])[None])[0] > INK_THRESHOLD
    overlap = (drawn & wanted).sum() / (drawn | wanted).sum()
    logger.info("%s: dominant colour %s, ink overlap with the icon %.2f", pairing, dominant_colour(image), overlap)
    assert dominant_colour(image) == colour
    assert overlap > 0.7


@pytest.mark.parametrize(("body", "field"), BAD_GENERATIONS)
def test_bad_input_is_a_400_naming_the_field(api, body, field):
    response = api.post(GENERATE, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and field in error["message"]
    assert " object at 0x" not in error["message"]  # no Python reprs


def test_json_nested_past_any_parser_s_limit_is_a_400(api):
    raw = f'{{"prompt": "x", "ip_adapter_scale": {deeply_nested()}}}'.encode()
    response = api.post(GENERATE, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "body"


def test_a_body_sent_as_a_form_is_a_400_saying_which_content_type_to_send(api):
    """``curl -d`` without ``-H 'Content-Type: application/json'`` sends application/x-www-form-urlencoded."""
    body = b'{"prompt": "a red heart icon", "size": "64x64", "num_inference_steps": 2}'
    response = api.post(GENERATE, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "Content-Type" and "application/json" in error["message"]
    assert api.post(GENERATE, content=body, headers={"Content-Type": "application/json"}).status_code == 200


@pytest.mark.parametrize("raw", [b'{"prompt": "x", "guidance_scale": NaN}', b"{not json", b"[1, 2]", b""])
def test_malformed_bodies_are_400s(api, raw):
    response = api.post(GENERATE, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("jpeg", b"\xff\xd8"), ("webp", b"RIFF")])
def test_output_formats_and_n(api, fmt, magic):
    import base64

    response = api.post(
        GENERATE, json={"prompt": "x", "n": 2, "size": "64x64", "num_inference_steps": 2, "output_format": fmt}
    )
    data = response.json()["data"]
    assert len(data) == 2 and all(base64.b64decode(d["b64_json"]).startswith(magic) for d in data)


def test_the_same_seed_draws_the_same_icon_and_no_size_means_the_native_size(api):
    from build_engines.text_to_image.evaluate import ink

    body = {"prompt": "a red heart icon", "seed": 3}
    first, again = (decode_images(api.post(GENERATE, json=body))[0] for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert first.shape == (64, 64, 3)
    drawn = ink(first[None])[0] > 0.35
    assert 0.05 < drawn.mean() < 0.9  # an icon on a light background, not noise or a blank


def test_four_prompts_in_one_call_are_each_their_own_request_and_their_records_name_them(api):
    """Issue 62's acceptance: a 4-prompt call answers 4 images, each its own one-prompt request's (>= 40 dB)."""
    prompts = [{"prompt": "a red heart icon", "seed": 5}, {"prompt": "a blue star icon"}, {"prompt": "a green leaf"}]
    prompts.append({"prompt": "a yellow sun icon", "seed": 2})
    body = {"size": "64x64", "num_inference_steps": 4, "seed": 40}
    together = api.post(GENERATE, json=body | {"prompts": prompts})
    assert together.status_code == 200, together.text
    seeds = [5, 41, 42, 2]  # its own, else the request's + its index
    data = together.json()["data"]
    assert [item["prompt_index"] for item in data] == [0, 1, 2, 3]
    for image, item, choice, seed in zip(decode_images(together), data, prompts, seeds, strict=True):
        record = json.loads(Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).info["easel"])
        assert (record["prompt"], record["seed"], record["n"]) == (choice["prompt"], seed, 1)
        alone = decode_images(api.post(GENERATE, json=body | {"prompt": choice["prompt"], "seed": seed}))[0]
        logger.info("prompt %r: PSNR %.1f dB against its own request", choice["prompt"], psnr(image, alone))
        assert psnr(image, alone) >= 40
    too_many = api.post(GENERATE, json=body | {"prompts": prompts, "n": 2})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "prompts", too_many.text


@pytest.mark.parametrize("tier", [None, "1"])
def test_svg_output_is_the_vectorized_generation(api, tier):
    """Text -> image (TextToImage) -> SVG (Vectorizer) in one request; its rendering matches the PNG it came from."""
    import base64
    import xml.etree.ElementTree as ElementTree

    from serve.vectorize.convert import render, ssim

    body = {"prompt": "a red heart icon", "size": "64x64", "seed": 0, "n": 2}
    png = decode_images(api.post(GENERATE, json=body))
    response = api.post(GENERATE, json=body | {"output_format": "svg", "vectorize_tier": tier})
    assert response.status_code == 200, response.text
    assert response.headers["Easel-Seed"] == "0"
    for image, item in zip(png, response.json()["data"], strict=True):
        svg = base64.b64decode(item["b64_json"]).decode()
        assert ElementTree.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg"
        measured = ssim(image, render(svg, 64, 64))
        logger.info("svg (tier %s): SSIM %.3f against its PNG (reported %.3f)", item["tier"], measured, item["ssim"])
        assert measured >= 0.8 and abs(measured - item["ssim"]) < 1e-3
        assert tier is None or item["tier"] in (tier, "default")  # the quality guarantee may hand it to the defaults


def test_triton_is_reachable_directly_over_grpc(stack):
    client = grpcclient.InferenceServerClient(stack.info.triton_grpc_url)
    length = client.get_model_metadata("text_encoder").inputs[0].shape[-1]
    ids = np.zeros((1, length), np.int64)
    tensor = grpcclient.InferInput("input_ids", list(ids.shape), "INT64")
    tensor.set_data_from_numpy(ids)
    hidden = client.infer("text_encoder", [tensor]).as_numpy("last_hidden_state")
    assert hidden.shape[:2] == (1, length) and np.isfinite(hidden).all()


def test_every_triton_model_of_the_stack_takes_its_canary(stack):
    """The supervisor's canary of each model (upscalers, restorers, RIFE, checkers, scorers, the loop's engines) is an
    inference the model answers: a refused one had RIFE unloaded and loaded again every 10 s."""
    for name, spec in stack.triton.loaded().items():
        if spec.ensemble or spec.decoupled:
            continue
        answer = httpx.post(f"{stack.info.triton_http_url}/v2/models/{name}/infer", json=canary_body(spec), timeout=60)
        assert answer.status_code == 200, f"{name}: {answer.text[:300]}"


def test_triton_down_is_a_503_with_retry_after_and_the_stack_recovers(api, stack):
    with triton_killed(stack):
        assert api.get("/readyz").status_code == 503  # asked first: the supervisor brings Triton back within seconds
        assert api.get("/healthz").status_code == 200
        response = api.post(GENERATE, json={"prompt": "x", "num_inference_steps": 2, "size": "64x64"})
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) > 0 and response.json()["error"]["type"] == "service_unavailable"
    recovered = api.post(GENERATE, json={"prompt": "x", "num_inference_steps": 2, "size": "64x64"})
    assert recovered.status_code == 200, recovered.text


def test_a_model_that_cannot_serve_is_drawn_by_its_fallback_and_fallback_false_is_its_503(api, stack):
    """The stack's chain ``easel-default=spare``: with the default's UNet unloaded from Triton, its request is drawn by
    ``spare`` (a model added with the same engines: the same image for the seed) and says so; ``fallback: false`` gets
    the default's own 503; the UNet loaded again, the default draws it again. ``spare`` is removed at the end."""
    unet = f"{stack.info.triton_http_url}/v2/repository/models/unet"
    control = {CONTROL_HEADER: stack.triton.control_key}
    body = {"prompt": "a red fox", "num_inference_steps": 2, "size": "64x64", "seed": 5}
    added = api.post("/v1/models", json={"name": "spare", "engine_dir": str(stack.models.default.folder.path)})
    assert added.is_success, added.text
    try:
        spare = api.post(GENERATE, json=body | {"model": "spare"})
        with stack.supervisor.paused():  # its checks would load the UNet again meanwhile
            httpx.post(f"{unet}/unload", headers=control, timeout=60).raise_for_status()
            try:
                drawn = api.post(GENERATE, json=body)
                refused = api.post(GENERATE, json=body | {"fallback": False})
            finally:
                httpx.post(f"{unet}/load", headers=control, timeout=300).raise_for_status()
    finally:
        api.delete("/v1/models/spare")
    assert spare.status_code == 200 and drawn.status_code == 200, drawn.text
    assert drawn.headers["Easel-Model"] == "spare" and drawn.headers["Easel-Fallback"] == f"{DEFAULT_MODEL} unavailable"
    assert drawn.json()["fallback"] == {"model": DEFAULT_MODEL, "reason": "unavailable"}
    assert drawn.json()["data"][0]["b64_json"] == spare.json()["data"][0]["b64_json"]
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0, refused.text
    again = api.post(GENERATE, json=body)
    assert again.status_code == 200 and again.headers["Easel-Model"] == DEFAULT_MODEL, again.text
    assert "Easel-Fallback" not in again.headers
    assert api.get("/readyz").json()["circuits"][DEFAULT_MODEL] == "closed"  # two failures: under the five that open


def test_fewer_unet_rows_options_are_served_and_deterministic(api):
    """A few-step sampler and a guidance cut-off through the stack: served, the same seed gives the same bytes, and
    each differs from the request without it."""
    body = {"prompt": "a green heart icon", "size": "64x64", "seed": 4, "num_inference_steps": 4}
    cases = [({"scheduler": "lcm"}, {"scheduler": "ddim"}), ({"guidance_cutoff": 0.5}, {"guidance_cutoff": 1.0})]
    for on, off in cases:
        first, again = (decode_images(api.post(GENERATE, json=body | on)) for _ in range(2))
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, decode_images(api.post(GENERATE, json=body | off))), on


def test_a_stock_stack_answers_a_4_step_lcm_request_through_the_embedded_default_s_student(api, stack):
    """The embedded default ships its LCM student (unet_lcm): a 4-step lcm request is one row per step there."""
    assert DISTILLED_UNET in engine_names(stack)
    url = stack.info.triton_http_url
    before = {model: triton_counts(url, model)[0] for model in (UNET, DISTILLED_UNET)}
    body = {"prompt": "a red heart icon", "size": "64x64", "seed": 1, "num_inference_steps": 4, "scheduler": "lcm"}
    response = api.post(GENERATE, json=body)
    assert response.status_code == 200, response.text
    rows = {model: triton_counts(url, model)[0] - before[model] for model in before}
    assert rows[DISTILLED_UNET] >= 4 and rows[UNET] <= 2, rows  # the student's 4 rows; canaries add 1 row at most
