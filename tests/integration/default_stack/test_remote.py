"""Remote models through the default stack (A): a second stack (B, ``easel up`` in a home of its own) is A's ``b``.

A's chain for its default model is ``spare, b``: ``spare`` is no model here, so it is skipped (and the log says
why), and ``b`` draws while A's Triton is down, killed twice under a locust run. ``hang`` and ``huge`` are services
that never answer and that answer 50 MB, started by this module on the ports A was given; ``notimage`` and ``giant``,
services whose images are bytes that are no image and a 12000x12000 PNG, are started and added through the API.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from PIL import Image

from loadtests.scenario import Scenario, format_summary, locust_env, run_locust, summary
from serve.cli import admin as model_admin
from serve.errors import BadGateway
from serve.grpc_api import easel_pb2
from serve.models.table import MODEL_TABLE, ModelTable
from serve.names import DEFAULT_MODEL
from serve.paths import ICONS_DEV
from serve.processes import free_port
from serve.triton.server import CONTROL_HEADER
from tests.integration.conftest import GENERATE, decode_images, easel_down, easel_up, home_with_shared_engines
from tests.unit.test_remote_answers import answer_of, giant_png

logger = logging.getLogger(__name__)

BODY = {"prompt": "a red fox", "size": "64x64", "num_inference_steps": 2, "seed": 5}


@pytest.fixture(scope="module")
def stack_b(remote_ports, tmp_path_factory):
    """B: the embedded default as ``easel up --detach`` starts it, on the port A calls ``b`` at; a client of it."""
    folder = tmp_path_factory.mktemp("b")
    env = {**os.environ, "EASEL_HOME": str(home_with_shared_engines(folder / "home"))}
    try:
        up = easel_up(folder, env, remote_ports["b"], free_port(), "--no-cache", "--no-first-request")
        assert up.returncode == 0, up.stdout + up.stderr
        with httpx.Client(base_url=f"http://127.0.0.1:{remote_ports['b']}", timeout=300) as client:
            yield client
    finally:
        down = easel_down(env)
        assert down.returncode == 0, down.stdout + down.stderr


BAD_IMAGES = {"notimage": b"these bytes are no image", "giant": giant_png(12_000)}
"""What the services of ``notimage`` and ``giant`` answer as their image (OpenAI's images answer otherwise)."""


class _Misbehaving(BaseHTTPRequestHandler):
    """``hang``: holds every request unanswered (until the test ends); ``huge``: answers 50 MB; ``notimage`` and
    ``giant``: answer :data:`BAD_IMAGES`' image."""

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.name in BAD_IMAGES:
            body = json.dumps(answer_of(BAD_IMAGES[self.server.name])).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.server.name == "hang":
            self.server.released.wait(60)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        try:
            for _ in range(50):
                self.wfile.write(b" " * (1 << 20))
        except OSError:  # A cut it at its byte limit
            pass

    def log_message(self, *args) -> None:
        pass


def _serving(name: str, port: int) -> ThreadingHTTPServer:
    """The service ``name`` (:class:`_Misbehaving`) on ``port``, answering in a thread."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _Misbehaving)
    server.name, server.released, server.daemon_threads = name, threading.Event(), True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def misbehaving(remote_ports):
    """The services of ``hang`` and ``huge`` on their ports, stopped after the module."""
    servers = [_serving(name, remote_ports[name]) for name in ("hang", "huge")]
    yield
    for server in servers:
        server.released.set()
        server.shutdown()


@pytest.fixture
def bad_images(stack):
    """The services of ``notimage`` and ``giant`` on free ports, added to A as remote models through its API, and
    removed (and stopped) after the test."""
    api_url = stack.info.api_url
    servers = {name: _serving(name, free_port()) for name in BAD_IMAGES}
    try:
        for name, server in servers.items():
            model_admin.add_remote(api_url, name, {"url": f"http://127.0.0.1:{server.server_address[1]}"})
        yield tuple(servers)
    finally:
        for name, server in servers.items():
            try:
                model_admin.remove(api_url, name)
            except Exception:  # noqa: BLE001 - one that was never added
                logger.warning("remote %s was not there to remove", name)
            server.shutdown()


def test_a_chain_with_no_link_left_is_a_503_naming_the_model_and_each_link_s_reason(api, stack):
    """Before B starts: with A's UNet unloaded, ``spare`` cannot take the request (no such model) and ``b``'s service
    is unreachable, so the default's request is a 503 that names the model and says why for each link."""
    unet = f"{stack.info.triton_http_url}/v2/repository/models/unet"
    control = {CONTROL_HEADER: stack.triton.control_key}
    with stack.supervisor.paused():  # its checks would load the UNet again meanwhile
        httpx.post(f"{unet}/unload", headers=control, timeout=60).raise_for_status()
        try:
            refused = api.post(GENERATE, json=BODY)
        finally:
            httpx.post(f"{unet}/load", headers=control, timeout=300).raise_for_status()
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0, refused.text
    message = refused.json()["error"]["message"]
    assert f"model {DEFAULT_MODEL} cannot serve" in message, message
    assert "spare: cannot take it (model)" in message and "b: unavailable" in message, message


def test_a_remote_model_is_listed_and_draws_what_its_service_draws(api, easel, stack_b):
    listed = {model["id"]: model for model in api.get("/v1/models").json()["data"]}
    assert listed["b"]["family"] == "remote" and listed[DEFAULT_MODEL]["family"] != "remote"
    through_a = api.post(GENERATE, json=BODY | {"model": "b"})
    straight = stack_b.post(GENERATE, json=BODY)
    assert through_a.status_code == 200 and straight.status_code == 200, through_a.text + straight.text
    assert through_a.headers["Easel-Model"] == "b" and through_a.json()["seed"] == BODY["seed"]
    np.testing.assert_array_equal(decode_images(through_a), decode_images(straight))  # its PNG's metadata is B's
    events = list(easel.Generate(easel_pb2.GenerateRequest(**BODY, model="b"), timeout=120))  # gRPC: no steps
    assert [event.WhichOneof("event") for event in events] == ["result"] and events[0].result.model == "b"
    pixels = np.asarray(Image.open(io.BytesIO(events[0].result.images[0].data)).convert("RGB"))
    np.testing.assert_array_equal(pixels, decode_images(straight)[0])
    refused = api.post(GENERATE, json=BODY | {"model": "b", "scheduler": "lcm"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "scheduler", refused.text


def test_a_remote_that_hangs_or_floods_is_cut_with_a_504_or_502_naming_it_and_a_stays_up(api, misbehaving):
    started = time.monotonic()
    late = api.post(GENERATE, json=BODY | {"model": "hang"})
    waited = time.monotonic() - started
    flooded = api.post(GENERATE, json=BODY | {"model": "huge"})
    assert late.status_code == 504 and "hang" in late.json()["error"]["message"], late.text
    assert waited < 10  # cut at its 2 s
    assert flooded.status_code == 502 and "huge" in flooded.json()["error"]["message"], flooded.text
    assert "more than 1 MB" in flooded.json()["error"]["message"]
    assert api.post(GENERATE, json=BODY).status_code == 200  # A's own model draws on


def test_a_remote_s_images_are_checked_as_an_input_image_and_its_key_env_must_be_declared(api, bad_images):
    """``notimage`` answers bytes that are no image and ``giant`` a 12000x12000 PNG: each a 502 naming the model,
    without Retry-After (the first was a 503 with Retry-After before); ``key_env=HOME`` through the API is a 400
    naming ``remote.key_env`` that shows nothing of HOME's value."""
    for name, said in zip(bad_images, ("data.0: not a readable image", "data.0: image is 12000x12000"), strict=True):
        answer = api.post(GENERATE, json=BODY | {"model": name})
        assert answer.status_code == 502 and "Retry-After" not in answer.headers, answer.text
        error = answer.json()["error"]
        assert error["type"] == BadGateway.kind and error["param"] == "model", answer.text
        assert error["message"].startswith(f"model: {name}'s service answered an image") and said in error["message"]
    home = api.post("/v1/models", json={"name": "home", "remote": {"url": "http://127.0.0.1:9", "key_env": "HOME"}})
    assert home.status_code == 400 and home.json()["error"]["param"] == "remote.key_env", home.text
    assert (
        "HOME is not a variable declared for remotes' keys" in home.text
        and os.environ.get("HOME", "unset") not in home.text
    )
    assert "home" not in {model["id"] for model in api.get("/v1/models").json()["data"]}
    assert api.post(GENERATE, json=BODY).status_code == 200  # A's own model draws on


def test_a_remote_and_a_chain_given_through_the_api_serve_at_once_and_the_table_keeps_them(
    api, stack, stack_b, misbehaving
):
    """``easel models add-remote`` and ``easel models fallback`` (their client, against A while it runs): the remote
    added draws what B draws; ``hang``'s chain, set to it, draws when ``hang`` times out; the table holds both."""
    api_url, table_path = stack.info.api_url, stack.options.run_dir / MODEL_TABLE
    added = model_admin.add_remote(api_url, "b2", {"url": f"http://127.0.0.1:{stack_b.base_url.port}"})
    assert (added["id"], added["family"], added["fallback"]) == ("b2", "remote", [])
    try:
        drawn, straight = api.post(GENERATE, json=BODY | {"model": "b2"}), stack_b.post(GENERATE, json=BODY)
        assert drawn.status_code == 200 and drawn.headers["Easel-Model"] == "b2", drawn.text
        np.testing.assert_array_equal(decode_images(drawn), decode_images(straight))
        assert model_admin.chain(api_url, "hang", ("b2",))["fallback"] == ["b2"]
        fallen = api.post(GENERATE, json=BODY | {"model": "hang"})
        assert fallen.status_code == 200, fallen.text
        assert (fallen.headers["Easel-Model"], fallen.headers["Easel-Fallback"]) == ("b2", "hang timeout")
        table = ModelTable.read(table_path)
        assert table.remotes["b2"]["url"].endswith(str(stack_b.base_url.port)) and table.fallbacks["hang"] == ("b2",)
        unknown = api.put("/v1/models/hang/fallback", json={"chain": ["nope"]})
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "chain", unknown.text
        replaced = api.put("/v1/models/b2", json={"engine_dir": "/nowhere"})
        assert replaced.status_code == 409 and "remote model" in replaced.json()["error"]["message"], replaced.text
    finally:
        model_admin.chain(api_url, "hang", ())
        model_admin.remove(api_url, "b2")
    gone = api.post(GENERATE, json=BODY | {"model": "b2"})
    assert gone.status_code == 400 and gone.json()["error"]["param"] == "model", gone.text
    assert "b2" not in ModelTable.read(table_path).remotes and "hang" not in ModelTable.read(table_path).fallbacks


def _killed_and_back(api, stack) -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
    """kill -9 of A's Triton: A's answers to BODY until it is back, ``fallback: false``'s, and the first one A's
    default drew again (the circuit, open after the failures, lets a probe through and closes)."""
    stack.triton.process.kill()
    stack.triton.process.wait()
    answers = [api.post(GENERATE, json=BODY)]
    refused = api.post(GENERATE, json=BODY | {"fallback": False})
    deadline = time.monotonic() + 120
    while api.get("/readyz").status_code != 200:  # the supervisor restarts Triton meanwhile
        assert time.monotonic() < deadline, "A's Triton did not come back"
        answers.append(api.post(GENERATE, json=BODY))
    while (back := api.post(GENERATE, json=BODY)).headers.get("Easel-Model") != DEFAULT_MODEL:
        assert time.monotonic() < deadline and back.status_code == 200, back.text
        answers.append(back)
        time.sleep(0.5)
    return answers, refused, back


def test_with_a_s_triton_killed_twice_under_load_b_draws_its_default_and_nothing_fails(api, stack, stack_b, tmp_path):
    """Locust's mixed users on A while its Triton is killed (-9) twice: every request answered (generations drawn by
    b, vectorize traced with vtracer's defaults, each saying so), ``fallback: false`` a 503, the chain's ``spare``
    skipped with its reason in the log; Triton back, A's default draws again. The fallbacks' share is logged."""
    straight = decode_images(stack_b.post(GENERATE, json=BODY))
    scenario = Scenario(users=2, spawn_rate=2, run_time_s=30, user_classes=["FallbackUser"])
    out, ran = tmp_path / "locust", {}
    env = locust_env(stack.info, ICONS_DEV / "val")
    load = threading.Thread(target=lambda: ran.update(code=run_locust(scenario, stack.info.api_url, out, env)))
    load.start()
    time.sleep(3)
    kills = [_killed_and_back(api, stack) for _ in range(2)]
    load.join()
    for answers, refused, back in kills:
        assert [a.status_code for a in answers] == [200] * len(answers), [a.text for a in answers if a.is_error]
        drawn = answers[0]
        assert drawn.headers["Easel-Model"] == "b" and drawn.headers["Easel-Fallback"].startswith(f"{DEFAULT_MODEL} ")
        assert drawn.json()["fallback"]["model"] == DEFAULT_MODEL
        np.testing.assert_array_equal(decode_images(drawn), straight)
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0, refused.text
        assert back.status_code == 200 and "Easel-Fallback" not in back.headers
    logs = (stack.ray_session_dir / "logs").glob("worker-*.err")  # the Gateway replicas' stderr
    assert any("fallback spare skipped, it cannot take the request" in path.read_text() for path in logs)
    rows = {row["Name"]: row for row in summary(out)}
    logger.info("locust through two Triton kills:\n%s", format_summary(list(rows.values())))
    count = {name: int(row["Request Count"]) for name, row in rows.items()}
    logger.info(
        "drawn by the fallback: %d of %d generations",
        count.get("generations (fallback)", 0),
        count.get("generations", 0) + count.get("generations (fallback)", 0),
    )
    assert ran["code"] == 0 and rows["Aggregated"]["Failure Count"] == "0"
    assert count.get("generations (fallback)", 0) > 0
