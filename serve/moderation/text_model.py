"""The text classifier as a served engine: texts tokenized where the blocklist runs, one :class:`Verdict` each.

The engine (``text_moderator``) is a transformers sequence-classification model exported to ONNX
(``build_engines/moderation/text_moderator.py``): token ids and attention mask of :data:`WINDOW` tokens in, each
label's probability out (sigmoid for a ``multi_label_classification`` model, softmax otherwise). A text longer than
a window is read in overlapping windows, its score per label the highest of its windows', so that nothing hides
after the first window. A label is flagged when its score reaches its threshold (:class:`Labels`).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serve.moderation import Verdict
from serve.triton.client import TritonClient
from serve.triton.node import grpc_url_on_this_node
from serve.triton.runners import replica_runner
from serve.triton.spec import DynamicBatching, EngineRunner, ModelSpec, TensorSpec

TEXT_MODERATOR = "text_moderator"
"""The engine's Triton model name, and its folder in the moderator's engine folder."""
TOKENIZER = "tokenizer"
"""The model's tokenizer (transformers' files), beside the engine."""
LABELS = "labels.json"
"""The engine's labels in output order and their thresholds, beside the engine."""
DEFAULT_THRESHOLD = 0.5
"""The probability at which a label is flagged when the model's config names no threshold for it."""
WINDOW = 128
"""Tokens one engine row reads (special tokens included); every row is padded to it, so Triton batches any rows."""
STRIDE = 32
"""Tokens two windows of one long text share."""
MAX_ROWS_PER_CALL = 8

TEXT_MODERATOR_SPEC = ModelSpec(
    name=TEXT_MODERATOR,
    inputs=(TensorSpec("input_ids", "int64", (WINDOW,)), TensorSpec("attention_mask", "int64", (WINDOW,))),
    outputs=(TensorSpec("probabilities", "float32", (-1,), axis_names=("labels",)),),
    max_batch_size=MAX_ROWS_PER_CALL,
    dynamic_batching=DynamicBatching(max_queue_delay_us=2000),
)


@dataclass(frozen=True)
class Labels:
    """The engine's labels in output order (the model's ``id2label``, OpenAI's category names) and their thresholds.

    ``thresholds``: the model config's ``moderation_thresholds`` (label -> probability), else
    :data:`DEFAULT_THRESHOLD` for each label.
    """

    names: tuple[str, ...]
    thresholds: dict[str, float] = field(default_factory=dict)

    def threshold(self, name: str) -> float:
        """The probability at which ``name`` is flagged."""
        return self.thresholds.get(name, DEFAULT_THRESHOLD)

    def verdict(self, probabilities: np.ndarray) -> Verdict:
        """One text's verdict from its probability per label: flagged at or above the label's threshold."""
        scores = {name: float(p) for name, p in zip(self.names, probabilities, strict=True)}
        return Verdict({name: score >= self.threshold(name) for name, score in scores.items()}, scores)

    @classmethod
    def read(cls, path: Path) -> Labels:
        """The labels a ``labels.json`` states."""
        raw = json.loads(Path(path).read_text())
        return cls(tuple(raw["names"]), {name: float(t) for name, t in raw.get("thresholds", {}).items()})

    def write(self, path: Path) -> None:
        """Save as ``labels.json``."""
        Path(path).write_text(json.dumps({"names": list(self.names), "thresholds": self.thresholds}, indent=2) + "\n")


def windows(tokenizer, texts: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``texts`` as engine rows (``input_ids``, ``attention_mask``, :data:`WINDOW` tokens each) and each row's text.

    A text longer than one window gives several, :data:`STRIDE` tokens overlapping (a fast tokenizer's overflow).
    """
    encoded = tokenizer(
        texts,
        max_length=WINDOW,
        stride=STRIDE,
        truncation=True,
        padding="max_length",
        return_overflowing_tokens=True,
        return_tensors="np",
    )
    rows = {name: encoded[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
    return rows, np.asarray(encoded["overflow_to_sample_mapping"])


class TextModerator:
    """Checks texts with the served classifier: one :class:`Verdict` per text, its windows batched by Triton."""

    triton_model = TEXT_MODERATOR

    def __init__(self, runner: EngineRunner, tokenizer, labels: Labels) -> None:
        self.runner, self.tokenizer, self.labels = runner, tokenizer, labels

    @classmethod
    def read(cls, folder: str | Path, runner: EngineRunner) -> TextModerator:
        """The moderator whose tokenizer and labels the engine folder ``folder`` holds, run by ``runner``."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(Path(folder) / TOKENIZER)
        return cls(runner, tokenizer, Labels.read(Path(folder) / LABELS))

    @classmethod
    def on_triton(cls, folder: str | Path | None, triton_grpc_url: str | None) -> TextModerator | None:
        """The moderator built in ``folder`` (``ServiceEngines.text_moderator``), run by the Triton at the URL.

        None when the stack serves no text moderator (no folder) or has no Triton.
        """
        if not (folder and triton_grpc_url):
            return None
        return cls.read(folder, replica_runner(TritonClient(grpc_url_on_this_node(triton_grpc_url))))

    async def check(self, texts: list[str]) -> list[Verdict]:
        """The verdict of each text, in order: per label, the highest probability of its windows."""
        if not texts:
            return []
        rows, owners = await asyncio.to_thread(windows, self.tokenizer, texts)
        calls = [
            self.runner.infer(
                TEXT_MODERATOR_SPEC, {name: rows[name][start : start + MAX_ROWS_PER_CALL] for name in rows}
            )
            for start in range(0, len(owners), MAX_ROWS_PER_CALL)
        ]
        probabilities = np.concatenate([out["probabilities"] for out in await asyncio.gather(*calls)])
        highest = np.full((len(texts), probabilities.shape[1]), -np.inf, dtype=np.float32)
        np.maximum.at(highest, owners, probabilities)
        return [self.labels.verdict(row) for row in highest]
