"""The proxy's own failure answers get the one JSON error shape; the app's answers pass untouched."""

import asyncio
import json

import pytest

from serve.wire import ShapedProxyErrors


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
