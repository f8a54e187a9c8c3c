"""Who may call the API, and how much: the one door every request passes (an ASGI middleware of the Gateway).

With no key in the store the API is open (``easel up`` refuses that off loopback unless ``--insecure``). Once a key
exists, every route but the open ones (health) needs ``Authorization: Bearer <key>``: 401 without a valid one, 403 when
its scopes lack the route's (:mod:`serve.routes`), 429 with ``Retry-After`` past one of its limits
(:mod:`serve.access.keys`; the store: :func:`open_key_store`): the limits that need no body first, before the body is
read, then its cost (:meth:`Access.admit_in_two`). Every answer to a keyed request carries
``x-ratelimit-{limit,remaining,reset}-{requests,cost}`` for the limits the key has. Logs name the
key's id, never the key. The admitted key rides on the request (:func:`caller`): a background job belongs to the key
that submitted it (:func:`job_owner`), and only that key, or an admin key, sees or cancels it (:func:`may_see`).
gRPC calls take the same steps, the key in metadata ``authorization``, checked before their message is parsed
(:func:`call_admitted`).

A route whose body has a model (:attr:`serve.routes.Route.body`) has it read here, once, whether keys exist or not
(:func:`read_body`: JSON, or the edits route's multipart form, in UTF-8): its cost, the admission and the handler
(:func:`request_body`) see the same request. A costed route's body is then priced, once, by the Gateway's price
(:func:`open_access`): a generation's admission (its model resolved, every rule checked, the cost of its work on that
model, :meth:`serve.serving.generations.Generations.price`), which the handler runs as it is (:func:`request_priced`).
A concurrency slot is held for its request's task (:class:`Access`): given back when the request ends, however it
ends, and renewed while it runs; a replica that dies stops renewing, and its slots expire after ``SLOT_LEASE_S``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request

from serve import metrics
from serve.access.keys import SLOT_LEASE_S, ApiKey, Decision, KeyLimits, KeyStore
from serve.access.redis import RedisKeyStore
from serve.access.sqlite import SqliteKeyStore
from serve.access.upscale_body import UpscaleBody, read_upscale_request
from serve.errors import EaselError, Forbidden, InvalidInput, Overloaded, Unauthorized
from serve.jobs.model import Owner
from serve.routes import Route, Scope, is_open, required_scope, route, rpc_route
from serve.stores import scheme
from serve.text_to_image.edit_form import read_edit_form
from serve.text_to_image.schema import GenerationRequest
from serve.text_to_image.video import read_video_form
from serve.wire import UTF8_NAMES, Message, Receive, Send, media_and_charset, read_json, send_error
from serve.wire import Scope as AsgiScope

logger = logging.getLogger(__name__)

ACTIVE_CHECK_S = 1.0
"""How long whether any key exists is remembered (a first key closes the API within this)."""
CALLER = "api_key"
"""Where in the request's state :class:`KeyCheck` leaves the admitted key."""
BODY = "body"
"""Where in the request's state :class:`KeyCheck` leaves the request its body was read as (or why it was refused)."""
PRICED = "priced"
"""Where in the request's state :class:`KeyCheck` leaves what pricing its body found (:class:`Priced`)."""
SLOT_RENEW_S = SLOT_LEASE_S / 4
"""How often a replica renews the slots of its running requests, and gives back those whose request ended."""


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


def request_body(request) -> BaseModel:
    """The request ``request``'s body was read as by :class:`KeyCheck` (raises the refusal if it was refused)."""
    body = request.scope["state"][BODY]
    if isinstance(body, EaselError):
        raise body
    return body


@dataclass(frozen=True)
class Priced:
    """What a costed request costs, and what pricing it found: a generation's admission, run as it is from then on."""

    cost: float
    admitted: Any = None  # serve.serving.generations.Admitted, for a generation


def request_priced(request) -> Priced:
    """What :class:`KeyCheck` priced ``request``'s body at (raises the refusal of its body, or of its admission)."""
    request_body(request)
    return request.scope["state"][PRICED]


Price = Callable[[GenerationRequest | UpscaleBody, ApiKey | None], Awaitable[Priced]]
"""What a costed request costs for a key: the Gateway's one pricing
(:meth:`serve.serving.generations.Generations.price`: a generation's admission, an upscale's work)."""


async def _unpriced(request: GenerationRequest, key: ApiKey | None) -> Priced:
    raise RuntimeError("no price: open_access() was not called")


async def body_priced(state: dict, key: ApiKey | None) -> float:
    """Price the body :class:`KeyCheck` read into ``state``: its cost, 0 for a refused one.

    What pricing found goes in the state too (:data:`PRICED`); a refusal of the admission replaces the body, for the
    handler to answer as it answers the body's own.
    """
    body = state[BODY]
    if isinstance(body, EaselError):
        return 0.0
    try:
        state[PRICED] = priced = await ACCESS.price(body, key)
    except EaselError as refusal:
        state[BODY] = refusal
        return 0.0
    return priced.cost


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
    """The key store a Gateway replica checks against (None until :meth:`open`: the API is open).

    It holds the concurrency slots of the replica's requests, each with its request's task: a slot is given back when
    its request ends (:meth:`release`); the renewer, running while slots are held, renews the others every
    :data:`SLOT_RENEW_S` and gives back any whose task ended without doing so (a request cancelled, a stream its
    client dropped). A slot outlives its request by seconds, and a replica that died by ``SLOT_LEASE_S``.
    """

    def __init__(self) -> None:
        self.store: KeyStore | None = None
        self.price: Price = _unpriced
        self.held: dict[str, tuple[ApiKey, asyncio.Task]] = {}  # slot -> its key and its request's task
        self._renewer: asyncio.Task | None = None
        self._active: tuple[float, bool] = (0.0, False)

    def open(self, store_url: str, price: Price) -> None:
        """Check keys in the store at ``store_url``, generations costing what ``price`` says."""
        self.store, self.price = open_key_store(store_url), price

    async def keys_required(self) -> bool:
        """Whether any key is live (remembered for :data:`ACTIVE_CHECK_S`)."""
        if self.store is None:
            return False
        checked_at, active = self._active
        if time.monotonic() - checked_at > ACTIVE_CHECK_S:
            active = await asyncio.to_thread(self.store.active) > 0
            self._active = (time.monotonic(), active)
        return active

    async def authenticate(self, header: str, path: str, method: str = "POST") -> ApiKey:
        """The key in an ``Authorization`` header, allowed to call ``method`` ``path`` (401, 403 if not).

        gRPC calls (their routes are POSTs) give no method.
        """
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing API key: send the header 'Authorization: Bearer <key>'", field="Authorization")
        key = await asyncio.to_thread(self.store.verify, token.strip())
        if key is None:
            raise Unauthorized("invalid or revoked API key", field="Authorization")
        needed = required_scope(path, method)
        if needed is not None and needed not in key.scopes and Scope.ADMIN not in key.scopes:
            raise Forbidden(
                f"key {key.id} has scopes {', '.join(sorted(key.scopes))}; {path} needs '{needed}'",
                field="Authorization",
            )
        return key

    async def admit_in_two(self, key: ApiKey, priced: Callable[[], Awaitable[float]]) -> tuple[Decision, float]:
        """Take the key's limits that need no body (requests, per day, concurrency), then the cost ``priced`` gives.

        ``priced`` reads and prices the request's message (its body): a key over a limit that needs none is refused
        before it is read. A request then refused for its cost has taken a request, and gives its slot back.
        Counted once in the per-key metrics. The decision's buckets are both steps'.
        """
        bodiless = replace(key, limits=key.limits.model_copy(update={"cost_per_minute": None}))
        first = await self._take(bodiless, 0.0)
        if not first.allowed:
            return self._counted(key, first, 0.0), 0.0
        try:
            cost = await priced()
        except BaseException:
            await self.release(first)
            raise
        if key.limits.cost_per_minute is None:
            return self._counted(key, first, cost), cost
        second = await self._take(replace(key, limits=KeyLimits(cost_per_minute=key.limits.cost_per_minute)), cost)
        if not second.allowed:
            await self.release(first)
        both = replace(second, buckets=first.buckets | second.buckets, slot=first.slot if second.allowed else None)
        return self._counted(key, both, cost), cost

    def _counted(self, key: ApiKey, decision: Decision, cost: float) -> Decision:
        """``decision``, counted in the per-key metrics (and logged when it refuses)."""
        result = "admitted" if decision.allowed else decision.refused_by
        metrics.count(metrics.KEY_REQUESTS, key_id=key.id, result=result)
        if decision.allowed and cost:
            metrics.count(metrics.KEY_COST, cost, key_id=key.id)
        if not decision.allowed:
            logger.warning("key %s over its %s limit", key.id, decision.refused_by)
        return decision

    async def _take(self, key: ApiKey, cost: float) -> Decision:
        """Take a request of ``cost`` from ``key``'s limits in the store.

        A slot it takes is held for the calling task from the moment the store grants it, also when the caller is
        cancelled while it waits (the renewer then gives it back).
        """
        task = asyncio.current_task()
        taking = asyncio.get_running_loop().run_in_executor(None, self.store.admit, key, cost)

        def hold(done: asyncio.Future) -> None:
            if not done.cancelled() and done.exception() is None and done.result().slot is not None:
                self._hold(key, done.result().slot, task)

        taking.add_done_callback(hold)
        return await asyncio.shield(taking)

    async def release(self, decision: Decision) -> None:
        """Give back the concurrency slot ``decision`` took, if any (also when the caller is cancelled meanwhile)."""
        if decision.slot is not None:
            await self._give_back(decision.slot)

    def _hold(self, key: ApiKey, slot: str, task: asyncio.Task) -> None:
        self.held[slot] = (key, task)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew())

    async def _give_back(self, slot: str) -> None:
        """Stop holding ``slot`` and delete it from the store (one the store missed expires in ``SLOT_LEASE_S``)."""
        found = self.held.pop(slot, None)
        if found is None:  # given back already
            return
        key = found[0]
        try:
            await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, self.store.release, key, slot))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - the store may be briefly unreachable
            logger.warning("giving back a slot of key %s: %s: %s", key.id, type(error).__name__, error)

    async def _renew(self) -> None:
        """While slots are held: give back those whose request ended, renew the others."""
        while self.held:
            await asyncio.sleep(SLOT_RENEW_S)
            for slot, (key, _) in [(slot, held) for slot, held in self.held.items() if held[1].done()]:
                logger.info("a request of key %s ended without giving its slot back: given back", key.id)
                await self._give_back(slot)
            running = {slot: key.id for slot, (key, _) in self.held.items()}
            if running:
                try:
                    await asyncio.to_thread(self.store.renew, running)
                except Exception as error:  # noqa: BLE001 - the store may be briefly unreachable; the next round renews
                    logger.warning("renewing %d slots: %s: %s", len(running), type(error).__name__, error)


ACCESS = Access()
"""This process's (one Gateway replica's) access state."""


def open_access(store_url: str, price: Price) -> None:
    """Check keys in the store at ``store_url`` from now on (a Gateway replica calls it as it starts).

    A function, not ``ACCESS.open``: Ray Serve pickles the ingress class by value, and with it any object its code
    names, so the replica would open a copy of ``ACCESS`` that the middleware never sees.
    """
    ACCESS.open(store_url, price)


class KeyCheck:
    """ASGI middleware: authenticate, authorise and rate-limit each request against :data:`ACCESS`.

    A route's body with a model is read here, once, into the request's state (:func:`request_body`), after the key
    is known and its limits that need no body are taken, and priced (:func:`body_priced`) before its cost is taken
    (:meth:`Access.admit_in_two`); with no key in the store it is read and priced all the same.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 401/403/429 in the app's place."""
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        found = route(scope["method"], scope["path"])

        async def body_read_and_priced() -> float:
            if found is None or found.body is None:
                return 0.0
            state[BODY] = await read_body(found, scope, receive)
            return await body_priced(state, state.get(CALLER)) if found.costed else 0.0

        if not await ACCESS.keys_required():
            await body_read_and_priced()
            await self.app(scope, receive, send)
            return
        try:
            header = dict(scope.get("headers", ())).get(b"authorization", b"").decode("latin-1")
            state[CALLER] = key = await ACCESS.authenticate(header, scope["path"], scope["method"])
            decision, cost = await ACCESS.admit_in_two(key, body_read_and_priced)
        except EaselError as error:  # no valid key, or an image whose header does not read (the handler's 400 too)
            logger.info("refused %s %s: %s", scope["method"], scope["path"], error.message)
            await send_error(send, error)
            return
        headers = ratelimit_headers(decision)
        if not decision.allowed:
            await send_error(_send_with_headers(send, headers), _over_limit(key, decision, cost))
            return
        try:
            await self.app(scope, receive, _send_with_headers(send, headers))
        finally:
            await ACCESS.release(decision)


Read = TypeVar("Read")


@asynccontextmanager
async def call_admitted(
    grpc_context, rpc: str, read: Callable[[], Read]
) -> AsyncIterator[tuple[ApiKey | None, Read, Priced | None]]:
    """A gRPC call checked as :class:`KeyCheck` checks HTTP (the key in metadata ``authorization``), its slot held.

    ``rpc``: the method (its HTTP route's scope and cost); ``read``: its message parsed and validated, called once
    the key is known good. Yields the key (None while the API is open), what ``read`` gave and, for a costed method,
    what pricing it found (a generation's admission); a refusal of either is raised.
    """
    found = rpc_route(rpc)
    key, body, priced = None, None, None

    async def read_and_priced() -> float:
        nonlocal body, priced
        body = read()
        priced = await ACCESS.price(body, key) if found.costed else None
        return priced.cost if priced else 0.0

    if not await ACCESS.keys_required():
        await read_and_priced()
        yield None, body, priced
        return
    key = await ACCESS.authenticate(dict(grpc_context.invocation_metadata()).get("authorization", ""), found.path)
    decision, cost = await ACCESS.admit_in_two(key, read_and_priced)
    if not decision.allowed:
        raise _over_limit(key, decision, cost)
    try:
        yield key, body, priced
    finally:
        await ACCESS.release(decision)


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


async def read_body(found: Route, scope: AsgiScope, receive: Receive) -> BaseModel | EaselError:
    """The request's body read as ``found.body`` (its size bounded by :class:`serve.wire.BodyLimits`), or why not.

    JSON in UTF-8 (:func:`serve.wire.read_json`), or the edits form (:func:`read_edit_form`, its charset UTF-8), or
    the upscale route's JSON or form (:func:`serve.access.upscale_body.read_upscale_request`).
    """
    try:
        if found.form == "edits":
            return await _read_form(Request(scope, receive))
        if found.form == "upscale":
            return await _read_upscale(Request(scope, receive))
        content_type = dict(scope.get("headers", ())).get(b"content-type")
        if found.form == "video" and (content_type or b"").lower().startswith(b"multipart/form-data"):
            return await read_video_form(Request(scope, receive))  # as the openai client sends it
        return read_json(found.body, await _whole_body(receive), content_type and content_type.decode("latin-1"))
    except EaselError as error:
        return error
    except (HTTPException, MultiPartException) as error:  # the multipart parser's refusal (too many parts, malformed)
        detail = str(getattr(error, "detail", error))
        field = "image" if "files" in detail else "body"
        return InvalidInput(f"{field}: {detail} (the edits form: image, mask and the generation's fields)", field)


async def _read_form(request: Request) -> GenerationRequest | EaselError:
    """The edits form's request; its text is UTF-8, as a JSON body's is (a ``charset`` other than that: 400)."""
    charset = media_and_charset(request.headers.get("content-type", ""))[1]
    if charset not in UTF8_NAMES:
        return InvalidInput(f"body: a form's text must be UTF-8; Content-Type says charset={charset}", "body")
    try:
        return await read_edit_form(request)
    except ClientDisconnect:  # gone, or cut off by the wire's limits, whose answer replaces this one
        return InvalidInput("body: the request ended before its body did", "body")
    finally:
        await request.close()  # the form's files


async def _read_upscale(request: Request) -> UpscaleBody | EaselError:
    """The upscale route's image and options (:func:`serve.access.upscale_body.read_upscale_request`), or why not."""
    try:
        return await read_upscale_request(request)
    except EaselError as error:
        return error
    except ClientDisconnect:  # gone, or cut off by the wire's limits, whose answer replaces this one
        return InvalidInput("body: the request ended before its body did", "body")
    finally:
        await request.close()  # the form's file


async def _whole_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
