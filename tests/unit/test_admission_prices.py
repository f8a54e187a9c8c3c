"""What admission charges and when: the prices of requests priced by their own work (serve/serving/prices.py), every
refusal made before the cost is taken (serve/serving/admission.py), and the price table of
docs/guides/keys-and-limits.md, a row for every route that runs an engine (serve/routes.py): no server."""

import asyncio
import base64
import re
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from serve.access import ACCESS, Caller
from serve.access.keys import KeyLimits
from serve.access.sqlite import SqliteKeyStore
from serve.errors import EaselError
from serve.experiments import open_experiment_store
from serve.experiments.traffic import Experiments
from serve.images.raster import ImageRejected
from serve.jobs import open_job_store
from serve.moderation.requests import ModerationRequest
from serve.paths import PROJECT_ROOT
from serve.protocol.face_requests import FaceAnalysisRequest
from serve.protocol.quality_requests import PromptAnalysisRequest, ScoreRequest
from serve.protocol.reference_request import NewReference
from serve.protocol.schema import GenerationRequest
from serve.routes import ROUTES, Route, Scope
from serve.serving.adapters import Adapters
from serve.serving.admission import Admission
from serve.serving.jobs import BackgroundJobs
from serve.serving.prices import (
    ENCODER_MEGAPIXELS,
    TOKENS_PER_COST,
    analysis_cost,
    face_analysis_cost,
    moderation_cost,
    reference_cost,
    score_cost,
    vectorize_cost,
    vectorize_passes,
)
from serve.serving.references import References
from serve.serving.vectorize import VectorizeBody, Vectorizing
from serve.vectorize.schema import VectorizeOptions
from serve.vectorize.versions import TableReader
from serve.webhooks import WebhookSettings
from tests.controls import b64, input_image
from tests.images import png_header_only


def _data_url(image: str) -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}


def _header_b64(side: int) -> str:
    """A PNG that is only its header, base64: its size reads, but none of its pixels decode (a decode is a 400)."""
    return base64.b64encode(png_header_only(side, side)).decode()


# -- the prices ----------------------------------------------------------------------------------------------------


def test_a_moderation_costs_its_characters_and_its_images_pixels():
    texts = ModerationRequest.model_validate({"input": ["x" * 32_000] * 32})
    assert moderation_cost(texts) == pytest.approx(10.24)
    image = ModerationRequest.model_validate(
        {"input": [{"type": "text", "text": "x" * 1000}, _data_url(b64(input_image(512)))]}
    )
    assert moderation_cost(image) == pytest.approx(0.01 + 512 * 512 / 1e6 + ENCODER_MEGAPIXELS)


def test_an_image_that_is_no_image_is_refused_naming_its_item_before_any_work():
    body = ModerationRequest.model_validate(
        {"input": [{"type": "text", "text": "a"}, _data_url(base64.b64encode(b"no").decode())]}
    )
    with pytest.raises(ImageRejected) as refused:
        moderation_cost(body)
    assert refused.value.status == 400 and refused.value.field == "input.1.image_url.image_url.url"


def test_a_reference_costs_its_decode_and_one_encoder_pass():
    body = NewReference.model_validate({"image": b64(input_image(512))})
    assert reference_cost(body) == pytest.approx(512 * 512 / 1e6 + ENCODER_MEGAPIXELS)


def test_a_score_costs_each_image_s_pixels_and_one_scorer_pass_read_from_its_header():
    body = ScoreRequest(images=[b64(input_image(512)), _header_b64(2048)])  # the second has no pixels to decode
    assert score_cost(body) == pytest.approx((512 * 512 + 2048 * 2048) / 1e6 + 2 * ENCODER_MEGAPIXELS)
    assert score_cost(ScoreRequest(images=[_header_b64(2048)] * 16)) == pytest.approx(67.91, abs=0.01)


def test_a_face_analysis_costs_its_pixels_the_detector_s_pass_and_a_recognizer_pass_a_face_it_may_report():
    body = FaceAnalysisRequest(image=_header_b64(2048), max_faces=4)  # no pixel to decode: the header is read
    assert face_analysis_cost(body, 112) == pytest.approx(2048 * 2048 / 1e6 + 640 * 640 / 1e6 + 4 * 112 * 112 / 1e6)
    with pytest.raises(ImageRejected) as refused:
        face_analysis_cost(FaceAnalysisRequest(image=_header_b64(4096)), 112)
    assert (refused.value.status, refused.value.field) == (413, "image")


def test_a_scored_image_over_the_documented_bound_is_a_413_naming_it_and_one_that_is_no_image_a_400():
    """The route decoded with the generation input limit (16,777,216 pixels): 16 images of 4096x4096 were scored."""
    for images, status, field in (
        ([_header_b64(64), _header_b64(4096)], 413, "images.1"),
        ([base64.b64encode(png_header_only(2049, 2048)).decode()], 413, "images.0"),  # one pixel row past 4,194,304
        ([base64.b64encode(b"no image").decode()], 400, "images.0"),
    ):
        with pytest.raises(ImageRejected) as refused:
            score_cost(ScoreRequest(images=images))
        assert (refused.value.status, refused.value.field) == (status, field)


def test_a_prompt_analysis_costs_its_tokens_per_encoder_and_its_verdict_exactly_as_a_moderation():
    body = PromptAnalysisRequest(prompt="a red heart icon " * 235, negative_prompt="blurry, ugly " * 300)
    verdict = moderation_cost(ModerationRequest(input=body.prompt))  # what /v1/moderations charges for the prompt
    assert analysis_cost(body, 0) == verdict  # the one price of a moderation, not a second one
    tokens = len(body.prompt.encode()) + len(body.negative_prompt.encode())
    assert analysis_cost(body, 2) == pytest.approx(2 * tokens / TOKENS_PER_COST + verdict)
    accented = PromptAnalysisRequest(prompt="é" * 10)  # two UTF-8 bytes each: what a byte-level tokenizer may read
    assert analysis_cost(accented, 1) == pytest.approx(20 / TOKENS_PER_COST + 10 / 100_000)
    reproduction = PromptAnalysisRequest(prompt="x" * 4000, negative_prompt="y" * 4000)  # issue 76's 8,000 characters
    assert analysis_cost(reproduction, 1) == pytest.approx(0.12)  # over a key's 0.01 a minute


@pytest.mark.parametrize(
    ("options", "passes"),
    [
        ({"tier": "default"}, 2),  # decode, conversion
        ({"tier": "default", "validate": True}, 3),  # + its render
        ({"tier": "1"}, 8),  # decode, models, conversion; checked: its render, the defaults', tier 1's
        ({"tier": "auto", "validate": True}, 8),  # a checked conversion's SSIM is measured already
        ({"tier": "2", "prefer": "size"}, 3),  # never checked
        ({"tier": "2", "prefer": "size", "validate": True}, 4),
        ({"tier": "3", "target_quality": 0.9}, 3),
        ({"tier": "3", "target_quality": 0.9, "validate": True}, 6),  # + the defaults' conversion and render
    ],
)
def test_a_vectorize_request_costs_its_megapixels_times_the_passes_its_tier_may_run(options, passes):
    asked = VectorizeOptions.model_validate(options)
    assert vectorize_passes(asked) == passes
    assert vectorize_cost(png_header_only(512, 256), asked) == pytest.approx(512 * 256 / 1e6 * passes)
    assert vectorize_cost(png_header_only(512, 256), asked, analysis=True) == pytest.approx(512 * 256 / 1e6 * 2)


def test_a_vectorize_image_over_its_bound_is_a_413_naming_image_from_its_header():
    with pytest.raises(ImageRejected) as refused:
        vectorize_cost(png_header_only(4096, 4096), VectorizeOptions())
    assert (refused.value.status, refused.value.field) == (413, "image")


# -- every refusal before the charge --------------------------------------------------------------------------------


class Engines:
    """The deployments' handles as the serving classes call them, recording every call (none: nothing ran)."""

    def __init__(self) -> None:
        self.calls = []
        for method in ("score", "vectorize", "analyze", "generate"):
            setattr(self, method, SimpleNamespace(remote=self._recorder(method)))

    def _recorder(self, method: str):
        async def remote(*args, **kwargs):
            self.calls.append(method)
            return [{"clip_score": 0.5}] * len(args[0]) if method == "score" else {}

        return remote

    def options(self, **_) -> "Engines":
        return self


@pytest.fixture(scope="module")
def models(engine_dir):
    """The embedded default's model table (SD: one text encoder, no IP-Adapter)."""
    from serve.models.served import ServedModels
    from serve.serving.current_models import CurrentModels

    return CurrentModels(ServedModels.open({"easel-default": str(engine_dir)}))


async def _admission(models, url: str, engines: Engines, scores: tuple[str, ...] = ()) -> Admission:
    """The Gateway's admission over the embedded default, with the stack's scorer giving ``scores`` (in a loop: its
    jobs' runner starts in it)."""
    from serve.serving.generations import Generations

    traffic = Experiments(open_experiment_store(url), models.names)
    generations = Generations(models, engines, engines, engines, None, traffic, scores=scores)
    jobs = BackgroundJobs(open_job_store(url), generations, traffic, WebhookSettings(webhook_hosts=("127.0.0.1:9",)))
    jobs.runner._loop_task.cancel()  # nothing is queued here
    adapters = Adapters.__new__(Adapters)  # the reference checks alone
    adapters.references = References(models.now, None)
    vectorizing = Vectorizing(engines, None, traffic, TableReader(None))  # version 1 installed
    return Admission(generations, generations.upscaling, jobs, vectorizing, adapters)


SMALL = {"prompt": "a red heart icon", "size": "64x64", "num_inference_steps": 2}
REFUSED = [  # the body, and the status, field and words of its refusal
    (ScoreRequest(images=[_header_b64(4096)] * 16), 413, "images.0", "at most 4194304"),  # issue 76's reproduction
    (ScoreRequest(images=[_header_b64(64)]), 400, "images", "serves no scorer"),
    (PromptAnalysisRequest(prompt="x", model="nope"), 400, "model", "unknown model"),
    (FaceAnalysisRequest(image=_header_b64(64)), 400, "image", "no face models are served"),
    (ModerationRequest(input=[_data_url(b64(input_image(64)))]), 400, "input", "no image moderation model"),
    (NewReference(image=b64(input_image(64))), 400, "model", "has no IP-Adapter"),
    (GenerationRequest(**SMALL, scores=True), 400, "scores", "serves no scorer"),  # found by the replica, charged
    (GenerationRequest(**SMALL, candidates=4), 400, "candidates", "no scorer to rank them"),
    (GenerationRequest(**SMALL, background=True, webhook="http://example.com/h"), 400, "webhook", "not allowed"),
    (GenerationRequest(**SMALL, background=True, image=[_header_b64(64)]), 400, "image", "truncated"),  # a job's
    (VectorizeBody(png_header_only(64, 64), VectorizeOptions(experiment="nope")), 400, "experiment", "no experiment"),
    (VectorizeBody(png_header_only(64, 64), VectorizeOptions(model_version=3)), 400, "model_version", "no vectorize"),
    (VectorizeBody(png_header_only(4096, 4096), VectorizeOptions(tier="default")), 413, "image", "at most 4194304"),
]


@pytest.mark.parametrize(
    ("body", "status", "field", "says"), REFUSED, ids=[f"{type(b).__name__}-{f}" for b, _, f, _ in REFUSED]
)
def test_every_refusal_is_made_before_the_cost_is_taken(models, tmp_path, body, status, field, says):
    """The scorer and candidates checks ran in the replica, a job's webhook host and images at its submission: each
    after its cost was taken. Now each is refused by admission, and nothing is charged (the charge sets its cost)."""
    engines, caller = Engines(), Caller()

    async def scenario():
        admission = await _admission(models, f"sqlite:///{tmp_path / 'easel.db'}", engines)
        await admission.admit(body, caller)

    with pytest.raises(EaselError) as refused:
        asyncio.run(scenario())
    assert (refused.value.status, refused.value.field) == (status, field), refused.value
    assert says in refused.value.message and caller.cost == 0.0 and engines.calls == []


def test_what_admission_admits_it_charges_and_runs_nothing(models, tmp_path):
    engines, charged = Engines(), []

    async def scenario():
        admission = await _admission(models, f"sqlite:///{tmp_path / 'easel.db'}", engines, scores=("clip_score",))
        for body in (
            ScoreRequest(images=[_header_b64(64)]),
            PromptAnalysisRequest(prompt="a red heart icon"),
            VectorizeBody(png_header_only(64, 64), VectorizeOptions(), analysis=True),
            GenerationRequest(**SMALL, background=True, webhook="http://127.0.0.1:9/hook"),
        ):
            caller = Caller()
            await admission.admit(body, caller)
            charged.append(caller.cost)

    asyncio.run(scenario())
    assert all(cost > 0 for cost in charged) and engines.calls == []
    assert charged[0] == pytest.approx(64 * 64 / 1e6 + ENCODER_MEGAPIXELS)


# -- the doors: a key over its cost limit is a 429 before anything decodes ------------------------------------------


@pytest.fixture
def door(models, tmp_path, monkeypatch):
    """The HTTP app with keys (one at 0.01 cost a minute, one without a cost limit) over the admission above."""
    from serve.http.app import api

    store = SqliteKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    monkeypatch.setattr(ACCESS, "store", store)
    monkeypatch.setattr(ACCESS, "_active", (float("inf"), True))
    tight = store.create("tight", {Scope.GENERATE, Scope.VECTORIZE}, KeyLimits(cost_per_minute=0.01))[1]
    free = store.create("free", {Scope.GENERATE, Scope.VECTORIZE}, KeyLimits())[1]
    engines = Engines()
    admission = asyncio.run(_admission(models, f"sqlite:///{tmp_path / 'easel.db'}", engines, ("clip_score",)))
    generations = admission.generations
    api.state.gateway = SimpleNamespace(
        admission=admission,
        generations=generations,
        moderation=generations.moderation,
        vectorizing=admission.vectorizing,
    )
    yield TestClient(api), engines, {"tight": tight, "free": free}
    del api.state.gateway


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_issue_76_s_reproductions_are_refused_before_any_decode_or_engine(door):
    http, engines, keys = door
    huge = http.post("/v1/images/score", json={"images": [_header_b64(4096)] * 16}, headers=_bearer(keys["tight"]))
    assert huge.status_code == 413 and huge.json()["error"]["param"] == "images.0", huge.text
    at_bound = {"images": [_header_b64(2048)] * 16}  # headers only: a decode would be a 400, not a 429
    over = http.post("/v1/images/score", json=at_bound, headers=_bearer(keys["tight"]))
    assert over.status_code == 429 and over.json()["error"]["param"] == "cost", over.text
    assert "this request costs 67.9" in over.json()["error"]["message"]
    text = {"prompt": "x" * 4000, "negative_prompt": "y" * 4000}
    for path, body in (("/v1/prompts/analyze", text), ("/v1/moderations", {"input": "x" * 4000})):
        refused = http.post(path, json=body, headers=_bearer(keys["tight"]))
        assert refused.status_code == 429 and refused.json()["error"]["param"] == "cost", (path, refused.text)
    for path in ("/v1/vectorize", "/v1/vectorize/analyze"):
        refused = http.post(
            path, content=png_header_only(512, 512), headers=_bearer(keys["tight"]) | {"content-type": "image/png"}
        )
        assert refused.status_code == 429 and refused.json()["error"]["param"] == "cost", (path, refused.text)
    assert engines.calls == []
    scored = http.post("/v1/images/score", json={"images": [_header_b64(64)]}, headers=_bearer(keys["free"]))
    assert scored.status_code == 200 and scored.json()["data"] == [{"index": 0, "clip_score": 0.5}], scored.text
    assert engines.calls == ["score"]  # admitted, it reaches the replica


# -- the price table ------------------------------------------------------------------------------------------------

PRICES = PROJECT_ROOT / "docs" / "guides" / "keys-and-limits.md"


def price_rows(text: str) -> set[tuple[str, str]]:
    """The operations the price table of keys-and-limits.md prices: (method, path), one a row."""
    section = text.split("### What each route costs", 1)[1].split("\n#", 1)[0]
    return {
        (method.lower(), path)
        for method, path in re.findall(r"^\| `(GET|POST|PUT|DELETE) (/[^`]*)` \|", section, re.MULTILINE)
    }


def unpriced(routes: tuple[Route, ...], rows: set[tuple[str, str]]) -> list[str]:
    """What the table misses or has wrong: an engine's route not costed, a costed route without a row, a row of none."""
    costed = {(r.method, r.path) for r in routes if r.costed}
    wrong = [f"{r.method.upper()} {r.path}: runs an engine, not costed" for r in routes if r.engine and not r.costed]
    wrong += [f"{m.upper()} {p}: costed, no price row" for m, p in sorted(costed - rows)]
    return wrong + [f"{m.upper()} {p}: a price row of no costed route" for m, p in sorted(rows - costed)]


def test_every_route_that_runs_an_engine_is_costed_and_has_its_price_row():
    assert unpriced(ROUTES, price_rows(PRICES.read_text())) == []
    engines = {(r.method, r.path) for r in ROUTES if r.engine}
    assert {("post", "/v1/images/score"), ("post", "/v1/prompts/analyze"), ("post", "/v1/vectorize")} <= engines
    assert ("post", "/v1/vectorize/analyze") in engines


def test_the_price_table_check_can_fail():
    forgotten = Route("post", "/v1/new-engine", Scope.GENERATE, engine=True)
    unpriced_one = Route("post", "/v1/priced", Scope.GENERATE, costed=True, engine=True)
    assert unpriced((forgotten, unpriced_one), {("get", "/v1/gone")}) == [
        "POST /v1/new-engine: runs an engine, not costed",
        "POST /v1/priced: costed, no price row",
        "GET /v1/gone: a price row of no costed route",
    ]
