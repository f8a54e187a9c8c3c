"""The access door's pieces: scopes by route, costs, rate-limit headers, and the refusal to serve open off loopback."""

import asyncio
import base64
import json
from types import SimpleNamespace

import httpx
import pytest
from starlette.requests import Request

from serve.access import duration, ratelimit_headers, request_caller
from serve.access.keys import Bucket, Decision, KeyLimits
from serve.access.sqlite import SqliteKeyStore
from serve.errors import InvalidInput
from serve.finishing.upscalers import UpscalerEntry, Upscalers
from serve.http.admission import admit
from serve.http.bodies import read_body
from serve.models.admission import Work, upscale_work
from serve.models.served import ServedModels
from serve.protocol.schema import GenerationRequest
from serve.routes import Scope, required_scope, route
from serve.serving.admission import Admission
from serve.serving.moderation import Moderation
from serve.serving.upscale import Upscaling
from serve.settings import DEFAULT_MODEL
from serve.stack import OpenToTheNetwork, StackOptions, check_exposure
from tests.controls import b64, input_image


def test_each_route_needs_its_scope_and_health_needs_none():
    assert required_scope("/v1/images/generations", "POST") is Scope.GENERATE
    assert required_scope("/v1/images/edits", "POST") is Scope.GENERATE
    assert required_scope("/v1/controlnets") is Scope.GENERATE
    assert required_scope("/v1/vectorize", "POST") is Scope.VECTORIZE
    assert required_scope("/v1/jobs") is Scope.JOBS and required_scope("/v1/jobs/job_1/events") is Scope.JOBS
    assert required_scope("/v1/jobsx") is None and required_scope("/docs") is None


def test_an_operation_s_own_scope_comes_before_its_path_s():
    assert required_scope("/v1/models") is Scope.GENERATE and required_scope("/v1/models/sd", "get") is Scope.GENERATE
    assert required_scope("/v1/models", "POST") is Scope.ADMIN
    assert (
        required_scope("/v1/models/sd", "PUT") is Scope.ADMIN
        and required_scope("/v1/models/sd", "DELETE") is Scope.ADMIN
    )
    assert required_scope("/v1/models/sd", "PATCH") is None  # no such operation: any valid key gets the 405
    assert required_scope("/v1/experiments/ab", "TRACE") is None and required_scope("/v1/jobs", "TRACE") is None


class _Priced:
    """Generations whose admission costs what ``price`` says (the real admission's cost rule, without Ray)."""

    def __init__(self, price) -> None:
        self.price = price
        self.moderation = Moderation()  # off: an upscale's image is screened by nothing

    async def admitted(self, request, key) -> SimpleNamespace:
        return SimpleNamespace(cost=self.price(request), request=request)


def _charged(path: str, raw: bytes, price, headers=((b"content-type", b"application/json"),), upscaling=None) -> float:
    """What the door charges for ``raw`` sent to ``path``: read and admitted by the route's ``admit`` dependency.

    0 for a body admission refuses as it reads it (its 400 comes first: nothing is admitted, nothing charged).
    """
    raw_sent = [False]

    async def receive() -> dict:
        raw_sent[0] = True
        return {"type": "http.request", "body": raw, "more_body": False}

    gateway = SimpleNamespace(admission=Admission(_Priced(price), upscaling))
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": list(headers),
        "app": SimpleNamespace(state=SimpleNamespace(gateway=gateway)),
        "route": SimpleNamespace(path=path, path_format=path),  # as a Starlette route has both
    }
    request = Request(scope, receive)
    try:
        asyncio.run(admit(request))
    except InvalidInput:
        assert raw_sent[0] and request_caller(request).cost == 0.0  # read, refused, not charged
        return 0.0
    return request_caller(request).cost


def _json(raw: bytes, price) -> float:
    """What a generation's JSON body is charged."""
    return _charged("/v1/images/generations", raw, price)


@pytest.fixture(scope="module")
def price(engine_dir):
    """The Gateway's price for the embedded default (64 px native): every engine pass, and the inputs decoded."""
    models = ServedModels.open({DEFAULT_MODEL: str(engine_dir)})
    return lambda request: models.resolve(request.model).work(request).cost


def test_a_generation_costs_images_times_megapixels_times_engine_passes(price):
    two = b'{"prompt": "x", "n": 2, "num_inference_steps": 10, "size": "512x512"}'
    assert _json(two, price) == pytest.approx(2 * 512 * 512 / 1e6 * (10 + 1))  # the steps, the VAE decode
    assert _json(b'{"prompt": "x"}', price) == pytest.approx(64 * 64 / 1e6 * 21)  # defaults: native size
    assert _json(b'{"prompt": 3', price) == 0.0  # refused as it is read, with its 400


def test_images_cost_the_steps_that_run_their_vae_passes_and_their_pixels_and_controlnets_a_pass_each(price):
    image = b64(input_image(64, 128))  # 128 wide, 64 high: the output's size when no size is given
    megapixels = 128 * 64 / 1e6
    body = {"prompt": "x", "image": [image], "strength": 0.5, "num_inference_steps": 10, "n": 2}
    assert _json(json.dumps(body).encode(), price) == pytest.approx(2 * megapixels * 7 + megapixels)
    controlled = {"prompt": "x", "controlnets": [{"name": "a", "image": image}] * 2, "num_inference_steps": 10}
    expected = 64 * 64 / 1e6 * (10 * 3 + 1) + 2 * megapixels
    assert _json(json.dumps(controlled).encode(), price) == pytest.approx(expected)
    form = httpx.Request(
        "POST",
        "http://x/v1/images/edits",
        files=[("image", ("a.png", base64.b64decode(image)))],
        data={"prompt": "x", "num_inference_steps": "10", "strength": "0.5"},
    )
    headers = [(name.lower(), value) for name, value in form.headers.raw]
    edits = "/v1/images/edits"
    assert _charged(edits, form.read(), price, headers) == pytest.approx(megapixels * 7 + megapixels)
    assert _charged(edits, b"not multipart", price, headers) == 0.0  # refused as it is read, with its 400


def test_a_generation_s_upscale_and_a_hires_fix_s_second_pass_are_in_the_one_price(price):
    first = 2 * 64 * 64 / 1e6 * (10 + 1)  # n 2, 10 steps at the native 64x64, the VAE decode
    upscaled = 2 * 128 * 128 / 1e6  # x2: a pass at the output's megapixels
    plain = {"prompt": "x", "n": 2, "num_inference_steps": 10, "upscale": {"upscaler": "u", "scale": 2}}
    assert _json(json.dumps(plain).encode(), price) == pytest.approx(first + upscaled + 2 * 64 * 64 / 1e6)
    hires = plain | {"upscale": {"upscaler": "u", "scale": 2, "denoise": 0.5}}  # img2img of 5 steps at 128x128
    second = 2 * 128 * 128 / 1e6 * (5 + 1 + 1) + 2 * 128 * 128 / 1e6  # its steps, decode, encode; its input
    assert _json(json.dumps(hires).encode(), price) == pytest.approx(first + second)
    unscaled = plain | {"upscale": {"upscaler": "u", "denoise": 0.5}}  # priced at the largest scale, x4
    fourfold = 2 * 256 * 256 / 1e6 * (5 + 1 + 1) + 2 * 256 * 256 / 1e6
    assert _json(json.dumps(unscaled).encode(), price) == pytest.approx(first + fourfold)
    work = upscale_work(GenerationRequest.model_validate(hires), 64, 64)
    assert Work(2, 10, 64, 64, upscale=work).pass_cost == pytest.approx(first)  # what a replica holds in flight


def test_the_upscale_route_is_read_at_the_door_and_priced_by_what_its_engine_runs():
    upscaling = Upscaling(Upscalers((UpscalerEntry("x4", "f.pth", architecture="RRDBNet", scale=4),)), None)
    png = base64.b64decode(b64(input_image(30, 40)))  # 40 wide, 30 high
    form = httpx.Request(
        "POST", "http://x/v1/images/upscale", files=[("image", ("a.png", png))], data={"upscaler": "x4", "scale": "2"}
    )
    headers = [(name.lower(), value) for name, value in form.headers.raw]
    scope = {"type": "http", "method": "POST", "path": "/v1/images/upscale", "headers": headers}
    body = _read_upscale(scope, form.read())
    assert body.data == png and body.options.scale == 2
    assert upscaling.work(body).cost == pytest.approx(160 * 120 / 1e6 + 40 * 30 / 1e6)  # the x4 engine's + input
    raw = json.dumps({"image": b64(input_image(30, 40)), "upscaler": "x4"}).encode()
    body = _read_upscale({**scope, "headers": [(b"content-type", b"application/json")]}, raw)
    assert upscaling.work(body).cost == pytest.approx(160 * 120 / 1e6 + 40 * 30 / 1e6)  # its own scale, x4
    assert _charged("/v1/images/upscale", raw, None, upscaling=upscaling) == pytest.approx(160 * 120 / 1e6 + 0.0012)
    assert _charged("/v1/images/upscale", b"not multipart", None, headers, upscaling) == 0.0  # refused as read
    with pytest.raises(InvalidInput) as refused:
        upscaling.work(body._replace(options=body.options.model_copy(update={"upscaler": "nope"})))
    assert refused.value.field == "upscaler"


def _read(path: str, scope: dict, raw: bytes):
    """A body as admission reads it (:func:`serve.http.bodies.read_body`): what it was read as, or its refusal."""

    async def receive() -> dict:
        return {"type": "http.request", "body": raw, "more_body": False}

    try:
        return asyncio.run(read_body(route("post", path), Request(scope, receive)))
    except InvalidInput as refusal:
        return refusal


def _read_upscale(scope: dict, raw: bytes):
    """An upscale request as admission reads it: its image and options, or its refusal."""
    return _read("/v1/images/upscale", scope, raw)


def _read_form(scope: dict, raw: bytes) -> GenerationRequest | InvalidInput:
    """An edit's multipart body as admission reads it: the request, or its refusal."""
    return _read("/v1/images/edits", scope, raw)


def test_rate_limit_headers_are_openai_s():
    decision = Decision(True, {"requests": Bucket(60, 41.7, 18.3), "cost": Bucket(10.0, 2.456, 0.4)})
    assert dict(ratelimit_headers(decision)) == {
        b"x-ratelimit-limit-requests": b"60",
        b"x-ratelimit-remaining-requests": b"41",
        b"x-ratelimit-reset-requests": b"19s",
        b"x-ratelimit-limit-cost": b"10",
        b"x-ratelimit-remaining-cost": b"2.45",
        b"x-ratelimit-reset-cost": b"400ms",
    }
    assert duration(360.0) == "6m0s" and duration(0.0201) == "21ms"


def test_up_refuses_to_serve_open_off_loopback(tmp_path):
    options = StackOptions(host="0.0.0.0", run_dir=tmp_path)
    with pytest.raises(OpenToTheNetwork, match="easel keys create"):
        check_exposure(options)
    check_exposure(options.model_copy(update={"insecure": True}))
    check_exposure(options.model_copy(update={"host": "127.0.0.1"}))
    check_exposure(options.model_copy(update={"host": "localhost"}))
    SqliteKeyStore(options.store).create("ops", {Scope.ADMIN}, KeyLimits())
    check_exposure(options)


@pytest.mark.parametrize(
    ("refused_by", "says"),
    [
        ("requests", "6 requests per minute"),
        ("cost", "a cost of 2 per minute (this request costs 3.5)"),
        ("requests_per_day", "9 requests per day (UTC)"),
        ("concurrent", "1 requests at once"),
    ],
)
def test_a_refusal_names_the_limit_and_when_to_retry(refused_by, says):
    from serve.access import over_limit
    from serve.access.keys import ApiKey

    limits = KeyLimits(requests_per_minute=6, cost_per_minute=2.0, requests_per_day=9, concurrent=1)
    key = ApiKey("abc", "n", frozenset({Scope.JOBS}), limits, 0.0)
    error = over_limit(key, Decision(False, refused_by=refused_by, retry_after_s=2.2), 3.5)
    assert error.status == 429 and error.field == refused_by and error.headers() == {"Retry-After": "3"}
    assert error.message == f"key abc is over its limit of {says}"


def test_keys_commands_create_list_and_revoke(tmp_path):
    from click.testing import CliRunner

    from serve.cli.main import main

    store = f"sqlite:///{tmp_path / 'easel.db'}"
    runner = CliRunner()
    created = runner.invoke(
        main, ["keys", "create", "--name", "ci", "--scopes", "jobs", "--rpm", "5", "--store", store]
    )
    assert created.exit_code == 0, created.output
    key = next(line for line in created.output.splitlines() if line.startswith("easel-"))
    listed = runner.invoke(main, ["keys", "list", "--store", store])
    key_id = key.split("-")[1]
    assert f"{key_id}  live" in listed.output and "requests_per_minute=5" in listed.output and key not in listed.output
    assert runner.invoke(main, ["keys", "revoke", key_id, "--store", store]).exit_code == 0
    assert f"{key_id}  revoked" in runner.invoke(main, ["keys", "list", "--store", store]).output
    assert runner.invoke(main, ["keys", "revoke", "nope", "--store", store]).exit_code == 1
    bad = runner.invoke(main, ["keys", "create", "--name", "x", "--scopes", "root", "--store", store])
    assert bad.exit_code == 2 and "--scopes" in bad.output


def test_up_off_loopback_without_a_key_is_a_one_line_error(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from serve.cli.main import main

    monkeypatch.setenv("EASEL_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["up", "--host", "0.0.0.0", "--no-first-request"])
    assert result.exit_code == 1 and "there is no API key" in result.output and "--insecure" in result.output


def test_triton_ports_default_to_the_documented_ones_and_parse(tmp_path):
    from click.testing import CliRunner

    from serve.cli.main import main
    from serve.cli.options import PORTS
    from serve.processes.ports import TRITON_PORTS

    assert TRITON_PORTS == (8003, 8001, 8002) and PORTS.convert("0,0,0", None, None) == (0, 0, 0)
    assert "8003,8001,8002" in CliRunner().invoke(main, ["up", "--help"]).output
    bad = CliRunner().invoke(main, ["up", "--triton-ports", "1,x", "--no-first-request"])  # refused as it is parsed
    assert bad.exit_code == 2 and "--triton-ports" in bad.output


@pytest.mark.parametrize("charset", ["utf-16", "latin-1"])
def test_an_edit_form_whose_text_is_not_utf_8_is_a_400_naming_the_body_as_json_s_is(charset):
    form = httpx.Request("POST", "http://x/v1/images/edits", files=[("image", ("a.png", b"png"))], data={"prompt": "x"})
    headers = [(name.lower(), value) for name, value in form.headers.raw]
    scope = {"type": "http", "method": "POST", "path": "/v1/images/edits", "headers": headers}
    assert _read_form(scope, form.read()).prompt == "x"
    declared = [
        (name, value + f"; charset={charset}".encode() if name == b"content-type" else value) for name, value in headers
    ]
    refusal = _read_form({**scope, "headers": declared}, form.read())
    assert isinstance(refusal, InvalidInput) and refusal.field == "body" and charset in refusal.message


def test_a_key_over_a_limit_that_needs_no_body_is_refused_before_its_body_is_read(tmp_path, price, monkeypatch):
    """A key over its request limit had its 30 MiB body read and parsed before the 429 (0.8 s each)."""
    from serve.access import ACCESS, KeyCheck

    store = SqliteKeyStore(f"sqlite:///{tmp_path / 'easel.db'}")
    _, key = store.create("one a minute", {Scope.GENERATE}, KeyLimits(requests_per_minute=1, cost_per_minute=1.0))
    monkeypatch.setattr(ACCESS, "store", store)
    monkeypatch.setattr(ACCESS, "_active", (float("inf"), True))
    body = json.dumps({"prompt": "a red heart icon", "size": "64x64", "num_inference_steps": 2}).encode()

    def call() -> tuple[int, int]:
        """(status, body chunks read) of one generation request through the key check."""
        reads, sent = [], []

        async def receive() -> dict:
            reads.append(1)
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        async def app(scope, receive, send) -> None:  # the route: its admission reads the body
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        headers = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
        scope = {"type": "http", "method": "POST", "path": "/v1/images/generations", "headers": headers}
        asyncio.run(KeyCheck(app)(scope, receive, send))
        return sent[0]["status"], len(reads)

    assert call() == (200, 1)
    assert call() == (429, 0)  # its request limit: refused with nothing of the body read


def test_the_key_check_reads_no_body_and_leaves_the_caller_for_admission(tmp_path, monkeypatch):
    """With or without keys in the store, the middleware passes the body on unread; a keyed request's caller rides."""
    from serve.access import ACCESS, CALLER, KeyCheck

    store = SqliteKeyStore(f"sqlite:///{tmp_path / 'easel.db'}")
    monkeypatch.setattr(ACCESS, "store", store)

    def call(headers: list) -> tuple[int, object]:
        reads, seen = [], []

        async def receive() -> dict:
            reads.append(1)
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def app(scope, receive, send) -> None:
            seen.append(scope.get("state", {}).get(CALLER))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        scope = {"type": "http", "method": "POST", "path": "/v1/images/generations", "headers": headers}
        asyncio.run(KeyCheck(app)(scope, receive, lambda message: asyncio.sleep(0)))
        assert reads == []
        return seen[0]

    monkeypatch.setattr(ACCESS, "_active", (float("inf"), False))  # no key: the API is open
    assert call([]) is None
    _, key = store.create("k", {Scope.GENERATE}, KeyLimits(cost_per_minute=1.0))
    monkeypatch.setattr(ACCESS, "_active", (float("inf"), True))
    found = call([(b"authorization", f"Bearer {key}".encode())])
    assert found.key.name == "k" and found.cost == 0.0 and found.refused_by is None
