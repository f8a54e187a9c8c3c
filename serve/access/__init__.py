"""Who may call the API, and how much: the one door every request passes (an ASGI middleware of the Gateway).

With no key in the store the API is open (``easel up`` refuses that off loopback unless ``--insecure``). Once a key
exists, every route but the open ones (health) needs ``Authorization: Bearer <key>``: 401 without a valid one, 403 when
its scopes lack the route's (:mod:`serve.routes`), 429 with ``Retry-After`` past one of its limits
(:mod:`serve.access.keys`; the store: :func:`open_key_store`). Every answer to a keyed request carries
``x-ratelimit-{limit,remaining,reset}-{requests,cost}`` for the limits the key has. Logs name the
key's id, never the key. The admitted key rides on the request (:func:`caller`): a background job belongs to the key
that submitted it (:func:`job_owner`), and only that key, or an admin key, sees or cancels it (:func:`may_see`).
gRPC calls take the same steps, the key in metadata ``authorization`` (:func:`call_admitted`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import ValidationError
from starlette.requests import Request

from serve import metrics
from serve.access.keys import ApiKey, Decision, KeyStore
from serve.access.redis import RedisKeyStore
from serve.access.sqlite import SqliteKeyStore
from serve.errors import EaselError, Forbidden, Overloaded, Unauthorized
from serve.jobs.model import Owner
from serve.routes import OPEN_PATHS, Scope, costed, required_scope
from serve.stores import scheme
from serve.text_to_image.admission import request_cost
from serve.text_to_image.edit_form import read_edit_form
from serve.text_to_image.images import output_size
from serve.text_to_image.schema import GenerationRequest
from serve.wire import Message, Receive, Send, send_error
from serve.wire import Scope as AsgiScope

logger = logging.getLogger(__name__)

ACTIVE_CHECK_S = 1.0
"""How long whether any key exists is remembered (a first key closes the API within this)."""
CALLER = "api_key"
"""Where in the request's state :class:`KeyCheck` leaves the admitted key."""


def open_key_store(url: str) -> KeyStore:
    """The key store at ``url`` (``sqlite:///PATH`` or ``redis://HOST:PORT/DB``)."""
    if scheme(url) == "sqlite":
        return SqliteKeyStore(url)
    return RedisKeyStore(url)


def caller(request) -> ApiKey | None:
    """The key ``request`` (a Starlette request) was admitted with; None while the API is open."""
    return request.scope.get("state", {}).get(CALLER)


def job_owner(key: ApiKey | None) -> Owner | None:
    """Who a job submitted with ``key`` belongs to, with the key's cap on unfinished jobs."""
    return None if key is None else Owner(key.id, key.limits.concurrent_jobs)


def may_see(key: ApiKey | None, owner: str | None) -> bool:
    """Whether ``key`` may see (and cancel) a job of ``owner``: its own, any with an admin key or an open API."""
    return key is None or Scope.ADMIN in key.scopes or key.id == owner


def owner_filter(key: ApiKey | None) -> str | None:
    """The owner a job listing is limited to for ``key`` (None: every job)."""
    return None if key is None or Scope.ADMIN in key.scopes else key.id


def generation_cost(request: GenerationRequest, native_size: int) -> float:
    """What a generation costs: images x steps that run x megapixels x (1 + ControlNets), as admission counts it."""
    width, height = output_size(request, native_size)
    return request_cost(request.rows, request.denoising_steps, width, height, request.passes)


def body_cost(body: bytes, native_size: int) -> float:
    """What a generation request's JSON body costs; 0 for a body the app will refuse anyway."""
    try:
        return generation_cost(GenerationRequest.model_validate_json(body), native_size)
    except (ValidationError, EaselError):
        return 0.0


async def edit_cost(scope: AsgiScope, body: bytes, native_size: int) -> float:
    """What an edit's multipart body costs; 0 for a body the app will refuse anyway."""
    try:
        request = await read_edit_form(Request(scope, _replay(body, _nothing_more)))
        return generation_cost(request, native_size)
    except Exception:  # noqa: BLE001 - a malformed body: the route refuses it, naming what is wrong
        return 0.0


async def _nothing_more() -> Message:
    return {"type": "http.disconnect"}


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: ``450ms``, ``12s``, ``6m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def ratelimit_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """The ``x-ratelimit-*`` headers of a decision's buckets."""
    headers = []
    for name, bucket in decision.buckets.items():
        step = 1 if name == "requests" else 100  # whole requests; cost to two decimals
        remaining = math.floor(bucket.remaining * step) / step
        headers += [
            (f"x-ratelimit-limit-{name}".encode(), f"{bucket.limit:g}".encode()),
            (f"x-ratelimit-remaining-{name}".encode(), f"{remaining:g}".encode()),
            (f"x-ratelimit-reset-{name}".encode(), duration(bucket.reset_s).encode()),
        ]
    return headers


class Access:
    """The key store a Gateway replica checks against (None until :meth:`open`: the API is open)."""

    def __init__(self) -> None:
        self.store: KeyStore | None = None
        self.native_size = 512
        self._active: tuple[float, bool] = (0.0, False)

    def open(self, store_url: str, native_size: int) -> None:
        """Check keys in the store at ``store_url``; ``native_size``: the model's image side (a request's default)."""
        self.store, self.native_size = open_key_store(store_url), native_size

    async def keys_required(self) -> bool:
        """Whether any key is live (remembered for :data:`ACTIVE_CHECK_S`)."""
        if self.store is None:
            return False
        checked_at, active = self._active
        if time.monotonic() - checked_at > ACTIVE_CHECK_S:
            active = await asyncio.to_thread(self.store.active) > 0
            self._active = (time.monotonic(), active)
        return active

    async def authenticate(self, header: str, path: str) -> ApiKey:
        """The key in an ``Authorization`` header, allowed on ``path`` (:class:`Unauthorized`, :class:`Forbidden`)."""
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing API key: send the header 'Authorization: Bearer <key>'", field="Authorization")
        key = await asyncio.to_thread(self.store.verify, token.strip())
        if key is None:
            raise Unauthorized("invalid or revoked API key", field="Authorization")
        needed = required_scope(path)
        if needed is not None and needed not in key.scopes and Scope.ADMIN not in key.scopes:
            raise Forbidden(
                f"key {key.id} has scopes {', '.join(sorted(key.scopes))}; {path} needs '{needed}'",
                field="Authorization",
            )
        return key

    async def admit(self, key: ApiKey, cost: float) -> Decision:
        """Take a request of ``cost`` from the key's limits (counted in the per-key metrics)."""
        decision = await asyncio.to_thread(self.store.admit, key, cost)
        result = "admitted" if decision.allowed else decision.refused_by
        metrics.count(metrics.KEY_REQUESTS, key_id=key.id, result=result)
        if decision.allowed and cost:
            metrics.count(metrics.KEY_COST, cost, key_id=key.id)
        if not decision.allowed:
            logger.warning("key %s over its %s limit", key.id, decision.refused_by)
        return decision

    async def release(self, key: ApiKey, decision: Decision) -> None:
        """Give back the concurrency slot ``decision`` took, if any."""
        if decision.slot is not None:
            await asyncio.to_thread(self.store.release, key, decision.slot)


ACCESS = Access()
"""This process's (one Gateway replica's) access state."""


def open_access(store_url: str, native_size: int) -> None:
    """Check keys in the store at ``store_url`` from now on (a Gateway replica calls it as it starts).

    A function, not ``ACCESS.open``: Ray Serve pickles the ingress class by value, and with it any object its code
    names, so the replica would open a copy of ``ACCESS`` that the middleware never sees.
    """
    ACCESS.open(store_url, native_size)


class KeyCheck:
    """ASGI middleware: authenticate, authorise and rate-limit each request against :data:`ACCESS`."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 401/403/429 in the app's place."""
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or not await ACCESS.keys_required():
            await self.app(scope, receive, send)
            return
        try:
            header = dict(scope.get("headers", ())).get(b"authorization", b"").decode("latin-1")
            key = await ACCESS.authenticate(header, scope["path"])
        except EaselError as error:
            logger.info("refused %s %s: %s", scope["method"], scope["path"], error.message)
            await send_error(send, error)
            return
        scope.setdefault("state", {})[CALLER] = key
        cost = 0.0
        if costed(scope["method"], scope["path"]):
            body = await _read_body(receive)
            if scope["path"] == "/v1/images/edits":
                cost = await edit_cost(scope, body, ACCESS.native_size)
            else:
                cost = await asyncio.to_thread(body_cost, body, ACCESS.native_size)
            receive = _replay(body, receive)
        decision = await ACCESS.admit(key, cost)
        headers = ratelimit_headers(decision)
        if not decision.allowed:
            await send_error(_send_with_headers(send, headers), _over_limit(key, decision, cost))
            return
        try:
            await self.app(scope, receive, _send_with_headers(send, headers))
        finally:
            await ACCESS.release(key, decision)


@asynccontextmanager
async def call_admitted(grpc_context, path: str, request: GenerationRequest | None = None) -> AsyncIterator[None]:
    """A gRPC call checked as :class:`KeyCheck` checks HTTP (the key in metadata ``authorization``), its slot held.

    ``path``: the HTTP route whose scope the call needs; ``request``: a generation, for its cost.
    """
    if not await ACCESS.keys_required():
        yield
        return
    key = await ACCESS.authenticate(dict(grpc_context.invocation_metadata()).get("authorization", ""), path)
    cost = 0.0 if request is None else generation_cost(request, ACCESS.native_size)
    decision = await ACCESS.admit(key, cost)
    if not decision.allowed:
        raise _over_limit(key, decision, cost)
    try:
        yield
    finally:
        await ACCESS.release(key, decision)


def _over_limit(key: ApiKey, decision: Decision, cost: float) -> Overloaded:
    limits, refused_by = key.limits, decision.refused_by
    if refused_by == "requests":
        what = f"{limits.requests_per_minute} requests per minute"
    elif refused_by == "cost":
        what = f"a cost of {limits.cost_per_minute:g} per minute (this request costs {cost:.3g})"
    elif refused_by == "requests_per_day":
        what = f"{limits.requests_per_day} requests per day (UTC)"
    else:
        what = f"{limits.concurrent} requests at once"
    return Overloaded(
        f"key {key.id} is over its limit of {what}",
        field=refused_by,
        retry_after_s=max(1, math.ceil(decision.retry_after_s)),
    )


def _send_with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    async def send_more(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *headers]}
        await send(message)

    return send_more


async def _read_body(receive: Receive) -> bytes:
    """The whole request body (its size is already bounded by :class:`serve.wire.BodyLimits`)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the app ``body`` once, then what the client sends next (its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
