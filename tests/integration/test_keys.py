"""API keys and per-key limits on a running stack: 401/403/200 through the OpenAI client, one bucket, two replicas."""

import base64
import io
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import grpc
import httpx
import numpy as np
import openai
import pytest
from google.protobuf.json_format import MessageToDict
from PIL import Image

from build_engines.finishing.random_weights import random_upscaler, save_upscaler
from build_engines.moderation.safety_checker import chosen_pictures, random_safety_checker
from build_engines.scoring import random_clip
from serve.access import ACTIVE_CHECK_S, open_key_store
from serve.access.keys import SLOT_LEASE_S, KeyLimits
from serve.grpc_api import easel_pb2, easel_pb2_grpc
from serve.moderation import Policy
from serve.processes.signals import stack_replicas
from serve.results.tokens import UrlSigner
from serve.routes import Scope
from tests.controls import b64, input_image
from tests.images import png_header_only
from tests.integration.conftest import (
    decode_images,
    default_stack,
    settled_unet_executions,
    unet_executions,
)
from tests.tenant_matrix import UNKNOWN, Row, row_id, rows

pytestmark = pytest.mark.integration

SMALL = {"prompt": "a red heart icon", "size": "64x64", "num_inference_steps": 2, "seed": 3}
GENERATE = "/v1/images/generations"
SLOW_JOB = SMALL | {"size": "256x256", "num_inference_steps": 150, "background": True}  # still running when asked


BLOCKLIST = "# this module's prompt blocklist\nweapons: re:\\bguns?\\b\nhate: slur\n"
BLOCKED = "a gun on a red heart icon"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The module's default stack with a prompt blocklist, a tiny safety checker flagging one chosen picture, a
    tiny upscaler and a tiny random CLIP as its scorer; moderation off (the default) but for a key's own policy."""
    folder = tmp_path_factory.mktemp("moderation")
    (folder / "blocklist.txt").write_text(BLOCKLIST)
    checker = random_safety_checker(folder / "safety_checker", *chosen_pictures())
    upscaler = save_upscaler(random_upscaler("SRVGGNetCompact", 2), folder / "general.pth")
    yield from default_stack(
        tmp_path_factory,
        prompt_blocklist=folder / "blocklist.txt",
        safety_checker=checker,
        upscalers={"general": upscaler},
        scorers={"clip": random_clip(folder / "clip")},  # the shared stack's CLIP: its engines are built once
    )


@pytest.fixture(scope="module")
def keys(stack):
    """The stack's key store; the API is open until the first key exists, closed from then on."""
    with httpx.Client(base_url=stack.info.api_url, timeout=60) as client:
        assert client.get("/v1/jobs").status_code == 200  # no key yet: open
    store = open_key_store(stack.options.store)
    made = {
        "generate": store.create("painter", {Scope.GENERATE}, KeyLimits(cost_per_minute=1.0)),
        "vectorize": store.create("tracer", {Scope.VECTORIZE}, KeyLimits()),
        "jobs": store.create("poller", {Scope.JOBS}, KeyLimits(requests_per_minute=20)),
        "revoked": store.create("gone", {Scope.ADMIN}, KeyLimits()),
        "blocking": store.create("public app", {Scope.GENERATE, Scope.JOBS}, KeyLimits(moderation=Policy.BLOCK)),
        "flagging": store.create("reviewed app", {Scope.GENERATE}, KeyLimits(moderation=Policy.FLAG)),
    }
    store.revoke(made["revoked"][0].id)
    time.sleep(ACTIVE_CHECK_S + 0.5)  # each replica re-reads whether keys exist
    return store, {name: key for name, (_, key) in made.items()} | {"ids": {n: r.id for n, (r, _) in made.items()}}


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_every_route_but_health_needs_a_valid_key(api, keys):
    _, made = keys
    assert api.get("/healthz").status_code == 200 and api.get("/readyz").status_code == 200
    for path in ("/v1/jobs", "/docs", "/openapi.json"):
        missing = api.get(path)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["type"] == "authentication_error"
        assert missing.json()["error"]["param"] == "Authorization"
    assert api.get("/v1/jobs", headers=_bearer("easel-nope-nope")).status_code == 401
    revoked = api.get("/v1/jobs", headers=_bearer(made["revoked"]))
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]
    assert api.get("/v1/jobs", headers={"Authorization": made["jobs"]}).status_code == 401  # no "Bearer"
    assert api.get("/docs", headers=_bearer(made["vectorize"])).status_code == 200  # any scope reads the docs


def test_the_openai_client_s_api_key_just_works_and_scopes_hold(stack, keys):
    _, made = keys
    client = openai.OpenAI(api_key=made["generate"], base_url=f"{stack.info.api_url}/v1", max_retries=0)
    images = client.images.generate(
        prompt=SMALL["prompt"], size="64x64", extra_body={"num_inference_steps": 2, "seed": 3}
    )
    assert len(images.data) == 1 and images.data[0].b64_json
    with pytest.raises(openai.PermissionDeniedError, match="needs 'generate'"):
        openai.OpenAI(api_key=made["vectorize"], base_url=f"{stack.info.api_url}/v1", max_retries=0).images.generate(
            prompt="x", size="64x64"
        )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="easel-x-y", base_url=f"{stack.info.api_url}/v1", max_retries=0).images.generate(
            prompt="x", size="64x64"
        )


def test_a_generation_takes_its_cost_and_one_over_the_budget_is_429(api, keys):
    _, made = keys
    answer = api.post("/v1/images/generations", json=SMALL, headers=_bearer(made["generate"]))
    assert answer.status_code == 200
    assert answer.headers["x-ratelimit-limit-cost"] == "1"
    assert float(answer.headers["x-ratelimit-remaining-cost"]) < 1.0  # 2 steps x 0.004 MP taken
    costly = SMALL | {"size": "512x512", "num_inference_steps": 8}  # 0.26 MP x (8 steps + 1 decode) = 2.36 > 1
    refused = api.post("/v1/images/generations", json=costly, headers=_bearer(made["generate"]))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert error["param"] == "cost" and "cost of 1 per minute (this request costs 2.36" in error["message"]


def test_an_image_at_strength_0_pays_for_its_vae_passes_and_its_pixels_on_both_doors(api, stack, keys):
    """It was charged n x 0 steps x megapixels = 0: a key of 0.01 a minute ran 4 such requests at once."""
    store, _ = keys
    _, key = store.create("img2img", {Scope.GENERATE}, KeyLimits(cost_per_minute=0.01))
    image = b64(input_image(512))
    body = {"prompt": "a red heart icon", "image": [image], "strength": 0.0, "n": 4, "seed": 3}
    refused = api.post(GENERATE, json=body, headers=_bearer(key))
    assert refused.status_code == 429 and refused.json()["error"]["param"] == "cost", refused.text
    assert "this request costs 2.36" in refused.json()["error"]["message"]  # 4 x 0.26 MP x 2 VAE passes + 0.26
    message = easel_pb2.GenerateRequest(
        prompt="a red heart icon", image=[base64.b64decode(image)], strength=0.0, n=4, seed=3
    )
    with grpc.insecure_channel(stack.info.grpc_address) as channel, pytest.raises(grpc.RpcError) as over:
        list(easel_pb2_grpc.EaselStub(channel).Generate(message, metadata=(("authorization", f"Bearer {key}"),)))
    assert over.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "costs 2.36" in over.value.details()


def test_moderations_and_references_are_charged_by_their_work(api, keys):
    """They ran at no cost: 32 texts of 32,000 characters were 8 s of work for a key of 0.01 a minute."""
    store, _ = keys
    _, key = store.create("moderator", {Scope.GENERATE}, KeyLimits(cost_per_minute=0.01))
    texts = api.post("/v1/moderations", json={"input": ["a red heart icon " * 1880] * 32}, headers=_bearer(key))
    assert texts.status_code == 429 and texts.json()["error"]["param"] == "cost", texts.text
    assert "this request costs 10.2)" in texts.json()["error"]["message"]
    reference = api.post("/v1/references", json={"image": b64(input_image(512))}, headers=_bearer(key))
    # This stack has no IP-Adapter: refused for that before any charge (issue 76; its price: test_admission_prices).
    assert reference.status_code == 400 and reference.json()["error"]["param"] == "model", reference.text
    broken = api.post(
        "/v1/references", json={"image": base64.b64encode(b"not an image").decode()}, headers=_bearer(key)
    )
    assert broken.status_code == 400 and broken.json()["error"]["param"] == "image", broken.text


def test_every_route_that_runs_an_engine_is_charged_by_its_work_and_refused_before_it_runs(api, stack, keys):
    """Issue 76: scores, prompt analyses and vectorize ran free and unbounded (16 images of 4096x4096 scored for a key
    of 0.01 a minute took the replica from 0.8 to 4.2 GB; 40 analyses of 8,000 characters in 6 s)."""
    store, _ = keys
    _, key = store.create("hostile", {Scope.GENERATE, Scope.VECTORIZE}, KeyLimits(cost_per_minute=0.01))
    hostile = _bearer(key)
    huge = b64(np.full((4096, 4096, 3), 200, np.uint8))
    refused = api.post("/v1/images/score", json={"images": [huge] * 16}, headers=hostile)
    assert refused.status_code == 413 and refused.json()["error"]["param"] == "images.0", refused.text
    assert "at most 4194304" in refused.json()["error"]["message"]
    headers_only = base64.b64encode(png_header_only(2048, 2048)).decode()  # its decode is a 400: none happens
    text = "a red heart icon, flat, vector, " * 125  # 4,000 characters
    icon = png_bytes(input_image(512))  # 0.26 MP: 8 passes for auto with its quality check, 2 for an analysis
    for path, body, costs in (
        ("/v1/images/score", {"json": {"images": [headers_only] * 16}}, "67.9"),  # 16 x (4.19 MP + a CLIP pass)
        ("/v1/prompts/analyze", {"json": {"prompt": text, "negative_prompt": text}}, "0.12"),  # + its verdict, 0.04
        ("/v1/moderations", {"json": {"input": text + text}}, "0.08"),  # the same 8,000 characters
        ("/v1/vectorize", {"content": icon, "headers": {"content-type": "image/png"}}, "2.1"),
        ("/v1/vectorize/analyze", {"content": icon, "headers": {"content-type": "image/png"}}, "0.524"),
    ):
        sent = body | {"headers": body.get("headers", {}) | hostile}
        refused = api.post(path, **sent)
        assert refused.status_code == 429 and refused.json()["error"]["param"] == "cost", (path, refused.text)
        assert f"this request costs {costs})" in refused.json()["error"]["message"], (path, refused.text)
    with grpc.insecure_channel(stack.info.grpc_address) as channel, pytest.raises(grpc.RpcError) as over_rpc:
        easel_pb2_grpc.EaselStub(channel).Vectorize(
            easel_pb2.VectorizeRequest(image=icon), metadata=(("authorization", f"Bearer {key}"),), timeout=60
        )
    assert over_rpc.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "costs 2.1)" in over_rpc.value.details()
    roomy = [
        store.create(f"roomy {i}", {Scope.GENERATE, Scope.VECTORIZE}, KeyLimits(cost_per_minute=10))[1] for i in (1, 2)
    ]
    asked = {"images": [b64(input_image(64))], "prompt": "a red heart icon"}  # the prompt's pass is not priced
    scored = api.post("/v1/images/score", json=asked, headers=_bearer(roomy[0]))
    assert scored.status_code == 200 and set(scored.json()["data"][0]) == {"index", "clip_score"}, scored.text
    assert scored.headers["x-ratelimit-remaining-cost"] == "9.94"  # a full bucket less 0.004 MP and a CLIP pass
    traced = api.post("/v1/vectorize", content=icon, headers=_bearer(roomy[1]) | {"content-type": "image/png"})
    assert traced.status_code == 200 and traced.headers["x-ratelimit-remaining-cost"] == "7.9", traced.text


def test_one_bucket_holds_across_both_gateway_replicas(api, stack, keys):
    _, made = keys
    started, answers = time.monotonic(), []
    while len(answers) < 40:
        answers.append(api.get("/v1/jobs", headers=_bearer(made["jobs"])))
        if answers[-1].status_code == 429:
            break
    elapsed = time.monotonic() - started
    allowed = [a for a in answers if a.status_code == 200]
    refused = answers[-1]
    # 20 per minute: a full bucket, plus whatever refilled during the burst (one every 3 s)
    assert 20 <= len(allowed) <= 20 + int(elapsed / 3) and refused.status_code == 429
    assert [int(a.headers["x-ratelimit-remaining-requests"]) for a in allowed[:3]] == [19, 18, 17]
    assert refused.headers["x-ratelimit-limit-requests"] == "20" and 1 <= int(refused.headers["retry-after"]) <= 3
    assert refused.json()["error"]["param"] == "requests"
    replicas = _replicas_that_answered(stack, [a.headers["x-request-id"] for a in answers])
    assert len(replicas) == 2, replicas  # both Gateway replicas drew from the one bucket


def test_a_key_s_jobs_are_capped_and_its_own(api, keys):
    store, _ = keys
    _, capped = store.create("batcher", {Scope.GENERATE, Scope.JOBS}, KeyLimits(concurrent_jobs=1))
    _, other = store.create("neighbour", {Scope.GENERATE, Scope.JOBS}, KeyLimits())
    _, admin = store.create("operator", {Scope.ADMIN}, KeyLimits())
    slow = SMALL | {"size": "256x256", "num_inference_steps": 150, "background": True}  # still running when asked
    idempotent = _bearer(capped) | {"Idempotency-Key": "batch-1"}
    first = api.post("/v1/images/generations", json=slow, headers=idempotent)
    assert first.status_code == 202, first.text
    job = first.json()["id"]
    refused = api.post("/v1/images/generations", json=slow | {"seed": 4}, headers=_bearer(capped))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["param"] == "concurrent_jobs"
    assert "1 unfinished jobs at once" in refused.json()["error"]["message"]
    replayed = api.post("/v1/images/generations", json=slow, headers=idempotent)  # the same job, not a second one
    assert replayed.status_code == 202 and replayed.json()["id"] == job
    # Another key: the job is unknown to it, its own Idempotency-Key of the same name is its own job.
    for answer in (
        api.get(f"/v1/jobs/{job}", headers=_bearer(other)),
        api.post(f"/v1/jobs/{job}/cancel", headers=_bearer(other)),
        api.get(f"/v1/jobs/{job}/events", headers=_bearer(other)),
    ):
        assert answer.status_code == 404 and answer.json()["error"]["param"] == "id"
    assert job not in {j["id"] for j in api.get("/v1/jobs", headers=_bearer(other)).json()["data"]}
    theirs = api.post("/v1/images/generations", json=slow, headers=_bearer(other) | {"Idempotency-Key": "batch-1"})
    assert theirs.status_code == 202 and theirs.json()["id"] != job
    # The owner and an admin key see it; once the owner cancels it, the key may queue another.
    assert [j["id"] for j in api.get("/v1/jobs", headers=_bearer(capped)).json()["data"]] == [job]
    assert {job, theirs.json()["id"]} <= {j["id"] for j in api.get("/v1/jobs", headers=_bearer(admin)).json()["data"]}
    assert api.get(f"/v1/jobs/{job}", headers=_bearer(admin)).status_code == 200
    for mine, key in ((job, capped), (theirs.json()["id"], other)):
        assert api.post(f"/v1/jobs/{mine}/cancel", headers=_bearer(key)).status_code == 200
    _wait_until_final(api, job, capped)
    again = api.post("/v1/images/generations", json=slow | {"seed": 5}, headers=_bearer(capped))
    assert again.status_code == 202, again.text
    assert api.post(f"/v1/jobs/{again.json()['id']}/cancel", headers=_bearer(capped)).status_code == 200


def _wait_until_final(api, job: str, key: str) -> None:
    deadline = time.monotonic() + 60
    while api.get(f"/v1/jobs/{job}", headers=_bearer(key)).json()["status"] not in ("succeeded", "failed", "canceled"):
        assert time.monotonic() < deadline, f"job {job} never ended"
        time.sleep(0.2)


def test_grpc_calls_need_the_same_keys_and_scopes(stack, keys):
    _, made = keys
    request = easel_pb2.GenerateRequest(prompt="a red heart icon", size="64x64", num_inference_steps=2, seed=3)
    with grpc.insecure_channel(stack.info.grpc_address) as channel:
        stub = easel_pb2_grpc.EaselStub(channel)
        for metadata, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", "Bearer easel-x-y"),), grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", f"Bearer {made['vectorize']}"),), grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Generate(request, metadata=metadata, timeout=60))
            assert refused.value.code() is code, refused.value.details()
        events = list(stub.Generate(request, metadata=(("authorization", f"Bearer {made['generate']}"),), timeout=60))
    assert [e.WhichOneof("event") for e in events] == ["progress", "progress", "result"]


def test_grpc_checks_the_key_before_parsing_and_holds_each_method_to_its_http_body_limit(stack, keys):
    """No key is UNAUTHENTICATED before a byte of the message is parsed; each method's limit is its HTTP route's."""
    _, made = keys
    unparsable = easel_pb2.GenerateRequest(prompt="x" * (20 << 20))  # 20 MiB: the prompt's 4000 characters refuse it
    heavy = easel_pb2.VectorizeRequest(image=bytes(40 << 20))  # the HTTP route takes 32 MiB; Serve's proxy 2 GiB
    large = easel_pb2.FeedbackRequest(image_id="x" * (2 << 20))  # the feedback route takes 1 MiB
    with grpc.insecure_channel(stack.info.grpc_address) as channel:
        stub = easel_pb2_grpc.EaselStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Generate(unparsable, timeout=60))
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED, refused.value.details()
        with pytest.raises(grpc.RpcError) as refused:
            stub.Vectorize(heavy, metadata=(("authorization", f"Bearer {made['vectorize']}"),), timeout=60)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
        keyed = (("authorization", f"Bearer {made['generate']}"),)
        for metadata, code in (((), grpc.StatusCode.UNAUTHENTICATED), (keyed, grpc.StatusCode.INVALID_ARGUMENT)):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Feedback(large, metadata=metadata, timeout=60)
            assert refused.value.code() is code, refused.value.details()
        assert "message: 2097157 bytes; Feedback takes at most 1048576" in refused.value.details()
    assert httpx.get(f"{stack.info.api_url}/readyz", timeout=30).status_code == 200


def test_logs_name_key_ids_never_keys(stack, keys):
    _, made = keys
    folder = stack.ray_session_dir / "logs"
    logs = "".join(p.read_text(errors="replace") for p in [*folder.glob("worker-*"), *folder.glob("serve/*.log")])
    assert f"key {made['ids']['jobs']} over its requests limit" in logs
    assert not any(made[name] in logs for name in ("generate", "vectorize", "jobs", "revoked"))


def test_a_key_s_cost_holds_whatever_the_body_s_encoding(api, keys):
    """JSON is UTF-8 (RFC 8259): a body in another encoding is a 400 naming it, never a generation at no cost."""
    store, _ = keys
    _, key = store.create("encoder", {Scope.GENERATE}, KeyLimits(cost_per_minute=0.5))
    costly = json.dumps({"prompt": "a red heart icon", "n": 4, "num_inference_steps": 29, "seed": 11})  # 0.49
    as_json = _bearer(key) | {"Content-Type": "application/json"}
    for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be", "utf-8-sig"):
        refused = api.post(GENERATE, content=costly.encode(encoding), headers=as_json)
        assert refused.status_code == 400, f"{encoding}: {refused.status_code} {refused.text[:200]}"
        assert refused.json()["error"]["param"] == "body" and "UTF-8" in refused.json()["error"]["message"]
    for charset in ("utf-16", "latin-1"):
        headers = as_json | {"Content-Type": f"application/json; charset={charset}"}
        refused = api.post(GENERATE, content=costly.encode(), headers=headers)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "body", (charset, refused.text)
    charset_utf8 = as_json | {"Content-Type": "application/json; charset=UTF-8"}
    first = api.post(GENERATE, content=costly.encode(), headers=charset_utf8)
    assert first.status_code == 200 and float(first.headers["x-ratelimit-remaining-cost"]) < 0.02, first.text
    again = api.post(GENERATE, content=costly.encode(), headers=as_json)
    assert again.status_code == 429 and again.json()["error"]["param"] == "cost"


def test_every_json_route_refuses_a_body_not_in_utf_8_with_a_400_naming_the_body(api, keys):
    """One strict reader for every JSON body, whoever validates it (moderations, references, feedback took UTF-16)."""
    store, _ = keys
    _, admin = store.create("reader", {Scope.ADMIN}, KeyLimits())
    document = api.get("/openapi.json", headers=_bearer(admin)).json()
    body = json.dumps({"prompt": "a red heart icon", "input": "a red heart icon", "name": "x"})
    as_json = _bearer(admin) | {"Content-Type": "application/json"}
    asked = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if "application/json" not in operation.get("requestBody", {}).get("content", {}):
                continue
            url = path.replace("{", "").replace("}", "")
            for encoding in ("utf-16", "utf-32"):
                refused = api.request(method, url, content=body.encode(encoding), headers=as_json)
                assert refused.status_code == 400, (method, path, encoding, refused.text[:200])
                error = refused.json()["error"]
                assert error["param"] == "body" and "UTF-8" in error["message"], (method, path, error)
            asked.append(path)
    assert {"/v1/moderations", "/v1/references", "/v1/feedback", "/v1/models", GENERATE} <= set(asked)


def test_listing_after_another_key_s_job_answers_as_for_an_id_that_does_not_exist(api, keys):
    store, _ = keys
    _, mine = store.create("lister", {Scope.JOBS}, KeyLimits())
    _, theirs = store.create("submitter", {Scope.GENERATE, Scope.JOBS}, KeyLimits())
    job = api.post(GENERATE, json=SMALL | {"background": True}, headers=_bearer(theirs)).json()["id"]
    made_up = "job_" + "0" * 24
    answers = {given: api.get("/v1/jobs", params={"after": given}, headers=_bearer(mine)) for given in (job, made_up)}
    assert [a.status_code for a in answers.values()] == [404, 404], [a.text for a in answers.values()]
    errors = [a.json()["error"] for a in answers.values()]
    for error, given in zip(errors, answers, strict=True):
        error["message"] = error["message"].replace(given, "ID")
    assert errors[0] == errors[1] and errors[0]["param"] == "after"
    assert api.get("/v1/jobs", params={"after": job}, headers=_bearer(theirs)).status_code == 200  # its own


def test_abandoned_event_streams_and_grpc_streams_give_their_slots_back_within_5_s(api, stack, keys):
    store, _ = keys
    record, key = store.create("watcher", {Scope.GENERATE, Scope.JOBS}, KeyLimits(concurrent=100))
    job = api.post(GENERATE, json=SLOW_JOB, headers=_bearer(key)).json()["id"]

    def watch_and_leave(_: int) -> list[str]:
        with httpx.Client(base_url=stack.info.api_url, timeout=30) as client:
            with client.stream("GET", f"/v1/jobs/{job}/events", headers=_bearer(key)) as events:
                assert events.status_code == 200
                lines = events.iter_lines()
                return [next(lines) for _ in range(3)]  # the state event, then the client hangs up

    request = easel_pb2.GenerateRequest(prompt="a red heart icon", size="64x64", num_inference_steps=150, seed=3)

    def generate_and_cancel(stub) -> None:
        call = stub.Generate(request, metadata=(("authorization", f"Bearer {key}"),), timeout=120)
        assert [next(call).WhichOneof("event") for _ in range(3)] == ["progress"] * 3
        call.cancel()

    with ThreadPoolExecutor(10) as pool:
        assert all(lines[0] == "event: state" for lines in pool.map(watch_and_leave, range(50)))
        with grpc.insecure_channel(stack.info.grpc_address) as channel:
            list(pool.map(generate_and_cancel, [easel_pb2_grpc.EaselStub(channel)] * 20))
    assert api.post(f"/v1/jobs/{job}/cancel", headers=_bearer(key)).status_code == 200
    deadline = time.monotonic() + 5
    while (held := store.in_flight(record.id)) > 0:
        assert time.monotonic() < deadline, f"{held} slots still held 5 s after every stream was dropped"
        time.sleep(0.1)


def test_the_slots_of_a_replica_that_died_expire_in_seconds(api, stack, keys):
    """Last: it kills a Gateway replica (Ray Serve starts another; the other one answers meanwhile)."""
    store, _ = keys
    record, key = store.create("orphan", {Scope.GENERATE, Scope.JOBS}, KeyLimits(concurrent=20))
    job = api.post(GENERATE, json=SLOW_JOB, headers=_bearer(key)).json()["id"]
    with httpx.Client(base_url=stack.info.api_url, timeout=30) as client, ExitStack() as streams:
        readers = []  # held: a line iterator dropped closes its connection
        for _ in range(12):  # on both replicas (all on one: 1 chance in 4096)
            events = streams.enter_context(client.stream("GET", f"/v1/jobs/{job}/events", headers=_bearer(key)))
            readers.append(events.iter_lines())
            assert next(readers[-1]) == "event: state"
        assert store.in_flight(record.id) == 12
        stack_replicas(stack.stack_id, "Gateway")[0].kill()
        killed = time.monotonic()
    time.sleep(2)  # the live replica has given back its streams' slots; the dead one's are neither given nor renewed
    assert store.in_flight(record.id) > 0, "the replica that was killed held none of the streams"
    while (held := store.in_flight(record.id)) > 0:  # seconds, not the 15 minutes a slot once lived
        assert time.monotonic() - killed < SLOT_LEASE_S + 3, f"{held} slots of a dead replica still held"
        time.sleep(0.2)
    assert api.post(f"/v1/jobs/{job}/cancel", headers=_bearer(key)).status_code == 200
    # If the dead replica's runner ran the job, its call into TextToImage runs on to its end, canceled or not (73 s
    # once, beside the other test worker): the next tests count the UNet's work, so it ends here.
    settled_unet_executions(stack, timeout_s=300)


def _replicas_that_answered(stack, request_ids: list[str]) -> set[str]:
    """The Gateway replicas whose access logs hold these request ids (logged just after each answer)."""
    deadline, found = time.monotonic() + 10, set()
    while time.monotonic() < deadline:
        found = set()
        for path in (stack.ray_session_dir / "logs" / "serve").glob("replica_easel_Gateway_*.log"):
            text = path.read_text()
            if any(request_id in text for request_id in request_ids):
                found.add(path.stem)
        if len(found) == 2:
            break
        time.sleep(0.2)
    return found


def test_a_blocked_key_s_flagged_prompt_is_a_400_content_policy_violation_before_any_unet_work(api, stack, keys):
    """Sync (the OpenAI client), background, edits and gRPC alike; the UNet runs nothing for them."""
    _, made = keys
    client = openai.OpenAI(api_key=made["blocking"], base_url=f"{stack.info.api_url}/v1", max_retries=0)
    before = settled_unet_executions(stack)  # what earlier tests left has ended
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt=BLOCKED, size="64x64", extra_body={"num_inference_steps": 2, "seed": 3})
    assert refused.value.code == "content_policy_violation" and refused.value.param == "prompt"
    queued = api.post(GENERATE, json=SMALL | {"prompt": BLOCKED, "background": True}, headers=_bearer(made["blocking"]))
    image = base64.b64decode(b64(input_image(64)))
    edit = api.post(
        "/v1/images/edits",
        data={"prompt": "Guns at dawn", "num_inference_steps": "2"},
        files={"image": ("in.png", image, "image/png")},
        headers=_bearer(made["blocking"]),
    )
    for answer in (queued, edit):
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] | {"message": ""} == {
            "message": "",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": "content_policy_violation",
        }
    request = easel_pb2.GenerateRequest(prompt=BLOCKED, size="64x64", num_inference_steps=2, seed=3)
    with grpc.insecure_channel(stack.info.grpc_address) as channel, pytest.raises(grpc.RpcError) as failed:
        list(
            easel_pb2_grpc.EaselStub(channel).Generate(
                request, metadata=(("authorization", f"Bearer {made['blocking']}"),), timeout=60
            )
        )
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "content policy" in failed.value.details()
    assert unet_executions(stack) - before <= 1  # a health canary at most: no generation ran
    assert api.get("/v1/jobs", headers=_bearer(made["blocking"])).json()["data"] == []  # nothing was queued


def test_the_checker_refuses_a_flagged_input_image_and_blacks_out_a_flagged_output_under_block(api, stack, keys):
    """The tiny checker flags the chosen picture, and the image this edit of the other one draws (seeded)."""
    _, made = keys
    flagged, passes = (png_bytes(picture) for picture in chosen_pictures())
    before = settled_unet_executions(stack)  # what earlier tests left has ended
    refused = api.post(
        "/v1/images/edits",
        data={"prompt": "a red heart icon", "num_inference_steps": "2", "size": "64x64"},
        files={"image": ("in.png", flagged, "image/png")},
        headers=_bearer(made["blocking"]),
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "image"
    assert refused.json()["error"]["code"] == "content_policy_violation"
    assert unet_executions(stack) - before <= 1  # a health canary at most: no generation ran
    edit = {"data": {"prompt": "a red heart icon", "num_inference_steps": "2", "seed": "3"}}
    edit["files"] = {"image": ("in.png", passes, "image/png")}
    marked = api.post("/v1/images/edits", **edit, headers=_bearer(made["flagging"]))
    blanked = api.post("/v1/images/edits", **edit, headers=_bearer(made["blocking"]))
    assert marked.status_code == blanked.status_code == 200, (marked.text, blanked.text)
    mark = marked.json()["data"][0]["moderation"]
    assert mark["flagged"] and mark == blanked.json()["data"][0]["moderation"]
    drawn, black = decode_images(marked)[0], decode_images(blanked)[0]
    assert drawn.shape == black.shape and drawn.any() and not black.any()


def test_grpc_answers_and_a_blocked_key_s_job_carry_the_marks_and_black_out_as_http_does(api, stack, keys):
    """The edit above through gRPC (each key) and as a blocking key's background job (its policy, not the stack's)."""
    _, made = keys
    passes = png_bytes(chosen_pictures()[1])
    fields = {"prompt": "a red heart icon", "num_inference_steps": 2, "seed": 3}
    with grpc.insecure_channel(stack.info.grpc_address) as channel:
        stub = easel_pb2_grpc.EaselStub(channel)
        answers = {
            name: list(
                stub.Generate(
                    easel_pb2.GenerateRequest(**fields, image=[passes]),
                    metadata=(("authorization", f"Bearer {made[name]}"),),
                    timeout=120,
                )
            )[-1].result.images[0]
            for name in ("flagging", "blocking")
        }
    queued = fields | {"image": [base64.b64encode(passes).decode()], "background": True}
    job = api.post(GENERATE, json=queued, headers=_bearer(made["blocking"]))
    assert job.status_code == 202, job.text
    _wait_until_final(api, job.json()["id"], made["blocking"])
    done = api.get(f"/v1/jobs/{job.json()['id']}", headers=_bearer(made["blocking"])).json()
    assert done["status"] == "succeeded", done
    marks = [MessageToDict(answers[name].moderation, preserving_proto_field_name=True) for name in answers]
    assert marks[0]["flagged"] and marks[0] == marks[1]  # the checker's flags, whichever the policy
    assert marks[0] == done["data"][0]["moderation"]  # the job ran under its key's policy (the stack's is off)
    drawn, black, job_black = (
        np.asarray(Image.open(io.BytesIO(data)))
        for data in (answers["flagging"].data, answers["blocking"].data, base64.b64decode(done["data"][0]["b64_json"]))
    )
    assert drawn.shape == black.shape == job_black.shape and drawn.any() and not black.any() and not job_black.any()


def test_the_upscale_route_s_flagged_image_is_refused_under_block_and_marked_under_flag(api, stack, keys):
    _, made = keys
    flagged = base64.b64encode(png_bytes(chosen_pictures()[0])).decode()
    body = {"image": flagged, "upscaler": "general", "scale": 1}
    refused = api.post("/v1/images/upscale", json=body, headers=_bearer(made["blocking"]))
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "image"
    assert refused.json()["error"]["code"] == "content_policy_violation"
    marked = api.post("/v1/images/upscale", json=body, headers=_bearer(made["flagging"]))
    assert marked.status_code == 200, marked.text
    assert marked.json()["data"][0]["moderation"]["categories"] == {"sexual": True}
    assert api.get("/healthz").status_code == 200


def test_restore_faces_on_a_stack_serving_no_face_restorer_is_a_400_naming_it(api, keys):
    _, made = keys
    restore = {"restore_faces": {"restorer": "face"}}
    upscale = {"image": base64.b64encode(png_bytes(chosen_pictures()[1])).decode(), "upscaler": "general"}
    for route, body in ((GENERATE, SMALL | restore), ("/v1/images/upscale", upscale | restore)):
        refused = api.post(route, json=body, headers=_bearer(made["generate"]))
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "restore_faces.restorer" and "start the stack with --face-restorer" in error["message"]


def png_bytes(pixels) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_a_flagging_key_s_flagged_prompt_is_answered_with_its_marks(api, keys):
    _, made = keys
    answer = api.post(GENERATE, json=SMALL | {"prompt": BLOCKED}, headers=_bearer(made["flagging"]))
    assert answer.status_code == 200, answer.text
    mark = answer.json()["data"][0]["moderation"]  # the prompt's flags, and the checker's on the image
    assert mark["flagged"] is True and mark["categories"] | {"sexual": None} == {
        "weapons": True,
        "hate": False,
        "sexual": None,
    }
    assert mark["category_scores"]["weapons"] == 1.0 and set(mark["category_scores"]) == {"weapons", "hate", "sexual"}


def test_moderations_through_the_openai_client_answer_the_blocklist_s_flags(stack, keys):
    """Whatever the policy (this stack's is off), and within the limits the document states."""
    _, made = keys
    client = openai.OpenAI(api_key=made["flagging"], base_url=f"{stack.info.api_url}/v1", max_retries=0)
    answer = client.moderations.create(model="omni-moderation-latest", input=["two GUNS", "a red heart icon"])
    assert answer.model == "omni-moderation-latest" and len(answer.results) == 2
    assert [r.flagged for r in answer.results] == [True, False]
    flagged = answer.results[0].model_dump()
    assert flagged["categories"]["weapons"] is True and flagged["categories"]["hate"] is False
    assert flagged["category_scores"]["weapons"] == 1.0
    too_many = httpx.post(
        f"{stack.info.api_url}/v1/moderations", json={"input": ["x"] * 33}, headers=_bearer(made["flagging"])
    )
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "input"
    assert "at most 32 items" in too_many.json()["error"]["message"]


def test_moderation_logs_name_the_key_and_the_request_never_the_prompt(stack, keys):
    _, made = keys
    folder = stack.ray_session_dir / "logs"
    logs = "".join(p.read_text(errors="replace") for p in [*folder.glob("worker-*"), *folder.glob("serve/*.log")])
    line = rf"moderation flagged a prompt \(weapons\): key {made['ids']['blocking']}, request [0-9a-f-]{{8,}}"
    assert re.search(line, logs), "no moderation log line names the key and the request"
    assert BLOCKED not in logs and "Guns at dawn" not in logs


@pytest.fixture(scope="module")
def owners(keys):
    """Two keys that generate, run jobs and see their own images (no cost limit: these tests generate freely)."""
    store, _ = keys
    return [store.create(name, {Scope.GENERATE, Scope.JOBS}, KeyLimits())[1] for name in ("alice", "bob")]


def test_a_url_answer_opens_without_a_key_is_the_base64_answer_s_png_and_only_its_key_s(api, stack, owners):
    alice, bob = owners
    client = openai.OpenAI(api_key=alice, base_url=f"{stack.info.api_url}/v1", max_retries=0)
    asked = {"prompt": SMALL["prompt"], "size": "64x64", "extra_body": {"num_inference_steps": 2, "seed": 11}}
    linked, inline = (client.images.generate(response_format=form, **asked) for form in ("url", "b64_json"))
    url = linked.data[0].url
    assert url.startswith(f"{stack.info.api_url}/v1/images/") and linked.data[0].b64_json is None
    fetched = httpx.get(url, timeout=30)  # no key
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert fetched.content == base64.b64decode(inline.data[0].b64_json)  # the same PNG, record and all
    image_id = url.split("/")[5]
    assert api.get(f"/v1/images/{image_id}", headers=_bearer(alice)).content == fetched.content
    others, unknown = (api.get(f"/v1/images/{i}", headers=_bearer(bob)) for i in (image_id, "img_" + "0" * 24))
    assert others.status_code == unknown.status_code == 404
    assert others.json()["error"]["param"] == unknown.json()["error"]["param"] == "image_id"
    assert api.get(f"/v1/images/{image_id}").status_code == 401  # the id alone, without its signature: a key
    tampered = httpx.get(url.replace("signature=", "signature=0"), timeout=30)
    secret = (stack.options.run_dir / "url_secret").read_bytes()
    expired = UrlSigner(secret, ttl_s=-1).query(image_id)  # signed by the stack's secret, past its expiry
    late = httpx.get(f"{stack.info.api_url}/v1/images/{image_id}/content?{expired}", timeout=30)
    assert tampered.status_code == late.status_code == 403
    assert tampered.json()["error"]["param"] == "signature" and late.json()["error"]["param"] == "expires"
    gone = api.delete(f"/v1/images/{image_id}", headers=_bearer(alice))
    assert gone.status_code == 200 and httpx.get(url, timeout=30).status_code == 404


def test_a_png_carries_its_record_and_a_rerun_from_it_is_bit_identical(api, owners):
    alice, bob = owners
    answer = api.post(GENERATE, json=SMALL | {"seed": 12, "negative_prompt": "blurry"}, headers=_bearer(alice))
    assert answer.status_code == 200, answer.text
    png = Image.open(io.BytesIO(base64.b64decode(answer.json()["data"][0]["b64_json"])))
    parameters, record = png.info["parameters"], json.loads(png.info["easel"])
    assert parameters.splitlines()[:2] == [SMALL["prompt"], "Negative prompt: blurry"]
    assert "Steps: 2, Sampler: ddim, CFG scale: 7.5, Seed: 12, Size: 64x64, Model hash: " in parameters
    assert (record["model"], record["seed"], record["steps"], record["size"]) == ("easel-default", 12, 2, "64x64")
    assert record["model_hash"] and record["easel_version"] and record["moderation"] is None
    rerun = api.post(GENERATE, json=record["request"], headers=_bearer(alice))
    assert rerun.status_code == 200, rerun.text
    assert rerun.json()["data"][0]["b64_json"] == answer.json()["data"][0]["b64_json"]  # bit-identical, record too
    history = api.get("/v1/images", params={"limit": 2}, headers=_bearer(alice)).json()
    assert [item["id"] for item in history["data"]] == [rerun.json()["data"][0]["id"], answer.json()["data"][0]["id"]]
    assert history["data"][1]["record"] == record and history["has_more"]
    image_id = answer.json()["data"][0]["id"]
    again = api.post("/v1/images/rerun", json={"image_id": image_id}, headers=_bearer(alice))
    assert again.status_code == 200, again.text
    assert again.json()["changed"] == [] and again.json()["rerun_of"] == image_id
    assert again.json()["data"][0]["b64_json"] == answer.json()["data"][0]["b64_json"]
    others = api.post("/v1/images/rerun", json={"image_id": image_id}, headers=_bearer(bob))
    assert others.status_code == 404 and others.json()["error"]["param"] == "image_id"


def test_grpc_and_jobs_answer_urls_and_bad_delivery_fields_are_400s_naming_them(api, stack, owners):
    alice, _ = owners
    request = easel_pb2.GenerateRequest(
        prompt=SMALL["prompt"], size="64x64", num_inference_steps=2, seed=13, response_format="url"
    )
    with grpc.insecure_channel(stack.info.grpc_address) as channel:
        events = list(
            easel_pb2_grpc.EaselStub(channel).Generate(
                request, metadata=(("authorization", f"Bearer {alice}"),), timeout=60
            )
        )
    image = events[-1].result.images[0]
    assert image.url and not image.data
    job = api.post(
        GENERATE, json=SMALL | {"seed": 13, "background": True, "response_format": "url"}, headers=_bearer(alice)
    )
    assert job.status_code == 202, job.text
    _wait_until_final(api, job.json()["id"], alice)
    done = api.get(f"/v1/jobs/{job.json()['id']}", headers=_bearer(alice)).json()
    assert done["status"] == "succeeded", done
    pictures = [httpx.get(url, timeout=30) for url in (image.url, done["data"][0]["url"])]
    assert [p.status_code for p in pictures] == [200, 200] and pictures[0].content == pictures[1].content
    small = SMALL | {"output_format": "jpeg"}
    sizes = [
        len(
            api.post(GENERATE, json=small | {"output_compression": q}, headers=_bearer(alice)).json()["data"][0][
                "b64_json"
            ]
        )
        for q in (10, 95)
    ]
    assert sizes[0] < sizes[1]
    for body, field in (
        ({"response_format": "link"}, "response_format"),
        ({"output_format": "gif"}, "output_format"),
        ({"output_compression": 50}, "output_compression"),  # png takes none
    ):
        refused = api.post(GENERATE, json=SMALL | body, headers=_bearer(alice))
        assert refused.status_code == 400 and refused.json()["error"]["param"] == field, refused.text


# -- the hostile-tenant matrix (tests/tenant_matrix.py): another key's thing answers as an unknown id does -----------

_BODIES = {"/v1/feedback": {"rating": 5}, "/v1/videos/{video_id}/interpolate": {"factor": 2}}
"""What a row's body carries besides the id (a path row's, its whole body)."""


def test_a_key_over_its_image_quota_drops_its_own_oldest_and_leaves_another_key_s_images_alone(api, keys):
    """Issue 76: key B's traffic over its quota evicts B's own oldest images, never key A's."""
    store, _ = keys
    _, tenant_a = store.create("tenant a", {Scope.GENERATE}, KeyLimits())
    record_b, tenant_b = store.create("tenant b", {Scope.GENERATE}, KeyLimits(images=4))
    kept = api.post(GENERATE, json=SMALL | {"seed": 31}, headers=_bearer(tenant_a))
    assert kept.status_code == 200, kept.text
    a_image = kept.json()["data"][0]["id"]
    made = []
    for seed in range(40, 43):  # 6 images of B's, over its quota of 4
        answer = api.post(GENERATE, json=SMALL | {"seed": seed, "n": 2}, headers=_bearer(tenant_b))
        assert answer.status_code == 200, answer.text
        made += [item["id"] for item in answer.json()["data"]]
    history = api.get("/v1/images", params={"limit": 10}, headers=_bearer(tenant_b)).json()["data"]
    assert [item["id"] for item in history] == made[::-1][:4]  # its newest 4; its 2 oldest dropped
    assert api.get(f"/v1/images/{made[0]}", headers=_bearer(tenant_b)).status_code == 404
    assert api.get(f"/v1/images/{a_image}", headers=_bearer(tenant_a)).status_code == 200  # A's, untouched
    assert [item["id"] for item in api.get("/v1/images", headers=_bearer(tenant_a)).json()["data"]] == [a_image]
    store.update(record_b.id, KeyLimits(images=1))  # a quota lowered: B's next image leaves it its newest alone
    last = api.post(GENERATE, json=SMALL | {"seed": 44}, headers=_bearer(tenant_b)).json()["data"][0]["id"]
    assert [item["id"] for item in api.get("/v1/images", headers=_bearer(tenant_b)).json()["data"]] == [last]


_RPC_MESSAGES = {
    "Feedback": lambda field, given: easel_pb2.FeedbackRequest(**{field: given}, rating=5),
    "GetVideo": lambda field, given: easel_pb2.VideoId(video_id=given),
    "GetVideoContent": lambda field, given: easel_pb2.VideoContentRequest(video_id=given),
    "CancelVideo": lambda field, given: easel_pb2.VideoId(video_id=given),
    "InterpolateVideo": lambda field, given: easel_pb2.InterpolateVideoRequest(
        video_id=given, interpolate=easel_pb2.Interpolate(factor=2)
    ),
}


@pytest.fixture(scope="module")
def alices_things(api, owners):
    """Alice's kept image and her finished background job, by thing."""
    alice, _ = owners
    image = api.post(GENERATE, json=SMALL | {"seed": 21}, headers=_bearer(alice))
    assert image.status_code == 200, image.text
    job = api.post(GENERATE, json=SMALL | {"seed": 22, "background": True}, headers=_bearer(alice))
    assert job.status_code == 202, job.text
    _wait_until_final(api, job.json()["id"], alice)
    things = {"image": image.json()["data"][0]["id"], "job": job.json()["id"]}
    for path in (f"/v1/images/{things['image']}", f"/v1/jobs/{things['job']}"):  # hers: she sees them
        assert api.get(path, headers=_bearer(alice)).status_code == 200
    return things


def _answer(api, stack, row: Row, key: str, given: str) -> tuple:
    """What ``key`` gets on ``row``'s door naming ``given``: status, error type, param, message (``given`` as ID)."""
    if row.where == "rpc":
        with grpc.insecure_channel(stack.info.grpc_address) as channel, pytest.raises(grpc.RpcError) as failed:
            method, message = getattr(easel_pb2_grpc.EaselStub(channel), row.path), _RPC_MESSAGES[row.path]
            method(message(row.field, given), metadata=(("authorization", f"Bearer {key}"),), timeout=60)
        return failed.value.code(), None, None, failed.value.details().replace(given, "ID")
    path = row.path.replace(f"{{{row.field}}}", given)
    body = {row.field: given} | _BODIES.get(row.path, {}) if row.where == "body" else _BODIES.get(row.path)
    params = {row.field: given} if row.where == "query" else None
    answer = api.request(row.method, path, json=body, params=params, headers=_bearer(key))
    error = answer.json()["error"]
    return answer.status_code, error["type"], error["param"], error["message"].replace(given, "ID")


@pytest.mark.parametrize("row", rows("keys"), ids=row_id)
def test_another_key_s_thing_answers_as_an_unknown_id_on_every_door_naming_it(api, stack, owners, alices_things, row):
    _, bob = owners
    theirs, unknown = (_answer(api, stack, row, bob, given) for given in (alices_things[row.thing], UNKNOWN[row.thing]))
    assert theirs == unknown, (theirs, unknown)
    if row.where == "rpc":
        assert theirs[0] is grpc.StatusCode.NOT_FOUND, theirs
    else:
        kind = "not_found_error" if row.status == 404 else "invalid_request_error"
        assert theirs[:3] == (row.status, kind, row.param), theirs
