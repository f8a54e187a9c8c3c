"""Experiments on a real stack of two models: an alias split between them, sticky per user, the answer naming the
variant that served it (its image is that model's own), feedback into the posterior every Gateway replica reads.

One small stack: the embedded model and a second SD (the same weights with another noise schedule, so its images
differ), 64x64, 2 steps. The split is declared by ``easel up --experiment`` (``StackOptions.experiments``), the bandit
through the admin routes; their state lives in the stack's store, which both Gateway replicas (the default Serve
config runs two) read. The store is a real Redis server, as a stack across machines has it (its Ray's GCS keeps its
state there too, deleted at each stop); ``test_jobs.py``'s stack keeps its stores in SQLite.
"""

import time

import grpc
import httpx
import pytest

from serve.experiments import open_experiment_store
from serve.experiments.policy import ExperimentSpec, user_share
from serve.grpc_api import easel_pb2, easel_pb2_grpc
from serve.settings import DEFAULT_MODEL
from serve.stack import Stack, StackOptions
from tests.integration.conftest import pictures
from tests.integration.test_many_models import second_sd  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

SD = "sd"
ALIAS = "icons-ab"
SPLIT = {DEFAULT_MODEL: 0.5, SD: 0.5}
SMALL = {"prompt": "a red heart icon", "size": "64x64", "num_inference_steps": 2, "seed": 5}
GENERATE = "/v1/images/generations"


@pytest.fixture(scope="module")
def stack(second_sd, new_redis_database, tmp_path_factory):  # noqa: F811 - the fixture imported above
    options = StackOptions(
        port=0,
        dashboard=False,
        models={DEFAULT_MODEL: None, SD: second_sd},
        repository=tmp_path_factory.mktemp("repository"),
        run_dir=tmp_path_factory.mktemp("run"),
        cache_bytes=0,
        experiments={ALIAS: ExperimentSpec(variants=SPLIT)},
        store_url=new_redis_database(),
    )
    with Stack(options) as stack:
        yield stack


@pytest.fixture(scope="module")
def store(stack):
    opened = open_experiment_store(stack.options.store)
    yield opened
    opened.close()


def _variant_of(user: str) -> str:
    """The variant the split gives ``user`` (the split's own rule: its share against the sorted variants' weights)."""
    return DEFAULT_MODEL if user_share(ALIAS, user) < SPLIT[DEFAULT_MODEL] else SD


def test_the_declared_experiment_is_listed_with_its_prior(api):
    listed = api.get("/v1/experiments").json()["data"]
    assert [(e["id"], e["policy"], e["variants"]) for e in listed] == [(ALIAS, "split", SPLIT)]
    assert listed[0]["posteriors"][SD] == {"alpha": 1.0, "beta": 1.0, "mean": 0.5, "feedback": 0}


def test_each_user_keeps_one_variant_which_serves_the_image_and_is_named(api):
    users = [f"user-{i}" for i in range(12)]
    expected = {user: _variant_of(user) for user in users}
    chosen = [next(u for u in users if expected[u] == model) for model in (DEFAULT_MODEL, SD)]  # one user each
    for user in chosen:
        answers = [api.post(GENERATE, json=SMALL | {"model": ALIAS, "user": user}) for _ in range(2)]
        assert all(a.status_code == 200 for a in answers), answers[0].text
        assert {a.headers["easel-model"] for a in answers} == {expected[user]}  # sticky: the same variant twice
        assert all(a.headers["easel-experiment"] == ALIAS for a in answers)
        body = answers[0].json()
        assert body["model"] == expected[user] and body["experiment"] == {"id": ALIAS, "variant": expected[user]}
        direct = api.post(GENERATE, json=SMALL | {"model": expected[user]}).json()  # the variant named itself
        assert pictures(body) == pictures(direct) and direct["experiment"] is None
    sd, default = (api.post(GENERATE, json=SMALL | {"model": m}).json() for m in (SD, DEFAULT_MODEL))
    assert pictures(sd) != pictures(default)  # so the images above say which model drew them


def test_feedback_reaches_the_posterior_every_replica_reads_and_counts_once(api, store):
    user = next(u for u in (f"rater-{i}" for i in range(50)) if _variant_of(u) == SD)
    image = api.post(GENERATE, json=SMALL | {"model": ALIAS, "user": user}).json()["data"][0]["id"]
    rated = api.post("/v1/feedback", json={"image_id": image, "rating": 5})
    assert rated.status_code == 200, rated.text
    assert rated.json() == {"object": "feedback", "id": image, "reward": 1.0, "model": SD, "experiment": ALIAS}
    assert api.post("/v1/feedback", json={"image_id": image, "reward": 0.0}).status_code == 409
    posterior = store.posteriors(ALIAS)[SD]
    assert (posterior.successes, posterior.failures, posterior.feedback) == (1.0, 0.0, 1)
    # the proxy spreads these over both Gateway replicas: each reads the one store
    seen = {api.get(f"/v1/experiments/{ALIAS}").json()["posteriors"][SD]["feedback"] for _ in range(8)}
    assert seen == {1}


def test_a_bandit_learns_from_feedback_and_every_replica_draws_from_the_same_posterior(api, store):
    defined = api.put("/v1/experiments/art", json={"policy": "bandit", "variants": [DEFAULT_MODEL, SD]})
    assert defined.status_code == 200, defined.text
    served = []
    for i in range(6):  # feedback that favours sd: 1 for its images, 0 for the default's
        answer = api.post(GENERATE, json=SMALL | {"model": "art", "seed": 100 + i}).json()
        served.append(answer["model"])
        reward = 1.0 if answer["model"] == SD else 0.0
        assert api.post("/v1/feedback", json={"image_id": answer["data"][0]["id"], "reward": reward}).status_code == 200
    posteriors = store.posteriors("art")
    assert sum(p.feedback for p in posteriors.values()) == 6
    for model, posterior in posteriors.items():  # each variant's posterior holds exactly its own rewards
        assert posterior.successes == (served.count(model) if model == SD else 0.0)
    listed = {api.get("/v1/experiments/art").json()["posteriors"][SD]["alpha"] for _ in range(8)}
    assert listed == {1.0 + served.count(SD)}
    assert api.delete("/v1/experiments/art").status_code == 200


def test_a_personal_bandit_keeps_each_user_s_record_which_the_preferences_routes_show_and_delete(api):
    """Issue 64 part 5 on a real stack: the wiring (the learning is simulated in test_experiments_personal.py)."""
    defined = api.put(
        "/v1/experiments/mine", json={"policy": "bandit", "mode": "personal", "variants": [DEFAULT_MODEL, SD]}
    )
    assert defined.status_code == 200 and defined.json()["mode"] == "personal", defined.text
    liked, served = {"ann": SD, "bob": DEFAULT_MODEL}, {"ann": [], "bob": []}
    for i in range(4):
        for user, favourite in liked.items():
            answer = api.post(GENERATE, json=SMALL | {"model": "mine", "user": user, "seed": 200 + i}).json()
            served[user].append(answer["model"])
            reward = {"image_id": answer["data"][0]["id"], "reward": float(answer["model"] == favourite)}
            assert api.post("/v1/feedback", json=reward).status_code == 200
    for user, favourite in liked.items():  # an open API: every record is shown (owner null)
        by = {record["by"]: record for record in api.get(f"/v1/users/{user}/preferences").json()["data"]}
        assert sorted(by) == ["experiment", "model", "sampler"], by  # and what made the images (no LoRA here)
        record = by["experiment"]
        assert (record["owner"], record["experiment"]) == (None, "mine")
        assert by["model"]["variants"].keys() == record["variants"].keys()
        assert {model: v["feedback"] for model, v in record["variants"].items()} == {
            model: served[user].count(model) for model in set(served[user])
        }
        assert favourite not in served[user] or record["preferred"] == favourite, (record, served[user])
    assert api.delete("/v1/users/ann/preferences").json()["deleted"] == 2 * len(set(served["ann"])) + 1
    assert api.get("/v1/users/ann/preferences").status_code == 404
    assert api.get("/v1/users/bob/preferences").status_code == 200
    assert api.delete("/v1/experiments/mine").status_code == 200
    left = api.get("/v1/users/bob/preferences").json()["data"]  # the experiment's records went with it; tastes stay
    assert sorted(record["by"] for record in left) == ["model", "sampler"]


def test_a_job_s_variant_is_chosen_at_submission_and_its_ids_take_feedback(api, store):
    user = next(u for u in (f"jobber-{i}" for i in range(50)) if _variant_of(u) == DEFAULT_MODEL)
    submitted = api.post(GENERATE, json=SMALL | {"model": ALIAS, "user": user, "background": True})
    assert submitted.status_code == 202 and submitted.headers["easel-model"] == DEFAULT_MODEL
    job_id = submitted.json()["id"]
    deadline = time.monotonic() + 120
    while (job := api.get(f"/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["status"] == "succeeded", job
    assert job["experiment"] == {"id": ALIAS, "variant": DEFAULT_MODEL} and job["data"][0]["id"].startswith("img_")
    before = store.posteriors(ALIAS).get(DEFAULT_MODEL)
    assert api.post("/v1/feedback", json={"job_id": job_id, "reward": 0.25}).status_code == 200
    assert api.post("/v1/feedback", json={"image_id": job["data"][0]["id"], "rating": 2}).status_code == 200
    assert store.posteriors(ALIAS)[DEFAULT_MODEL].feedback == (before.feedback if before else 0) + 2


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"image_id": "img_" + "0" * 24, "reward": 1.0}, 404, "image_id"),  # never generated
        ({"job_id": "job_" + "0" * 24, "rating": 3}, 404, "job_id"),
        ({"image_id": "img_" + "0" * 24, "reward": 1.5}, 400, "reward"),
        ({"image_id": "img_" + "0" * 24, "rating": 6}, 400, "rating"),
        ({"image_id": "img_" + "0" * 24}, 400, "reward"),
    ],
)
def test_bad_feedback_is_a_4xx_naming_the_field(api, body, status, field):
    refused = api.post("/v1/feedback", json=body)
    assert refused.status_code == status and refused.json()["error"]["param"] == field, refused.text


@pytest.mark.parametrize(
    ("name", "spec", "field"),
    [
        ("logo-v", {"variants": {DEFAULT_MODEL: 0.9, "v2": 0.1}}, "variants"),  # v2 is not served
        ("logo-v", {"variants": {DEFAULT_MODEL: 0.9, SD: 0.2}}, "variants"),  # does not sum to 1
        ("logo-v", {"policy": "bandit", "variants": [SD]}, "variants"),
        (SD, {"variants": {DEFAULT_MODEL: 1.0}}, "name"),  # would shadow a model
    ],
)
def test_a_malformed_experiment_is_a_400_naming_the_field(api, name, spec, field):
    refused = api.put(f"/v1/experiments/{name}", json=spec)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == field, refused.text


def test_an_unknown_model_or_a_deleted_experiment_is_a_400_naming_model(api):
    assert api.put("/v1/experiments/gone", json={"variants": {SD: 1.0}}).status_code == 200
    assert api.delete("/v1/experiments/gone").status_code == 200
    assert api.delete("/v1/experiments/gone").status_code == 404 and api.get("/v1/experiments/gone").status_code == 404
    refused = api.post(GENERATE, json=SMALL | {"model": "gone"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"


def test_grpc_generate_names_the_variant_and_its_image_ids_take_grpc_feedback(stack):
    user = next(u for u in (f"caller-{i}" for i in range(50)) if _variant_of(u) == SD)
    with grpc.insecure_channel(stack.info.grpc_address) as channel:
        easel = easel_pb2_grpc.EaselStub(channel)
        message = easel_pb2.GenerateRequest(
            prompt="a red heart icon", size="64x64", num_inference_steps=2, seed=9, model=ALIAS, user=user
        )
        result = list(easel.Generate(message, timeout=300))[-1].result
        assert (result.model, result.experiment) == (SD, ALIAS) and result.images[0].id.startswith("img_")
        reply = easel.Feedback(easel_pb2.FeedbackRequest(image_id=result.images[0].id, rating=4), timeout=60)
        assert (reply.reward, reply.model, reply.experiment) == (0.75, SD, ALIAS)
        with pytest.raises(grpc.RpcError) as refused:
            easel.Feedback(easel_pb2.FeedbackRequest(image_id="img_" + "0" * 24, rating=4), timeout=60)
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND


def test_a_model_added_and_an_experiment_edited_through_the_api_are_still_served_after_down_and_up(stack):
    """The API's changes are the stack's state: a restart over the same run folder and store starts from them.

    Last in the module: it stops the module's stack (``easel down``) and starts it again with the same options.
    """
    edited = {DEFAULT_MODEL: 0.25, "sd-copy": 0.75}
    with httpx.Client(base_url=stack.info.api_url, timeout=300) as api:
        added = api.post("/v1/models", json={"name": "sd-copy", "engine_dir": str(stack.models[SD].folder.path)})
        assert added.status_code == 200, added.text
        assert api.put(f"/v1/experiments/{ALIAS}", json={"variants": edited}).status_code == 200
    stack.stop()
    with Stack(stack.options) as again, httpx.Client(base_url=again.info.api_url, timeout=300) as api:
        assert [model["id"] for model in api.get("/v1/models").json()["data"]] == [DEFAULT_MODEL, SD, "sd-copy"]
        assert api.get(f"/v1/experiments/{ALIAS}").json()["variants"] == edited  # not the declared split
        served = api.post(GENERATE, json=SMALL | {"model": "sd-copy"})
        assert served.status_code == 200 and served.headers["easel-model"] == "sd-copy", served.text
        user = next(u for u in (f"after-{i}" for i in range(50)) if user_share(ALIAS, u) >= edited[DEFAULT_MODEL])
        via_alias = api.post(GENERATE, json=SMALL | {"model": ALIAS, "user": user})
        assert via_alias.status_code == 200 and via_alias.headers["easel-model"] == "sd-copy", via_alias.text
