"""The image scorer as engines: a CLIP model's towers and LAION's aesthetic head, exported with parity, installed.

``easel up --scorer clip=DIR`` (a transformers ``CLIPModel`` folder with its tokenizer and image processor) and
``--scorer aesthetic=FILE`` (LAION's ``improved-aesthetic-predictor`` weights, ``.pth`` or ``.safetensors``, over that
CLIP's image embedding). :func:`export_scorer` writes :data:`~serve.scoring.CLIP_IMAGE`,
:data:`~serve.scoring.CLIP_TEXT` and :data:`~serve.scoring.AESTHETIC`, each checked
against its PyTorch module (the towers against ``CLIPModel``'s own ``image_embeds`` and ``text_embeds``);
:func:`build_scorer` caches the folder under ``$EASEL_HOME/engines/scorer-<hash>`` and installs the engines.
:func:`random_clip` and :func:`random_aesthetic` make tiny random ones for tests.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from build_engines.onnx_export import engine_cache, export_graph
from build_engines.text_to_image.embedded import clip_tokenizer
from build_engines.text_to_image.export import ParityError
from serve.files import content_hash, files_hash
from serve.moderation.images import PREPROCESSOR
from serve.scoring import (
    AESTHETIC,
    CLIP_IMAGE,
    CLIP_TEXT,
    SCORER_FILE,
    TOKENIZER,
    read_specs,
    scorer_specs,
)
from serve.triton.engine_files import ONNX, EngineFiles
from serve.triton.onnx_backend import make_session
from serve.triton.repository import install_model, uninstall_model
from serve.triton.spec import ModelSpec

logger = logging.getLogger(__name__)

EXPORT_VERSION = 1
PARITY_TOLERANCE = 1e-5
"""The largest |onnx - torch| an embedding element or an aesthetic score may differ by."""
SCORERS = ("clip", "aesthetic")
"""What ``--scorer NAME=PATH`` names: the CLIP folder and the aesthetic head's file."""


class AestheticPredictor(torch.nn.Module):
    """LAION's aesthetic predictor (``improved-aesthetic-predictor``'s ``MLP``): linear layers, no activations.

    Its ``layers`` keep that file's names (``layers.0``, ``layers.2``, ``layers.4``, ``layers.6``, ``layers.7``; the
    dropouts between), so its state dict loads as saved; the input is a normalized CLIP image embedding.
    """

    def __init__(self, input_size: int) -> None:
        super().__init__()
        drop = torch.nn.Dropout
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, 1024),
            drop(0.2),
            torch.nn.Linear(1024, 128),
            drop(0.2),
            torch.nn.Linear(128, 64),
            drop(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Normalized image embeddings (N x input_size) -> scores (N x 1)."""
        return self.layers(image_embeds)

    @classmethod
    def load(cls, path: Path) -> AestheticPredictor:
        """The head saved at ``path`` (a state dict: ``.pth`` as LAION ships it, or ``.safetensors``)."""
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        if "layers.0.weight" not in state:
            raise ValueError(f"{path}: not LAION's aesthetic predictor (no layers.0.weight)")
        head = cls(int(state["layers.0.weight"].shape[1]))
        head.load_state_dict(state)
        return head.eval()


class ImageTower(torch.nn.Module):
    """CLIP's vision model and projection: pixels -> the L2-normalized image embedding (``CLIPModel.image_embeds``)."""

    def __init__(self, clip) -> None:
        super().__init__()
        self.vision, self.projection = clip.vision_model, clip.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels (N x 3 x side x side) -> normalized embeddings (N x D)."""
        embeds = self.projection(self.vision(pixel_values=pixel_values).pooler_output)
        return embeds / embeds.norm(dim=-1, keepdim=True)


class TextTower(torch.nn.Module):
    """CLIP's text model and projection: token ids -> the normalized text embedding (``CLIPModel.text_embeds``)."""

    def __init__(self, clip) -> None:
        super().__init__()
        self.text, self.projection = clip.text_model, clip.text_projection

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (N x length, padded) -> normalized embeddings (N x D)."""
        embeds = self.projection(self.text(input_ids=input_ids).pooler_output)
        return embeds / embeds.norm(dim=-1, keepdim=True)


def random_clip(out_dir: Path, seed: int = 0, side: int = 32) -> Path:
    """Save a tiny random ``CLIPModel`` (byte-level tokenizer, 77 tokens; ``side``-pixel images) with its processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    text = small | {"vocab_size": len(tokenizer), "max_position_embeddings": 77}
    text |= {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = CLIPConfig(
        text_config=text, vision_config=small | {"image_size": side, "patch_size": 8}, projection_dim=16
    )
    CLIPModel(config).eval().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(out_dir)
    return out_dir


def random_aesthetic(path: Path, input_size: int = 16, seed: int = 0) -> Path:
    """Save a random aesthetic head in LAION's layout (``.pth``, a state dict) over ``input_size`` embeddings."""
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(AestheticPredictor(input_size).state_dict(), path)
    return path


def load_clip(folder: Path):
    """The folder's ``CLIPModel`` in fp32 with eager attention (what exports), for inference."""
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()


def _export(module: torch.nn.Module, spec: ModelSpec, sample: torch.Tensor, out_path: Path) -> float:
    """Export ``module`` with ``spec``'s names and a dynamic batch; its max |onnx - torch| on ``sample``."""
    export_graph(module.eval(), (sample[:1],), out_path, spec)
    with torch.no_grad():
        expected = module(sample).numpy()
    [got] = make_session(out_path).run(None, {spec.inputs[0].name: sample.numpy()})
    error = float(np.max(np.abs(got - expected)))
    logger.info("  parity %s max |onnx - torch| = %.2e (bound %.0e)", spec.name, error, PARITY_TOLERANCE)
    if not error <= PARITY_TOLERANCE:
        raise ParityError(f"the scorer's {spec.name} differs from PyTorch by {error:.2e}")
    return error


def export_scorer(clip_dir: Path, aesthetic: Path | None, folder: Path) -> dict[str, float]:
    """Export the scorer's engines into ``folder`` (its tokenizer, processor and facts beside); each one's error."""
    from transformers import AutoTokenizer

    clip = load_clip(clip_dir)
    side = int(clip.config.vision_config.image_size)
    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    length, width = int(tokenizer.model_max_length), int(clip.config.projection_dim)
    head = AestheticPredictor.load(aesthetic) if aesthetic is not None else None
    if head is not None and head.layers[0].in_features != width:
        raise ValueError(
            f"{aesthetic}: the head reads {head.layers[0].in_features} wide embeddings, CLIP gives {width}"
        )
    specs = scorer_specs(side, length, width, head is not None)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, side, side, generator=generator)
    ids = torch.randint(0, clip.config.text_config.vocab_size, (3, length), generator=generator)
    errors = {
        CLIP_IMAGE: _export(ImageTower(clip), specs[CLIP_IMAGE], pixels, folder / CLIP_IMAGE / ONNX),
        CLIP_TEXT: _export(TextTower(clip), specs[CLIP_TEXT], ids, folder / CLIP_TEXT / ONNX),
    }
    if head is not None:
        embeds = torch.nn.functional.normalize(torch.randn(3, width, generator=generator), dim=-1)
        errors[AESTHETIC] = _export(head, specs[AESTHETIC], embeds, folder / AESTHETIC / ONNX)
    tokenizer.save_pretrained(folder / TOKENIZER)
    shutil.copy(clip_dir / PREPROCESSOR, folder / PREPROCESSOR)
    facts = {"side": side, "text_length": length, "embedding": width, "aesthetic": head is not None}
    (folder / SCORER_FILE).write_text(json.dumps(facts, indent=2) + "\n")  # last: the folder is complete
    return errors


def engine_dir(sources: dict[str, Path]) -> Path:
    """The cache folder of a scorer: named by its files' content and the exporter's versions."""
    hashes = {
        name: content_hash(path) if path.is_dir() else files_hash([path], path.parent)
        for name, path in sorted(sources.items())
    }
    return engine_cache("scorer", [hashes, EXPORT_VERSION])


def build_scorer(sources: dict[str, Path], repository: Path | None, force: bool = False) -> Path | None:
    """Build (or reuse) the scorer of ``--scorer`` ``sources`` (clip, aesthetic) and install it; its engine folder.

    None (and the engines an earlier start installed removed) when there is none. A ``ValueError`` for an unknown
    name, an aesthetic head without a CLIP, or a head whose width is not CLIP's embedding's.
    """
    unknown = sorted(set(sources) - set(SCORERS))
    if unknown or (sources and "clip" not in sources):
        raise ValueError(f"--scorer takes clip=DIR (and aesthetic=FILE over it), not {', '.join(unknown) or 'that'}")
    if not sources:
        for name in (CLIP_IMAGE, CLIP_TEXT, AESTHETIC):
            if repository is not None and (repository / name).exists():
                uninstall_model(name, repository)
        return None
    folder = engine_dir(sources)
    if force or not (folder / SCORER_FILE).is_file():
        shutil.rmtree(folder, ignore_errors=True)
        export_scorer(sources["clip"], sources.get("aesthetic"), folder)
        logger.info("scorer from %s built in %s", ", ".join(map(str, sources.values())), folder)
    if repository is not None:
        for name, spec in read_specs(folder).items():
            install_model(spec, repository, EngineFiles(folder / name).files())
    return folder
