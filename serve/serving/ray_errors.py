"""The Easel error behind whatever a call through Ray raised: what both doors (HTTP, gRPC) answer with."""

from __future__ import annotations

import logging

from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError

from serve.errors import EaselError, NotReady, Overloaded

logger = logging.getLogger(__name__)


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
