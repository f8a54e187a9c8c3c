"""Scores of images as served engines: CLIP's prompt-image similarity and an aesthetic predictor.

A CLIP model (``easel up --scorer clip=DIR``, a transformers ``CLIPModel`` folder) is exported as two engines
(``build_engines/scoring/``): :data:`CLIP_IMAGE` (CLIP-preprocessed pixels in, the L2-normalized projected image
embedding out) and :data:`CLIP_TEXT` (token ids in, the normalized text embedding out), so ``clip_score`` is their
dot product: the cosine similarity ``CLIPModel`` computes (in [-1, 1]). The aesthetic predictor
(``--scorer aesthetic=FILE``) is LAION's layout (``improved-aesthetic-predictor``: five linear layers, no
activations, over the normalized CLIP image embedding), exported as :data:`AESTHETIC`. Each engine batches
dynamically: several requests' images share a call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.errors import InvalidInput
from serve.moderation.images import PREPROCESSOR, Preprocessing
from serve.triton.spec import DynamicBatching, EngineRunner, ModelSpec, TensorSpec

CLIP_IMAGE, CLIP_TEXT, AESTHETIC = "scorer_clip_image", "scorer_clip_text", "scorer_aesthetic"
"""The engines' Triton model names, and their folders in the scorer's engine folder."""
TOKENIZER = "tokenizer"
"""CLIP's tokenizer (transformers' files), beside the engines."""
SCORER_FILE = "scorer.json"
"""The engines' shapes (image side, text length, embedding width) and whether a head is built, written last."""
SCORES = ("clip_score", "aesthetic")
"""The scores the scorer gives an image (``clip_score`` needs a prompt); a character's face adds ``identity``."""
MAX_ROWS_PER_CALL = 8
BATCHING = DynamicBatching(max_queue_delay_us=2000)


def scorer_specs(side: int, text_length: int, embedding: int, aesthetic: bool) -> dict[str, ModelSpec]:
    """The scorer's engines: CLIP's towers (``side`` pixels, ``text_length`` tokens) and the aesthetic head."""

    def engine(name: str, given: TensorSpec, out: TensorSpec) -> ModelSpec:
        return ModelSpec(name, (given,), (out,), max_batch_size=MAX_ROWS_PER_CALL, dynamic_batching=BATCHING)

    embeds = TensorSpec("image_embeds", "float32", (embedding,))
    specs = {
        CLIP_IMAGE: engine(CLIP_IMAGE, TensorSpec("pixel_values", "float32", (3, side, side)), embeds),
        CLIP_TEXT: engine(
            CLIP_TEXT,
            TensorSpec("input_ids", "int64", (text_length,)),
            TensorSpec("text_embeds", "float32", (embedding,)),
        ),
    }
    if aesthetic:
        specs[AESTHETIC] = engine(AESTHETIC, embeds, TensorSpec("score", "float32", (1,)))
    return specs


def read_specs(folder: Path) -> dict[str, ModelSpec]:
    """The engines of the scorer built in ``folder``, as its :data:`SCORER_FILE` states them (written last)."""
    facts = json.loads((Path(folder) / SCORER_FILE).read_text())
    return scorer_specs(facts["side"], facts["text_length"], facts["embedding"], facts["aesthetic"])


def _names(specs: dict[str, ModelSpec]) -> tuple[str, ...]:
    return SCORES if AESTHETIC in specs else SCORES[:1]


def score_names(folder: str | Path | None) -> tuple[str, ...]:
    """The scores the scorer built in ``folder`` gives: ``clip_score``, and ``aesthetic`` with a head (none: none)."""
    return () if folder is None else _names(read_specs(Path(folder)))


class Scorer:
    """Scores RGB images with the served engines: ``clip_score`` against a prompt, and ``aesthetic`` where served."""

    def __init__(self, runner: EngineRunner, folder: Path) -> None:
        from transformers import AutoTokenizer

        self.runner = runner
        self.preprocessing = Preprocessing.read(folder / PREPROCESSOR)
        self.tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER)
        self.specs = read_specs(folder)

    @property
    def triton_models(self) -> list[str]:
        """The Triton models it runs on."""
        return list(self.specs)

    @property
    def names(self) -> tuple[str, ...]:
        """The scores it gives: ``clip_score``, and ``aesthetic`` with a head."""
        return _names(self.specs)

    async def score(self, images: list[np.ndarray], prompt: str | None) -> list[dict[str, float]]:
        """Each ``H x W x 3`` ``uint8`` RGB image's scores: ``clip_score`` (with a ``prompt``) and ``aesthetic``."""
        pixels = await asyncio.to_thread(lambda: [self.preprocessing.pixels(image) for image in images])
        embeds = await self._rows(CLIP_IMAGE, "pixel_values", pixels)
        scores: list[dict[str, float]] = [{} for _ in images]
        if prompt is not None:
            ids = self.tokenizer(prompt, padding="max_length", truncation=True, return_tensors="np").input_ids
            [text] = await self._rows(CLIP_TEXT, "input_ids", [ids[0].astype(np.int64)])
            for row, image in zip(scores, embeds, strict=True):
                row["clip_score"] = float(np.dot(image, text))
        if AESTHETIC in self.specs:
            for row, value in zip(scores, await self._rows(AESTHETIC, "image_embeds", list(embeds)), strict=True):
                row["aesthetic"] = float(value[0])
        return scores

    async def _rows(self, engine: str, name: str, rows: list[np.ndarray]) -> np.ndarray:
        """``engine``'s one output for ``rows``, :data:`MAX_ROWS_PER_CALL` a call (the calls at once)."""
        spec = self.specs[engine]
        parts = [np.stack(rows[i : i + MAX_ROWS_PER_CALL]) for i in range(0, len(rows), MAX_ROWS_PER_CALL)]
        outputs = await asyncio.gather(*(self.runner.infer(spec, {name: part}) for part in parts))
        return np.concatenate([out[spec.outputs[0].name] for out in outputs])


@dataclass(frozen=True)
class Scoring:
    """What scores a generation's images: the stack's scorer (None: none) and, naming a character, its identity.

    ``identity``: each image's :func:`serve.faces.identity.identity_scores` against the character's face (None: the
    request names no character with a face, or the stack serves no face models).
    """

    scorer: Scorer | None
    identity: Callable[[list[np.ndarray]], Awaitable[list[float | None]]] | None = None

    async def score(self, images: list[np.ndarray], prompt: str | None) -> list[dict[str, float | None]]:
        """Each image's scores: the scorer's (:meth:`Scorer.score`), and ``identity``."""
        scores = await self.scorer.score(images, prompt) if self.scorer is not None else [{} for _ in images]
        if self.identity is not None:
            for row, value in zip(scores, await self.identity(images), strict=True):
                row["identity"] = value
        return scores


def check_scores(asked: Collection[str], given: Collection[str], field: str) -> None:
    """Raise :class:`InvalidInput` naming ``field`` for scores the stack cannot give.

    ``given``: the scores its scorer gives (:func:`score_names`, :attr:`Scorer.names`; none: it serves no scorer).
    The Gateway checks them at admission, before a request's cost is taken.
    """
    if not asked:
        return
    if not given:
        raise InvalidInput(f"{field}: this stack serves no scorer (easel up --scorer clip=DIR)", field)
    unknown = [name for name in asked if name not in given]
    if unknown:
        raise InvalidInput(f"{field}: {unknown[0]!r} is not a score this stack gives ({', '.join(given)})", field)
