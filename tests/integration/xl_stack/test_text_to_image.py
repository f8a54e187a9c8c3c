"""SDXL (the embedded tiny-xl, the package stack's default model) through a real Triton and a real Ray Serve app, over
HTTP, against diffusers."""

import logging

import numpy as np
import pytest

from tests.conftest import psnr, reference_images
from tests.integration.conftest import GENERATE, batch_histogram, decode_images, post_together

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)


def test_every_sdxl_engine_is_ready(api):
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert {"text_encoder", "text_encoder_2", "unet", "vae_decoder"} <= set(ready.json()["models"])


@pytest.mark.parametrize(("scheduler", "negative"), [("ddim", ""), ("euler", "noise"), ("dpmpp_2m", "")])
def test_parity_with_diffusers_sdxl_pipeline(api, diffusers_xl_pipeline, scheduler, negative):
    body = {
        "prompt": "a lighthouse, flat icon",
        "negative_prompt": negative,
        "size": "192x128",
        "seed": 5,
        "num_inference_steps": 8,
        "guidance_scale": 6.0,
        "scheduler": scheduler,
    }
    response = api.post(GENERATE, json=body)
    assert response.status_code == 200, response.text
    want = reference_images(
        diffusers_xl_pipeline,
        scheduler,
        prompt=body["prompt"],
        negative_prompt=negative,
        width=192,
        height=128,
        num_inference_steps=8,
        guidance_scale=6.0,
        seed=5,
    )
    got = decode_images(response)
    assert got.shape == want.shape == (1, 128, 192, 3)
    logger.info("sdxl parity %s: PSNR %.1f dB against diffusers", scheduler, psnr(got, want))
    assert psnr(got, want) >= 40


def test_concurrent_sdxl_requests_are_isolated_and_batched_per_step(api, stack):
    sizes = ["128x128", "128x128", "128x96", "128x128", "96x128", "128x128"]
    bodies = [
        {"prompt": f"icon number {i}", "seed": 100 + i, "num_inference_steps": 8, "size": size, "scheduler": "euler"}
        for i, size in enumerate(sizes)
    ]
    alone = [decode_images(api.post(GENERATE, json=b)) for b in bodies]
    before = batch_histogram(stack.info.triton_http_url)

    together = post_together(stack.info.api_url, GENERATE, bodies)
    histogram = batch_histogram(stack.info.triton_http_url) - before
    for body, single, response in zip(bodies, alone, together, strict=True):
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(decode_images(response), single, err_msg=f"seed {body['seed']}")
    logger.info("sdxl unet batch-size histogram under %d concurrent requests: %s", len(bodies), dict(histogram))
    merged = sum(count for size, count in histogram.items() if size > 2)
    assert merged > 0, f"no UNet execution merged requests: {dict(histogram)}"


def test_bench_model_times_each_size_until_one_fails(stack):
    from loadtests.benchmarks.model import TreeMemory, format_runs, run_sizes

    with TreeMemory(interval_s=0.2) as memory:
        runs = run_sizes(stack.info, [96, 64, 4096], steps=2, guidance=6.0, memory=memory)
    assert [r.size for r in runs] == [64, 96, 4096] and [r.status for r in runs] == [200, 200, 400]
    assert all(r.engines["unet"]["executions"] == 2 and r.engines["unet"]["compute_s"] > 0 for r in runs[:2])
    assert "size" in runs[2].error and runs[0].peak_own_gb > 0 and [r.ready_after for r in runs] == [200, 200, 200]
    assert len(format_runs(runs).splitlines()) == 4
