"""Experiments on a real stack: an alias served by its variant, image ids, feedback into the shared posterior.

One small stack (the embedded model, 64x64, 2 steps). The experiment is declared by ``easel up --experiment``
(``StackOptions.experiments``) and through the admin routes; its state lives in the stack's store, which every
Gateway replica (the default Serve config runs two) reads.
"""

import time

import grpc
import pytest

from serve.experiments import open_experiment_store
from serve.experiments.policy import ExperimentSpec
from serve.grpc_api import easel_pb2, easel_pb2_grpc
from serve.stack import Stack, StackOptions

pytestmark = pytest.mark.integration

MODEL = "easel-default"
ALIAS = "icons-ab"
SMALL = {"prompt": "a red heart icon", "size": "64x64", "num_inference_steps": 2, "seed": 5}
GENERATE = "/v1/images/generations"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    options = StackOptions(
        port=0,
        dashboard=False,
        run_dir=tmp_path_factory.mktemp("run"),
        cache_bytes=0,
        experiments={ALIAS: ExperimentSpec(variants={MODEL: 1.0})},
    )
    with Stack(options) as stack:
        yield stack


@pytest.fixture(scope="module")
def store(stack):
    opened = open_experiment_store(stack.options.store)
    yield opened
    opened.close()


def test_the_declared_experiment_is_listed_with_its_prior(api):
    listed = api.get("/v1/experiments").json()["data"]
    assert [(e["id"], e["policy"], e["variants"]) for e in listed] == [(ALIAS, "split", {MODEL: 1.0})]
    assert listed[0]["posteriors"][MODEL] == {"alpha": 1.0, "beta": 1.0, "mean": 0.5, "feedback": 0}


def test_an_alias_is_served_by_its_variant_and_the_answer_names_it(api):
    answer = api.post(GENERATE, json=SMALL | {"model": ALIAS, "user": "ann", "n": 2})
    assert answer.status_code == 200, answer.text
    assert answer.headers["easel-model"] == MODEL and answer.headers["easel-experiment"] == ALIAS
    body = answer.json()
    assert body["model"] == MODEL and body["experiment"] == {"id": ALIAS, "variant": MODEL}
    ids = [item["id"] for item in body["data"]]
    assert len(set(ids)) == 2 and all(i.startswith("img_") for i in ids)
    plain = api.post(GENERATE, json=SMALL)
    assert plain.json()["model"] == MODEL and plain.json()["experiment"] is None
    assert "easel-experiment" not in plain.headers and plain.json()["data"][0]["id"] not in ids


def test_feedback_reaches_the_posterior_every_replica_reads_and_counts_once(api, store):
    image = api.post(GENERATE, json=SMALL | {"model": ALIAS, "user": "bob"}).json()["data"][0]["id"]
    rated = api.post("/v1/feedback", json={"image_id": image, "rating": 5})
    assert rated.status_code == 200, rated.text
    assert rated.json() == {"object": "feedback", "id": image, "reward": 1.0, "model": MODEL, "experiment": ALIAS}
    again = api.post("/v1/feedback", json={"image_id": image, "reward": 0.0})
    assert again.status_code == 409
    posterior = store.posteriors(ALIAS)[MODEL]
    assert (posterior.successes, posterior.failures, posterior.feedback) == (1.0, 0.0, 1)
    # the proxy spreads these over both Gateway replicas: each reads the one store
    seen = {api.get(f"/v1/experiments/{ALIAS}").json()["posteriors"][MODEL]["feedback"] for _ in range(8)}
    assert seen == {1}


def test_a_job_s_id_and_its_images_ids_take_feedback(api, store):
    submitted = api.post(GENERATE, json=SMALL | {"model": ALIAS, "background": True})
    assert submitted.status_code == 202 and submitted.headers["easel-experiment"] == ALIAS
    job_id = submitted.json()["id"]
    deadline = time.monotonic() + 120
    while (job := api.get(f"/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["status"] == "succeeded", job
    assert job["experiment"] == {"id": ALIAS, "variant": MODEL} and job["data"][0]["id"].startswith("img_")
    before = store.posteriors(ALIAS)[MODEL].feedback
    assert api.post("/v1/feedback", json={"job_id": job_id, "reward": 0.25}).status_code == 200
    assert api.post("/v1/feedback", json={"image_id": job["data"][0]["id"], "rating": 2}).status_code == 200
    assert store.posteriors(ALIAS)[MODEL].feedback == before + 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image_id": "img_" + "0" * 24, "reward": 1.0}, "image_id"),  # never generated
        ({"job_id": "job_" + "0" * 24, "rating": 3}, "job_id"),
        ({"image_id": "img_" + "0" * 24, "reward": 1.5}, "reward"),
        ({"image_id": "img_" + "0" * 24, "rating": 6}, "rating"),
        ({"image_id": "img_" + "0" * 24}, "reward"),
    ],
)
def test_bad_feedback_is_a_400_naming_the_field(api, body, field):
    refused = api.post("/v1/feedback", json=body)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == field, refused.text


@pytest.mark.parametrize(
    ("name", "spec", "field"),
    [
        ("logo-v", {"variants": {MODEL: 0.9, "v2": 0.1}}, "variants"),  # v2 is not served
        ("logo-v", {"variants": {MODEL: 0.9}}, "variants"),  # does not sum to 1
        ("logo-v", {"policy": "bandit", "variants": [MODEL]}, "variants"),
        (MODEL, {"variants": {MODEL: 1.0}}, "name"),  # would shadow the model
    ],
)
def test_a_malformed_experiment_is_a_400_naming_the_field(api, name, spec, field):
    refused = api.put(f"/v1/experiments/{name}", json=spec)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == field, refused.text


def test_experiments_are_defined_and_deleted_through_the_admin_routes(api):
    defined = api.put("/v1/experiments/logo-v", json={"variants": {MODEL: 1.0}})
    assert defined.status_code == 200 and defined.json()["id"] == "logo-v"
    assert api.post(GENERATE, json=SMALL | {"model": "logo-v"}).json()["experiment"]["id"] == "logo-v"
    assert api.delete("/v1/experiments/logo-v").status_code == 200
    assert api.delete("/v1/experiments/logo-v").status_code == 404
    assert api.get("/v1/experiments/logo-v").status_code == 404


def test_grpc_generate_names_the_variant_and_its_image_ids_take_grpc_feedback(stack, store):
    with grpc.insecure_channel(stack.info.grpc_address) as channel:
        easel = easel_pb2_grpc.EaselStub(channel)
        message = easel_pb2.GenerateRequest(
            prompt="a red heart icon", size="64x64", num_inference_steps=2, seed=9, model=ALIAS, user="cy"
        )
        events = list(easel.Generate(message, timeout=300))
        result = events[-1].result
        assert (result.model, result.experiment) == (MODEL, ALIAS) and result.images[0].id.startswith("img_")
        reply = easel.Feedback(easel_pb2.FeedbackRequest(image_id=result.images[0].id, rating=4), timeout=60)
        assert (reply.reward, reply.model, reply.experiment) == (0.75, MODEL, ALIAS)
        with pytest.raises(grpc.RpcError) as refused:
            easel.Feedback(easel_pb2.FeedbackRequest(image_id="img_" + "0" * 24, rating=4), timeout=60)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
