"""Background jobs, their webhooks and the result cache through the running stack, its stores in SQLite (the stack's
run folder, the default).

The stores in Redis (a stack across machines) serve ``test_experiments.py``'s and ``test_cluster.py``'s stacks;
each Redis store passes its store's contract in ``test_*_redis.py``.
"""

import base64
import io
import logging
import time

import pytest
from PIL import Image
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from serve.access import ACTIVE_CHECK_S, open_key_store
from serve.access.keys import KeyLimits
from serve.files import stack_secret
from serve.routes import Scope
from serve.stack import Stack, StackOptions
from serve.webhooks import SECRET_FILE, open_key_secrets, open_outbox, secret_text
from serve.webhooks.sender import PER_KEY
from serve.webhooks.signing import signed_headers
from serve.webhooks.store import DeliveryStatus
from tests.integration.conftest import WebhookReceiver, pictures, read_events, submit

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

GENERATE = "/v1/images/generations"


@pytest.fixture(scope="module")
def receivers():
    """The module's webhook receivers (the only host:ports its stacks allow): an open API's, tenant a's, tenant b's."""
    made = {name: WebhookReceiver() for name in ("open", "a", "b")}
    yield made
    for receiver in made.values():
        receiver.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, receivers):
    """The stack with its jobs and cache in SQLite (its run folder).

    A webhook attempt may take a minute: the receiver a test holds never times out while the test runs.
    """
    run_dir = tmp_path_factory.mktemp("run")
    hosts = tuple(receiver.allowed for receiver in receivers.values())
    options = StackOptions(port=0, dashboard=False, run_dir=run_dir, webhook_hosts=hosts, webhook_timeout_s=60)
    with Stack(options) as stack:
        yield stack


SMALL = {"prompt": "a blue star icon", "size": "64x64", "num_inference_steps": 6, "seed": 5}


def wait_for(api, job_id: str, statuses=("succeeded", "failed", "canceled"), timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not {statuses} within {timeout_s} s: {job}")


def test_a_background_job_is_queued_runs_and_answers_as_the_synchronous_call_does(api):
    job = submit(api, SMALL)
    assert job["object"] == "image.generation.job" and job["id"].startswith("job_")
    assert job["status"] in ("queued", "running") and job["priority"] == "normal"
    done = wait_for(api, job["id"])
    assert done["status"] == "succeeded" and done["progress"] == {"step": 6, "total": 6, "stage": "denoise"}, done
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    synchronous = api.post(GENERATE, json=SMALL, headers={"Cache-Control": "no-cache"})  # generated, not cached
    assert synchronous.headers["Easel-Cache"] == "miss"
    assert pictures(done) == pictures(synchronous.json()) and done["seed"] == 5


def test_events_give_the_state_first_then_every_step_then_one_final_event(stack, api):
    job = submit(api, {**SMALL, "num_inference_steps": 12, "seed": 6})
    events = read_events(stack.info.api_url, job["id"], preview=True)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "state" and kinds[-1] == "completed" and kinds.count("completed") == 1
    steps = [data["step"] for kind, data in events if kind == "progress"]
    at_connect = events[0][1]["progress"]["step"]  # the state at connect; each step after it is one event
    assert steps == list(range(at_connect + 1, 13)), (at_connect, steps)
    previews = {data["step"]: data["preview"] for kind, data in events if kind == "progress" and "preview" in data}
    assert set(previews) == {5, 10, 12} - set(range(at_connect + 1))
    preview = Image.open(io.BytesIO(base64.b64decode(previews[12])))
    assert preview.size == (16, 16)  # the latent grid of a 64x64 image
    assert events[-1][1]["data"] == api.get(f"/v1/jobs/{job['id']}").json()["data"]
    late = read_events(stack.info.api_url, job["id"])  # connects after the end: state, then the final event
    assert [kind for kind, _ in late] == ["state", "completed"] and late[0][1]["status"] == "succeeded"
    plain = [data for kind, data in late if kind == "progress"]
    assert all("preview" not in data for data in plain)


def test_cancel_stops_a_running_job_at_its_next_step_and_a_queued_one_never_runs(stack, api):
    running = submit(api, {**SMALL, "num_inference_steps": 150, "seed": 7})
    job = wait_for(api, running["id"], statuses=("running",))
    while api.get(f"/v1/jobs/{running['id']}").json()["progress"]["step"] < 3:
        time.sleep(0.05)
    at_cancel = api.post(f"/v1/jobs/{running['id']}/cancel")
    assert at_cancel.status_code == 200 and at_cancel.json()["cancel_requested"]
    step_at_cancel = at_cancel.json()["progress"]["step"]
    events = read_events(stack.info.api_url, running["id"])
    assert events[-1][0] == "canceled" and [k for k, _ in events].count("canceled") == 1
    job = api.get(f"/v1/jobs/{running['id']}").json()
    state = events[0][1]  # the stream starts with the state at connect: steps before it are not sent again
    last = max([state["progress"]["step"], *(data["step"] for kind, data in events if kind == "progress")])
    logger.info("cancel at step %d; last progress event at step %d of 150", step_at_cancel, last)
    assert job["status"] == "canceled" and last - step_at_cancel <= 1, (step_at_cancel, last)
    assert api.post(f"/v1/jobs/{running['id']}/cancel").status_code == 409


def test_a_queued_job_canceled_never_runs(stack, api):
    # Fill every runner slot of the low priority (4 per Gateway replica) with long jobs, then one more queues.
    blockers = [submit(api, {**SMALL, "num_inference_steps": 150, "seed": 10 + i, "priority": "low"}) for i in range(8)]
    queued = submit(api, {**SMALL, "priority": "low", "seed": 30})
    time.sleep(1.0)
    assert api.get(f"/v1/jobs/{queued['id']}").json()["status"] == "queued"
    canceled = api.post(f"/v1/jobs/{queued['id']}/cancel").json()
    assert canceled["status"] == "canceled" and canceled["started_at"] is None
    for blocker in blockers:
        api.post(f"/v1/jobs/{blocker['id']}/cancel")
    for blocker in blockers:
        wait_for(api, blocker["id"])
    events = read_events(stack.info.api_url, queued["id"])
    assert [kind for kind, _ in events] == ["state", "canceled"]  # it never ran


def test_each_finished_job_is_posted_once_signed_to_its_webhook(stack, api, receivers):
    webhook_receiver = receivers["open"]
    secret = secret_text(stack_secret(stack.options.run_dir / SECRET_FILE))  # `easel webhooks secret` prints it
    done = submit(api, {**SMALL, "seed": 90, "webhook": webhook_receiver.url})
    canceled = submit(api, {**SMALL, "seed": 91, "num_inference_steps": 150, "webhook": webhook_receiver.url})
    assert api.post(f"/v1/jobs/{canceled['id']}/cancel").status_code == 200
    quiet = submit(api, {**SMALL, "seed": 92})  # no webhook: no call
    finished = {job["id"]: wait_for(api, job["id"]) for job in (done, canceled, quiet)}
    calls = webhook_receiver.wait_for(secret, {done["id"], canceled["id"]})
    time.sleep(1.0)  # a second call would come by now (the sender looks every 0.5 s)
    calls = [(delivery, body) for delivery, body, _ in webhook_receiver.verified(secret) if body["id"] in finished]
    assert sorted(body["id"] for _, body in calls) == sorted([done["id"], canceled["id"]])  # one each
    for delivery, body in calls:
        assert delivery.startswith("msg_") and body.pop("webhook_url") == webhook_receiver.url  # signed with it
        assert body == finished[body["id"]]  # the job object as GET answers it
    assert [finished[j["id"]]["status"] for j in (done, canceled)] == ["succeeded", "canceled"]


def test_high_priority_starts_before_earlier_normal_jobs_when_slots_are_full(api):
    blockers = [submit(api, {**SMALL, "num_inference_steps": 60, "seed": 40 + i}) for i in range(8)]
    normal = submit(api, {**SMALL, "seed": 50})
    high = submit(api, {**SMALL, "seed": 51, "priority": "high"})
    high_done = wait_for(api, high["id"])
    normal_now = api.get(f"/v1/jobs/{normal['id']}").json()
    assert high_done["status"] == "succeeded"
    # high was claimed first: the earlier normal job started after it, or not yet (the blockers, batched together,
    # may free two slots at once, and then both run at the same time)
    assert normal_now["started_at"] is None or normal_now["started_at"] >= high_done["started_at"], normal_now
    for job in [*blockers, normal]:
        api.post(f"/v1/jobs/{job['id']}/cancel")
        wait_for(api, job["id"])


def test_list_pages_newest_first_and_filters_by_status(api):
    made = [submit(api, {**SMALL, "seed": 60 + i})["id"] for i in range(3)]
    for job_id in made:
        wait_for(api, job_id)
    first = api.get("/v1/jobs", params={"limit": 2}).json()
    assert first["object"] == "list" and [j["id"] for j in first["data"]] == made[::-1][:2] and first["has_more"]
    rest = api.get("/v1/jobs", params={"limit": 1, "after": first["last_id"]}).json()
    assert rest["data"][0]["id"] == made[0]
    succeeded = api.get("/v1/jobs", params={"status": "succeeded", "limit": 100}).json()["data"]
    assert set(made) <= {j["id"] for j in succeeded} and all(j["status"] == "succeeded" for j in succeeded)


def test_an_idempotency_key_returns_the_same_job_and_refuses_another_body(api):
    first = api.post(GENERATE, json={**SMALL, "background": True, "seed": 70}, headers={"Idempotency-Key": "k-70"})
    again = api.post(GENERATE, json={**SMALL, "background": True, "seed": 70}, headers={"Idempotency-Key": "k-70"})
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = api.post(GENERATE, json={**SMALL, "background": True, "seed": 71}, headers={"Idempotency-Key": "k-70"})
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    wait_for(api, first.json()["id"])


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "param"),
    [
        ("get", "/v1/jobs/job_000000000000000000000000", {}, 404, "id"),
        ("post", "/v1/jobs/job_000000000000000000000000/cancel", {}, 404, "id"),
        ("get", "/v1/jobs/job_000000000000000000000000/events", {}, 404, "id"),
        ("get", "/v1/jobs", {"params": {"limit": 0}}, 400, "query.limit"),
        ("get", "/v1/jobs", {"params": {"status": "sleeping"}}, 400, "query.status"),
        ("get", "/v1/jobs", {"params": {"after": "job_missing"}}, 404, "after"),
        ("post", GENERATE, {"json": {**SMALL, "background": True, "priority": "urgent"}}, 400, "priority"),
        (
            "post",
            GENERATE,
            {"json": {**SMALL, "background": True}, "headers": {"Idempotency-Key": "has space"}},
            400,
            "Idempotency-Key",
        ),
        ("post", GENERATE, {"json": SMALL, "headers": {"Idempotency-Key": "has space"}}, 400, "Idempotency-Key"),
        ("post", GENERATE, {"json": {**SMALL, "background": True, "webhook": "http://example.com/"}}, 400, "webhook"),
        ("post", GENERATE, {"json": {**SMALL, "webhook": "http://127.0.0.1:9/hook"}}, 400, "webhook"),
        ("post", GENERATE, {"json": {**SMALL, "background": True, "webhook": "http://127.0.0.1/"}}, 400, "webhook"),
    ],
)
def test_bad_job_requests_are_clear_4xx(api, method, path, kwargs, status, param):
    response = getattr(api, method)(path, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_a_seeded_request_again_is_a_cache_hit_byte_identical_and_faster(api):
    body = {**SMALL, "num_inference_steps": 20, "seed": 80}
    started = time.perf_counter()
    miss = api.post(GENERATE, json=body)
    miss_s = time.perf_counter() - started
    started = time.perf_counter()
    hit = api.post(GENERATE, json=body)
    hit_s = time.perf_counter() - started
    assert miss.headers["Easel-Cache"] == "miss" and hit.headers["Easel-Cache"] == "hit"
    assert pictures(hit.json()) == pictures(miss.json()) and hit.json()["seed"] == 80
    assert hit.json()["data"][0]["id"] != miss.json()["data"][0]["id"]  # the images of each answer have new ids
    logger.info("cache miss %.3f s, hit %.3f s", miss_s, hit_s)
    assert hit_s < miss_s
    unseeded = api.post(GENERATE, json={k: v for k, v in body.items() if k != "seed"})
    assert "Easel-Cache" not in unseeded.headers  # only an explicit seed makes an answer reusable
    fresh = api.post(GENERATE, json=body, headers={"Cache-Control": "no-cache"})
    assert fresh.headers["Easel-Cache"] == "miss" and pictures(fresh.json()) == pictures(miss.json())


DONE = ("succeeded", "failed")


def _until_done(api, job_ids: list[str], headers: dict, timeout_s: float = 180) -> None:
    """Each job succeeded or failed within ``timeout_s``; an answer that is not the job's (an error) is logged and
    asked again, and is the failure's message if the time runs out."""
    deadline = time.monotonic() + timeout_s
    for job_id in job_ids:
        while (answer := api.get(f"/v1/jobs/{job_id}", headers=headers)).json().get("status") not in DONE:
            if answer.status_code != 200:
                logger.warning("GET /v1/jobs/%s: %d %s", job_id, answer.status_code, answer.text)
            assert time.monotonic() < deadline, f"job {job_id} not done within {timeout_s} s: {answer.text}"
            time.sleep(0.1)


def test_each_key_s_webhooks_are_signed_with_its_own_secret_and_its_slow_receiver_never_holds_another_s(
    stack, api, receivers
):
    """Issue 76: one secret signed every tenant's deliveries, and 96 cheap jobs of key a whose receiver answered past
    the timeout held every slot, so key b's delivery waited for a's timeouts. Runs last: its keys close the API."""
    keys, store = open_key_store(stack.options.store), stack.options.store
    (a, a_key), (b, b_key) = (keys.create(name, {Scope.GENERATE, Scope.JOBS}, KeyLimits()) for name in "ab")
    as_a, as_b = ({"Authorization": f"Bearer {key}"} for key in (a_key, b_key))
    deadline = time.monotonic() + 30
    while api.get("/v1/jobs").status_code != 401:  # one replica sees the first key ...
        assert time.monotonic() < deadline, "the API stayed open with a key in the store"
        time.sleep(0.2)
    time.sleep(2 * ACTIVE_CHECK_S)  # ... and every other one within ACTIVE_CHECK_S of it
    hook_a, hook_b = receivers["a"], receivers["b"]
    quick = {**SMALL, "num_inference_steps": 2, "seed": 300, "background": True}  # the same: cached after the first
    refused = api.post(GENERATE, json={**quick, "webhook": hook_a.url}, headers=as_a)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "webhook", refused.text
    assert f"easel keys webhook-secret {a.id}" in refused.json()["error"]["message"]  # no secret yet
    secrets = open_key_secrets(store)
    a_secret, b_old = secrets.rotate(a.id), secrets.rotate(b.id)
    b_secret = secrets.rotate(b.id)  # b's rotated: both of b's sign during the grace
    hook_a.answering.clear()  # a's receiver holds every call, as one answering past the timeout does
    slow = [submit(api, {**quick, "webhook": hook_a.url}, **as_a)["id"] for _ in range(40)]  # over 2 x 16 slots
    _until_done(api, slow, as_a)
    job_b = submit(api, {**quick, "webhook": hook_b.url}, **as_b)["id"]
    [(_, body, _)] = hook_b.wait_for(secret_text(b_secret), {job_b})
    outbox = open_outbox(store)
    ended = [d.outcome for job_id in slow for d in outbox.of_source(job_id) if d.outcome is not None]
    held = len(hook_a.calls)
    logger.info("b's delivery came while a's receiver held %d calls of a's %d", held, len(slow))
    assert ended == []  # b's came before any attempt of a's ended: a's held slots never made it wait
    assert 0 < held <= PER_KEY * 2  # a holds its share of each Gateway replica's sender, no more
    [(head, raw, _)] = list(hook_b.calls)
    assert body["id"] == job_b and body["webhook_url"] == hook_b.url  # the URL it was meant for, signed
    assert Webhook(secret_text(b_old)).verify(raw, head)["id"] == job_b  # the replaced secret, in its grace
    forged = signed_headers([a_secret], head["webhook-id"], raw.decode(), time.time())  # a signs a call to b
    for headers, secret in ((head, a_secret), (forged, b_secret)):
        with pytest.raises(WebhookVerificationError):
            Webhook(secret_text(secret)).verify(raw, headers)
    hook_a.answering.set()  # a's receiver answers now (the calls it held too): every one of a's is delivered
    deadline = time.monotonic() + 120
    while any(d.status is not DeliveryStatus.DELIVERED for job_id in slow for d in outbox.of_source(job_id)):
        assert time.monotonic() < deadline, "a's deliveries were not all delivered once its receiver answered"
        time.sleep(0.2)
    assert {body["id"] for _, body, _ in hook_a.verified(secret_text(a_secret))} == set(slow)  # each signed with a's
