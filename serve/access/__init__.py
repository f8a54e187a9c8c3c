"""Who may call the API, and how much: the key check every request passes first (an ASGI middleware of the Gateway).

With no key in the store the API is open (``easel up`` refuses that off loopback unless ``--insecure``). Once a key
exists, every route but the open ones (health) needs ``Authorization: Bearer <key>``: 401 without a valid one, 403 when
its scopes lack the route's (:mod:`serve.routes`), 429 with ``Retry-After`` past one of its limits
(:mod:`serve.access.keys`; the store: :func:`open_key_store`). :class:`KeyCheck` takes the limits that need no body
(requests, per day, concurrency; the body's size is :class:`serve.wire.BodyLimits`') and reads no body: a route that
runs work names its admission in its signature (:mod:`serve.http.admission`), which reads the body, admits it and
charges its cost here (:func:`charge`). Every answer to a keyed request carries
``x-ratelimit-{limit,remaining,reset}-{requests,cost}`` for the limits the key has. Logs name the key's id, never the
key. Each admin action and each 403 for a scope is written to the audit log (:mod:`serve.access.audit`).
The request's :class:`Caller` rides on it (:func:`caller`): a background job belongs to the key that submitted it,
and only that key, or an admin key, sees or cancels it (:func:`may_see`). gRPC calls take the same steps, the key in
metadata ``authorization``, checked before their message is parsed (:func:`rpc_caller`).

A concurrency slot is held for its request's task (:class:`Access`): given back when the request ends, however it
ends, and renewed while it runs; a replica that dies stops renewing, and its slots expire after ``SLOT_LEASE_S``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from serve import metrics
from serve.access.audit import AUDIT, audited, refused
from serve.access.keys import SLOT_LEASE_S, ApiKey, Decision, KeyLimits, KeyStore
from serve.access.redis import RedisKeyStore
from serve.access.sqlite import SqliteKeyStore
from serve.errors import EaselError, Forbidden, Overloaded, Unauthorized
from serve.routes import Scope, is_open, required_scope, rpc_route
from serve.stores import scheme
from serve.wire import Message, Receive, Send, send_error
from serve.wire import Scope as AsgiScope

logger = logging.getLogger(__name__)

ACTIVE_CHECK_S = 1.0
"""How long whether any key exists is remembered (a first key closes the API within this)."""
CALLER = "caller"
"""Where in the request's state :class:`KeyCheck` leaves its :class:`Caller`."""
SLOT_RENEW_S = SLOT_LEASE_S / 4
"""How often a replica renews the slots of its running requests, and gives back those whose request ended."""


def open_key_store(url: str) -> KeyStore:
    """The key store at ``url`` (``sqlite:///PATH`` or ``redis://HOST:PORT/DB``)."""
    if scheme(url) == "sqlite":
        return SqliteKeyStore(url)
    return RedisKeyStore(url)


@dataclass
class Caller:
    """One request at the door: its key (None while the API is open), its cost once charged, its rate-limit headers.

    Counted once in the per-key metrics as it ends (:meth:`Access.counted`): admitted, or the limit that refused it.
    """

    key: ApiKey | None = None
    cost: float = 0.0
    refused_by: str | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def caller(request) -> ApiKey | None:
    """The key ``request`` (a Starlette request) was admitted with; None while the API is open."""
    found = request.scope.get("state", {}).get(CALLER)
    return found and found.key


def request_caller(request) -> Caller:
    """``request``'s :class:`Caller` (an open API's, with no key, when the key check left none)."""
    return request.scope.setdefault("state", {}).setdefault(CALLER, Caller())


def may_see(key: ApiKey | None, owner: str | None) -> bool:
    """Whether ``key`` may see (and cancel) a job of ``owner``: its own, any with an admin key or an open API."""
    return key is None or Scope.ADMIN in key.scopes or key.id == owner


def owner_filter(key: ApiKey | None) -> str | None:
    """The owner a job listing is limited to for ``key`` (None: every job)."""
    return None if key is None or Scope.ADMIN in key.scopes else key.id


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
        self.held: dict[str, tuple[ApiKey, asyncio.Task]] = {}  # slot -> its key and its request's task
        self._renewer: asyncio.Task | None = None
        self._active: tuple[float, bool] = (0.0, False)

    def open(self, store_url: str) -> None:
        """Check keys in the store at ``store_url``."""
        self.store = open_key_store(store_url)

    async def keys_required(self) -> bool:
        """Whether any key is live (remembered for :data:`ACTIVE_CHECK_S`)."""
        if self.store is None:
            return False
        checked_at, active = self._active
        if time.monotonic() - checked_at > ACTIVE_CHECK_S:
            active = await asyncio.to_thread(self.store.active) > 0
            self._active = (time.monotonic(), active)
        return active

    async def authenticate(self, header: str, path: str, method: str = "POST", via: str = "http") -> ApiKey:
        """The key in an ``Authorization`` header, allowed to call ``method`` ``path`` (401, 403 if not: audited).

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
            reason = f"key {key.id} has scopes {', '.join(sorted(key.scopes))}; {path} needs '{needed}'"
            await asyncio.to_thread(refused, key, method, path, reason, via)
            raise Forbidden(reason, field="Authorization")
        return key

    async def bodiless(self, key: ApiKey) -> Decision:
        """Take the key's limits that need no body: requests (per minute, per day) and a concurrency slot."""
        return await self._take(replace(key, limits=key.limits.model_copy(update={"cost_per_minute": None})), 0.0)

    async def charge(self, found: Caller, cost: float) -> None:
        """Take ``cost`` from the caller's cost limit (429 past it), its bucket's headers kept with the caller.

        Its request took its limits that need no body already; one refused for its cost has taken a request. An open
        API's caller (no key) is charged nothing.
        """
        found.cost = cost
        key = found.key
        if key is None or key.limits.cost_per_minute is None:
            return
        decision = await self._take(replace(key, limits=KeyLimits(cost_per_minute=key.limits.cost_per_minute)), cost)
        found.headers += ratelimit_headers(decision)
        if not decision.allowed:
            found.refused_by = decision.refused_by
            raise over_limit(key, decision, cost)

    def counted(self, found: Caller) -> None:
        """A keyed request's outcome, counted once in the per-key metrics (and logged when it is a refusal)."""
        decision = Decision(found.refused_by is None, refused_by=found.refused_by)
        self.count(found.key, decision, found.cost)

    def count(self, key: ApiKey, decision: Decision, cost: float) -> Decision:
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


def open_access(store_url: str, audit_folder: str | None = None) -> None:
    """Check keys in the store at ``store_url``, audit in ``audit_folder`` (a Gateway replica calls it as it starts).

    ``audit_folder``: the run folder (None: no audit log).

    A function, not ``ACCESS.open``: Ray Serve pickles the ingress class by value, and with it any object its code
    names, so the replica would open a copy of ``ACCESS`` that the middleware never sees.
    """
    ACCESS.open(store_url)
    AUDIT.open(audit_folder)


async def charge(found: Caller, cost: float) -> None:
    """Take ``cost`` from ``found``'s key (:meth:`Access.charge`; 429 past its cost limit)."""
    await ACCESS.charge(found, cost)


class KeyCheck:
    """ASGI middleware: authenticate, authorise and take the limits that need no body, against :data:`ACCESS`.

    It reads no body: the request's :class:`Caller` goes in its state (:func:`caller`), for the route's admission to
    charge its cost (:func:`charge`); the headers of every bucket taken go on the answer.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 401/403/429 in the app's place."""
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        if not await ACCESS.keys_required():  # an open API: its admin actions are audited, keyless
            await self.app(scope, receive, audited(send, scope, None))
            return
        try:
            header = dict(scope.get("headers", ())).get(b"authorization", b"").decode("latin-1")
            key = await ACCESS.authenticate(header, scope["path"], scope["method"])
            decision = await ACCESS.bodiless(key)
        except EaselError as error:  # no valid key
            logger.info("refused %s %s: %s", scope["method"], scope["path"], error.message)
            await send_error(send, error)
            return
        found = Caller(key, headers=ratelimit_headers(decision))
        if not decision.allowed:
            ACCESS.count(key, decision, 0.0)
            await send_error(_send_with_headers(send, found), over_limit(key, decision, 0.0))
            return
        scope.setdefault("state", {})[CALLER] = found
        try:
            await self.app(scope, receive, audited(_send_with_headers(send, found), scope, key))
        finally:
            ACCESS.counted(found)
            await ACCESS.release(decision)


@asynccontextmanager
async def rpc_caller(grpc_context, rpc: str) -> AsyncIterator[Caller]:
    """A gRPC call checked as :class:`KeyCheck` checks HTTP (the key in metadata ``authorization``), its slot held.

    ``rpc``: the method (its HTTP route's scope and limits). Yields its :class:`Caller` (no key while the API is open),
    for its admission to charge (:func:`charge`), before its message is parsed; a refusal is raised.
    """
    if not await ACCESS.keys_required():
        yield Caller()
        return
    metadata = dict(grpc_context.invocation_metadata())
    key = await ACCESS.authenticate(metadata.get("authorization", ""), rpc_route(rpc).path, via="grpc")
    decision = await ACCESS.bodiless(key)
    if not decision.allowed:
        ACCESS.count(key, decision, 0.0)
        raise over_limit(key, decision, 0.0)
    found = Caller(key)
    try:
        yield found
    finally:
        ACCESS.counted(found)
        await ACCESS.release(decision)


def over_limit(key: ApiKey, decision: Decision, cost: float) -> Overloaded:
    """The 429 of a key past one of its limits (``cost``: the request's, when its cost limit refused it)."""
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


def _send_with_headers(send: Send, found: Caller) -> Send:
    """``send``, the caller's rate-limit headers added to the answer (those its admission's charge added too)."""

    async def send_more(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *found.headers]}
        await send(message)

    return send_more
