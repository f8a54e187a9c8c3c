"""Three models in one stack (the embedded default, a second tiny SD and the tiny SDXL): each request's `model` picks
one, each image is that model's (parity with diffusers), OpenAI's client lists them, an unknown one is a 400.

The room for weights holds two of the three: a cold model loads on demand and the least recently used one with no
request in flight is unloaded for it; no request fails meanwhile.

Last, the models change while the stack runs: one is replaced under a load of synchronous generations and jobs (none
fails, none is lost, a job in flight finishes on the old version, new requests get the new one), one is added and
removed (its queued jobs fail naming it), and changes that cannot be made are refused naming the field.
"""

import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import openai
import pytest
from ray import serve as ray_serve

from build_engines.text_to_image.default_model import schedule_variant
from loadtests.benchmarks.models import MixedLoad
from serve.access import ACTIVE_CHECK_S, open_key_store
from serve.access.keys import API_KEY_ENV, KeyLimits
from serve.cli import admin as model_admin
from serve.cli.main import built_engines
from serve.grpc_api import easel_pb2, easel_pb2_grpc
from serve.processes.signals import stack_replicas
from serve.routes import Scope
from serve.settings import DEFAULT_MODEL
from serve.stack import Stack, StackOptions
from tests.conftest import diffusers_reference, psnr, reference_images
from tests.integration.conftest import (
    GENERATE,
    LOCAL,
    batch_histogram,
    decode_images,
    post_together,
    triton_killed,
)

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

SD, XL = "sd", "xl"
MODELS = (DEFAULT_MODEL, SD, XL)
LOAD_SECONDS = "Easel-Model-Load-Seconds"
LOAD_WAIT_S = 120
"""How long a question to Triton's HTTP may wait. Triton loads a model on the HTTP thread that read the load request
(triton-inference-server/server#8635), and a question on a connection that thread holds waits out the load (a cold
model's). The residency test failed in CI on a read timeout with this wait at 10 s (its only short one)."""
LONG = {"num_inference_steps": 60, "size": "192x192", "n": 2, "seed": 11}
"""A job that runs across a replace (a tiny model's step at 64x64 takes milliseconds). The replace takes about a
second beside the load, the two long requests together half a minute (150 steps took two minutes)."""
BODY = {
    "prompt": "a red heart icon",
    "size": "64x64",
    "num_inference_steps": 2,
    "guidance_scale": 7.5,
    "seed": 3,
    "scheduler": "ddim",
}


@pytest.fixture(scope="module")
def second_sd(default_model, tmp_path_factory):
    """A second SD model: the embedded default with another noise schedule (so its images differ, its engines too)."""
    return schedule_variant(default_model, tmp_path_factory.mktemp("second-sd") / "model")


@pytest.fixture(scope="module")
def room(default_model, second_sd, tiny_xl_model, tmp_path_factory) -> int:
    """Room for the weights of any two of the three models, not of all three (as their engine folders measured them).

    The engines are built here (the stack then finds them built): the room is all three's weights less half the
    smallest one's.
    """
    from build_engines.text_to_image.build import build

    repository = tmp_path_factory.mktemp("measured")
    weights = [build(folder, repository).weights_bytes for folder in (default_model, second_sd, tiny_xl_model)]
    return sum(weights) - min(weights) // 2


@pytest.fixture(scope="module")
def stack(second_sd, tiny_xl_model, room, tmp_path_factory):
    """One stack serving the three models (the default first) on free ports, no result cache."""
    options = StackOptions(
        port=0,
        dashboard=False,
        models={DEFAULT_MODEL: None, SD: second_sd, XL: tiny_xl_model},
        model_weights_bytes=room,
        repository=tmp_path_factory.mktemp("repository"),
        run_dir=tmp_path_factory.mktemp("run"),
        cache_bytes=0,
    )
    with Stack(options) as stack:
        yield stack


@pytest.fixture(scope="module")
def references(default_model, second_sd, tiny_xl_model):
    """Each model's image for :data:`BODY` from diffusers' own pipeline over its folder."""
    folders = {DEFAULT_MODEL: default_model, SD: second_sd, XL: tiny_xl_model}
    wanted = {}
    for name, folder in folders.items():
        pipeline = diffusers_reference(folder, **({"add_watermarker": False} if name == XL else {}))
        wanted[name] = reference_images(
            pipeline,
            "ddim",
            prompt=BODY["prompt"],
            width=64,
            height=64,
            num_inference_steps=2,
            guidance_scale=7.5,  # SDXL's pipeline defaults to 5
            seed=3,
        )
    return wanted


def test_the_openai_client_lists_every_model_with_its_family(stack, api):
    client = openai.OpenAI(base_url=f"{stack.info.api_url}/v1", api_key="unused", timeout=60)
    listed = client.models.list().data
    assert [model.id for model in listed] == list(MODELS)  # the default first
    assert all(model.object == "model" and model.owned_by == "easel" and model.created > 0 for model in listed)
    xl = api.get("/v1/models/xl").json()
    assert (xl["family"], xl["loaded"], xl["native_size"], xl["controlnets"]) == ("sdxl", False, "256x256", [])
    assert [model.model_extra["loaded"] for model in listed] == [True, True, False]  # the first two fit the room
    assert api.get(f"/v1/models/{DEFAULT_MODEL}").json()["family"] == "sd"
    missing = api.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model_id"
    ready = api.get("/readyz").json()["models"]
    assert {"unet", "sd.unet"} <= set(ready) and "xl.unet" not in ready  # each model's own Triton models, if loaded


def _loaded(api) -> dict[str, bool]:
    return {model["id"]: model["loaded"] for model in api.get("/v1/models").json()["data"]}


def test_what_a_cold_model_cannot_run_is_refused_before_it_loads_and_as_a_job_at_submission(stack, api):
    """This stack has no step-cache engines: a step-cached request is a 400 at the Gateway; nothing loads for it."""
    before = _loaded(api)
    parked = next(name for name, loaded in before.items() if not loaded)
    for background in (False, True):
        refused = api.post(GENERATE, json=BODY | {"model": parked, "cache_interval": 2, "background": background})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "cache_interval", refused.text
    assert _loaded(api) == before
    assert LOCAL.get(f"{stack.info.triton_http_url}/v2/models/{parked}.unet/ready").status_code != 200


def test_a_cold_model_loads_on_demand_and_the_least_recently_used_makes_room(stack, api):
    warm = api.post(GENERATE, json=BODY | {"model": DEFAULT_MODEL})  # the default used last: sd is the LRU
    assert warm.status_code == 200 and LOAD_SECONDS not in warm.headers and warm.headers["Easel-Model"] == DEFAULT_MODEL
    cold = api.post(GENERATE, json=BODY | {"model": XL})
    assert cold.status_code == 200, cold.text
    logger.info("xl loaded in %s s", cold.headers[LOAD_SECONDS])
    assert float(cold.headers[LOAD_SECONDS]) > 0
    assert _loaded(api) == {DEFAULT_MODEL: True, SD: False, XL: True}
    assert LOCAL.get(f"{stack.info.triton_http_url}/v2/models/sd.unet/ready").status_code != 200
    assert LOAD_SECONDS not in api.post(GENERATE, json=BODY | {"model": XL}).headers  # loaded now


def test_a_model_with_requests_in_flight_is_never_unloaded(stack, api):
    long = BODY | {"num_inference_steps": 150, "background": True}
    jobs = [api.post(GENERATE, json=long | {"model": name}).json()["id"] for name in (DEFAULT_MODEL, XL)]
    deadline = time.monotonic() + 120
    while not all(api.get(f"/v1/jobs/{job}").json()["progress"]["step"] > 0 for job in jobs):
        assert time.monotonic() < deadline, "the long jobs did not start"
        time.sleep(0.05)
    # Both loaded models have a request in flight: sd waits for one of them to end, then takes its room.
    cold = api.post(GENERATE, json=BODY | {"model": SD})
    assert cold.status_code == 200, cold.text
    states = [api.get(f"/v1/jobs/{job}").json()["status"] for job in jobs]
    assert "succeeded" in states, states  # sd was served only once a long job had ended
    while not all(api.get(f"/v1/jobs/{job}").json()["status"] in ("succeeded", "failed") for job in jobs):
        time.sleep(0.2)
    assert [api.get(f"/v1/jobs/{job}").json()["status"] for job in jobs] == ["succeeded", "succeeded"]


def test_a_model_s_request_in_flight_survives_the_residency_s_restart_and_its_model_stays_loaded(stack, api):
    """The ModelResidency replica is killed while both loaded models have a long request in flight; Ray Serve starts
    it again, and a cold model's request needs one of their rooms. Watched all along from Triton: neither model is
    unloaded while its request runs (the counts were resumed, not lost). The TextToImage replicas are paused until
    the new ModelResidency answers, so the requests are still in flight, most of their steps ahead, when it does."""
    loaded = [name for name, is_loaded in _loaded(api).items() if is_loaded]
    cold = next(name for name in MODELS if name not in loaded)
    long = BODY | {"num_inference_steps": 150, "n": 4, "background": True}
    jobs = {name: api.post(GENERATE, json=long | {"model": name}).json()["id"] for name in loaded}
    deadline = time.monotonic() + 120
    while not all(api.get(f"/v1/jobs/{job}").json()["progress"]["step"] > 0 for job in jobs.values()):
        assert time.monotonic() < deadline, "the long jobs did not start"
        time.sleep(0.05)
    (keeper,) = stack_replicas(stack.stack_id, "ModelResidency")
    generating = stack_replicas(stack.stack_id, "TextToImage")
    for replica in generating:  # the requests stay in flight, whatever the replica's restart takes
        replica.suspend()
    try:
        keeper.kill()
        keeper.wait(30)
        ray_serve.get_deployment_handle("ModelResidency", "easel").loaded.remote().result(timeout_s=120)  # new one
    finally:
        for replica in generating:
            replica.resume()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(LOCAL.post, f"{stack.info.api_url}{GENERATE}", json=BODY | {"model": cold}, timeout=300)
        while not answer.done() or not all(_ended(api, job) for job in jobs.values()):
            for name, job in jobs.items():
                unet = stack.models[name].triton_name("unet")
                ready = LOCAL.get(f"{stack.info.triton_http_url}/v2/models/{unet}/ready", timeout=LOAD_WAIT_S)
                if ready.status_code != 200:
                    settled = time.monotonic() + 3  # its job ends a moment after its request let go of the model
                    while not _ended(api, job) and time.monotonic() < settled:
                        time.sleep(0.1)
                    assert _ended(api, job), f"{name} was unloaded while its request was in flight"
            time.sleep(0.1)
    assert answer.result().status_code == 200, answer.result().text
    assert [api.get(f"/v1/jobs/{job}").json()["status"] for job in jobs.values()] == ["succeeded", "succeeded"]


def _ended(api, job_id: str) -> bool:
    return api.get(f"/v1/jobs/{job_id}").json()["status"] in ("succeeded", "failed")


def test_each_request_gets_its_model_s_image_alone_and_together(stack, api, references):
    alone = {}
    for name in MODELS:
        response = api.post(GENERATE, json=BODY | {"model": name})
        assert response.status_code == 200, response.text
        alone[name] = decode_images(response)
    parity = {name: psnr(alone[name], references[name]) for name in MODELS}
    logger.info("PSNR against diffusers: %s", parity)
    assert all(value >= 40 for value in parity.values()), parity
    assert psnr(alone[DEFAULT_MODEL], alone[SD]) < 30 and psnr(alone[SD], alone[XL]) < 30  # three models, not one
    no_model = api.post(GENERATE, json=BODY)
    assert (decode_images(no_model) == alone[DEFAULT_MODEL]).all()  # absent: the default model

    bodies = [BODY | {"model": name, "seed": 3} for name in MODELS for _ in range(3)]
    together = post_together(stack.info.api_url, GENERATE, bodies)
    for body, response in zip(bodies, together, strict=True):
        assert response.status_code == 200, response.text
        assert (decode_images(response) == alone[body["model"]]).all()
    # Room holds two models, so xl may have been unloaded (its counts gone) once the others loaded after its requests:
    # its merging is counted where it stays loaded, three of its requests at once after one has loaded it.
    assert api.post(GENERATE, json=BODY | {"model": XL}).status_code == 200
    before = batch_histogram(stack.info.triton_http_url, "xl.unet")
    assert all(r.status_code == 200 for r in post_together(stack.info.api_url, GENERATE, bodies[-3:]))
    merged = batch_histogram(stack.info.triton_http_url, "xl.unet") - before
    logger.info("xl.unet batches of three requests at once: %s", dict(merged))
    assert any(size > 1 for size in merged)  # a model's steps still merge across its requests


def test_an_unknown_model_is_a_400_naming_model_and_what_a_model_lacks_is_refused(stack, api):
    unknown = api.post(GENERATE, json=BODY | {"model": "gpt-image-1"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "model"
    assert "served: easel-default, sd, xl" in unknown.json()["error"]["message"]
    background = api.post(GENERATE, json=BODY | {"model": "nope", "background": True})
    assert background.status_code == 400 and background.json()["error"]["param"] == "model"  # refused, not queued
    refused = api.post(GENERATE, json=BODY | {"model": XL, "loras": [{"name": "style"}]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "loras.0.name"
    with grpc.insecure_channel(stack.info.grpc_address) as channel:
        easel = easel_pb2_grpc.EaselStub(channel)
        with pytest.raises(grpc.RpcError) as refused_rpc:
            list(easel.Generate(easel_pb2.GenerateRequest(prompt="x", model="nope"), timeout=30))
        assert refused_rpc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert refused_rpc.value.details().startswith("model:")
        events = list(easel.Generate(easel_pb2.GenerateRequest(prompt="x", size="64x64", model=XL), timeout=120))
        assert len(events[-1].result.images) == 1
    assert api.get("/readyz").status_code == 200  # the stack serves on


def test_a_restarted_triton_loads_what_was_loaded_and_a_parked_model_still_loads_on_demand(stack, api):
    before = _loaded(api)
    parked = next(name for name, loaded in before.items() if not loaded)
    with triton_killed(stack, ready_within_s=180):
        pass
    assert _loaded(api) == before
    unet = "unet" if parked == DEFAULT_MODEL else f"{parked}.unet"
    assert LOCAL.get(f"{stack.info.triton_http_url}/v2/models/{unet}/ready").status_code != 200
    cold = api.post(GENERATE, json=BODY | {"model": parked})
    assert cold.status_code == 200 and LOAD_SECONDS in cold.headers, cold.text


def _job_ended(api, job_id: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while (job := api.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job_id} did not end"
        time.sleep(0.2)
    return job


def test_a_model_replaced_under_load_drops_nothing_and_new_requests_get_the_new_version(stack, api):
    default_dir = stack.models.resolve(DEFAULT_MODEL).folder.path
    alone = {name: decode_images(api.post(GENERATE, json=BODY | {"model": name})) for name in (DEFAULT_MODEL, SD)}
    long = BODY | LONG | {"model": SD}
    with ThreadPoolExecutor(1) as pool:  # the long request, synchronous and as a job, both in flight over the replace
        synchronous = pool.submit(LOCAL.post, f"{stack.info.api_url}{GENERATE}", json=long, timeout=600)
        on_the_old = api.post(GENERATE, json=long | {"background": True}).json()["id"]
        deadline = time.monotonic() + 120
        while api.get(f"/v1/jobs/{on_the_old}").json()["progress"]["step"] == 0:
            assert time.monotonic() < deadline, "the long job did not start"
            time.sleep(0.05)
        with MixedLoad(stack.info.api_url, [DEFAULT_MODEL, SD], BODY, threads=3) as load:
            time.sleep(1)
            replaced = model_admin.replace(stack.info.api_url, SD, default_dir)  # the default's engines, as version 2
            running = api.get(f"/v1/jobs/{on_the_old}").json()["status"]
            after = api.post(GENERATE, json=BODY | {"model": SD})
            time.sleep(1)
        states = load.settle()
        answered = synchronous.result()
    assert answered.status_code == 200 and answered.headers["Easel-Model-Version"] == "1", answered.text
    version_1 = decode_images(answered)  # what version 1 draws for the long request
    logger.info("under the replace: %d requests, %d jobs %s", len(load.tally.statuses), len(load.tally.jobs), states)
    assert load.tally.failed == 0, load.tally.refusals
    assert len(load.tally.jobs) > 0 and states == {"succeeded": len(load.tally.jobs)}  # no job lost
    assert (replaced["id"], replaced["version"], replaced["family"]) == (SD, 2, "sd")
    assert after.status_code == 200 and after.headers["Easel-Model-Version"] == "2"
    assert (decode_images(after) == alone[DEFAULT_MODEL]).all()  # the new version's engines draw it
    assert psnr(decode_images(after), alone[SD]) < 30
    # The long job began on version 1 and was still running when the replace was done: it finished on version 1.
    assert running == "running"
    finished = _job_ended(api, on_the_old)
    assert finished["status"] == "succeeded"
    assert (decode_images(httpx.Response(200, json=finished)) == version_1).all()
    deadline = time.monotonic() + 60  # version 1, its requests ended, is unloaded
    while LOCAL.get(f"{stack.info.triton_http_url}/v2/models/sd.unet/ready").status_code == 200:
        assert time.monotonic() < deadline, "the old version stayed loaded"
        time.sleep(0.5)
    assert api.get(f"/v1/models/{SD}").json()["version"] == 2


def test_models_are_added_and_removed_and_what_cannot_be_changed_is_refused_naming_the_field(
    stack, api, second_sd, references, tmp_path
):
    folder = built_engines(second_sd)  # in the engine cache already: found, not built again
    added = model_admin.add(stack.info.api_url, "sd2", folder)
    assert (added["id"], added["version"]) == ("sd2", 1)
    served = api.post(GENERATE, json=BODY | {"model": "sd2"})
    assert served.status_code == 200 and psnr(decode_images(served), references[SD]) >= 40
    assert [model["id"] for model in api.get("/v1/models").json()["data"]] == [*MODELS, "sd2"]

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "unet" / "model.onnx").write_bytes(b"not an ONNX graph")
    refusals = [
        ("post", "/v1/models", {"name": XL, "engine_dir": str(folder)}, 409, "name"),
        ("post", "/v1/models", {"name": "Not A Name", "engine_dir": str(folder)}, 400, "name"),
        ("post", "/v1/models", {"name": "new", "engine_dir": "engines"}, 400, "engine_dir"),
        ("post", "/v1/models", {"name": "new", "engine_dir": str(tmp_path)}, 400, "engine_dir"),
        ("post", "/v1/models", {"name": "new", "engine_dir": str(broken)}, 400, "engine_dir"),  # Triton cannot load it
        ("post", "/v1/models", {"name": "new"}, 400, "engine_dir"),
        ("put", "/v1/models/nope", {"engine_dir": str(folder)}, 404, "model_id"),
        ("delete", f"/v1/models/{DEFAULT_MODEL}", None, 409, "model_id"),
        ("delete", "/v1/models/nope", None, 404, "model_id"),
    ]
    for method, path, body, status, field in refusals:
        refused = api.request(method, path, json=body)
        assert (refused.status_code, refused.json()["error"]["param"]) == (status, field), (path, body, refused.text)
    assert "Triton could not load it" in api.post("/v1/models", json={"name": "new", "engine_dir": str(broken)}).text
    assert [model["id"] for model in api.get("/v1/models").json()["data"]] == [*MODELS, "sd2"]  # nothing changed
    assert not list(stack.options.repository.glob("new.*"))  # the refused folder's Triton models were removed
    assert api.get("/readyz").status_code == 200

    experiment = api.put("/v1/experiments/ab", json={"variants": {"sd2": 0.5, XL: 0.5}})
    assert experiment.status_code == 200, experiment.text
    shadowing = api.post("/v1/models", json={"name": "ab", "engine_dir": str(folder)})
    assert (shadowing.status_code, shadowing.json()["error"]["param"]) == (409, "name")
    in_use = api.delete("/v1/models/sd2")
    assert in_use.status_code == 409 and "ab" in in_use.json()["error"]["message"]  # the experiment's variant stays
    assert api.delete("/v1/experiments/ab").status_code == 200

    queued = [
        api.post(GENERATE, json=BODY | {"model": "sd2", "num_inference_steps": 40, "background": True}).json()["id"]
        for _ in range(16)
    ]
    removed = api.delete("/v1/models/sd2")
    assert removed.status_code == 200 and removed.json()["deleted"] is True
    ended = [_job_ended(api, job) for job in queued]
    failed = [job for job in ended if job["status"] == "failed"]
    logger.info("jobs of the removed model: %d succeeded, %d failed", len(ended) - len(failed), len(failed))
    assert {job["status"] for job in ended} <= {"succeeded", "failed"} and failed  # the queued ones failed ...
    assert all(job["error"]["param"] == "model" and "was removed" in job["error"]["message"] for job in failed)
    gone = api.post(GENERATE, json=BODY | {"model": "sd2"})  # ... naming the model, as a request now is refused
    assert gone.status_code == 400 and "was removed" in gone.json()["error"]["message"]
    assert api.get("/readyz").status_code == 200


def test_a_model_added_with_its_loras_serves_them_and_an_upload_for_it_as_diffusers_does(
    stack, api, default_model, references, tmp_path, monkeypatch
):
    """`easel models add --loras DIR`: the folder's LoRA and one uploaded for the added model, against diffusers.

    The added model is the embedded one, LoRA-ready (engines the unit tests have built: no export here).
    """
    from build_engines.text_to_image import loras as loras_module
    from build_engines.text_to_image.random_adapters import make_lora

    monkeypatch.setattr(loras_module, "run_dir", lambda: stack.options.run_dir)  # the client's EASEL_HOME: the stack's
    for seed, lora in enumerate(("loras/house", "uploaded"), start=1):  # the folder's LoRA; one uploaded later
        make_lora(default_model, tmp_path / f"{lora}.safetensors", rank=2, seed=seed, strength=0.6)
    folder = built_engines(default_model, lora=True)
    registry = loras_module.model_registry(tmp_path / "loras", folder, default_model, "sd-loras")
    assert model_admin.add(stack.info.api_url, "sd-loras", folder, registry)["loras"] is True
    file = ("lora.safetensors", (tmp_path / "uploaded.safetensors").read_bytes(), "application/octet-stream")
    uploaded = api.post("/v1/loras", data={"name": "uploaded", "model": "sd-loras"}, files={"file": file})
    assert uploaded.status_code == 200 and uploaded.json()["model"] == "sd-loras", uploaded.text
    theirs = diffusers_reference(default_model)
    for lora in ("house", "uploaded"):
        path = tmp_path / "loras" if lora == "house" else tmp_path
        theirs.load_lora_weights(str(path), weight_name=f"{lora}.safetensors", adapter_name=lora)
    kwargs = {"prompt": BODY["prompt"], "width": 64, "height": 64, "num_inference_steps": 2, "seed": 3}
    for lora in ("house", "uploaded"):
        served = api.post(GENERATE, json=BODY | {"model": "sd-loras", "loras": [{"name": lora, "scale": 0.8}]})
        assert served.status_code == 200, served.text
        theirs.set_adapters([lora], [0.8])
        want = reference_images(theirs, "ddim", guidance_scale=7.5, **kwargs)
        got = decode_images(served)
        logger.info("LoRA %s of a model added while the stack runs: %.1f dB against diffusers", lora, psnr(got, want))
        assert psnr(got, want) >= 40 and psnr(want, references[DEFAULT_MODEL]) < 35  # the LoRA changed the image
    assert api.delete("/v1/models/sd-loras").status_code == 200


def test_a_sizeless_request_pays_for_its_model_s_size_and_after_a_replace_for_the_new_default_s(
    stack, api, monkeypatch
):
    """Priced at the model's own native size in the table served now, on HTTP and gRPC (last: it replaces the
    default with the 256-px SDXL's engines, and closes the API with keys for its duration)."""
    store = open_key_store(stack.options.store)
    admin, admin_key = store.create("admin", {Scope.ADMIN}, KeyLimits())
    priced, key = store.create("priced", {Scope.GENERATE}, KeyLimits(cost_per_minute=0.1))
    monkeypatch.setenv(API_KEY_ENV, admin_key)
    time.sleep(ACTIVE_CHECK_S + 0.5)  # each Gateway replica re-reads whether keys exist
    sizeless = {"prompt": "a red heart icon", "num_inference_steps": 2, "seed": 3}  # 64 px: 0.012; 256 px: 0.197
    bearer, metadata = {"Authorization": f"Bearer {key}"}, (("authorization", f"Bearer {key}"),)

    def refused_on_both_doors(body: dict) -> None:
        answer = api.post(GENERATE, json=body, headers=bearer)
        assert answer.status_code == 429 and "this request costs 0.197" in answer.json()["error"]["message"]
        with grpc.insecure_channel(stack.info.grpc_address) as channel, pytest.raises(grpc.RpcError) as refused:
            message = easel_pb2.GenerateRequest(**body)
            list(easel_pb2_grpc.EaselStub(channel).Generate(message, metadata=metadata, timeout=60))
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()

    try:
        assert api.post(GENERATE, json=sizeless, headers=bearer).status_code == 200  # the 64-px default
        refused_on_both_doors(sizeless | {"model": XL})
        xl_dir = stack.models.resolve(XL).folder.path
        assert model_admin.replace(stack.info.api_url, DEFAULT_MODEL, xl_dir)["native_size"] == "256x256"
        refused_on_both_doors(sizeless)
    finally:
        store.revoke(admin.id)
        store.revoke(priced.id)
        time.sleep(ACTIVE_CHECK_S + 0.5)
