"""The Gateway's plain serving classes, without Ray: generations, the vectorize route, jobs by owner."""

import asyncio
import base64
import json
import time
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from serve.access.keys import ApiKey, KeyLimits
from serve.app import api
from serve.errors import InvalidInput, NotFound
from serve.experiments import open_experiment_store
from serve.experiments.traffic import Experiments
from serve.jobs import open_job_store
from serve.jobs.model import Owner
from serve.priority import Priority
from serve.routes import Scope
from serve.serving.jobs import BackgroundJobs
from serve.serving.vectorize import Vectorizing
from serve.vectorize.deployment import VectorizeResult


class Vectorizer:
    """The Vectorizer deployment's handle as the class calls it (``vectorize.remote``), recording what it got."""

    def __init__(self, fallback: str | None = None) -> None:
        self.received, self.fallback = [], fallback
        self.vectorize = SimpleNamespace(remote=self._vectorize)

    async def _vectorize(self, image: bytes, options, sent_at: float) -> VectorizeResult:
        self.received.append((image, options))
        why = "tier1 untrained" if self.fallback else "asked"
        return VectorizeResult("<svg/>", "1", "auto", why, None, {}, None, None, False, 6, 0, self.fallback)


@pytest.fixture
def client():
    """The HTTP app with a replica's vectorize class, as the Gateway sets it, and no other."""
    vectorizer = Vectorizer()
    api.state.gateway = SimpleNamespace(vectorizing=Vectorizing(vectorizer))
    yield TestClient(api), vectorizer
    del api.state.gateway


def test_each_encoding_of_a_vectorize_request_reaches_the_vectorizer_with_its_options(client):
    http, vectorizer = client
    png = b"\x89PNG-bytes"
    raw = http.post("/v1/vectorize?tier=2", content=png, headers={"content-type": "image/png"})
    as_json = http.post(
        "/v1/vectorize",
        json={"image": base64.b64encode(png).decode(), "tier": "2"},
        headers={"accept": "application/json"},
    )
    form = http.post("/v1/vectorize", files={"file": ("a.png", png, "image/png")}, data={"tier": "2"})
    assert [r.status_code for r in (raw, as_json, form)] == [200, 200, 200]
    assert [image for image, _ in vectorizer.received] == [png, png, png]
    assert {options.tier.value for _, options in vectorizer.received} == {"2"}
    assert raw.text == "<svg/>" and raw.headers["content-type"] == "image/svg+xml"
    assert raw.headers["easel-tier"] == "1" and "easel-fallback" not in raw.headers
    assert as_json.json()["svg"] == "<svg/>" and as_json.json()["tier"] == "1"


def test_a_vectorize_request_it_cannot_read_is_a_400_naming_the_field_and_reaches_nothing(client):
    http, vectorizer = client
    bad_base64 = http.post("/v1/vectorize", json={"image": "not base64!"})
    no_file = http.post("/v1/vectorize", data={"tier": "2"}, files={"other": ("a", b"x")})
    text = http.post("/v1/vectorize", content=b"x", headers={"content-type": "text/plain"})
    assert [r.status_code for r in (bad_base64, no_file, text)] == [400, 400, 400]
    assert [r.json()["error"]["param"] for r in (bad_base64, no_file, text)] == ["image", "file", "Content-Type"]
    assert vectorizer.received == []


def test_a_fallback_is_named_in_its_header():
    answer = asyncio.run(_vectorized(Vectorizer(fallback="untrained")))
    assert answer.headers["Easel-Fallback"] == "tier1 untrained"


async def _vectorized(vectorizer: Vectorizer):
    from starlette.requests import Request

    async def receive():
        return {"type": "http.request", "body": b"png", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-type", b"image/png")]}
    return await Vectorizing(vectorizer).answer(Request({**scope, "query_string": b""}, receive))


def _key(key_id: str, *scopes: Scope) -> ApiKey:
    return ApiKey(key_id, key_id, frozenset(scopes or {Scope.JOBS}), KeyLimits(), time.time())


class Unanswerable:
    """Generations that refuse every model: a job the runner claims fails, which none of these checks reads."""

    def model(self, request):
        raise InvalidInput("model: none served here", "model")


def test_a_job_is_seen_listed_and_canceled_only_by_its_owner_or_an_admin(tmp_path):
    url = f"sqlite:///{tmp_path / 'easel.db'}"

    async def scenario():
        store = open_job_store(url)
        jobs = BackgroundJobs(store, Unanswerable(), Experiments(open_experiment_store(url), frozenset))
        alice, bob, admin = _key("alice"), _key("bob"), _key("admin", Scope.ADMIN)
        job, _ = store.submit({"prompt": "a fox"}, Priority.NORMAL, None, Owner("alice"))
        with pytest.raises(NotFound):
            await jobs.visible(bob, job.id)
        with pytest.raises(NotFound):
            await jobs.cancel(bob, job.id)
        pages = [await jobs.page(key, None, 10, None) for key in (alice, bob, admin, None)]
        assert [[j["id"] for j in page["data"]] for page in pages] == [[job.id], [], [job.id], [job.id]]
        assert (await jobs.visible(admin, job.id)).id == job.id
        jobs.runner._loop_task.cancel()  # the replica's runner ends with its event loop

    asyncio.run(scenario())


class Handles:
    """The TextToImage and ModelResidency handles as Generations calls them, recording each call."""

    def __init__(self) -> None:
        self.calls = []
        self.generate = SimpleNamespace(remote=self._generate)
        self.begin = SimpleNamespace(remote=self._begin)
        self.end = SimpleNamespace(remote=self._end)

    def options(self, multiplexed_model_id: str):
        self.calls.append(("route", multiplexed_model_id))
        return self

    async def _generate(self, request, sent_at: float):
        from serve.text_to_image.deployment import EncodedImages

        self.calls.append(("generate", request.model))
        return EncodedImages([b"png"] * request.n, request.seed, 0, None)

    async def _begin(self, name: str):
        self.calls.append(("begin", name))
        return f"{name}.v1", 0.0

    async def _end(self, version_id: str):
        self.calls.append(("end", version_id))


def test_a_generation_is_answered_by_its_variant_cached_and_refused_before_any_load(engine_dir, tmp_path):
    from serve.cache import open_cache
    from serve.errors import InvalidInput
    from serve.experiments.policy import ExperimentSpec
    from serve.serving.current_models import CurrentModels
    from serve.serving.generations import Generations
    from serve.text_to_image.models import ServedModels
    from serve.text_to_image.schema import GenerationRequest

    url = f"sqlite:///{tmp_path / 'easel.db'}"
    models = CurrentModels(ServedModels.open({"easel-default": str(engine_dir), "b": str(engine_dir)}, max_cost=64))
    traffic = Experiments(open_experiment_store(url), models.names)
    traffic.define("logo", ExperimentSpec(variants={"b": 1.0}))
    handles = Handles()
    generations = Generations(models, handles, None, handles, open_cache(url, 1 << 20), traffic)

    async def scenario():
        asked = GenerationRequest(prompt="a red fox", model="logo", seed=3)
        first = await generations.answer(asked, "alice", fresh=False)
        again = await generations.answer(asked, "alice", fresh=False)
        with pytest.raises(InvalidInput) as refused:
            await generations.answer(GenerationRequest(prompt="x", model="nope"), None, fresh=False)
        return first, again, refused.value

    first, again, refused = asyncio.run(scenario())
    assert first.headers["easel-model"] == "b" and first.headers["easel-experiment"] == "logo"
    assert (first.headers["easel-cache"], again.headers["easel-cache"]) == ("miss", "hit")
    assert handles.calls == [("begin", "b"), ("route", "b.v1"), ("generate", "b"), ("end", "b.v1")]
    assert refused.field == "model"  # before the residency was asked for any model
    image_id = json.loads(first.body)["data"][0]["id"]
    assert traffic.served_by(image_id).model == "b"  # feedback can name the image
