"""The scorer's engines: a tiny random CLIP and aesthetic head made here, exported, run in-process as Triton would.

``clip_score`` against transformers' ``CLIPModel`` cosine, the aesthetic score against its PyTorch module (LAION's
layout), the build's cache and install, and the scores a stack without them cannot give named.
"""

import asyncio

import numpy as np
import pytest
import torch
from PIL import Image

from build_engines.scoring import AestheticPredictor, build_scorer, random_aesthetic, random_clip
from serve.errors import InvalidInput
from serve.gateway import AppArgs
from serve.protocol.schema import GenerationRequest
from serve.scoring import (
    AESTHETIC,
    CLIP_IMAGE,
    CLIP_TEXT,
    Scorer,
    Scoring,
    check_scores,
    read_specs,
    score_names,
)
from serve.service_engines import ServiceEngines
from serve.text_to_image.best_of import best, check_best_of, choose
from serve.text_to_image.drawing import Drawing
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.triton.engine_files import ONNX
from serve.triton.onnx_backend import make_session
from serve.triton.spec import read_model_config


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scorer")
    return {"clip": random_clip(folder / "clip"), "aesthetic": random_aesthetic(folder / "aesthetic.pth")}


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EASEL_HOME", str(home))
        repository = tmp_path_factory.mktemp("repository")
        return build_scorer(sources, repository), repository, home


class _OnnxRunner:
    """The exported engines in-process, answering as Triton's models do; each call's rows kept."""

    def __init__(self, folder) -> None:
        self.sessions = {name: make_session(folder / name / ONNX) for name in (CLIP_IMAGE, CLIP_TEXT, AESTHETIC)}
        self.calls = []

    async def infer(self, spec, inputs, priority=0):
        self.calls.append((spec.name, len(next(iter(inputs.values())))))
        outputs = self.sessions[spec.name].run(None, dict(inputs))
        return dict(zip([t.name for t in spec.outputs], outputs, strict=True))


def pictures(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8) for i in range(count)]


def test_clip_score_is_transformers_cosine_and_aesthetic_its_module(sources, built):
    from transformers import CLIPModel, CLIPProcessor

    folder = built[0]
    runner = _OnnxRunner(folder)
    images, prompt = pictures(10), "a red heart icon"
    scores = asyncio.run(Scorer(runner, folder).score(images, prompt))
    assert [name for name, _ in runner.calls] == [CLIP_IMAGE, CLIP_IMAGE, CLIP_TEXT, AESTHETIC, AESTHETIC]
    model = CLIPModel.from_pretrained(sources["clip"]).eval()
    processor = CLIPProcessor.from_pretrained(sources["clip"])
    inputs = processor(text=[prompt], images=[Image.fromarray(i) for i in images], return_tensors="pt")
    head = AestheticPredictor.load(sources["aesthetic"])
    with torch.no_grad():
        out = model(**inputs)
        cosine = (out.image_embeds @ out.text_embeds.T)[:, 0].numpy()
        aesthetic = head(out.image_embeds)[:, 0].numpy()
    got = np.array([s["clip_score"] for s in scores])
    assert np.abs(got - cosine).max() <= 1e-4 and np.ptp(got) > 0
    assert np.abs(np.array([s["aesthetic"] for s in scores]) - aesthetic).max() <= 1e-4
    assert "clip_score" not in asyncio.run(Scorer(runner, folder).score(images[:1], None))[0]


def test_the_head_loads_laions_file_layout(sources):
    state = torch.load(sources["aesthetic"], weights_only=True)
    assert sorted(state) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    assert AestheticPredictor.load(sources["aesthetic"]).layers[0].in_features == 16


def test_the_build_installs_each_engine_once_and_refuses_what_it_cannot_score(sources, built, tmp_path, monkeypatch):
    folder, repository, home = built
    for name, spec in read_specs(folder).items():
        assert read_model_config(repository / name / "config.pbtxt") == spec.to_model_config()
    monkeypatch.setenv("EASEL_HOME", str(home))
    written = (folder / CLIP_IMAGE / ONNX).stat().st_mtime_ns
    assert build_scorer(sources, None) == folder  # cached: the same folder, not exported again
    assert (folder / CLIP_IMAGE / ONNX).stat().st_mtime_ns == written
    with pytest.raises(ValueError, match="clip=DIR"):
        build_scorer({"aesthetic": sources["aesthetic"]}, None)
    wide = random_aesthetic(tmp_path / "wide.pth", input_size=24)
    with pytest.raises(ValueError, match="24 wide"):
        build_scorer({"clip": sources["clip"], "aesthetic": wide}, None)


def test_the_built_scorer_reaches_the_app_through_its_service_engines_and_nothing_else_names_its_folder(built):
    folder, _, _ = built
    args = AppArgs(models={"m": "e"}, triton_grpc_url="t", service_engines=ServiceEngines.built(scorer=folder))
    engines = AppArgs.model_validate_json(args.model_dump_json()).service_engines  # as the Serve app receives it
    assert engines.score_names() == ("clip_score", "aesthetic")
    assert {spec.name for spec in engines.triton_specs()} == {CLIP_IMAGE, CLIP_TEXT, AESTHETIC}
    assert isinstance(engines.scoring(_OnnxRunner(folder)), Scorer)
    none = ServiceEngines()
    assert (none.score_names(), none.triton_specs(), none.scoring(_OnnxRunner(folder))) == ((), [], None)


def test_scores_asked_of_a_stack_without_them_name_the_field(built):
    folder = built[0]
    with pytest.raises(InvalidInput, match="no scorer") as error:
        check_scores(["clip_score"], (), "best_of")
    assert error.value.field == "best_of"
    scorer = Scorer(_OnnxRunner(folder), folder)
    assert score_names(folder) == scorer.names == ("clip_score", "aesthetic")  # what the Gateway checks against
    with pytest.raises(InvalidInput, match="'sharpness' is not a score"):
        check_scores(["sharpness"], scorer.names, "best_of")
    check_scores(["clip_score", "aesthetic"], scorer.names, "best_of")


@pytest.fixture(scope="module")
def pipeline(engine_dir):
    """The loop over the embedded default's engines, in-process."""
    folder = EngineFolder(engine_dir)
    return TextToImagePipeline(folder, OnnxRuntimeRunner(folder))


def drawn(pipeline, **fields) -> tuple[GenerationRequest, list[np.ndarray]]:
    """A request's images as its replica draws them (best-of-n: every candidate, before the choice)."""
    body = {"prompt": "a (red:1.2) heart", "size": "64x64", "num_inference_steps": 3, "seed": 21} | fields
    request = GenerationRequest.model_validate(body)
    job = Drawing.of(request, *request.width_height(pipeline.dims.native_size), request.seed).jobs[0]
    return request, asyncio.run(pipeline.generate(job)).images


@pytest.mark.parametrize("scheduler", ["euler", "lcm"])  # lcm draws fresh noise every step, from each row's own
def test_best_of_n_answers_the_best_of_the_single_requests_with_those_seeds(built, pipeline, scheduler):
    folder = built[0]
    scorer = Scorer(_OnnxRunner(folder), folder)
    request, rows = drawn(pipeline, candidates=4, scheduler=scheduler)
    singles = [drawn(pipeline, seed=21 + i, scheduler=scheduler)[1][0] for i in range(4)]
    assert len(rows) == 4
    for row, single in zip(rows, singles, strict=True):  # one batch of 4, each row its own seed's image
        assert np.abs(row.astype(int) - single).max() <= 1
    chosen = asyncio.run(choose(Scoring(scorer), rows, 21, "red heart", request.best_of, request.rows))
    single_scores = [s["clip_score"] for s in asyncio.run(scorer.score(singles, "red heart"))]
    top = int(np.argmax(single_scores))
    assert np.ptp(single_scores) > 0 and chosen.seeds == [21 + top]
    assert np.abs(chosen.images[0].astype(int) - singles[top]).max() <= 1
    assert [c["seed"] for c in chosen.candidates] == [21, 22, 23, 24]
    assert [c["kept"] for c in chosen.candidates] == [i == top for i in range(4)]
    assert chosen.scores == [chosen.candidates[top]["scores"]]


def test_best_of_n_keeps_n_best_first_by_the_named_score(built, pipeline):
    folder = built[0]
    scorer = Scorer(_OnnxRunner(folder), folder)
    request, rows = drawn(pipeline, candidates=3, n=2, best_of="aesthetic")
    assert len(rows) == 6
    chosen = asyncio.run(choose(Scoring(scorer), rows, 21, "red heart", request.best_of, request.rows))
    aesthetic = [c["scores"]["aesthetic"] for c in chosen.candidates]
    order = list(np.argsort(aesthetic)[::-1][:2])
    assert chosen.seeds == [21 + int(i) for i in order]
    assert [s["aesthetic"] for s in chosen.scores] == sorted(aesthetic, reverse=True)[:2]
    assert best([{"s": 1.0}, {"s": 3.0}, {"s": 3.0}], "s", 2) == [1, 2]  # a tie: the earlier row
    assert best([{"s": None}, {"s": -0.9}, {"s": None}], "s", 2) == [1, 0]  # no face: below every cosine


def test_identity_joins_the_scorer_s_scores_and_alone_ranks_without_a_scorer(built):
    folder = built[0]
    scorer = Scorer(_OnnxRunner(folder), folder)
    images = [np.full((64, 64, 3), v, np.uint8) for v in (40, 200, 120)]

    async def identity(pictures):
        return [None if p[0, 0, 0] == 40 else float(p[0, 0, 0]) / 255 for p in pictures]

    both = asyncio.run(Scoring(scorer, identity).score(images, "red heart"))
    assert [s["identity"] for s in both] == [None, 200 / 255, 120 / 255] and all("clip_score" in s for s in both)
    chosen = asyncio.run(choose(Scoring(None, identity), images, 5, "red heart", "identity", 1))
    assert chosen.seeds == [6] and chosen.scores == [{"identity": 200 / 255}]


def test_best_of_n_without_a_scorer_or_with_a_score_it_lacks_names_the_field(built):
    folder = built[0]
    check_best_of(1, "clip_score", ())  # one candidate: nothing to rank
    with pytest.raises(InvalidInput, match="no scorer") as error:
        check_best_of(4, "clip_score", ())
    assert error.value.field == "candidates"
    with pytest.raises(InvalidInput, match="'sharpness'") as error:
        check_best_of(4, "sharpness", score_names(folder))
    assert error.value.field == "best_of"
