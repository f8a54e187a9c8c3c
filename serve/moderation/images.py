"""The image safety checker as a served engine: images prepared as CLIP takes them, one :class:`Verdict` each.

The engine (``safety_checker``) is diffusers' ``StableDiffusionSafetyChecker`` exported to ONNX
(``build_engines/moderation/``): CLIP-preprocessed pixels in, per image the adjusted score of each of its
:data:`CONCEPTS` concepts (cosine similarity minus the concept's threshold, +0.01 once a "special care" concept
matched, as diffusers computes them) and the flag (any concept score above 0). diffusers' concepts are anonymous
NSFW concepts: Easel reports them as one category, :data:`CATEGORY` (OpenAI's name), whose score is the largest
adjusted concept score (above 0: flagged; not a probability).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from serve.moderation import Verdict
from serve.triton.client import TritonClient
from serve.triton.node import grpc_url_on_this_node
from serve.triton.runners import replica_runner
from serve.triton.spec import DynamicBatching, EngineRunner, ModelSpec, TensorSpec

SAFETY_CHECKER = "safety_checker"
"""The engine's Triton model name, and its folder in the checker's engine folder."""
PREPROCESSOR = "preprocessor_config.json"
"""The CLIP image processor's settings (a diffusers folder's ``feature_extractor/``), beside the engine."""
FEATURE_EXTRACTOR = "feature_extractor"
CATEGORY = "sexual"
CONCEPTS = 17
"""diffusers' concept embeddings (its ``concept_embeds``)."""
SIDE = 224
"""The checker's input side (CLIP's image size for SD's checker)."""
MAX_IMAGES_PER_CALL = 8

SAFETY_CHECKER_SPEC = ModelSpec(
    name=SAFETY_CHECKER,
    inputs=(TensorSpec("clip_input", "float32", (3, SIDE, SIDE)),),
    outputs=(TensorSpec("concept_scores", "float32", (CONCEPTS,)), TensorSpec("flagged", "bool", (1,))),
    max_batch_size=MAX_IMAGES_PER_CALL,
    dynamic_batching=DynamicBatching(max_queue_delay_us=2000),
)


@dataclass(frozen=True)
class Preprocessing:
    """CLIPImageProcessor's steps on an RGB ``uint8`` image, in numpy and PIL, as transformers' PIL backend runs them.

    Resize (shortest side to ``shortest_edge``, the other ``int(shortest_edge * long / short)``, ``resample``),
    center crop, rescale (float64, then float32), normalize by ``mean`` and ``std``; channels first.
    """

    shortest_edge: int = SIDE
    crop: tuple[int, int] = (SIDE, SIDE)
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    rescale_factor: float = 1 / 255
    resample: int = Image.Resampling.BICUBIC

    @classmethod
    def read(cls, path: Path) -> Preprocessing:
        """The settings of a ``preprocessor_config.json``; a ``ValueError`` for steps this does not run."""
        config = json.loads(Path(path).read_text())
        off = [step for step in ("do_resize", "do_center_crop", "do_rescale", "do_normalize") if not config.get(step)]
        size, crop = config.get("size", {}), config.get("crop_size", {})
        if off or "shortest_edge" not in size or not {"height", "width"} <= set(crop):
            raise ValueError(f"{path}: a CLIP processor resizing the shortest edge and cropping is needed ({config})")
        return cls(
            shortest_edge=int(size["shortest_edge"]),
            crop=(int(crop["height"]), int(crop["width"])),
            mean=tuple(config["image_mean"]),
            std=tuple(config["image_std"]),
            rescale_factor=float(config["rescale_factor"]),
            resample=int(config.get("resample", Image.Resampling.BICUBIC)),
        )

    def pixels(self, image: np.ndarray) -> np.ndarray:
        """An ``H x W x 3`` ``uint8`` RGB image as the checker's input (``3 x crop``, float32)."""
        height, width = image.shape[:2]
        short, long = sorted((height, width))
        new_long = int(self.shortest_edge * long / short)
        size = (self.shortest_edge, new_long) if width <= height else (new_long, self.shortest_edge)  # (w, h)
        resized = np.asarray(Image.fromarray(image).resize(size, resample=self.resample))
        top, left = (resized.shape[0] - self.crop[0]) // 2, (resized.shape[1] - self.crop[1]) // 2
        cropped = resized[top : top + self.crop[0], left : left + self.crop[1]]
        scaled = (cropped.astype(np.float64) * self.rescale_factor).astype(np.float32)
        normalized = (scaled - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        return np.ascontiguousarray(normalized.transpose(2, 0, 1))


def has_safety_checker(folder: Path | None) -> bool:
    """Whether ``folder`` is a checker folder: ``safety_checker/`` and ``feature_extractor/`` in it."""
    return folder is not None and all((folder / name).is_dir() for name in (SAFETY_CHECKER, FEATURE_EXTRACTOR))


def verdict(scores: np.ndarray, flagged: bool) -> Verdict:
    """One image's :class:`Verdict` from its adjusted concept scores and the engine's flag."""
    return Verdict(categories={CATEGORY: bool(flagged)}, scores={CATEGORY: float(np.max(scores))})


class ImageChecker:
    """Checks RGB images with the served safety checker: one :class:`Verdict` per image, batched in one call."""

    triton_model = SAFETY_CHECKER

    def __init__(self, runner: EngineRunner, preprocessing: Preprocessing) -> None:
        self.runner, self.preprocessing = runner, preprocessing

    @classmethod
    def on_triton(cls, folder: str | Path | None, triton_grpc_url: str | None) -> ImageChecker | None:
        """The checker built in ``folder`` (``ServiceEngines.safety_checker``), run by the Triton at the URL.

        None when the stack serves no safety checker (no folder) or has no Triton.
        """
        if not (folder and triton_grpc_url):
            return None
        runner = replica_runner(TritonClient(grpc_url_on_this_node(triton_grpc_url)))
        return cls(runner, Preprocessing.read(Path(folder) / PREPROCESSOR))

    async def check(self, images: list[np.ndarray]) -> list[Verdict]:
        """The verdict of each ``H x W x 3`` ``uint8`` RGB image, in order (:data:`MAX_IMAGES_PER_CALL` a call)."""
        verdicts = []
        for start in range(0, len(images), MAX_IMAGES_PER_CALL):
            part = images[start : start + MAX_IMAGES_PER_CALL]
            batch = await asyncio.to_thread(lambda part=part: np.stack([self.preprocessing.pixels(i) for i in part]))
            out = await self.runner.infer(SAFETY_CHECKER_SPEC, {"clip_input": batch})
            flags = out["flagged"].reshape(-1)
            verdicts += [verdict(s, f) for s, f in zip(out["concept_scores"], flags, strict=True)]
        return verdicts
