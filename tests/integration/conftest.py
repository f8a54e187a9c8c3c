"""A real Triton and a real Ray Serve app on free loopback ports, shared by a test module."""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from serve.paths import easel_home
from serve.stack import Stack, StackOptions, wait_until_ready
from tests.studio import chromium

GENERATE = "/v1/images/generations"
LOCAL = httpx.Client(timeout=10)
"""One client for the tests' calls on a stack's own endpoints (Triton's statistics, the API under load), from any
thread: a client made per call (``httpx.get``) builds a TLS context each time, 26 ms of CPU."""


def default_stack(tmp_path_factory, **options) -> Iterator[Stack]:
    """The Easel stack (embedded model) on free ports, no result cache (tests repeat seeded requests on purpose).

    ``options``: more of ``easel up``'s (:class:`StackOptions`).
    """
    run_dir = tmp_path_factory.mktemp("run")
    with Stack(StackOptions(port=0, dashboard=False, run_dir=run_dir, cache_bytes=0, **options)) as stack:
        yield stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A module's own default stack (``default_stack/`` shares one among its modules)."""
    yield from default_stack(tmp_path_factory)


@pytest.fixture(scope="module")
def api(stack):
    """An HTTP client for the public API."""
    with httpx.Client(base_url=stack.info.api_url, timeout=300) as client:
        yield client


def decode_images(response: httpx.Response) -> np.ndarray:
    """The response's images as uint8 NHWC."""
    data = response.json()["data"]
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).convert("RGB")) for d in data])


def submit(api, body: dict, **headers) -> dict:
    """A background job of ``body`` (its 202 answer)."""
    response = api.post(GENERATE, json={**body, "background": True}, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


def read_events(base_url: str, job_id: str, preview: bool = False) -> list[tuple[str, dict]]:
    """Every Server-Sent Event of a job's stream, until the server ends it."""
    events, kind = [], None
    with httpx.stream("GET", f"{base_url}/v1/jobs/{job_id}/events", params={"preview": preview}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
    return events


def pictures(answer: dict) -> list[str]:
    """An answer's (or a succeeded job's) images, base64, without their ids (each answer's images get new ids)."""
    return [item["b64_json"] for item in answer["data"]]


def batch_histogram(triton_http_url: str, model: str = "unet") -> collections.Counter:
    """How many executions of ``model`` Triton ran at each batch size so far."""
    stats = LOCAL.get(f"{triton_http_url}/v2/models/{model}/stats").json()["model_stats"][0]
    return collections.Counter({int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]})


def post_together(api_url: str, route: str, bodies: list[dict]) -> list[httpx.Response]:
    """``bodies`` posted as JSON to ``route`` all at once, the answers in their order."""

    async def all_at_once():
        async with httpx.AsyncClient(base_url=api_url, timeout=300) as client:
            return await asyncio.gather(*(client.post(route, json=body) for body in bodies))

    return asyncio.run(all_at_once())


@contextmanager
def triton_killed(stack: Stack, ready_within_s: float = 60.0):
    """SIGKILL Triton; the block runs while it is down. The supervisor restarts it after the block; the block's end
    waits for /readyz.

    The supervisor is held while the block runs: it notices a death within a quarter second and Triton's restart
    takes about a second, so a request sent at once in the block could otherwise meet Triton already back.
    """
    try:
        with stack.supervisor.paused():
            stack.triton.process.kill()
            stack.triton.process.wait()
            yield
    finally:
        wait_until_ready(stack.info.api_url, ready_within_s)


NO_CANARY_S = 24 * 3600.0
"""``canary_interval_s`` of a stack whose tests count engine executions: the supervisor's canary inference (every
10 s on each model that answered nothing since its last look) counts as one, and made a count move mid-test."""


def unet_executions(stack: Stack) -> int:
    """How many executions the UNet has run (every instance), from Triton's statistics."""
    stats = LOCAL.get(f"{stack.info.triton_http_url}/v2/models/unet/stats").json()["model_stats"][0]
    return int(stats["execution_count"])


def settled_unet_executions(stack: Stack, quiet_s: float = 2.0, timeout_s: float = 60.0) -> int:
    """:func:`unet_executions` once the count has not moved for ``quiet_s``: what earlier requests left has ended."""
    deadline = time.monotonic() + timeout_s
    count = unet_executions(stack)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        if (now := unet_executions(stack)) == count:
            return count
        count = now
    raise AssertionError(f"the UNet did not go quiet in {timeout_s:g} s")


def assert_unet_goes_quiet(stack: Stack, settle_s: float = 4.0, window_s: float = 4.0) -> None:
    """The UNet runs nothing (one health-check canary at most) in the ``window_s`` after ``settle_s``.

    An engine call already in Triton is left to finish (they are never canceled), so the window starts after it.
    """
    time.sleep(settle_s)
    before = unet_executions(stack)
    time.sleep(window_s)
    ran = unet_executions(stack) - before
    assert ran <= 1, f"the UNet ran {ran} executions {settle_s:g}-{settle_s + window_s:g} s after its caller left"


def engine_names(stack: Stack) -> tuple[str, ...]:
    """The Triton models of the stack's text-to-image pipeline (its family's engines)."""
    return tuple(stack.engines.specs)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port (Debian's; `.ci/run` installs it), stopped after the session."""
    import shutil

    import redis

    from serve.processes import ManagedProcess, free_port

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(folder),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    client = redis.Redis(port=port)

    def probe() -> bool:
        return bool(client.ping())

    server = ManagedProcess("redis-server", lambda: command, folder / "redis.log", probe).start(30)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        server.stop()


@pytest.fixture(scope="session")
def new_redis_database(redis_url):
    """A function giving the URL of another database of the session's Redis server at each call, emptied: a stack's
    stores of their own (database 0, ``redis_url``'s, holds the contract tests' keys and the cluster's GCS state)."""
    import itertools

    import redis

    numbers = itertools.count(1)

    def new() -> str:
        url = f"{redis_url.rsplit('/', 1)[0]}/{next(numbers)}"
        redis.Redis.from_url(url).flushdb()
        return url

    return new


EASEL = [sys.executable, "-m", "serve.cli"]


def easel_up(tmp_path, env, port: int, dashboard_port: int, *extra: str) -> subprocess.CompletedProcess:
    """``easel up --detach`` as a user runs it, on the given ports, with the repository in ``tmp_path``."""
    command = [
        *EASEL,
        "up",
        "--detach",
        "--port",
        str(port),
        "--dashboard-port",
        str(dashboard_port),
        "--repository",
        str(tmp_path / "repository"),
        "--triton-ports",
        "0,0,0",  # free ones: the fixed defaults may be taken on a shared machine
        "--grpc-port",
        "0",
        *extra,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def home_with_shared_engines(home: Path) -> Path:
    """A new stack home whose engine cache (and its build locks) are this machine's shared ones."""
    for shared in ("engines", "locks"):
        (easel_home() / shared).mkdir(parents=True, exist_ok=True)
        (home / shared).parent.mkdir(parents=True, exist_ok=True)
        (home / shared).symlink_to(easel_home() / shared, target_is_directory=True)
    return home


def easel_down(env) -> subprocess.CompletedProcess:
    """``easel down``."""
    return subprocess.run([*EASEL, "down"], env=env, capture_output=True, text=True, timeout=180)


class WebhookReceiver:
    """A webhook receiver on a loopback port: keeps each call's headers and body, and answers 204.

    While ``answering`` is clear it holds each call unanswered (up to ``HOLD_S``), as a slow receiver would.
    """

    HOLD_S = 300

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.calls: list[tuple[dict[str, str], bytes, bool]] = []  # headers, body, whether it was answered
        self.answering = threading.Event()
        self.answering.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers.items()), body, receiver.answering.is_set()))
                receiver.answering.wait(receiver.HOLD_S)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.allowed = f"127.0.0.1:{self.server.server_address[1]}"  # its --webhook-hosts entry

    def verified(self, secret: str) -> list[tuple[str, dict, bool]]:
        """Every call so far: its webhook-id, its body (the signature checked by Standard Webhooks' library), and
        whether it was answered (not held)."""
        from standardwebhooks import Webhook

        check = Webhook(secret).verify
        return [(head["webhook-id"], check(body, head), answered) for head, body, answered in list(self.calls)]

    def wait_for(self, secret: str, job_ids: set[str], timeout_s: float = 120) -> list[tuple[str, dict, bool]]:
        """The verified calls once each of ``job_ids`` has had one answered (an AssertionError past ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            calls = self.verified(secret)
            missing = job_ids - {body["id"] for _, body, answered in calls if answered}
            if not missing:
                return calls
            assert time.monotonic() < deadline, f"no webhook call for {sorted(missing)} in {timeout_s} s"
            time.sleep(0.2)

    def close(self) -> None:
        """Stop serving (calls held are let go)."""
        self.answering.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A webhook receiver of a test's own, on a loopback port."""
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


# -- Easel Studio in a real browser (tests/studio.py) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, for one module (:func:`tests.studio.chromium`); a module whose later tests call
    ``asyncio.run`` overrides it with a test's own."""
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab in a context of its own (no storage shared between tests)."""
    context = browser.new_context()
    yield context.new_page()
    context.close()


@pytest.fixture
def studio(page: Page, stack):
    """The Studio opened at the stack's front door (``/``), every request it makes recorded and checked after."""
    origin = stack.info.api_url
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{origin}/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=30_000)
    assert page.url == f"{origin}/studio"
    yield page
    assert [url for url in requests if not url.startswith((origin + "/", "data:", "blob:"))] == []
