"""Limits on the wire (bodies counted as they arrive, slow senders timed out) and the one way a JSON body is read.

:class:`BodyLimits`, an ASGI middleware: a declared ``Content-Length`` over the route's limit (:mod:`serve.routes`)
is refused before any byte is read; otherwise the bytes actually received are counted and the request is refused
(413) as soon as they pass the limit, so no more than the limit is ever held. A client that stops sending its body for
``BODY_IDLE_TIMEOUT_S``, or has not sent all of it by its deadline (``BODY_DEADLINE_S``, plus a second for every
``BODY_MIN_RATE`` bytes received), gets a 408. The app never sees the refused request's body. It runs twice: in Ray
Serve's HTTP proxy, which otherwise reads a body as fast as the client sends it and queues it until a replica asks for
it (without a bound of its own), and in front of the public app.

:func:`read_json` (and :func:`read_json_value`), the one strict reader of every JSON body: JSON is UTF-8 (RFC 8259),
sent as ``application/json`` (or ``application/*+json``), nested at most :data:`MAX_JSON_DEPTH` deep; a body in another
encoding, or said to be in one, is a 400 naming ``body``, any other media type a 400 naming ``Content-Type``.

:class:`ShapedProxyErrors`, loaded by Ray Serve's proxy: what the proxy itself answers has the one error shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.message import Message as MimeHeader
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import from_json
from starlette.routing import compile_path

from serve.errors import EaselError, InvalidInput, NotReady, Overloaded, PayloadTooLarge, RequestTimeout, invalid_input
from serve.routes import BODY_LIMITS, DEFAULT_BODY_LIMIT, ROUTES

logger = logging.getLogger(__name__)

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BODY_IDLE_TIMEOUT_S = 15.0
"""Seconds a client may pause while sending its body."""
BODY_DEADLINE_S = 15.0
"""Seconds a whole body may take to arrive, plus a second for every :data:`BODY_MIN_RATE` bytes received."""
BODY_MIN_RATE = 64 << 10
"""Bytes a second a body must average past its first :data:`BODY_DEADLINE_S` (a 32 MiB upload: 527 s at most)."""


async def send_error(send: Send, error: EaselError) -> None:
    """Answer with ``error``'s JSON body and headers (the one error shape) at the ASGI level."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimits:
    """ASGI middleware: per-route body limits on the bytes received; an idle timeout and a deadline for the body."""

    def __init__(
        self,
        app: ASGIApp,
        limits: Mapping[str, int],
        default_limit: int = DEFAULT_BODY_LIMIT,
        idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
        deadline_s: float = BODY_DEADLINE_S,
    ) -> None:
        self.app = app
        self.limits = dict(limits)
        self.patterns = [(compile_path(path)[0], limit) for path, limit in self.limits.items() if "{" in path]
        self.default_limit = default_limit
        self.idle_timeout_s = idle_timeout_s
        self.deadline_s = deadline_s

    def limit_for(self, path: str) -> int:
        """The body limit of ``path`` in bytes."""
        path = path.rstrip("/") or "/"
        if path in self.limits:
            return self.limits[path]
        return next((limit for pattern, limit in self.patterns if pattern.match(path)), self.default_limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with its body counted; answer 413 or 408 in the app's place when refused."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await send_error(send, _too_large(declared, limit))
            return
        guard = _Guard(receive, send, limit, self.idle_timeout_s, self.deadline_s)
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            if guard.refusal is None:
                raise
        if guard.refusal is not None and not guard.response_started:
            logger.info("refused %s %s: %s", scope["method"], scope["path"], guard.refusal.message)
            await send_error(send, guard.refusal)


class _Guard:
    """One request's body count: past the limit or idle too long, the app sees a disconnect; its answer is dropped.

    Once the body is whole, ``receive`` passes straight through: what waits on it then (the proxy, a streaming
    response) waits for the client to disconnect, which may be minutes away and is not a slow body.
    """

    def __init__(self, receive: Receive, send: Send, limit: int, idle_timeout_s: float, deadline_s: float) -> None:
        self._receive, self._send = receive, send
        self.limit, self.idle_timeout_s, self.deadline_s = limit, idle_timeout_s, deadline_s
        self.started = time.monotonic()
        self.received = 0
        self.body_complete = False
        self.refusal: EaselError | None = None
        self.response_started = False

    @property
    def deadline(self) -> float:
        """When the whole body must have arrived (monotonic seconds): later for every ``BODY_MIN_RATE`` received."""
        return self.started + self.deadline_s + self.received / BODY_MIN_RATE

    async def receive(self) -> Message:
        if self.refusal is not None:
            return {"type": "http.disconnect"}
        if self.body_complete:
            return await self._receive()
        left_s = self.deadline - time.monotonic()
        try:
            message = await asyncio.wait_for(self._receive(), max(0.0, min(self.idle_timeout_s, left_s)))
        except TimeoutError:
            if left_s < self.idle_timeout_s:
                took = time.monotonic() - self.started
                why = f"{self.received} bytes in {took:.0f} s; a body must arrive within {self.deadline_s:.0f} s, "
                why += f"then at {BODY_MIN_RATE >> 10} KiB/s"
            else:
                why = f"nothing received for {self.idle_timeout_s:.0f} s"
            self.refusal = RequestTimeout(f"body: {why}", field="body")
            return {"type": "http.disconnect"}
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.refusal = _too_large(self.received, self.limit, so_far=message.get("more_body", False))
                return {"type": "http.disconnect"}
            self.body_complete = not message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        if self.refusal is not None:  # the app answered a body it never fully saw: the refusal replaces it
            return
        self.response_started = True
        await self._send(message)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(size: int, limit: int, so_far: bool = False) -> PayloadTooLarge:
    amount = f"more than {limit}" if so_far else str(size)
    return PayloadTooLarge(f"body: the request body is {amount} bytes; the limit is {limit}", field="body")


Model = TypeVar("Model", bound=BaseModel)
UTF8_NAMES = ("utf-8", "utf8")
"""How a ``charset`` parameter names UTF-8, the one charset a body's text may have."""
_ENCODINGS = {"utf-8-sig": "UTF-8 with a byte order mark"}
MAX_JSON_DEPTH = 200
"""How deep a JSON body may nest: pydantic-core's parser, which reads every JSON body, refuses one a little deeper."""


def media_and_charset(content_type: str) -> tuple[str, str]:
    """A ``Content-Type`` header's media type and charset (lower case; UTF-8 when it names none)."""
    header = MimeHeader()
    header["content-type"] = content_type
    return header.get_content_type(), str(header.get_param("charset") or "utf-8").lower()


def checked_json(body: bytes, content_type: str | None) -> bytes:
    """``body``, if it is JSON in UTF-8 as RFC 8259 has it (:class:`InvalidInput` naming ``Content-Type`` or ``body``).

    ``content_type``: the request's header (none: JSON); its media type must be JSON, its charset, if any, UTF-8.
    """
    media, charset = media_and_charset(content_type or "application/json")
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise InvalidInput(
            f"Content-Type: the body must be JSON, sent as application/json, not {media} "
            "(curl -d sends a form: add -H 'Content-Type: application/json')",
            field="Content-Type",
        )
    encoding = json.detect_encoding(body)
    if charset not in UTF8_NAMES or encoding != "utf-8":
        said = f"this body is {_ENCODINGS.get(encoding, encoding.upper())}" if encoding != "utf-8" else ""
        said = said or f"Content-Type says charset={charset}"
        raise InvalidInput(f"body: JSON must be UTF-8 (RFC 8259); {said}", field="body")
    return body


def read_json(model: type[Model], body: bytes, content_type: str | None) -> Model:
    """``body`` read as ``model`` (:class:`InvalidInput` naming the field): JSON in UTF-8 (:func:`checked_json`)."""
    try:
        return model.model_validate_json(checked_json(body, content_type))
    except ValidationError as error:
        if error.errors()[0]["type"] == "json_invalid":
            message = f"body: not JSON ({error.errors()[0]['msg']}; about {MAX_JSON_DEPTH} levels deep at most)"
            raise InvalidInput(message, field="body") from None
        raise invalid_input(error) from None


def read_json_value(body: bytes, content_type: str | None) -> Any:
    """``body``'s JSON value (:func:`checked_json`), nested about :data:`MAX_JSON_DEPTH` deep at most (else a 400).

    The reader of the routes whose body FastAPI validates (:class:`serve.http.app.StrictJsonRoute`).
    """
    try:
        return from_json(checked_json(body, content_type))
    except ValueError as error:
        raise InvalidInput(
            f"body: not JSON ({error}; about {MAX_JSON_DEPTH} levels deep at most)", field="body"
        ) from None


class ShapedProxyErrors:
    """ASGI middleware for Ray Serve's HTTP proxy: its own failures answer in the one JSON error shape.

    When a replica dies with a request in it, the proxy answers nothing and uvicorn sends a text/plain 500; its
    back-pressure and timeout answers are text too. Those become the JSON error with ``Retry-After`` (a 500 becomes
    a 503: it is never the client's fault). Answers from the app itself, always JSON, pass untouched. An answer's
    start is held until its first body part: a replica that dies between the two (the proxy then ends the answer
    there) gets the JSON 503 too, not a connection closed mid-answer.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; replace the proxy's own failure answers."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"held": None, "sent": False, "replaced": None}

        async def shaped_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if _is_proxy_failure(message):
                    state["replaced"] = message["status"]
                else:
                    state["held"] = message
                return
            if state["replaced"] is not None:
                if not message.get("more_body", False):
                    await send_error(send, _proxy_error(state["replaced"]))
                    state["sent"] = True
                return
            if state["held"] is not None:
                await send(state["held"])
                state["held"], state["sent"] = None, True
            await send(message)

        try:
            await self.app(scope, receive, shaped_send)
        except Exception:
            if state["sent"]:
                raise
            logger.exception("the proxy failed before answering %s %s", scope["method"], scope["path"])
        if not state["sent"]:
            await send_error(send, _proxy_error(500))


def _is_proxy_failure(message: Message) -> bool:
    status = message["status"]
    if status < 500 and status not in (408, 429):
        return False
    content_type = dict(message.get("headers", ())).get(b"content-type", b"")
    return not content_type.startswith(b"application/json")


def _proxy_error(status: int) -> EaselError:
    if status == 429:
        return Overloaded("too many requests in flight; retry shortly", retry_after_s=1)
    if status == 408:
        return NotReady("the request took too long to be served; retry shortly", retry_after_s=1)
    return NotReady("the service failed to answer this request; retry shortly", retry_after_s=2)


@dataclass(frozen=True)
class Unparsed:
    """A request message as the proxy forwards it: its bytes (none kept when it is over ``limit``) and its size."""

    data: bytes
    size: int
    limit: int


def keeping_bytes(limit: int) -> Callable[[bytes], Unparsed]:
    """A request deserializer for the proxy: the message's bytes kept unparsed, dropped when over ``limit``."""

    def keep(data: bytes) -> Unparsed:
        return Unparsed(data if len(data) <= limit else b"", len(data), limit)

    return keep


SERVICE = "easel.v1.Easel"
"""The public gRPC service (``easel.proto``)."""
GRPC_LIMITS = {f"/{SERVICE}/{r.rpc}": r.body_limit or DEFAULT_BODY_LIMIT for r in ROUTES if r.rpc is not None}
"""Bytes a gRPC method's request message may have: its HTTP route's body limit."""
MAX_RECEIVE = "grpc.max_receive_message_length"


def bound_grpc_messages() -> None:
    """Ray Serve's gRPC proxy in this process: no message over the largest method limit, each method's kept unparsed.

    gRPC refuses a message longer than :data:`GRPC_LIMITS`' largest (``RESOURCE_EXHAUSTED``) from its length, before
    reading it (Ray Serve's own bound is 2 GiB). Below it, each method's message reaches the Gateway as its bytes
    (:class:`Unparsed`), dropped when over its method's limit: the Gateway checks the key first,
    then refuses it (413) or parses it.
    """
    from ray.serve._private import grpc_util

    server = grpc_util.gRPCGenericServer
    if getattr(server, "easel_bounded", False):  # done already in this process
        return
    largest = max(GRPC_LIMITS.values())
    options = grpc_util.DEFAULT_GRPC_SERVER_OPTIONS
    grpc_util.DEFAULT_GRPC_SERVER_OPTIONS = [(k, largest if k == MAX_RECEIVE else v) for k, v in options]
    override = server._override_method_handler

    def bounded(self, service_method: str, method_handler):
        handler = override(self, service_method, method_handler)
        limit = GRPC_LIMITS.get(service_method)
        return handler if limit is None else handler._replace(request_deserializer=keeping_bytes(limit))

    server._override_method_handler = bounded
    server.easel_bounded = True


def proxy_middlewares() -> list:
    """Ray Serve's proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``): the middlewares it applies.

    Called as the proxy starts, before its gRPC server: its messages are bounded here too (:func:`bound_grpc_messages`).
    """
    from starlette.middleware import Middleware

    bound_grpc_messages()
    return [Middleware(ShapedProxyErrors), Middleware(BodyLimits, limits=BODY_LIMITS)]
