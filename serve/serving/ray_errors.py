"""The Easel error behind whatever a call through Ray raised: what both doors (HTTP, gRPC) answer with."""

from __future__ import annotations

import logging

from ray.exceptions import (
    GetTimeoutError,
    LocalRayletDiedError,
    NodeDiedError,
    ObjectLostError,
    OwnerDiedError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from serve.errors import BadGateway, EaselError, GatewayTimeout, NotReady, Overloaded, Saturated
from serve.jobs.retry import ALWAYS_PASSING
from serve.resilience.circuits import CircuitOpen, model_failed

logger = logging.getLogger(__name__)


PASSING: tuple[type[BaseException], ...] = (
    *ALWAYS_PASSING,
    RayActorError,  # a replica died, or is unreachable for now (ActorDiedError, ActorUnavailableError)
    WorkerCrashedError,
    NodeDiedError,
    LocalRayletDiedError,
    ObjectLostError,
    OwnerDiedError,
    GetTimeoutError,
    ReplicaUnavailableError,
    DeploymentUnavailableError,
    BackPressureError,
)
"""What a call through Ray may raise that can pass: a retry of the same request may succeed (a job's runner retries)."""


def as_easel_error(error: BaseException) -> EaselError:
    """The :class:`EaselError` behind ``error`` (unwrapping Ray's task errors).

    Anything that is not an Easel error is not the client's fault (a replica died, a backend broke): it becomes a
    503 with ``Retry-After``, its details logged here and never sent to the client.
    """
    error = unwrap(error)
    if isinstance(error, EaselError):
        return error
    if isinstance(error, BackPressureError):
        return Overloaded("too many requests in flight; retry shortly", retry_after_s=1)
    logger.error("request failed: %s: %s", type(error).__name__, error)
    return NotReady("the service failed to answer this request; retry shortly", retry_after_s=2)


def unwrap(error: BaseException) -> BaseException:
    """The exception a deployment raised, from the Ray error that carries it."""
    return error.cause if isinstance(error, RayTaskError) and error.cause is not None else error


def against_model(error: BaseException) -> bool | None:
    """Whether ``error`` counts against the model a generation ran on (:func:`model_failed` of what Ray carries)."""
    error = unwrap(error)
    return None if isinstance(error, BackPressureError) else model_failed(error)  # saturated: not failed


def cannot_serve(error: BaseException) -> str | None:
    """Why ``error`` says the model cannot serve now: ``circuit_open``, ``saturated``, ``timeout``, ``unavailable``...

    ``saturated``: no slot within ``--fallback-queue-wait-s``; ``unavailable``: a 503; ``bad_gateway``: a remote
    model's service answered with no answer (a 502).

    None: it says something else (the client's error, saturation, a fault of this request): no other model is tried.
    """
    error = unwrap(error)
    if isinstance(error, CircuitOpen):
        return "circuit_open"
    if isinstance(error, Saturated):  # no slot within the queue wait its chain allows
        return "saturated"
    if isinstance(error, GetTimeoutError | TimeoutError | GatewayTimeout):
        return "timeout"
    if isinstance(error, BadGateway):  # a remote model's service answered with no answer
        return "bad_gateway"
    if not isinstance(error, Exception) or isinstance(error, BackPressureError):
        return None
    return "unavailable" if type(as_easel_error(error)) is NotReady else None
