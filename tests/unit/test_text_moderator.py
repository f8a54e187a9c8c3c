"""The text moderator without servers: made locally, exported with parity to transformers, windows, thresholds."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from build_engines.moderation.text_moderator import (
    CATEGORIES,
    FLAGGED_CATEGORY,
    FLAGGED_PROMPT,
    PARITY_TOLERANCE,
    PASSING_PROMPT,
    Probabilities,
    build_text_moderator,
    character_tokenizer,
    export_text_moderator,
    labels_of,
    load_text_moderator,
    random_text_moderator,
)
from serve.errors import ContentPolicyViolation
from serve.moderation import Policy, Verdict
from serve.moderation.images import SAFETY_CHECKER, ImageChecker, Preprocessing
from serve.moderation.text import Blocklist
from serve.moderation.text_model import (
    DEFAULT_THRESHOLD,
    LABELS,
    STRIDE,
    TEXT_MODERATOR,
    TEXT_MODERATOR_SPEC,
    TOKENIZER,
    WINDOW,
    Labels,
    TextModerator,
    windows,
)
from serve.protocol.schema import GenerationRequest
from serve.serving.moderation import Moderation
from serve.triton.onnx_backend import make_session
from serve.triton.spec import read_model_config

LONG = "a quiet walk by the sea " * 80  # ~1900 characters: several windows


@pytest.fixture(scope="module")
def moderator_dir(tmp_path_factory):
    """A tiny random moderator folder made to flag :data:`FLAGGED_PROMPT` for ``violence``."""
    return random_text_moderator(tmp_path_factory.mktemp("moderator"))


@pytest.fixture(scope="module")
def built(moderator_dir, tmp_path_factory):
    """The moderator built as ``easel up`` builds it: (its ``EASEL_HOME``, Triton repository, engine folder)."""
    home, repository = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("repo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EASEL_HOME", str(home))
        return home, repository, build_text_moderator(moderator_dir, repository)


def transformers_probabilities(model, texts: list[str]) -> np.ndarray:
    """Each text's label probabilities as transformers computes them on the tokenizer's own (one-window) encoding."""
    encoded = character_tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits
    multi = model.config.problem_type == "multi_label_classification"
    return (torch.sigmoid(logits) if multi else torch.softmax(logits, dim=-1)).numpy()


def test_the_random_moderator_flags_the_chosen_prompt_for_its_category_only(moderator_dir):
    model = load_text_moderator(moderator_dir)
    labels = labels_of(model)
    assert labels.names == CATEGORIES and labels.thresholds == {FLAGGED_CATEGORY: 0.6}
    flagged, passing = (labels.verdict(p) for p in transformers_probabilities(model, [FLAGGED_PROMPT, PASSING_PROMPT]))
    assert flagged.flagged_categories == [FLAGGED_CATEGORY] and flagged.scores[FLAGGED_CATEGORY] > 0.9
    assert not passing.flagged and max(passing.scores.values()) < 0.1


@pytest.mark.parametrize("problem_type", ["multi_label_classification", None])
def test_the_onnx_engine_gives_transformers_probabilities(moderator_dir, built, tmp_path, problem_type):
    """Parity within 1e-4: sigmoid for the multi-label folder (its built engine), softmax for a single-label one."""
    model = load_text_moderator(moderator_dir)
    model.config.problem_type = problem_type
    engine = built[2] / TEXT_MODERATOR / "model.onnx"
    if problem_type is None:
        engine = tmp_path / "model.onnx"
        export_text_moderator(model, engine)
    texts = [FLAGGED_PROMPT, PASSING_PROMPT, "Hello, World! 42", "x"]
    rows, owners = windows(character_tokenizer(), texts)
    [got] = make_session(engine).run(None, rows)
    want = transformers_probabilities(model, texts)
    assert owners.tolist() == [0, 1, 2, 3] and got.shape == (4, len(CATEGORIES))
    np.testing.assert_allclose(got, want, atol=PARITY_TOLERANCE, rtol=0)
    if problem_type is None:
        np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)
    with torch.no_grad():  # the exported module is the model's own head, read the same way
        module = Probabilities(model)(*(torch.from_numpy(rows[t.name]) for t in TEXT_MODERATOR_SPEC.inputs))
    np.testing.assert_allclose(module.numpy(), want, atol=PARITY_TOLERANCE, rtol=0)


def test_windows_pad_every_row_and_read_a_long_text_whole():
    tokenizer = character_tokenizer()
    rows, owners = windows(tokenizer, [PASSING_PROMPT, LONG])
    assert {array.shape[1] for array in rows.values()} == {WINDOW}
    assert rows["input_ids"].dtype == rows["attention_mask"].dtype == np.int64
    assert owners[0] == 0 and len(owners) > 3 and set(owners[1:]) == {1}
    short = tokenizer(PASSING_PROMPT)["input_ids"]
    assert rows["input_ids"][0, : len(short)].tolist() == short and rows["attention_mask"][0].sum() == len(short)
    whole = tokenizer(LONG, add_special_tokens=False)["input_ids"]
    read = [
        row[mask == 1][1:-1].tolist()
        for row, mask in zip(rows["input_ids"][1:], rows["attention_mask"][1:], strict=True)
    ]
    assert all(
        a[-STRIDE:] == b[:STRIDE] for a, b in zip(read, read[1:], strict=False)
    )  # each window overlaps the one before
    assert read[0] + [token for window in read[1:] for token in window[STRIDE:]] == whole  # together: the whole text


def test_a_label_is_flagged_at_its_threshold_else_at_the_default():
    labels = Labels(("hate", "violence"), {"violence": 0.8})
    assert labels.threshold("hate") == DEFAULT_THRESHOLD == 0.5
    verdict = labels.verdict(np.array([0.5, 0.79], np.float32))
    assert verdict.categories == {"hate": True, "violence": False}
    assert verdict.scores == pytest.approx({"hate": 0.5, "violence": 0.79})
    assert labels.verdict(np.array([0.49, 0.8])).flagged_categories == ["violence"]


def test_thresholds_for_labels_the_model_lacks_are_refused(moderator_dir):
    model = load_text_moderator(moderator_dir)
    model.config.moderation_thresholds = {"weapons": 0.3}
    with pytest.raises(ValueError, match="moderation_thresholds names labels the model lacks: weapons"):
        labels_of(model)


class _OnnxRunner:
    """The exported engine in-process, answering as Triton's model does (its output by name)."""

    def __init__(self, path) -> None:
        self.session, self.batches = make_session(path), []

    async def infer(self, spec, inputs, priority=0):
        self.batches.append(len(inputs["input_ids"]))
        return {"probabilities": self.session.run(None, inputs)[0]}


def test_the_built_moderator_flags_the_chosen_prompt_through_its_engine(built):
    folder = built[2]
    moderator = TextModerator.read(folder, _OnnxRunner(folder / TEXT_MODERATOR / "model.onnx"))
    flagged, passing = asyncio.run(moderator.check([FLAGGED_PROMPT, PASSING_PROMPT]))
    assert flagged.flagged_categories == [FLAGGED_CATEGORY] and list(flagged.scores) == list(CATEGORIES)
    assert not passing.flagged
    assert asyncio.run(moderator.check([])) == []


class _HashRunner:
    """An engine that scores ``violence`` 0.9 for a row holding the token ``#``, 0.1 otherwise; it keeps its calls."""

    def __init__(self) -> None:
        self.hash, self.batches = character_tokenizer().convert_tokens_to_ids("#"), []

    async def infer(self, spec, inputs, priority=0):
        self.batches.append(len(inputs["input_ids"]))
        held = (inputs["input_ids"] == self.hash).any(axis=1, keepdims=True)
        return {"probabilities": np.where(held, 0.9, 0.1).astype(np.float32)}


def test_a_text_s_score_is_its_highest_window_s_in_calls_of_at_most_eight():
    runner = _HashRunner()
    moderator = TextModerator(runner, character_tokenizer(), Labels(("violence",)))
    verdicts = asyncio.run(moderator.check([LONG, LONG + " #", "# " + LONG, "#"]))
    assert [v.flagged for v in verdicts] == [False, True, True, True]  # a mark in the last window counts
    assert [v.scores["violence"] for v in verdicts] == pytest.approx([0.1, 0.9, 0.9, 0.9])
    assert max(runner.batches) == 8 and sum(runner.batches) == len(windows(character_tokenizer(), [LONG])[1]) * 3 + 1


class _Violent:
    """A text classifier that scores ``violence`` 0.9 for texts with "smash", 0.2 otherwise."""

    triton_model = TEXT_MODERATOR

    async def check(self, texts):
        scores = [0.9 if "smash" in text else 0.2 for text in texts]
        return [Verdict({"violence": s >= 0.5, "hate": False}, {"violence": s, "hate": 0.1}) for s in scores]


def test_the_blocklist_and_the_classifier_give_one_verdict_their_union_and_highest_scores():
    moderation = Moderation(Policy.OFF, Blocklist.parse("violence: blood\nweapons: gun\n"), texts=_Violent())
    blood, smash, calm = asyncio.run(moderation.texts_checked(["blood", "smash", "calm"]))
    assert blood.categories == {"violence": True, "weapons": False, "hate": False}
    assert blood.scores == {"violence": 1.0, "weapons": 0.0, "hate": 0.1}  # the blocklist's 1 over the model's 0.2
    assert smash.flagged_categories == ["violence"] and smash.scores["violence"] == 0.9
    assert not calm.flagged and calm.scores["violence"] == 0.2
    answer = asyncio.run(moderation.moderations(_body(["smash", "calm"]), None))
    assert [r["flagged"] for r in answer["results"]] == [True, False]
    assert Moderation(Policy.OFF).checking(None, _Violent()).triton_models == [TEXT_MODERATOR]


def _body(texts):
    from serve.moderation.requests import ModerationRequest

    return ModerationRequest(input=texts)


def test_a_prompt_the_classifier_flags_is_refused_under_block_and_marked_under_flag():
    moderation = Moderation(Policy.BLOCK, Blocklist(), texts=_Violent())
    request = GenerationRequest(prompt="smash it")
    with pytest.raises(ContentPolicyViolation) as refused:
        asyncio.run(moderation.screened(request, None))
    assert refused.value.field == "prompt" and "violence" in refused.value.message
    flagging = Moderation(Policy.FLAG, Blocklist(), texts=_Violent())
    assert asyncio.run(flagging.screened(request, None)).inputs.flagged_categories == ["violence"]
    assert asyncio.run(flagging.rescreened(request, None, None)).inputs.scores["violence"] == 0.9  # a job as it runs


def test_the_served_checks_name_their_triton_models_for_readiness():
    moderation = Moderation().checking(ImageChecker(None, Preprocessing()), TextModerator(None, None, None))
    assert moderation.triton_models == [SAFETY_CHECKER, TEXT_MODERATOR]
    assert Moderation().triton_models == []


def test_the_build_installs_the_engine_once_and_refuses_a_folder_without_a_model(
    tmp_path, monkeypatch, moderator_dir, built
):
    home, repository, folder = built
    monkeypatch.setenv("EASEL_HOME", str(home))
    config = read_model_config(repository / TEXT_MODERATOR / "config.pbtxt")
    assert config == TEXT_MODERATOR_SPEC.to_model_config()
    assert config.max_batch_size == 8 and config.dynamic_batching.max_queue_delay_microseconds > 0
    assert (repository / TEXT_MODERATOR / "1" / "model.onnx").resolve() == folder / TEXT_MODERATOR / "model.onnx"
    assert Labels.read(folder / LABELS).names == CATEGORIES and (folder / TOKENIZER / "tokenizer.json").is_file()
    stamp = (folder / TEXT_MODERATOR / "model.onnx").stat().st_mtime_ns
    assert build_text_moderator(moderator_dir, repository) == folder  # cached: not exported again
    assert (folder / TEXT_MODERATOR / "model.onnx").stat().st_mtime_ns == stamp
    assert build_text_moderator(None, repository) is None and not (repository / TEXT_MODERATOR).exists()
    with pytest.raises(ValueError, match="config.json and tokenizer"):
        build_text_moderator(tmp_path, repository)
