"""The proxy's own failure answers get the one JSON error shape; the app's answers pass untouched; body limits and
deadlines; the one way a JSON body is read (UTF-8, sent as JSON)."""

import asyncio
import json

import pytest

from serve.errors import InvalidInput
from serve.protocol.schema import GenerationRequest
from serve.routes import BODY_LIMITS
from serve.wire import MAX_JSON_DEPTH, BodyLimits, ShapedProxyErrors, proxy_middlewares, read_json, read_json_value


def _run(app) -> tuple[int, dict, bytes]:
    """One GET through ``ShapedProxyErrors(app)``: status, headers and body sent to the client."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
    asyncio.run(ShapedProxyErrors(app)(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def _answering(status: int, content_type: bytes, body: bytes):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": body[:3], "more_body": True})
        await send({"type": "http.response.body", "body": body[3:]})

    return app


async def _silent(scope, receive, send):  # a replica died: the proxy answers nothing
    return None


async def _raising(scope, receive, send):
    raise RuntimeError("actor died")


def _dying_after_the_start(raises: bool):
    """The replica sent its answer's start and died: the proxy ends the answer there, or raises."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 202, "headers": [(b"content-type", b"application/json")]})
        if raises:
            raise RuntimeError("actor died")

    return app


@pytest.mark.parametrize(
    ("app", "status"),
    [
        (_silent, 503),
        (_raising, 503),
        (_dying_after_the_start(raises=False), 503),
        (_dying_after_the_start(raises=True), 503),
        (_answering(500, b"text/plain", b"Internal Server Error"), 503),
        (_answering(503, b"text/plain", b"Service Unavailable"), 503),
        (_answering(429, b"text/plain; charset=utf-8", b"backpressure"), 429),
    ],
)
def test_the_proxys_own_failures_become_json_errors_with_retry_after(app, status):
    got, headers, body = _run(app)
    assert got == status and headers["content-type"] == "application/json" and int(headers["retry-after"]) > 0
    error = json.loads(body)["error"]
    assert error["code"] == status and error["type"] in ("service_unavailable", "rate_limit_exceeded")


@pytest.mark.parametrize("status", [200, 400, 503])
def test_the_apps_answers_pass_untouched(status):
    body = json.dumps({"error": {"code": status}}).encode()
    got, headers, sent = _run(_answering(status, b"application/json", body))
    assert (got, headers["content-type"], sent) == (status, "application/json", body)


def _limited(chunks, delays_s, disconnect_after_s: float = 0.0, deadline_s: float = 60) -> tuple[int, list[dict]]:
    """A POST whose body arrives as ``chunks`` (each after its delay) through ``BodyLimits`` (limit 10 bytes, 0.2 s
    idle timeout, ``deadline_s``) to an app that reads the body, then waits for the disconnect as a proxy does, then
    answers 200: the status sent and the messages the app received."""
    seen, sent = [], []
    pending = list(zip(chunks, delays_s, strict=True))

    async def receive():
        if not pending:
            await asyncio.sleep(disconnect_after_s)
            return {"type": "http.disconnect"}
        chunk, delay = pending.pop(0)
        await asyncio.sleep(delay)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        seen.append(await receive())
        while seen[-1].get("more_body"):
            seen.append(await receive())
        seen.append(await receive())
        await _answering(200, b"application/json", b"{}")(scope, receive, send)

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": []}
    limits = BodyLimits(app, {}, default_limit=10, idle_timeout_s=0.2, deadline_s=deadline_s)
    asyncio.run(limits(scope, receive, send))
    (status,) = [m["status"] for m in sent if m["type"] == "http.response.start"]  # the refusal replaces the app's
    return status, seen


def test_a_body_over_the_limit_is_refused_as_it_arrives():
    status, seen = _limited([b"12345", b"678901", b"2"], [0, 0, 0])
    assert status == 413 and [m["type"] for m in seen][:2] == ["http.request", "http.disconnect"]


def test_a_pause_inside_the_body_is_a_408():
    status, _ = _limited([b"12", b"34"], [0, 0.5])
    assert status == 408


def test_a_body_trickling_in_past_its_deadline_is_a_408_though_it_never_pauses_long():
    status, seen = _limited([b"1"] * 8, [0.1] * 8, deadline_s=0.35)
    assert status == 408 and len(seen) <= 5


def test_once_the_body_is_whole_waiting_for_the_disconnect_is_no_timeout():
    status, seen = _limited([b"12", b"34"], [0, 0], disconnect_after_s=0.5)
    assert status == 200 and [m["type"] for m in seen] == ["http.request", "http.request", "http.disconnect"]


def test_the_proxy_applies_the_same_body_limits_as_the_app():
    limits = [m for m in proxy_middlewares() if m.cls is BodyLimits]
    assert len(limits) == 1 and limits[0].kwargs["limits"] is BODY_LIMITS


BODY = '{"prompt": "a red heart icon", "n": 4, "num_inference_steps": 30}'


ENCODINGS = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be", "utf-8-sig"]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_json_in_any_encoding_but_utf_8_is_a_400_naming_body_and_the_encoding(encoding):
    with pytest.raises(InvalidInput) as refused:
        read_json(GenerationRequest, BODY.encode(encoding), "application/json")
    assert refused.value.field == "body" and "must be UTF-8 (RFC 8259)" in refused.value.message
    assert ("byte order mark" if encoding == "utf-8-sig" else encoding.upper()[:6]) in refused.value.message


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_the_reader_of_bodies_fastapi_validates_is_as_strict_and_bounds_the_nesting(encoding):
    """:func:`read_json_value`, the same rules: UTF-8 only, JSON's media type, at most MAX_JSON_DEPTH levels."""
    with pytest.raises(InvalidInput) as refused:
        read_json_value(BODY.encode(encoding), "application/json")
    assert refused.value.field == "body" and "must be UTF-8 (RFC 8259)" in refused.value.message
    assert read_json_value(BODY.encode(), None) == json.loads(BODY)
    nested = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert read_json_value(nested.encode(), "application/json") == json.loads(nested)
    with pytest.raises(InvalidInput) as refused:
        read_json_value(("[" * 2 * MAX_JSON_DEPTH + "]" * 2 * MAX_JSON_DEPTH).encode(), "application/json")
    assert refused.value.field == "body" and f"about {MAX_JSON_DEPTH} levels deep" in refused.value.message
    with pytest.raises(InvalidInput) as refused:
        read_json_value(BODY.encode(), "text/plain")
    assert refused.value.field == "Content-Type"


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-16", "application/json; charset=latin-1"])
def test_a_charset_other_than_utf_8_is_a_400_naming_body(content_type):
    with pytest.raises(InvalidInput) as refused:
        read_json(GenerationRequest, BODY.encode(), content_type)
    assert refused.value.field == "body" and content_type.split("=")[1] in refused.value.message


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "application/json; charset=UTF-8", 'application/json;charset="utf-8"']
)
def test_utf_8_json_is_read_as_the_model(content_type):
    request = read_json(GenerationRequest, BODY.encode(), content_type)
    assert (request.prompt, request.n, request.num_inference_steps) == ("a red heart icon", 4, 30)


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data"])
def test_a_body_that_is_not_sent_as_json_is_a_400_naming_content_type(content_type):
    with pytest.raises(InvalidInput) as refused:
        read_json(GenerationRequest, BODY.encode(), content_type)
    assert refused.value.field == "Content-Type" and "application/json" in refused.value.message


@pytest.mark.parametrize(
    ("raw", "field"),
    [(b"[" * 100_000 + b"]" * 100_000, "body"), (b'{"prompt": "x", "n": "2"}', "n"), (b"\xff{}", "body")],
)
def test_nesting_invalid_bytes_and_wrong_types_are_400s_naming_the_field(raw, field):
    with pytest.raises(InvalidInput) as refused:
        read_json(GenerationRequest, raw, "application/json")
    assert refused.value.field == field


def test_every_curl_example_in_the_docs_sends_its_json_as_json():
    """``curl -d`` alone sends application/x-www-form-urlencoded, which the API refuses (a 400 naming Content-Type)."""
    from serve.paths import PROJECT_ROOT

    for path in [PROJECT_ROOT / "README.md", *(PROJECT_ROOT / "docs").rglob("*.md")]:
        commands = path.read_text().replace("\\\n", " ").splitlines()
        for command in (c for c in commands if "curl " in c and (" -d " in c or " --data" in c)):
            assert "Content-Type: application/json" in command or " --json " in command, (path.name, command)
