"""diffusers' ``StableDiffusionSafetyChecker`` as an engine: made locally with random weights, exported, installed.

A checker folder is a diffusers pipeline's layout: ``safety_checker/`` (the checker) and ``feature_extractor/`` (its
``CLIPImageProcessor``). :func:`random_safety_checker` makes a tiny one whose concepts flag one chosen picture and
not another (:func:`chosen_pictures`); :func:`export_safety_checker` exports its scores and flag to ONNX, checked
against PyTorch; :func:`build_safety_checker` caches the engine under ``$EASEL_HOME/engines/safety-checker-<hash>``
and installs it in Triton's repository as :data:`~serve.moderation.images.SAFETY_CHECKER`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker, cosine_distance

from build_engines.onnx_export import engine_cache, export_graph
from build_engines.text_to_image.export import PARITY_TOLERANCE, ParityError
from serve.files import content_hash
from serve.moderation.images import (
    FEATURE_EXTRACTOR,
    PREPROCESSOR,
    SAFETY_CHECKER,
    SAFETY_CHECKER_SPEC,
    SIDE,
    Preprocessing,
    has_safety_checker,
)
from serve.triton.engine_files import ONNX, EngineFiles
from serve.triton.onnx_backend import make_session
from serve.triton.repository import install_model, uninstall_model

logger = logging.getLogger(__name__)

EXPORT_VERSION = 1
SPECIAL_CARE_ADJUSTMENT = 0.01
"""What diffusers adds to every concept score of an image that matched a special-care concept."""
TINY_VISION = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4}
SD15_VISION = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
}
"""SD 1.5's checker: CLIP ViT-L/14's vision tower (patch 14, projection 768)."""


class SafetyScores(torch.nn.Module):
    """The checker's per-image adjusted concept scores and flag, as diffusers computes them, without the images."""

    def __init__(self, checker: StableDiffusionSafetyChecker) -> None:
        super().__init__()
        self.checker = checker

    def forward(self, clip_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``clip_input`` (N x 3 x 224 x 224) -> concept scores (N x 17), flagged (N x 1, bool)."""
        checker = self.checker
        embeds = checker.visual_projection(checker.vision_model(clip_input)[1])
        special = cosine_distance(embeds, checker.special_care_embeds) - checker.special_care_embeds_weights
        adjustment = torch.any(special > 0, dim=1, keepdim=True).to(embeds.dtype) * SPECIAL_CARE_ADJUSTMENT
        scores = cosine_distance(embeds, checker.concept_embeds) - checker.concept_embeds_weights + adjustment
        return scores, torch.any(scores > 0, dim=1, keepdim=True)


def chosen_pictures(height: int = 256, width: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """Two deterministic RGB ``uint8`` pictures: (the one a random checker is made to flag, one it passes).

    A red and white checkerboard, and a smooth blue-green gradient.
    """
    y, x = np.mgrid[0:height, 0:width]
    board = ((x // 20 + y // 20) % 2).astype(bool)
    flagged = np.where(board[..., None], np.array([255, 255, 255]), np.array([200, 30, 30])).astype(np.uint8)
    gradient = np.stack([x * 0 + 40, 255 * y // height, 255 * x // width], axis=-1).astype(np.uint8)
    return flagged, gradient


def random_safety_checker(out_dir: Path, flag: np.ndarray, passes: np.ndarray, seed: int = 0, **vision) -> Path:
    """Save a random checker (tiny unless ``vision`` says) flagging picture ``flag`` and passing ``passes``.

    Its first concept and first special-care concept are ``flag``'s embedding, their thresholds halfway between the
    two pictures' similarities; the other concepts are random, with thresholds above both pictures' similarities.
    """
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(seed)
    vision_config = {"image_size": SIDE, "patch_size": 32} | (vision or TINY_VISION)
    projection = 768 if vision else 16
    config = CLIPConfig(vision_config=vision_config, text_config=TINY_TEXT, projection_dim=projection)
    checker = StableDiffusionSafetyChecker(config).eval()
    processor = CLIPImageProcessor()
    pixels = torch.from_numpy(np.stack([Preprocessing().pixels(p) for p in (flag, passes)]))
    with torch.no_grad():
        embeds = torch.nn.functional.normalize(checker.visual_projection(checker.vision_model(pixels)[1]))
        for concepts, weights in (
            (checker.concept_embeds, checker.concept_embeds_weights),
            (checker.special_care_embeds, checker.special_care_embeds_weights),
        ):
            concepts.copy_(torch.nn.functional.normalize(torch.randn(concepts.shape)))
            concepts[0] = embeds[0]
            similarity = embeds @ concepts.T  # 2 x concepts
            weights.copy_(similarity.max(dim=0).values + 0.1)
            weights[0] = similarity[:, 0].mean()
    logger.info("safety checker: the two pictures' cosine similarity %.3f", float(embeds[0] @ embeds[1]))
    checker.save_pretrained(out_dir / SAFETY_CHECKER)
    processor.save_pretrained(out_dir / FEATURE_EXTRACTOR)
    return out_dir


def add_safety_checker(model_dir: Path) -> Path:
    """Give an SD 1.x diffusers folder a random ``safety_checker/`` (flagging :func:`chosen_pictures`' first)."""
    random_safety_checker(model_dir, *chosen_pictures())
    path = model_dir / "model_index.json"
    index = json.loads(path.read_text())
    index |= {
        SAFETY_CHECKER: ["stable_diffusion", "StableDiffusionSafetyChecker"],
        FEATURE_EXTRACTOR: ["transformers", "CLIPImageProcessor"],
    }
    path.write_text(json.dumps(index, indent=2) + "\n")
    return model_dir


def load_safety_checker(folder: Path) -> StableDiffusionSafetyChecker:
    """The checker of a checker folder, in fp32, for inference."""
    return StableDiffusionSafetyChecker.from_pretrained(folder / SAFETY_CHECKER, torch_dtype=torch.float32).eval()


def export_safety_checker(checker: StableDiffusionSafetyChecker, out_path: Path) -> float:
    """Export ``checker``'s :class:`SafetyScores` with a dynamic batch; its max |onnx - torch| on 3 random images."""
    module = SafetyScores(checker).eval()
    sample = torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    export_graph(module, (sample,), out_path, SAFETY_CHECKER_SPEC)
    with torch.no_grad():
        check = torch.randn(3, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
        expected = module(check)[0].numpy()
    got = make_session(out_path).run(None, {"clip_input": check.numpy()})[0]
    error = float(np.max(np.abs(got - expected)))
    logger.info("  parity safety checker max |onnx - torch| = %.2e (bound %.0e)", error, PARITY_TOLERANCE)
    if not error <= PARITY_TOLERANCE:
        raise ParityError(f"the safety checker's ONNX scores differ from PyTorch's by {error:.2e}")
    return error


def engine_dir(source: Path) -> Path:
    """The cache folder of ``source``'s checker engine: named by its files' content and the exporter's versions."""
    content = content_hash(source / SAFETY_CHECKER) + content_hash(source / FEATURE_EXTRACTOR)
    return engine_cache("safety-checker", [content, EXPORT_VERSION])


def build_safety_checker(source: Path | None, repository: Path | None, force: bool = False) -> Path | None:
    """Build (or reuse) the engine of the checker folder ``source`` and install it in ``repository``; its folder.

    None (and an engine an earlier start installed removed) when there is no checker. A ``ValueError`` when
    ``source`` is not a checker folder or its processor is not CLIP's at the engine's side.
    """
    if source is None:
        if repository is not None and (repository / SAFETY_CHECKER).exists():
            uninstall_model(SAFETY_CHECKER, repository)
        return None
    if not has_safety_checker(source):
        raise ValueError(f"{source}: a safety checker folder has {SAFETY_CHECKER}/ and {FEATURE_EXTRACTOR}/")
    preprocessing = Preprocessing.read(source / FEATURE_EXTRACTOR / PREPROCESSOR)
    if preprocessing.crop != (SIDE, SIDE):
        raise ValueError(f"{source}: the checker takes {SIDE}x{SIDE} crops, its processor {preprocessing.crop}")
    folder = engine_dir(source)
    if force or not (folder / PREPROCESSOR).is_file():
        shutil.rmtree(folder, ignore_errors=True)
        export_safety_checker(load_safety_checker(source), folder / SAFETY_CHECKER / ONNX)
        shutil.copy(source / FEATURE_EXTRACTOR / PREPROCESSOR, folder / PREPROCESSOR)  # last: the folder is complete
        logger.info("safety checker from %s built in %s", source, folder)
    if repository is not None:
        install_model(SAFETY_CHECKER_SPEC, repository, EngineFiles(folder / SAFETY_CHECKER).files())
    return folder
