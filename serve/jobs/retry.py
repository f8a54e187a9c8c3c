"""When a job's failed attempt runs again, and when the job fails instead: :class:`RetryPolicy`.

An attempt fails in one of three ways (:func:`failure_of`):

- **refused**: a 4xx (but 429) the pipeline answered; the same input is refused again, so the job fails at once.
- **can pass**: the stack was not ready or busy (503, 429), a replica, actor or node was lost, a call timed out or a
  connection broke (``passing``: the exception types that mean so). Retried after a backoff, up to a cap.
- **unknown**: anything else (an engine's error, a bug). Retried once, in case it was passing after all; a job that
  fails the same way twice fails with that reason.

Each failed attempt is recorded in the job (``failed_attempts`` of its object, an ``attempt_failed`` event).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from serve.errors import EaselError

MAX_REASON_CHARS = 300
"""How much of an unknown error's message a job's reason keeps."""
ALWAYS_PASSING: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError)
"""Failures that can pass wherever they come from: a call that timed out, a connection that broke."""


@dataclass(frozen=True)
class Failure:
    """One attempt's failure: the error the job ends with if it is not retried, and how it may be retried."""

    error: dict  # the API's error object: message, type, param, code
    reason: str  # what metrics count it by: the status code, or the exception's type
    refused: bool = False  # the pipeline refused the input (4xx): never retried
    can_pass: bool = False  # not the input's fault: retried up to the cap
    retry_after_s: float = 0.0  # the least pause the error asked for (its Retry-After)

    def same_as(self, earlier: dict) -> bool:
        """Whether an earlier failed attempt (its record) failed this way: the same code and message."""
        error = earlier.get("error") or {}
        return (error.get("code"), error.get("message")) == (self.error["code"], self.error["message"])


def failure_of(error: BaseException, passing: tuple[type[BaseException], ...] = ALWAYS_PASSING) -> Failure:
    """How an attempt that raised ``error`` failed (an Easel error by its status; ``passing``: types that can pass)."""
    if isinstance(error, EaselError):
        retryable = error.status >= 500 or error.status == 429
        return Failure(
            error.body()["error"],
            str(error.status),
            refused=not retryable,
            can_pass=error.status in (429, 503),
            retry_after_s=float(error.retry_after_s or 0),
        )
    message = f"{type(error).__name__}: {error}"[:MAX_REASON_CHARS]
    reason = {"message": f"the generation failed: {message}", "type": "server_error", "param": None, "code": 500}
    return Failure(reason, type(error).__name__, can_pass=isinstance(error, passing))


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff from ``first_s`` (times ``factor`` a retry, at most ``max_s``), ``max_retries`` at most."""

    first_s: float = 2.0
    factor: float = 2.0
    max_s: float = 30.0
    max_retries: int = 8  # 2 + 4 + 8 + 16 + 4 x 30 s: ~2.5 min, past a Triton restart on a loaded machine

    def pause(self, failure: Failure, earlier: Sequence[dict]) -> float | None:
        """Seconds before the next attempt after ``failure``, or None: the job fails with it.

        ``earlier``: the job's failed attempts before this one (their records). A refusal is never retried, nor an
        unknown failure seen before, nor any past the cap.
        """
        if failure.refused or len(earlier) >= self.max_retries:
            return None
        if not failure.can_pass and any(failure.same_as(attempt) for attempt in earlier):
            return None
        backoff = min(self.first_s * self.factor ** len(earlier), self.max_s)
        return max(backoff, min(failure.retry_after_s, self.max_s))
