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
from serve.text_to_image.scores import AESTHETIC, CLIP_IMAGE, CLIP_TEXT, Scorer, check_scores, read_specs
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


def test_scores_asked_of_a_stack_without_them_name_the_field(built):
    folder = built[0]
    with pytest.raises(InvalidInput, match="no scorer") as error:
        check_scores(["clip_score"], None, "best_of")
    assert error.value.field == "best_of"
    scorer = Scorer(_OnnxRunner(folder), folder)
    with pytest.raises(InvalidInput, match="'sharpness' is not a score"):
        check_scores(["sharpness"], scorer, "best_of")
    check_scores(["clip_score", "aesthetic"], scorer, "best_of")
