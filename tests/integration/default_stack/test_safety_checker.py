"""The image safety checker served by the stack (``--safety-checker``): Triton's engine, reached by ``ImageChecker``."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import torch

from build_engines.moderation.safety_checker import (
    FEATURE_EXTRACTOR,
    SafetyScores,
    chosen_pictures,
    load_safety_checker,
)
from serve.moderation.images import CATEGORY, PREPROCESSOR, SAFETY_CHECKER, ImageChecker, Preprocessing
from tests.integration.conftest import batch_histogram


def test_the_stack_serves_the_checker_engine_batched(stack):
    base = f"{stack.info.triton_http_url}/v2/models/{SAFETY_CHECKER}"
    assert httpx.get(f"{base}/ready", timeout=10).status_code == 200
    config = httpx.get(f"{base}/config", timeout=10).json()
    assert config["max_batch_size"] == 8 and "dynamic_batching" in config
    assert (stack.options.repository / SAFETY_CHECKER / "config.pbtxt").is_file()


def test_image_checker_flags_the_chosen_picture_through_triton(stack, safety_checker):
    """One call of 3 images is one Triton execution of 3; flags as diffusers' checker gives, scores within 1e-3."""
    flagged, passes = chosen_pictures()
    images = [flagged, passes, np.ascontiguousarray(flagged[::-1, ::-1])]
    before = batch_histogram(stack.info.triton_http_url, SAFETY_CHECKER)

    async def check():
        checker = stack.service_engines.image_checker(stack.info.triton_grpc_url)
        return await checker.check(images)

    verdicts = asyncio.run(check())
    assert (batch_histogram(stack.info.triton_http_url, SAFETY_CHECKER) - before)[3] == 1
    preprocessing = Preprocessing.read(safety_checker / FEATURE_EXTRACTOR / PREPROCESSOR)
    with torch.no_grad():
        scores, flags = SafetyScores(load_safety_checker(safety_checker))(
            torch.from_numpy(np.stack([preprocessing.pixels(image) for image in images]))
        )
    assert [v.flagged for v in verdicts] == flags.reshape(-1).tolist() == [True, False, True]
    got = [v.scores[CATEGORY] for v in verdicts]
    np.testing.assert_allclose(got, scores.max(dim=1).values.numpy(), atol=1e-3)
    assert ImageChecker.on_triton(None, stack.info.triton_grpc_url) is None
