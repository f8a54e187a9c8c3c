"""A stack whose text-to-image requests are drawn by the loop inside Triton (``easel up --loop triton``), on the CPU
in fp32: what a GPU stack does by default, tested where CI runs.

The same images as the replica's loop, progress streamed from inside Triton, a cancel that stops the loop at its next
step, a bad request refused with the model serving on, and the kinds the loop does not draw still served (by the
replica's loop), each answer naming its loop.
"""

import asyncio
import base64
import io
import re
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.generation import Generation, SamplingParams
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from tests.images import encode
from tests.integration.conftest import GENERATE, decode_images, default_stack, read_events, submit

pytestmark = pytest.mark.integration

SMALL = {"prompt": "a red heart icon", "size": "64x64", "num_inference_steps": 6, "seed": 3, "n": 2}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    yield from default_stack(tmp_path_factory, loop="triton")


@pytest.fixture(scope="module")
def api(stack):
    with httpx.Client(base_url=stack.info.api_url, timeout=300) as client:
        yield client


def psnr(got: np.ndarray, want: np.ndarray) -> float:
    mse = float(np.mean((got.astype(np.float64) - want.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def loop_outcomes(stack) -> dict[str, float]:
    """The loop model's generations by outcome, from Triton's metrics (``easel_loop_generations_total``)."""
    text = httpx.get(stack.info.triton_metrics_url, timeout=10).text
    found = re.findall(r"^easel_loop_generations_total\{([^}]*)\} (\S+)$", text, re.MULTILINE)
    return {re.search(r'outcome="(\w+)"', labels).group(1): float(value) for labels, value in found}


def test_an_image_drawn_inside_triton_is_the_replica_loop_s(api, stack):
    response = api.post(GENERATE, json=SMALL)
    assert response.status_code == 200, response.text
    assert response.headers["Easel-Loop"] == "triton"
    got = decode_images(response)
    folder = EngineFolder(stack.info.engine_dir)
    replica = TextToImagePipeline(folder, OnnxRuntimeRunner(folder))  # the replica's loop, its engines in-process
    sampling = SamplingParams(SMALL["prompt"], "", 2, 64, 64, 6, 7.5, 3, "ddim")
    want = np.stack(asyncio.run(replica.generate(Generation(sampling))).images)
    assert got.shape == want.shape and min(psnr(g, w) for g, w in zip(got, want, strict=True)) >= 40


def test_progress_streams_from_inside_triton_with_previews(api, stack):
    job = submit(api, {**SMALL, "num_inference_steps": 12, "seed": 6, "n": 1})
    events = read_events(stack.info.api_url, job["id"], preview=True)
    assert events[-1][0] == "completed"
    at_connect = events[0][1]["progress"]["step"]
    steps = [data["step"] for kind, data in events if kind == "progress"]
    assert steps == list(range(at_connect + 1, 13)), (at_connect, steps)
    previews = {data["step"]: data["preview"] for kind, data in events if kind == "progress" and "preview" in data}
    assert set(previews) == {5, 10, 12} - set(range(at_connect + 1))
    assert Image.open(io.BytesIO(base64.b64decode(previews[12]))).size == (16, 16)


def test_a_cancel_stops_the_loop_inside_triton_at_its_next_step_and_frees_the_slot(api, stack):
    before = loop_outcomes(stack).get("canceled", 0)
    running = submit(api, {**SMALL, "num_inference_steps": 150, "seed": 7, "n": 4})
    deadline = time.monotonic() + 60
    while api.get(f"/v1/jobs/{running['id']}").json()["progress"]["step"] < 3:
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.05)
    assert api.post(f"/v1/jobs/{running['id']}/cancel").status_code == 200
    deadline = time.monotonic() + 30
    while loop_outcomes(stack).get("canceled", 0) <= before:  # the loop itself stopped, not only its caller
        assert time.monotonic() < deadline, "the loop inside Triton did not stop the canceled generation"
        time.sleep(0.2)
    assert api.get(f"/v1/jobs/{running['id']}").json()["status"] == "canceled"
    after = api.post(GENERATE, json={**SMALL, "seed": 8})  # its slot is free: the next request is drawn
    assert after.status_code == 200 and after.headers["Easel-Loop"] == "triton"


def test_a_bad_request_is_a_400_naming_its_field_and_the_loop_serves_on(api):
    refused = api.post(GENERATE, json={**SMALL, "num_inference_steps": 0})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "num_inference_steps", refused.text
    served = api.post(GENERATE, json={**SMALL, "seed": 9})
    assert served.status_code == 200 and served.headers["Easel-Loop"] == "triton"


def test_what_the_loop_does_not_draw_runs_on_the_replica_s_loop_and_says_so(api):
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[16:48, 16:48] = (200, 40, 40)
    files = [("image", ("image.png", encode(Image.fromarray(image))))]
    data = {key: str(value) for key, value in SMALL.items()} | {"strength": "0.6"}
    edited = api.post("/v1/images/edits", files=files, data=data)
    assert edited.status_code == 200, edited.text
    assert edited.headers["Easel-Loop"] == "replica"
