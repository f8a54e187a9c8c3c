"""The Gateway's plain serving classes, without Ray: generations, the vectorize route, jobs by owner."""

import asyncio
import base64
import io
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve.access.keys import ApiKey, KeyLimits
from serve.errors import InvalidInput, NotFound
from serve.experiments import open_experiment_store
from serve.experiments.traffic import Assignment, Experiments
from serve.http.app import api
from serve.images.raster import encode_image
from serve.jobs import open_job_store
from serve.jobs.model import Owner
from serve.priority import Priority
from serve.routes import Scope
from serve.serving.admission import Admission
from serve.serving.jobs import BackgroundJobs
from serve.serving.vectorize import VectorizeBody, Vectorizing
from serve.vectorize.deployment import VectorizeResult
from serve.vectorize.schema import VectorizeOptions


class Vectorizer:
    """The Vectorizer deployment's handle as the class calls it (``vectorize.remote``), recording what it got."""

    def __init__(self, fallback: str | None = None) -> None:
        self.received, self.fallback = [], fallback
        self.vectorize = SimpleNamespace(remote=self._vectorize)

    async def _vectorize(self, image: bytes, options, sent_at: float) -> VectorizeResult:
        self.received.append((image, options))
        why = "tier1 untrained" if self.fallback else "asked"
        return VectorizeResult("<svg/>", "1", "auto", why, None, {}, None, None, False, 6, 0, self.fallback, 1)


class Residency:
    """The ModelResidency's handle as the vectorize versions call it, recording the changes it got."""

    def __init__(self) -> None:
        self.changes = []
        self.change_vectorize = SimpleNamespace(remote=self._change)

    async def _change(self, method: str, body, version=None) -> dict:
        self.changes.append((method, body, version))
        return {"object": "vectorize.model", "version": 2}


PNG = encode_image(np.full((16, 16, 3), 200, np.uint8), "png")
"""An icon's upload: admission reads its header (16 x 16) to price it."""


@pytest.fixture
def client():
    """The HTTP app with a replica's vectorize class and the admission in front of it, as the Gateway sets them."""
    vectorizer = Vectorizer()
    vectorizing = Vectorizing(vectorizer, Residency())
    admission = Admission(None, None, vectorizing=vectorizing)
    api.state.gateway = SimpleNamespace(vectorizing=vectorizing, admission=admission)
    yield TestClient(api), vectorizer
    del api.state.gateway


def test_each_encoding_of_a_vectorize_request_reaches_the_vectorizer_with_its_options(client):
    http, vectorizer = client
    png = PNG
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
    vectorizing = Vectorizing(Vectorizer(fallback="untrained"), Residency())
    admitted = asyncio.run(vectorizing.admitted(VectorizeBody(PNG, VectorizeOptions()), None))
    answer = asyncio.run(vectorizing.answer(admitted, None, "image/svg+xml"))
    assert answer.headers["Easel-Fallback"] == "tier1 untrained"


def _key(key_id: str, *scopes: Scope) -> ApiKey:
    return ApiKey(key_id, key_id, frozenset(scopes or {Scope.JOBS}), KeyLimits(), time.time())


class Unanswerable:
    """Generations that refuse every model: a job the runner claims fails, which none of these checks reads."""

    async def readmitted(self, request, assignment, policy, owner):
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


class Routed:
    """The TextToImage handle as ``options(multiplexed_model_id=...)`` answers it: its calls go to that model."""

    def __init__(self, handles: "Handles", model: str) -> None:
        self.generate = SimpleNamespace(remote=lambda *args, **kw: handles._generate(*args, model=model, **kw))
        self.generate_stream = SimpleNamespace(
            remote=lambda *args, **kw: handles.generate_stream.remote(*args, model=model, **kw)
        )

    def options(self, multiplexed_model_id: str | None = None, stream: bool = False):
        return self


class Handles:
    """The TextToImage and ModelResidency handles as Generations calls them, recording each call."""

    def __init__(self) -> None:
        self.calls = []
        self.generate = SimpleNamespace(remote=self._generate)
        self.generate_stream = SimpleNamespace(remote=self._stream)
        self.begin = SimpleNamespace(remote=self._begin)
        self.end = SimpleNamespace(remote=self._end)

    def options(self, multiplexed_model_id: str | None = None, stream: bool = False):
        if multiplexed_model_id is None:
            return self
        self.calls.append(("route", multiplexed_model_id))
        return Routed(self, multiplexed_model_id.rsplit(".v", 1)[0])

    async def _generate(self, drawing, plan, sent_at: float, cache_scope: str = "", model: str = ""):
        from serve.models.admission import Plan
        from serve.text_to_image.drawing import Drawing
        from serve.text_to_image.generation import EncodedImages

        assert isinstance(plan, Plan) and plan.cost > 0  # the Gateway's plan: the replica checks nothing again
        assert isinstance(drawing, Drawing)  # the generation typed at the door, never the API request
        self.calls.append(("generate", model, cache_scope))
        answer, rows = drawing.answer, drawing.answer.rows_per_prompt * len(drawing.jobs)  # n of each prompt
        png = encode_image(np.full((8, 8, 3), drawing.seed % 256, np.uint8), answer.raster_format)
        scores = [{"clip_score": 0.5}] * rows if answer.scores else None  # as a scorer's
        return EncodedImages([png] * rows, drawing.seed, 0, None, scores=scores)

    async def _stream(self, drawing, plan, sent_at: float, cache_scope: str = "", model: str = ""):
        """The generation as gRPC's ``Generate`` streams it: one step, then the images."""
        from serve.jobs.model import Progress

        yield Progress(1, 1, None)
        yield await self._generate(drawing, plan, sent_at, cache_scope, model)

    async def _begin(self, version_id: str):
        self.calls.append(("begin", version_id))
        return version_id, 0.0

    async def _end(self, version_id: str):
        self.calls.append(("end", version_id))


def test_a_generation_is_answered_by_its_variant_cached_and_refused_before_any_load(engine_dir, tmp_path):
    from serve.cache import open_cache
    from serve.errors import InvalidInput
    from serve.experiments.policy import ExperimentSpec
    from serve.models.served import ServedModels
    from serve.protocol.schema import GenerationRequest
    from serve.serving.current_models import CurrentModels
    from serve.serving.generations import Generations

    url = f"sqlite:///{tmp_path / 'easel.db'}"
    models = CurrentModels(ServedModels.open({"easel-default": str(engine_dir), "b": str(engine_dir)}, max_cost=64))
    traffic = Experiments(open_experiment_store(url), models.names)
    traffic.define("logo", ExperimentSpec(variants={"b": 1.0}))
    handles = Handles()
    generations = Generations(models, handles, None, handles, open_cache(url, 1 << 20), traffic)

    async def scenario():
        asked = GenerationRequest(prompt="a red fox", model="logo", seed=3)
        admitted = await generations.admitted(asked, None)  # as admission admits it: resolved, checked, its cost
        first = await generations.answer(admitted, "alice", fresh=False)
        again = await generations.answer(admitted, "alice", fresh=False)
        other = await generations.answer(admitted, "bob", fresh=False)  # another key's cache: generated for it
        with pytest.raises(InvalidInput) as refused:
            await generations.admitted(GenerationRequest(prompt="x", model="nope"), None)
        return admitted, first, again, other, refused.value

    admitted, first, again, other, refused = asyncio.run(scenario())
    variant = models.now().resolve("b").work(admitted.request).cost
    assert admitted.assignment == Assignment("b", "logo") and admitted.cost == variant  # the drawn variant's
    assert first.headers["easel-model"] == "b" and first.headers["easel-experiment"] == "logo"
    assert [r.headers["easel-cache"] for r in (first, again, other)] == ["miss", "hit", "miss"]
    generated = [("begin", "b.v1"), ("route", "b.v1"), ("generate", "b", "alice"), ("end", "b.v1")]
    assert handles.calls == generated + [(*call[:2], "bob") if call[0] == "generate" else call for call in generated]
    assert refused.field == "model"  # before the residency was asked for any model
    image_id = json.loads(first.body)["data"][0]["id"]
    assert traffic.served_by(image_id) == Assignment("b", "logo")  # feedback can name the image
    cached_id = json.loads(again.body)["data"][0]["id"]
    assert traffic.served_by(cached_id) == Assignment("b")  # a cached answer's feedback is no evidence


@pytest.mark.parametrize("asked", ["b", "logo"])
def test_a_generation_reads_the_model_table_once_and_resolves_its_model_once(engine_dir, tmp_path, monkeypatch, asked):
    """Admitted (a model, or an experiment's alias), its chain looked up, kept loaded, drawn: one look at the model
    table, one resolution of its name, and the residency and replica asked for the admitted version by its id."""
    from serve.experiments.policy import ExperimentSpec
    from serve.models.served import ServedModels
    from serve.protocol.schema import GenerationRequest
    from serve.serving.current_models import CurrentModels
    from serve.serving.generations import Generations

    models = CurrentModels(ServedModels.open({"easel-default": str(engine_dir), "b": str(engine_dir)}, max_cost=64))
    traffic = Experiments(open_experiment_store(f"sqlite:///{tmp_path / 'easel.db'}"), models.names)
    traffic.define("logo", ExperimentSpec(variants={"b": 1.0}))
    handles = Handles()
    generations = Generations(models, handles, None, handles, None, traffic)
    reads, resolved = [], []
    refreshed, resolve = ServedModels.refreshed, ServedModels.resolve
    monkeypatch.setattr(ServedModels, "refreshed", lambda self: reads.append(1) or refreshed(self))
    monkeypatch.setattr(
        ServedModels, "resolve", lambda self, name, *a: resolved.append(name) or resolve(self, name, *a)
    )

    async def scenario():
        admitted = await generations.admitted(GenerationRequest(prompt="a red fox", model=asked, seed=3), None)
        return await generations.answer(admitted, "alice", fresh=True)

    answer = asyncio.run(scenario())
    assert answer.status_code == 200 and answer.headers["easel-model"] == "b"
    assert (len(reads), resolved) == (1, ["b"])
    assert handles.calls == [("begin", "b.v1"), ("route", "b.v1"), ("generate", "b", "alice"), ("end", "b.v1")]


def test_an_experiment_rewarded_by_a_score_measures_each_image_and_says_it_only_if_asked(engine_dir, tmp_path):
    from serve.experiments.policy import ExperimentSpec
    from serve.models.served import ServedModels
    from serve.protocol.schema import GenerationRequest
    from serve.serving.current_models import CurrentModels
    from serve.serving.generations import Generations

    url = f"sqlite:///{tmp_path / 'easel.db'}"
    models = CurrentModels(ServedModels.open({"easel-default": str(engine_dir), "b": str(engine_dir)}, max_cost=64))
    traffic = Experiments(open_experiment_store(url), models.names, scores=("clip_score",))
    traffic.define("art", ExperimentSpec(policy="bandit", variants=["easel-default", "b"], reward="clip_score"))
    generations = Generations(models, Handles(), None, Handles(), None, traffic, scores=("clip_score",))

    async def answer(scores: bool) -> dict:
        asked = GenerationRequest(prompt="a red fox", model="art", seed=3, n=2, scores=scores)
        return json.loads((await generations.answer(await generations.admitted(asked, None), None, False)).body)

    plain, scored = asyncio.run(answer(False)), asyncio.run(answer(True))
    assert all("scores" not in item for item in plain["data"])  # measured for the reward alone
    assert [item["scores"] for item in scored["data"]] == [{"clip_score": 0.5}] * 2
    posteriors = traffic.store.posteriors("art")  # each image's cosine 0.5: a reward of 0.75
    assert sum(p.feedback for p in posteriors.values()) == 4
    assert sum(p.successes for p in posteriors.values()) == pytest.approx(3.0)
    served = traffic.store.served(plain["data"][0]["id"])
    assert served.measured and served.reward == 0.75


def test_what_a_model_cannot_run_is_refused_before_any_load_and_as_a_job_at_submission(
    engine_dir, transformer_engine_dirs, tmp_path
):
    """A sampler the model's family lacks, or step caching on a stack without its engines: a 400 before the residency
    loads anything, and a job's at submission (the replica alone found them out, after a load, a job's after a 202).
    """
    from serve.models.served import ServedModels
    from serve.protocol.schema import GenerationRequest
    from serve.serving.current_models import CurrentModels
    from serve.serving.generations import Generations

    url = f"sqlite:///{tmp_path / 'easel.db'}"
    served = {"easel-default": str(engine_dir), "b": str(engine_dir), "sd3": str(transformer_engine_dirs["tiny-sd3"])}
    models = CurrentModels(ServedModels.open(served))
    traffic = Experiments(open_experiment_store(url), models.names)
    handles = Handles()
    generations = Generations(models, handles, None, handles, None, traffic)
    cached = GenerationRequest(prompt="a red fox", model="b", cache_interval=2)
    sampled = GenerationRequest(prompt="a red fox", model="sd3", scheduler="dpmpp_2m")

    async def scenario():
        refusals = []
        for asked in (cached, sampled):
            for background in (False, True):  # admission admits a job as its submission arrives
                with pytest.raises(InvalidInput) as refused:
                    await generations.admitted(asked.model_copy(update={"background": background}), None)
                refusals.append(refused.value.field)
        return refusals

    assert asyncio.run(scenario()) == ["cache_interval"] * 2 + ["scheduler"] * 2
    assert handles.calls == []  # no model asked to load, no replica called


def test_a_vectorize_answer_names_its_model_version(client):
    http, _ = client
    response = http.post("/v1/vectorize", content=PNG, headers={"content-type": "image/png"})
    assert response.headers["Easel-Model-Version"] == "1"


@pytest.mark.parametrize(
    ("method", "body", "field"),
    [
        ("PUT", {}, "body"),
        ("PUT", {"trained_dir": "/x", "version": 2}, "body"),
        ("PUT", {"version": 0}, "version"),
        ("PUT", {"x": 1}, "x"),
        ("POST", {"version": 2}, "trained_dir"),  # POST installs a folder; PUT also makes a version current
        ("POST", {"trained_dir": "/x", "version": 2}, "version"),
    ],
)
def test_a_vectorize_version_change_it_cannot_read_is_a_400_and_changes_nothing(client, method, body, field):
    http, _ = client
    residency = api.state.gateway.vectorizing.residency
    response = http.request(method, "/v1/vectorize/models", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == field, response.text
    assert residency.changes == []
    assert http.put("/v1/vectorize/models", json={"version": 1}).status_code == 200
    assert http.delete("/v1/vectorize/models/3").status_code == 200
    assert [(m, v) for m, _, v in residency.changes] == [("PUT", None), ("DELETE", 3)]


@pytest.mark.parametrize("version", [True, "2", 2.5])
def test_a_version_to_serve_again_is_an_integer_as_json_schema_counts_one(client, version):
    """``{"version": true}`` made version 1 current (easel contract check, an admin key); ``2.0`` is JSON Schema's 2."""
    http, _ = client
    residency = api.state.gateway.vectorizing.residency
    before = list(residency.changes)
    response = http.put("/v1/vectorize/models", json={"version": version})
    assert response.status_code == 400 and response.json()["error"]["param"] == "version", response.text
    assert residency.changes == before


class PolicyRecorder:
    """Generations that record the moderation policy and owner each job runs under, then refuse it (it fails)."""

    def __init__(self) -> None:
        self.runs = []

    async def readmitted(self, request, assignment, policy, owner):
        self.runs.append((request.prompt, policy, owner))
        raise InvalidInput("model: none served here", "model")


def test_a_job_runs_under_the_moderation_policy_stored_with_it_and_one_stored_without_under_the_stack_s(tmp_path):
    from serve.moderation import Policy
    from serve.serving.jobs import SUBMITTED_POLICY

    url = f"sqlite:///{tmp_path / 'easel.db'}"

    async def scenario():
        store, recorder = open_job_store(url), PolicyRecorder()
        jobs = BackgroundJobs(store, recorder, Experiments(open_experiment_store(url), frozenset))
        jobs.runner._loop_task.cancel()  # this test runs the jobs itself
        blocked, _ = store.submit({"prompt": "a fox", SUBMITTED_POLICY: "block"}, Priority.NORMAL, None, Owner("k1"))
        before, _ = store.submit({"prompt": "an owl"}, Priority.NORMAL, None, None)  # stored before policies were
        for job in (blocked, before):
            with pytest.raises(InvalidInput):
                await jobs.run(job, None)
        return recorder.runs

    assert asyncio.run(scenario()) == [("a fox", Policy.BLOCK, "k1"), ("an owl", None, None)]


class ColoredHandles(Handles):
    """:class:`Handles` whose generations are real PNGs: red when the prompt says red (what the checker flags)."""

    async def _generate(self, drawing, plan, sent_at: float, cache_scope: str = "", model: str = ""):
        from PIL import Image

        from serve.text_to_image.generation import EncodedImages

        prompt = drawing.sampling.prompt
        self.calls.append(("generate", prompt))
        out = io.BytesIO()
        Image.new("RGB", (8, 8), (250, 0, 0) if "red" in prompt else (0, 0, 250)).save(out, format="PNG")
        return EncodedImages([out.getvalue()] * drawing.sampling.n, drawing.seed, 0, None)


def test_a_flagged_answer_is_never_a_cache_hit_and_a_policy_s_answers_are_its_own(engine_dir, tmp_path):
    """With a real result cache: a repeat of a flagged generation is generated again; a clean one is a hit, but not
    for a request under another policy (its marks differ)."""
    from serve.cache import open_cache
    from serve.models.served import ServedModels
    from serve.moderation import Policy
    from serve.moderation.text import Blocklist
    from serve.protocol.schema import GenerationRequest
    from serve.serving.current_models import CurrentModels
    from serve.serving.generations import Generations
    from serve.serving.moderation import Moderation
    from tests.unit.test_moderation import RedFlagger

    url = f"sqlite:///{tmp_path / 'easel.db'}"
    models = CurrentModels(ServedModels.open({"easel-default": str(engine_dir)}, max_cost=64))
    handles = ColoredHandles()
    moderation = Moderation(Policy.OFF, Blocklist(), RedFlagger())
    traffic = Experiments(open_experiment_store(url), models.names)
    generations = Generations(models, handles, None, handles, open_cache(url, 1 << 20), traffic, moderation=moderation)
    flagging = ApiKey("k1", "app", frozenset({Scope.GENERATE}), KeyLimits(moderation=Policy.FLAG), time.time())

    async def answered(prompt: str, key: ApiKey | None):
        admitted = await generations.admitted(GenerationRequest(prompt=prompt, seed=3), key)
        response = await generations.answer(admitted, "alice", fresh=False)
        return response.headers.get("easel-cache"), json.loads(response.body)["data"][0].get("moderation")

    async def scenario():
        prompts = [("a red fox", flagging)] * 2 + [("a blue fox", flagging)] * 2 + [("a blue fox", None)] * 2
        return [await answered(prompt, key) for prompt, key in prompts]

    (red, red_again, blue, blue_again, off, off_again) = asyncio.run(scenario())
    assert (
        red
        == red_again
        == (None, {"flagged": True, "categories": {"violence": True}, "category_scores": {"violence": 0.9}})
    )
    assert blue[0] == "miss" and blue_again == ("hit", blue[1]) and blue[1]["flagged"] is False
    assert off == ("miss", None) and off_again == ("hit", None)  # the same request under off: not the flag answers
    assert [call[1] for call in handles.calls if call[0] == "generate"] == ["a red fox"] * 2 + ["a blue fox"] * 2


def test_under_block_a_flagged_image_is_blacked_out_before_it_is_traced_to_svg(engine_dir, tmp_path):
    from PIL import Image

    from serve.models.served import ServedModels
    from serve.moderation import Policy
    from serve.moderation.text import Blocklist
    from serve.protocol.schema import GenerationRequest
    from serve.serving.current_models import CurrentModels
    from serve.serving.generations import Generations
    from serve.serving.moderation import Moderation
    from tests.unit.test_moderation import RedFlagger

    url = f"sqlite:///{tmp_path / 'easel.db'}"
    models = CurrentModels(ServedModels.open({"easel-default": str(engine_dir)}, max_cost=64))
    handles, vectorizer = ColoredHandles(), Vectorizer()
    traffic = Experiments(open_experiment_store(url), models.names)
    moderation = Moderation(Policy.BLOCK, Blocklist(), RedFlagger())
    generations = Generations(models, handles, vectorizer, handles, None, traffic, moderation=moderation)

    async def scenario():
        asked = GenerationRequest(prompt="a red fox", seed=3, output_format="svg")
        return await generations.answer(await generations.admitted(asked, None), None, fresh=False)

    answer = json.loads(asyncio.run(scenario()).body)["data"][0]
    [(traced, _)] = vectorizer.received
    pixels = np.asarray(Image.open(io.BytesIO(traced)))
    assert pixels.shape == (8, 8, 3) and not pixels.any()  # the red picture never reached the Vectorizer
    assert answer["moderation"]["flagged"] is True
