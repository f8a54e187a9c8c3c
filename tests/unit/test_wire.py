"""The proxy's own failure answers get the one JSON error shape; the app's answers pass untouched; body limits."""

import asyncio
import json

import pytest

from serve.routes import BODY_LIMITS
from serve.wire import BodyLimits, ShapedProxyErrors, proxy_middlewares


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


@pytest.mark.parametrize(
    ("app", "status"),
    [
        (_silent, 503),
        (_raising, 503),
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


def _limited(chunks, delays_s, disconnect_after_s: float = 0.0) -> tuple[int, list[dict]]:
    """A POST whose body arrives as ``chunks`` (each after its delay) through ``BodyLimits`` (limit 10 bytes, 0.2 s
    idle timeout) to an app that reads the body, then waits for the disconnect as a proxy does, then answers 200:
    the status sent and the messages the app received."""
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
    asyncio.run(BodyLimits(app, {}, default_limit=10, idle_timeout_s=0.2)(scope, receive, send))
    (status,) = [m["status"] for m in sent if m["type"] == "http.response.start"]  # the refusal replaces the app's
    return status, seen


def test_a_body_over_the_limit_is_refused_as_it_arrives():
    status, seen = _limited([b"12345", b"678901", b"2"], [0, 0, 0])
    assert status == 413 and [m["type"] for m in seen][:2] == ["http.request", "http.disconnect"]


def test_a_pause_inside_the_body_is_a_408():
    status, _ = _limited([b"12", b"34"], [0, 0.5])
    assert status == 408


def test_once_the_body_is_whole_waiting_for_the_disconnect_is_no_timeout():
    status, seen = _limited([b"12", b"34"], [0, 0], disconnect_after_s=0.5)
    assert status == 200 and [m["type"] for m in seen] == ["http.request", "http.request", "http.disconnect"]


def test_the_proxy_applies_the_same_body_limits_as_the_app():
    limits = [m for m in proxy_middlewares() if m.cls is BodyLimits]
    assert len(limits) == 1 and limits[0].kwargs["limits"] is BODY_LIMITS
