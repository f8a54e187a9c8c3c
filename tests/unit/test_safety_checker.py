"""The image safety checker without servers: made locally, exported with parity to diffusers, prepared as CLIP does."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance
from transformers import CLIPImageProcessor

from build_engines.moderation.safety_checker import (
    FEATURE_EXTRACTOR,
    SafetyScores,
    add_safety_checker,
    build_safety_checker,
    chosen_pictures,
    export_safety_checker,
    load_safety_checker,
    random_safety_checker,
)
from loadtests.benchmarks.safety_checker import run
from serve.moderation.images import (
    CATEGORY,
    PREPROCESSOR,
    SAFETY_CHECKER,
    SAFETY_CHECKER_SPEC,
    ImageChecker,
    Preprocessing,
)
from serve.triton.onnx_backend import make_session
from serve.triton.spec import read_model_config


@pytest.fixture(scope="module")
def checker_dir(tmp_path_factory):
    """A tiny random checker folder made to flag the first test picture."""
    return random_safety_checker(tmp_path_factory.mktemp("checker"), *chosen_pictures())


@pytest.fixture(scope="module")
def exported(checker_dir):
    """The checker exported to ONNX (its build's own parity check passed)."""
    path = checker_dir / "engine" / "model.onnx"
    export_safety_checker(load_safety_checker(checker_dir), path)
    return path


def diffusers_scores(checker, clip_input: torch.Tensor) -> tuple[np.ndarray, list[bool]]:
    """Concept scores as diffusers' ``forward`` computes them (its loop, rounded to 3 places), and its own flags."""
    with torch.no_grad():
        embeds = checker.visual_projection(checker.vision_model(clip_input)[1])
        _, flags = checker(clip_input, np.zeros((len(clip_input), 8, 8, 3)))
        special = cosine_distance(embeds, checker.special_care_embeds).numpy()
        concepts = cosine_distance(embeds, checker.concept_embeds).numpy()
    scores = np.zeros_like(concepts)
    for i in range(len(concepts)):
        adjustment = 0.0
        for j, cos in enumerate(special[i]):
            if round(cos - checker.special_care_embeds_weights[j].item() + adjustment, 3) > 0:
                adjustment = 0.01
        for j, cos in enumerate(concepts[i]):
            scores[i, j] = round(cos - checker.concept_embeds_weights[j].item() + adjustment, 3)
    return scores, list(flags)


def test_the_random_checker_flags_the_chosen_picture_and_passes_the_other(checker_dir):
    flagged, passes = chosen_pictures()
    pixels = CLIPImageProcessor.from_pretrained(checker_dir / FEATURE_EXTRACTOR)(
        images=[flagged, passes], return_tensors="pt"
    ).pixel_values
    _, flags = diffusers_scores(load_safety_checker(checker_dir), pixels)
    assert flags == [True, False]


def test_the_onnx_engine_gives_diffusers_flags_and_scores(checker_dir, exported):
    """Parity: per image, flag equal and scores within 1e-3 of diffusers' in PyTorch (the chosen pictures + noise)."""
    flagged, passes = chosen_pictures()
    processor = CLIPImageProcessor.from_pretrained(checker_dir / FEATURE_EXTRACTOR)
    pictures = processor(images=[flagged, passes], return_tensors="pt").pixel_values
    noise = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    clip_input = torch.cat([pictures, noise])
    want_scores, want_flags = diffusers_scores(load_safety_checker(checker_dir), clip_input)
    scores, flags = make_session(exported).run(None, {"clip_input": clip_input.numpy()})
    assert flags.reshape(-1).tolist() == want_flags
    assert want_flags[:2] == [True, False]
    np.testing.assert_allclose(scores, want_scores, atol=1e-3)
    assert scores[0].max() > 0.01 > -0.01 > scores[1].max()  # away from the threshold: the flag is no rounding's


def test_the_scores_module_is_diffusers_forward_onnx_flag(checker_dir):
    """:class:`SafetyScores` flags as diffusers' own ONNX path does (which blanks the flagged images)."""
    checker = load_safety_checker(checker_dir)
    clip_input = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, want = checker.forward_onnx(clip_input, torch.ones(4, 3, 8, 8))
        assert SafetyScores(checker)(clip_input)[1].reshape(-1).tolist() == want.tolist()


@pytest.mark.parametrize(("height", "width"), [(512, 512), (256, 320), (300, 200), (225, 1000), (97, 61)])
def test_preprocessing_equals_clip_image_processor(checker_dir, height, width):
    image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    processor = CLIPImageProcessor.from_pretrained(checker_dir / FEATURE_EXTRACTOR)
    want = processor(images=[image], return_tensors="np").pixel_values[0]
    got = Preprocessing.read(checker_dir / FEATURE_EXTRACTOR / PREPROCESSOR).pixels(image)
    assert got.shape == want.shape == (3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_processor_that_skips_a_step_is_refused(tmp_path, checker_dir):
    config = (checker_dir / FEATURE_EXTRACTOR / PREPROCESSOR).read_text()
    (tmp_path / PREPROCESSOR).write_text(config.replace('"do_center_crop": true', '"do_center_crop": false'))
    with pytest.raises(ValueError, match="resizing the shortest edge and cropping"):
        Preprocessing.read(tmp_path / PREPROCESSOR)


class _OnnxRunner:
    """The exported engine in-process, answering as Triton's model does (the spec's outputs by name)."""

    def __init__(self, path) -> None:
        self.session, self.batches = make_session(path), []

    async def infer(self, spec, inputs, priority=0):
        self.batches.append(len(inputs["clip_input"]))
        outputs = self.session.run(None, {"clip_input": inputs["clip_input"]})
        return dict(zip([t.name for t in spec.outputs], outputs, strict=True))


def test_the_image_checker_gives_one_verdict_per_image_in_calls_of_at_most_eight(checker_dir, exported):
    flagged, passes = chosen_pictures()
    runner = _OnnxRunner(exported)
    checker = ImageChecker(runner, Preprocessing.read(checker_dir / FEATURE_EXTRACTOR / PREPROCESSOR))
    verdicts = asyncio.run(checker.check([flagged, passes] * 5))
    assert runner.batches == [8, 2]
    assert [v.flagged for v in verdicts] == [True, False] * 5
    first = verdicts[0].to_api()
    assert first["categories"] == {CATEGORY: True} and first["category_scores"][CATEGORY] > 0
    assert verdicts[1].to_api()["category_scores"][CATEGORY] < 0
    assert asyncio.run(checker.check([])) == []


def test_the_build_installs_the_engine_once_and_refuses_a_folder_without_a_checker(tmp_path, monkeypatch, checker_dir):
    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "home"))
    repository = tmp_path / "repo"
    folder = build_safety_checker(checker_dir, repository)
    config = read_model_config(repository / SAFETY_CHECKER / "config.pbtxt")
    assert config == SAFETY_CHECKER_SPEC.to_model_config()
    assert config.max_batch_size == 8 and config.dynamic_batching.max_queue_delay_microseconds > 0
    assert (repository / SAFETY_CHECKER / "1" / "model.onnx").resolve() == folder / SAFETY_CHECKER / "model.onnx"
    stamp = (folder / SAFETY_CHECKER / "model.onnx").stat().st_mtime_ns
    assert build_safety_checker(checker_dir, repository) == folder  # cached: not exported again
    assert (folder / SAFETY_CHECKER / "model.onnx").stat().st_mtime_ns == stamp
    assert build_safety_checker(None, repository) is None and not (repository / SAFETY_CHECKER).exists()
    with pytest.raises(ValueError, match="safety_checker/ and feature_extractor/"):
        build_safety_checker(tmp_path, repository)


def test_an_sd_folder_can_carry_the_random_checker(tmp_path):
    model_dir = tmp_path / "sd"
    model_dir.mkdir()
    (model_dir / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    add_safety_checker(model_dir)
    index = (model_dir / "model_index.json").read_text()
    assert '"StableDiffusionSafetyChecker"' in index and '"CLIPImageProcessor"' in index
    assert load_safety_checker(model_dir).concept_embeds.shape == (17, 16)
    shutil.rmtree(model_dir / SAFETY_CHECKER)
    with pytest.raises(ValueError):
        build_safety_checker(model_dir, None)


def test_the_benchmark_times_the_engine_and_writes_its_rows(exported, tmp_path):
    table = run(exported.parent, [1, 2], 256, 1, tmp_path / "bench.json")
    rows = json.loads((tmp_path / "bench.json").read_text())["batches"]
    assert [row["batch"] for row in rows] == [1, 2] and all(row["engine_ms"] > 0 for row in rows)
    assert "engine ms/img" in table


def test_the_stack_builds_the_checker_given_or_the_default_models_own(tmp_path, monkeypatch, checker_dir):
    """``--safety-checker DIR`` first; else a default model folder that ships one; else none (the embedded default)."""
    from serve.stack import StackOptions
    from serve.stack.build_plan import StartPlan

    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "home"))
    model_dir = tmp_path / "sd"
    shutil.copytree(checker_dir, model_dir, ignore=shutil.ignore_patterns("engine"))
    cases = [({"safety_checker": checker_dir}, checker_dir), ({"models": {"sd": model_dir}}, model_dir), ({}, None)]
    for given, source in cases:
        options = StackOptions(run_dir=tmp_path / "run", **given)
        built = StartPlan(options).safety_checker()
        assert (built is None) == (source is None)
        assert (options.repository / SAFETY_CHECKER / "config.pbtxt").is_file() == (source is not None)


def test_a_start_with_no_checker_to_build_or_remove_imports_neither_torch_nor_diffusers(tmp_path):
    """The embedded default has no checker: a fresh start's build spent most of its time importing what makes one."""
    code = (
        "import sys; from pathlib import Path; from serve.stack import StackOptions;"
        "from serve.stack.build_plan import StartPlan;"
        f"print(StartPlan(StackOptions(run_dir=Path({str(tmp_path / 'run')!r}))).safety_checker(),"
        " sorted({'torch', 'diffusers'} & set(sys.modules)))"
    )
    env = {**os.environ, "EASEL_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "None []"
