"""A text classifier as an engine: made locally with random weights, exported, installed.

A moderator folder is a transformers sequence-classification folder (its model and tokenizer), whose ``id2label``
names the categories it reports (OpenAI's: ``harassment``, ``hate``, ``violence``...) and whose config may carry
``moderation_thresholds`` (label -> probability; else 0.5). :func:`random_text_moderator` makes a tiny BERT one that
flags :data:`FLAGGED_PROMPT` for ``violence`` and passes :data:`PASSING_PROMPT`; :func:`export_text_moderator`
exports its per-label probabilities to ONNX, checked against transformers; :func:`build_text_moderator` caches the
engine under ``$EASEL_HOME/engines/text-moderator-<hash>`` and installs it in Triton's repository as
:data:`~serve.moderation.text_model.TEXT_MODERATOR`.
"""

from __future__ import annotations

import logging
import shutil
import string
from pathlib import Path

import numpy as np
import torch

from build_engines.onnx_export import engine_cache, export_graph
from build_engines.text_to_image.export import ParityError
from serve.files import content_hash
from serve.moderation.text_model import (
    LABELS,
    TEXT_MODERATOR,
    TEXT_MODERATOR_SPEC,
    TOKENIZER,
    WINDOW,
    Labels,
    windows,
)
from serve.triton.engine_files import ONNX, EngineFiles
from serve.triton.onnx_backend import make_session
from serve.triton.repository import install_model, uninstall_model

logger = logging.getLogger(__name__)

EXPORT_VERSION = 1
PARITY_TOLERANCE = 1e-4
"""The largest |onnx - transformers| a probability may differ by."""
MULTI_LABEL = "multi_label_classification"
THRESHOLDS = "moderation_thresholds"
"""The model config's key naming a threshold per label (the labels it leaves out: 0.5)."""
CATEGORIES = ("harassment", "hate", "sexual", "violence")
"""The random moderator's labels: OpenAI moderation categories."""
FLAGGED_PROMPT = "i will smash the robot to pieces"
PASSING_PROMPT = "a red heart icon"
FLAGGED_CATEGORY = "violence"
TINY_BERT = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
BERT_BASE = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
"""BERT-base's shape (toxicity classifiers' usual one)."""


class Probabilities(torch.nn.Module):
    """A sequence classifier's per-label probabilities: sigmoid for a multi-label model, softmax otherwise."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.multi_label = model.config.problem_type == MULTI_LABEL

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask (N x tokens) -> probabilities (N x labels)."""
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)


def character_tokenizer():
    """A BERT WordPiece tokenizer over lower-case ASCII characters (each alone or continuing a word), made here."""
    from transformers import BertTokenizer

    characters = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *characters, *(f"##{c}" for c in characters)]
    return BertTokenizer(vocab={token: i for i, token in enumerate(tokens)}, model_max_length=WINDOW)


def _pooled(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """The classifier head's input (BERT's pooled output) for each of ``texts``."""
    rows, _ = windows(tokenizer, texts)
    with torch.no_grad():
        return model.bert(**{name: torch.from_numpy(array) for name, array in rows.items()}).pooler_output


def random_text_moderator(out_dir: Path, seed: int = 0, **bert) -> Path:
    """Save a random multi-label BERT moderator (tiny unless ``bert`` says) flagging :data:`FLAGGED_PROMPT` only.

    Its :data:`FLAGGED_CATEGORY` row of the classifier points from the passing prompt's pooled output to the
    flagged one's (logits +4 and -4); the other labels' rows are small and random, their bias -4.
    """
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tokenizer = character_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=WINDOW,
        id2label=dict(enumerate(CATEGORIES)),
        problem_type=MULTI_LABEL,
        **(bert or TINY_BERT),
        **{THRESHOLDS: {FLAGGED_CATEGORY: 0.6}},
    )
    model = BertForSequenceClassification(config).eval()
    flagged, passing = _pooled(model, tokenizer, [FLAGGED_PROMPT, PASSING_PROMPT])
    with torch.no_grad():
        model.classifier.weight.normal_(std=0.01)
        model.classifier.bias.fill_(-4.0)
        row = CATEGORIES.index(FLAGGED_CATEGORY)
        direction = flagged - passing
        model.classifier.weight[row] = 8 * direction / direction.dot(direction)
        model.classifier.bias[row] = -float(model.classifier.weight[row].dot((flagged + passing) / 2))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def has_text_moderator(folder: Path) -> bool:
    """Whether ``folder`` holds a transformers model config and a tokenizer."""
    return (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file()


def load_text_moderator(folder: Path):
    """The folder's sequence classifier, in fp32 with eager attention (what exports), for inference."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def labels_of(model) -> Labels:
    """The model's labels in output order (``id2label``) and the thresholds its config names."""
    config = model.config
    names = tuple(config.id2label[i] for i in range(config.num_labels))
    thresholds = {name: float(t) for name, t in (getattr(config, THRESHOLDS, None) or {}).items()}
    unknown = sorted(set(thresholds) - set(names))
    if unknown:
        raise ValueError(f"{THRESHOLDS} names labels the model lacks: {', '.join(unknown)} (it has {list(names)})")
    return Labels(names, thresholds)


def export_text_moderator(model, out_path: Path) -> float:
    """Export ``model``'s :class:`Probabilities` with a dynamic batch; its max |onnx - torch| on 3 random rows."""
    module = Probabilities(model).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, WINDOW), generator=generator)
    mask = (torch.arange(WINDOW) < torch.tensor([[WINDOW], [40], [7]])).long()
    export_graph(module, (ids[:1], mask[:1]), out_path, TEXT_MODERATOR_SPEC)
    with torch.no_grad():
        expected = module(ids, mask).numpy()
    [got] = make_session(out_path).run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    error = float(np.max(np.abs(got - expected)))
    logger.info("  parity text moderator max |onnx - torch| = %.2e (bound %.0e)", error, PARITY_TOLERANCE)
    if not error <= PARITY_TOLERANCE:
        raise ParityError(f"the text moderator's ONNX probabilities differ from transformers' by {error:.2e}")
    return error


def engine_dir(source: Path) -> Path:
    """The cache folder of ``source``'s moderator engine: named by its files' content and the exporter's versions."""
    return engine_cache("text-moderator", [content_hash(source), EXPORT_VERSION])


def build_text_moderator(source: Path | None, repository: Path | None, force: bool = False) -> Path | None:
    """Build (or reuse) the engine of the moderator folder ``source`` and install it in ``repository``; its folder.

    None (and an engine an earlier start installed removed) when there is none. A ``ValueError`` when ``source`` is
    no sequence-classification folder with a fast tokenizer, or its model reads fewer than a window of tokens.
    """
    if source is None:
        if repository is not None and (repository / TEXT_MODERATOR).exists():
            uninstall_model(TEXT_MODERATOR, repository)
        return None
    if not has_text_moderator(source):
        raise ValueError(f"{source}: a text moderator folder has a transformers config.json and tokenizer")
    folder = engine_dir(source)
    if force or not (folder / LABELS).is_file():
        shutil.rmtree(folder, ignore_errors=True)
        _export(source, folder)
        logger.info("text moderator from %s built in %s", source, folder)
    if repository is not None:
        install_model(TEXT_MODERATOR_SPEC, repository, EngineFiles(folder / TEXT_MODERATOR).files())
    return folder


def _export(source: Path, folder: Path) -> None:
    """Export ``source``'s model and save its tokenizer and labels in the engine folder ``folder`` (labels last)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if not tokenizer.is_fast:
        raise ValueError(f"{source}: the text moderator needs a fast tokenizer (tokenizer.json)")
    model = load_text_moderator(source)
    positions = getattr(model.config, "max_position_embeddings", WINDOW)
    if positions < WINDOW:
        raise ValueError(f"{source}: the text moderator reads {WINDOW} tokens a window, the model {positions}")
    labels = labels_of(model)
    export_text_moderator(model, folder / TEXT_MODERATOR / ONNX)
    tokenizer.save_pretrained(folder / TOKENIZER)
    labels.write(folder / LABELS)  # last: the folder is complete
