"""A generation's images as its answer lists them: base64 PNG/JPEG/WebP, or SVG traced by the Vectorizer.

Each item also says what was done to its image (faces restored), its scores and, of a best-of-n draw, its own seed.
gRPC's stream traces its SVGs here too (:func:`traced`).
"""

from __future__ import annotations

import asyncio
import base64
import time

from ray.serve.handle import DeploymentHandle

from serve.text_to_image.drawing import AnswerForm
from serve.text_to_image.generation import EncodedImages
from serve.vectorize.deployment import VectorizeResult
from serve.vectorize.schema import Tier, VectorizeOptions


async def traced(vectorizer: DeploymentHandle, pngs: list[bytes], tier: Tier) -> list[VectorizeResult]:
    """Each generated PNG through the Vectorizer (its SVG checked: rendered back, SSIM measured)."""
    options = VectorizeOptions(tier=tier, validate=True)
    return await asyncio.gather(*(vectorizer.vectorize.remote(png, options, sent_at=time.time()) for png in pngs))


async def answer_items(vectorizer: DeploymentHandle, answer: AnswerForm, result: EncodedImages) -> list[dict]:
    """The answer's ``data``: each image base64 (svg: traced by the Vectorizer, with its tier and SSIM)."""
    if answer.output_format == "svg":
        items = [
            {"b64_json": base64.b64encode(r.svg.encode()).decode(), "tier": r.tier, "ssim": r.ssim}
            for r in await traced(vectorizer, result.images, answer.vectorize_tier or Tier.AUTO)
        ]
    else:
        items = [{"b64_json": base64.b64encode(image).decode()} for image in result.images]
    for item, faces in zip(items, result.faces or (), strict=False):
        item["faces"] = faces  # restore_faces: how many were found (none: the image unchanged)
    for item, scores in zip(items, result.scores or (), strict=False):
        item["scores"] = scores  # scores: as generated (before upscaling, face restoration, tracing)
    for item, seed in zip(items, result.seeds or (), strict=False):
        item["seed"] = seed  # best-of-n: the candidate's own seed (a one-image request with it draws it)
    return items
