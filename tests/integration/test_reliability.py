"""Never falls over: limits on the wire, failures shaped as retryable errors, supervision, clean shutdown."""

import socket
import time

import psutil
import pytest

from serve.vectorize.schema import MAX_UPLOAD_BYTES
from serve.wire import DEFAULT_BODY_LIMIT

pytestmark = pytest.mark.integration

GENERATE = "/v1/images/generations"


def _raw_request(url: str, head: bytes, chunks, pause_s: float = 0.0, read_timeout_s: float = 60.0) -> bytes:
    """Send ``head`` then ``chunks`` on a raw socket (no client-side buffering); return what the server answered."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout_s) as sock:
        sock.sendall(head)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused the rest
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except (ConnectionResetError, TimeoutError):
            pass
    return answer


def _chunked(total: int, size: int = 1 << 20):
    sent = 0
    while sent < total:
        part = b"\0" * min(size, total - sent)
        sent += len(part)
        yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
    yield b"0\r\n\r\n"


def test_chunked_upload_over_the_limit_is_a_413_after_reading_no_more_than_the_limit(stack):
    head = (
        b"POST /v1/vectorize HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
    )
    answer = _raw_request(stack.info.api_url, head, _chunked(MAX_UPLOAD_BYTES + 8 << 20))
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status_line, answer[:300]
    assert b'"param":"body"' in rest.replace(b" ", b"") and str(MAX_UPLOAD_BYTES).encode() in rest


def test_json_body_over_the_limit_is_refused_without_the_gateway_holding_it(stack, api):
    gateways = [
        p for p in psutil.process_iter(["cmdline"]) if "ServeReplica:easel:Gateway" in " ".join(p.info["cmdline"] or [])
    ]
    before = sum(p.memory_info().rss for p in gateways)
    head = (
        b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    answer = _raw_request(stack.info.api_url, head, _chunked(200 << 20))
    assert b" 413 " in answer.partition(b"\r\n")[0], answer[:300]
    assert str(DEFAULT_BODY_LIMIT).encode() in answer
    grown = sum(p.memory_info().rss for p in gateways) - before
    assert grown < 100 << 20, f"Gateways grew by {grown >> 20} MiB"
    assert api.get("/healthz").status_code == 200


def test_declared_oversize_body_is_refused_before_it_is_sent(stack):
    head = (
        f"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {DEFAULT_BODY_LIMIT + 1}\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = _raw_request(stack.info.api_url, head, [])
    assert b" 413 " in answer.partition(b"\r\n")[0], answer[:300]


def test_a_client_that_stops_sending_its_body_gets_a_408(stack):
    head = (
        b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\nConnection: close\r\n\r\n"
    )
    started = time.monotonic()
    answer = _raw_request(stack.info.api_url, head, [b'{"prompt": '], read_timeout_s=90)
    assert b" 408 " in answer.partition(b"\r\n")[0], answer[:300]
    assert time.monotonic() - started < 40
